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


def calibrate(task, model: nn.Module, *, batches: int = 4) -> nn.Module:
    """Set the LSQ steps of a quantized ``model`` (e.g. from :func:`apply_plan`) in place from the
    first ``batches`` batches of the task's training data, the inputs an export without a
    checkpoint calibrates on (see :func:`planner.quant.lsq.calibrate`). Returns ``model``."""
    from .quant.lsq import calibrate as calibrate_steps

    return calibrate_steps(model, [torch.from_numpy(arrays[0]) if len(arrays) == 1 else tuple(map(torch.from_numpy, arrays))
                                   for arrays in task_feeds(task, batches)])


def export_qdq(plan, onnx_path: str | Path, *, task=None, model: nn.Module | None = None, feeds=None,
               per_channel: bool = True, max_opset: int = 25, force: bool = False):
    """The standard QDQ export (:class:`planner.qdq.QdqExport`) of a plan.

    Without a torch ``model`` it is built on ``onnx_path``: weight steps from its weights,
    activation steps calibrated on ``feeds`` (a list of tuples of input arrays; default, where
    some layer needs calibration: the task's first training batches), or activations left float
    without either. With a task's
    ``model`` (a checkpoint) it is built on a fresh export of that model, so every parameter
    (batch norms included) and every learned step is the checkpoint's; ``onnx_path`` must then
    have the same layers. Batch norms and per-channel Mul / Add after convs are folded into the
    weights first (:mod:`planner.bnfold`); learned levels stay and the fold goes into per-channel
    scales. The plan must record ``onnx_path``'s sha256 unless ``force``."""
    import onnx

    from .bnfold import fold_affine
    from .graph import load_graph
    from .qdq import calibrate, qdq_model
    from .quant.lsq import learned_steps

    reference = load_graph(onnx_path, pin_first=None, pin_last=None)
    plan.check_model(reference, force)
    w_bits = plan.bits_by_layer
    a_bits = {l["name"]: l["a_bits"] for l in plan.doc["layers"]}
    with tempfile.TemporaryDirectory() as folder:
        steps: dict[str, dict] = {}
        if model is None:
            source = onnx.load(onnx_path)
        else:
            graph, mapping = task_graph(task, model, pin_first=None, pin_last=None, path=Path(folder) / "model.onnx")
            if [(l.name, l.weight) for l in graph.layers] != [(l.name, l.weight) for l in reference.layers]:
                raise MpqError(f"{onnx_path} and the checkpoint's model have different layers; plan on the ONNX that "
                               "mpq train wrote next to the checkpoint")
            learned = learned_steps(model)
            steps = {layer: learned[path] for layer, path in mapping.items() if path in learned}
            source = onnx.load(graph.model.path)
        folded, folds = fold_affine(source)
        onnx.save(folded, Path(folder) / "folded.onnx")
        graph = load_graph(Path(folder) / "folded.onnx", pin_first=None, pin_last=None)
        uncovered = {n: b for n, b in a_bits.items() if not (steps.get(n, {}).get("bits") == b == w_bits[n])}
        if uncovered and feeds is None and task is not None:
            feeds = list(task_feeds(task))
        activation_steps = calibrate(graph, uncovered, feeds) if uncovered and feeds else None
        result = qdq_model(graph, w_bits, activation_bits=a_bits, steps=steps, activation_steps=activation_steps,
                           folds=folds if model is not None else None, per_channel=per_channel, max_opset=max_opset)
        result.float_model = folded
    if folds:
        result.notes.append(f"{len(folds)} batch norms / per-channel affine ops folded into the weights before quantizing")
        if model is not None and not per_channel:
            result.notes.append("learned per-tensor steps times the folded factors give per-channel weight scales")
    return result


def export_ort_overrides(plan, onnx_path: str | Path, *, feeds=None, quantized_path: str | Path | None = None,
                         per_channel: bool = True, force: bool = False):
    """The plan as onnxruntime TensorQuantOverrides: (overrides, notes, quantized model or None).

    With ``quantized_path`` and ``feeds`` (tuples of input arrays), mpq also runs ``quantize_static``
    with the overrides on the model with its batch norms folded (:mod:`planner.bnfold`) and writes
    the quantized model there."""
    import onnx

    from .atomic import atomic_path
    from .bnfold import fold_affine
    from .graph import load_graph
    from .ortoverrides import ort_overrides, quantize_with_overrides

    graph = load_graph(onnx_path, pin_first=None, pin_last=None)
    plan.check_model(graph, force)
    overrides, notes = ort_overrides(graph, plan.bits_by_layer, {l["name"]: l["a_bits"] for l in plan.doc["layers"]})
    if quantized_path is None:
        return overrides, notes, None
    if not feeds:
        raise MpqError("quantize_static needs calibration inputs: give --task or --inputs FOLDER")
    with tempfile.TemporaryDirectory() as folder:
        folded, folds = fold_affine(onnx.load(onnx_path))
        onnx.save(folded, Path(folder) / "folded.onnx")
        with atomic_path(quantized_path) as tmp:
            model = quantize_with_overrides(Path(folder) / "folded.onnx", tmp, overrides, feeds, per_channel)
    if folds:
        notes.append(f"{len(folds)} batch norms / per-channel affine ops folded into the weights before quantize_static")
    return overrides, notes, model


def task_feeds(task, batches: int = 4, split: str = "train"):
    """The first ``batches`` batches of the task's ``split`` ("train": calibration, "eval": the
    validation data fidelity is measured on), unshuffled, each a tuple of the model's input arrays."""
    from .quant.train import loader

    data = task.train_data() if split == "train" else task.eval_data()
    for k, (x, _) in enumerate(loader(task, data, shuffle=False)):
        if k >= batches:
            break
        yield (x.numpy(),)


def folder_feeds(folder: str | Path) -> list:
    """Calibration inputs from a folder, in sorted file order: each ``.npy`` file one batch of a
    single-input model's input, each ``.npz`` one batch of several inputs keyed by input name.
    Raises MpqError when the folder has neither."""
    import numpy as np

    folder = Path(folder)
    files = sorted(p for p in folder.glob("*") if p.suffix in (".npy", ".npz")) if folder.is_dir() else []
    if not files:
        raise MpqError(f"{folder}: no .npy or .npz input batches found; save batches of the model's input with numpy.save")
    feeds = []
    for f in files:
        try:
            data = np.load(f)
        except (OSError, ValueError) as e:
            raise MpqError(f"{f}: not a readable numpy file ({e})") from None
        feeds.append(dict(data) if f.suffix == ".npz" else (data,))
    return feeds


def save_onnx_for_planning(task, model: nn.Module, path: str | Path) -> Path:
    """The float ONNX export that plans for this task are made on (names kept)."""
    return export_onnx(model, example_inputs(task), path)


__all__ = ["apply_plan", "bits_of", "calibrate", "export_qdq", "save_onnx_for_planning", "task_graph", "train", "uniform_bits"]


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
