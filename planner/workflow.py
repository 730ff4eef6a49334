"""The data side as library calls: train a task's model, map it to its layer graph, apply a
plan, fine-tune, evaluate and export. The CLI and the benchmarks call these."""
from __future__ import annotations

import tempfile
from pathlib import Path

import torch
from torch import nn

from .errors import MpqError
from .graph import LayerGraph
from .quant.lsq import apply_bits, bits_of
from .quant.train import fit
from .torchmap import bits_by_module, export_onnx, from_torch


def example_inputs(task) -> tuple:
    if hasattr(task, "example_inputs"):
        return tuple(task.example_inputs())
    x = task.train_data()[0][0]
    return (x.unsqueeze(0),)


def task_graph(task, model: nn.Module, *, pin_first: int | None = 8, pin_last: int | None = 8,
               path: str | Path | None = None) -> tuple[LayerGraph, dict[str, str]]:
    """The LayerGraph of the task's model (exported to ``path`` or a temporary file) and the map
    layer name -> module path."""
    return from_torch(model, example_inputs(task), path=path, pin_first=pin_first, pin_last=pin_last)


def uniform_bits(graph: LayerGraph, mapping: dict[str, str], bits: int) -> dict[str, int]:
    """Module path -> bits: ``bits`` for free groups, the pin for pinned ones."""
    by_layer = {l.name: (graph.groups[l.group].pinned_bits or bits) for l in graph.layers}
    return bits_by_module(graph, mapping, by_layer)


def train(task, model: nn.Module, *, bits: int | None = None, epochs: float | None = None, lr: float | None = None,
          seed: int = 0, pins: tuple[int | None, int | None] = (8, 8), progress=None,
          resume: str | Path | None = None) -> nn.Module:
    """Train full precision (``bits=None``) or quantization-aware at uniform ``bits`` (pinned
    groups at their pins), starting from ``model``'s weights."""
    if bits is not None:
        graph, mapping = task_graph(task, model, pin_first=pins[0], pin_last=pins[1])
        model = apply_bits(model, uniform_bits(graph, mapping, bits))
        default_epochs, default_lr = getattr(task, "finetune_epochs", 5), getattr(task, "finetune_lr", 0.01)
    else:
        default_epochs, default_lr = getattr(task, "epochs", 10), getattr(task, "lr", 0.05)
    return fit(model, task, epochs=epochs if epochs is not None else default_epochs,
               lr=lr if lr is not None else default_lr, seed=seed, progress=progress, resume=resume)


def apply_plan(task, model: nn.Module, plan) -> nn.Module:
    """A copy of ``model`` at the plan's bits (the plan must be for this model's layers; its
    weights may differ: a plan is applied to fine-tuned checkpoints of the model it was made on)."""
    graph, mapping = task_graph(task, model)
    plan.check_model(graph, force=True)
    return apply_bits(model, bits_by_module(graph, mapping, plan.bits_by_layer))


def export_qdq(plan, onnx_path: str | Path, *, task=None, model: nn.Module | None = None, force: bool = False):
    """QDQ ONNX at the plan's bits. Without a torch ``model`` it is built on ``onnx_path`` (steps
    from its weights, activation steps calibrated on the task's data, or activations left float
    without a task). With a task's ``model`` (a checkpoint) it is built on a fresh export of that
    model, so every parameter (batch norms included) and every learned step is the checkpoint's;
    ``onnx_path`` must then have the same layers. The plan must record ``onnx_path``'s sha256
    unless ``force``."""
    from .graph import load_graph
    from .qdq import qdq_model
    from .quant.lsq import learned_steps

    reference = load_graph(onnx_path, pin_first=None, pin_last=None)
    plan.check_model(reference, force)
    if model is None:
        activation_steps = calibrate(task, reference, plan.bits_by_layer) if task is not None else None
        return qdq_model(reference, plan.bits_by_layer, activation_steps=activation_steps)
    with tempfile.TemporaryDirectory() as folder:
        graph, mapping = task_graph(task, model, pin_first=None, pin_last=None, path=Path(folder) / "model.onnx")
        if [(l.name, l.weight) for l in graph.layers] != [(l.name, l.weight) for l in reference.layers]:
            raise MpqError(f"{onnx_path} and the checkpoint's model have different layers; plan on the ONNX that "
                           "mpq train wrote next to the checkpoint")
        learned = learned_steps(model)
        steps = {layer: learned[path] for layer, path in mapping.items() if path in learned}
        uncovered = {n: b for n, b in plan.bits_by_layer.items() if steps.get(n, {}).get("bits") != b}
        activation_steps = calibrate(task, graph, uncovered) if uncovered else None
        return qdq_model(graph, plan.bits_by_layer, steps=steps, activation_steps=activation_steps)


def calibrate(task, graph: LayerGraph, bits_by_layer: dict[str, int], batches: int = 4) -> dict[str, tuple[float, bool]]:
    """LSQ's initial activation step (and sign) of every planned layer's input, measured by
    running the float ONNX model in onnxruntime on a few training batches."""
    import math

    import numpy as np
    import onnx
    import onnxruntime as ort
    from onnx import helper

    from .quant.train import loader

    model = onnx.load(graph.model.path)
    wanted = sorted({l.input for l in graph.layers if l.name in bits_by_layer})
    existing = {o.name for o in model.graph.output}
    for name in wanted:
        if name not in existing:
            model.graph.output.append(helper.make_empty_tensor_value_info(name))
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    input_name = session.get_inputs()[0].name
    sums = {n: [0.0, 0, True] for n in wanted}
    for k, (x, _) in enumerate(loader(task, task.train_data(), shuffle=False)):
        if k >= batches:
            break
        values = session.run(wanted, {input_name: x.numpy()})
        for name, v in zip(wanted, values):
            sums[name][0] += float(np.abs(v).sum())
            sums[name][1] += v.size
            sums[name][2] &= bool((v >= 0).all())
    out = {}
    for layer in graph.layers:
        if layer.name in bits_by_layer:
            total, count, nonneg = sums[layer.input]
            signed = not nonneg
            bits = bits_by_layer[layer.name]
            qp = 2 ** (bits - 1) - 1 if signed else 2 ** bits - 1
            out[layer.name] = (max(2 * total / max(count, 1) / math.sqrt(max(qp, 1)), 1e-8), signed)
    return out


def save_onnx_for_planning(task, model: nn.Module, path: str | Path) -> Path:
    """The float ONNX export that plans for this task are made on (names kept)."""
    return export_onnx(model, example_inputs(task), path)


__all__ = ["apply_plan", "bits_of", "export_qdq", "save_onnx_for_planning", "task_graph", "train", "uniform_bits"]


def finetune_job(task_ref: str, checkpoint: str, bits_by_module: dict[str, int], epochs: float, lr: float,
                 seed: int, distill: float) -> dict:
    """Fine-tune the checkpoint at ``bits_by_module`` (distilling from the checkpoint itself when
    ``distill`` > 0) and score it: {"test": task.evaluate, "val_loss": validation loss}. Single-threaded
    and seeded, so any executor gives the same numbers."""
    from .quant.checkpoint import load_checkpoint
    from .quant.train import score
    from .tasks import load_task

    torch.set_num_threads(1)
    task = load_task(task_ref)
    base = load_checkpoint(checkpoint, task)
    model = apply_bits(base, bits_by_module)
    fit(model, task, epochs=epochs, lr=lr, seed=seed, teacher=base if distill > 0 else None, distill=distill)
    return {"test": task.evaluate(model), "val_loss": -score(model, task, task.eval_data(), "loss")}
