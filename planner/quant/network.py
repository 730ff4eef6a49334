"""A task's torch network as library calls: map it to its layer graph, train it (float or LSQ at
uniform bits), apply a plan's bits, fine-tune and score a plan (one job), export the float ONNX
that plans are made on. The CLI and the benchmarks call these."""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from planner.graph import LayerGraph
from planner.quant.lsq import apply_bits
from planner.quant.train import fit
from planner.quant.torchmap import bits_by_module, export_onnx, from_torch


def example_inputs(task) -> tuple:
    """A tuple of example inputs of the task's model: ``task.example_inputs()``, else the first
    training sample with a batch dimension of 1."""
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


def finetune(task, model: nn.Module, plan, *, epochs: float | None = None, lr: float | None = None, seed: int = 0,
             teacher: nn.Module | None = None, distill: float = 0.0, progress=None,
             resume: str | Path | None = None) -> nn.Module:
    """A copy of ``model`` at the plan's bits, fine-tuned with LSQ for ``epochs`` at ``lr`` (default:
    the task's ``finetune_epochs`` and ``finetune_lr``, else 5 and 0.01), distilling from
    ``teacher`` with weight ``distill`` when it is above 0. ``resume``: a file keeping finished
    epochs, so a rerun resumes; ``progress(step, total)`` follows the steps."""
    tuned = apply_plan(task, model, plan)
    fit(tuned, task, epochs=epochs if epochs is not None else getattr(task, "finetune_epochs", 5),
        lr=lr if lr is not None else getattr(task, "finetune_lr", 0.01), seed=seed,
        teacher=teacher if distill > 0 else None, distill=distill, progress=progress, resume=resume)
    return tuned


def evaluate(task, model: nn.Module) -> dict:
    """Scores of ``model`` and the precision it runs at: ``test_score`` (task.evaluate on the test
    split), ``validation_loss``, ``bits`` (module path -> bits of every quantized module),
    ``layer_bits`` (ONNX layer -> bits, None in float) and ``group_bits`` (per precision group of
    the model's graph: its bits, None in float)."""
    from planner.quant.lsq import bits_of
    from planner.quant.train import score

    bits = bits_of(model)
    graph, mapping = task_graph(task, model)
    layer_bits = {layer.name: bits.get(mapping.get(layer.name)) for layer in graph.layers}
    group_bits = [layer_bits[group.layers[0]] for group in graph.groups]
    return {"test_score": task.evaluate(model), "validation_loss": -score(model, task, task.eval_data(), "loss"),
            "bits": bits, "layer_bits": layer_bits, "group_bits": group_bits}


def calibrate(task, model: nn.Module, *, batches: int = 4) -> nn.Module:
    """Set the LSQ steps of a quantized ``model`` (e.g. from :func:`apply_plan`) in place from the
    first ``batches`` batches of the task's training data, the inputs an export without a
    checkpoint calibrates on (see :func:`planner.quant.lsq.calibrate`). Returns ``model``."""
    from planner.export.handoff import task_feeds
    from planner.quant.lsq import calibrate as calibrate_steps

    return calibrate_steps(model, [torch.from_numpy(arrays[0]) if len(arrays) == 1 else tuple(map(torch.from_numpy, arrays))
                                   for arrays in task_feeds(task, batches)])


def save_onnx_for_planning(task, model: nn.Module, path: str | Path) -> Path:
    """The float ONNX export that plans for this task are made on (names kept)."""
    return export_onnx(model, example_inputs(task), path)


def finetune_job(task_ref: str, checkpoint: str, bits_by_module: dict[str, int], epochs: float, lr: float,
                 seed: int, distill: float) -> dict:
    """Fine-tune the checkpoint at ``bits_by_module`` (distilling from the checkpoint itself when
    ``distill`` > 0) and score it: {"test": task.evaluate, "val_loss": validation loss}. Single-threaded
    and seeded, so any executor gives the same numbers."""
    from planner.quant.train import score

    task, _, model = tuned_from_checkpoint(task_ref, checkpoint, bits_by_module, epochs=epochs, lr=lr, seed=seed,
                                           distill=distill)
    return {"test": task.evaluate(model), "val_loss": -score(model, task, task.eval_data(), "loss")}


def tuned_from_checkpoint(task_ref: str, checkpoint: str, bits_by_module: dict[str, int], *, epochs: float,
                          lr: float, seed: int, distill: float = 0.0) -> tuple:
    """The body of one fine-tuning job, single-threaded (one job per core): (task, base, model),
    where ``task`` is loaded from ``task_ref``, ``base`` is the network at ``checkpoint`` and
    ``model`` a copy of it at ``bits_by_module`` fine-tuned ``epochs`` at ``lr`` with ``seed``
    (distilling from ``base`` with weight ``distill`` when it is above 0). Raises MpqError for a
    task or checkpoint that cannot be loaded."""
    from planner.quant.checkpoint import load_checkpoint
    from planner.tasks import load_task

    torch.set_num_threads(1)
    task = load_task(task_ref)
    base = load_checkpoint(checkpoint, task)
    model = apply_bits(base, bits_by_module)
    fit(model, task, epochs=epochs, lr=lr, seed=seed, teacher=base if distill > 0 else None, distill=distill)
    return task, base, model
