"""Every gain method by name, data-free and data-driven, behind one signature.

``estimate(name, source, precisions, **options) -> Gains``. ``source`` is a :class:`Source`: the
layer graph alone for the data-free methods (EAGL, the baselines), plus the task, its checkpoint,
the network loaded from it and the layer -> module map for the data-driven ones (ALPS,
sensitivity, Hessian); EAGL on a source with a network reads the steps it learned. Options a
method does not take are ignored, so a caller can pass one set of options to any method; a path
instead of a name reads a gains file.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from planner.errors import MpqError
from planner.gains import Gains


@dataclass
class Source:
    """What gains are estimated on: ``graph`` (a LayerGraph) and, for data-driven methods,
    ``task`` (a task object), ``checkpoint`` (its path), ``model`` (the torch network loaded from
    it) and ``mapping`` (ONNX layer name -> module path)."""

    graph: object
    task: object | None = None
    checkpoint: str | None = None
    model: object | None = None
    mapping: dict[str, str] | None = None


@dataclass(frozen=True)
class Method:
    """A gain method: ``run(source, precisions, **options) -> Gains``; ``options`` are the keyword
    options it takes with their defaults; ``needs_task``: it needs a task and a checkpoint."""

    name: str
    summary: str
    run: Callable
    options: dict = field(default_factory=dict)
    needs_task: bool = False


def _eagl(source: Source, precisions, **options) -> Gains:
    from planner.gains.eagl import eagl

    return eagl(source.graph, precisions, learned_steps=_learned_weight_steps(source), **options)


def _learned_weight_steps(source: Source) -> dict[str, dict[int, float]] | None:
    """Layer -> {bits: weight step} learned by the source's network (None without a network)."""
    if source.model is None:
        return None
    from planner.quant.lsq import learned_steps

    steps = learned_steps(source.model)
    return {layer: {steps[path]["bits"]: steps[path]["weight_step"]} for layer, path in source.mapping.items()
            if "weight_step" in steps.get(path, {})}


def _baseline(name: str) -> Callable:
    def run(source: Source, precisions, **options) -> Gains:
        from planner.gains import baselines

        if name == "qerror" and options.get("step") == "auto":
            options["step"] = "lsq"  # qerror has no model steps to prefer: auto is LSQ's initialisation
        return baselines.METHODS[name](source.graph, precisions, **options)
    return run


def _alps(source: Source, precisions, **options) -> Gains:
    from planner.gains.alps import alps

    return alps(source.task, source.checkpoint, source.graph, source.mapping, precisions, **options)


def _sensitivity(source: Source, precisions, **options) -> Gains:
    from planner.gains.sensitivity import sensitivity_gains

    return sensitivity_gains(source.task, source.checkpoint, source.graph, source.mapping, precisions, **options)


def _hessian(source: Source, precisions, **options) -> Gains:
    from planner.gains.hessian import hessian_gains
    from planner.quant.lsq import learned_steps
    from planner.quant.torchmap import float_copy

    return hessian_gains(source.task, float_copy(source.model), source.graph, source.mapping, precisions,
                         learned=learned_steps(source.model), **options)


_JOBS = {"executor": "local", "workers": 1, "ray_address": None, "resume": None, "progress": None}

#: Every method by name.
METHODS: dict[str, Method] = {m.name: m for m in [
    Method("eagl", "entropy of each layer's quantized weights (data-free, seconds)", _eagl,
           {"step": "auto", "mode": "entropy", "weighting": "none"}),
    Method("uniform", "baseline: every group gains the same per step up", _baseline("uniform")),
    Method("random", "baseline: seeded random gains", _baseline("random"), {"seed": 0}),
    Method("params", "baseline: gain = weight count per step up", _baseline("params")),
    Method("qerror", "baseline: drop in weight quantization error ||W - Q(W)||^2", _baseline("qerror"),
           {"step": "auto"}),
    Method("alps", "drop each group one step, fine-tune, measure the score lost", _alps,
           {"epochs": 1.0, "lr": None, "metric": "loss", "seeds": 3, **_JOBS}, needs_task=True),
    Method("sensitivity", "AIMET-style: lower each group alone without fine-tuning and score it", _sensitivity,
           {"metric": "loss", **_JOBS}, needs_task=True),
    Method("hessian", "HAWQ: Hutchinson Hessian trace x weight quantization error", _hessian,
           {"samples": 16, "batches": 2, "seed": 0}, needs_task=True),
]}


def estimate(name: str, source: Source, precisions: list[int], *, force: bool = False, **options) -> Gains:
    """Gains of method ``name`` (see :data:`METHODS`) on ``source`` at ``precisions``, or the gains
    file at path ``name`` (``force``: accept one made for another model).

    Options the method does not take are ignored. Raises MpqError for an unknown name, or a
    data-driven method on a source without a task."""
    method = METHODS.get(name)
    if method is None:
        if name.endswith(".json") or Path(name).is_file():
            from planner.gains import read_gains

            return read_gains(name, source.graph, force)
        raise MpqError(f"unknown gains '{name}'; use one of {', '.join(sorted(METHODS))} or a gains JSON file "
                       "(mpq gains alps|hessian|sensitivity --task ... -o gains.json)")
    if method.needs_task and (source.task is None or source.model is None):
        raise MpqError(f"gains '{name}' are measured on a task: give --task and --checkpoint "
                       f"(mpq gains {name} --task ... --checkpoint ... -o gains.json)")
    return method.run(source, list(precisions), **{k: options.get(k, v) for k, v in method.options.items()})


def task_source(task_ref: str, checkpoint: str, *, spec=None, no_pin: bool = False,
                pin_bits: int | None = None) -> Source:
    """The source of data-driven gains: the task by reference, the network at ``checkpoint``, its
    layer graph (pins by :func:`planner.costs.setup.pins_for`) and layer -> module map."""
    from planner.costs.setup import pins_for
    from planner.quant import network
    from planner.quant.checkpoint import load_checkpoint
    from planner.tasks import load_task

    task = load_task(task_ref)
    model = load_checkpoint(checkpoint, task)
    pin_first, pin_last = pins_for(spec, no_pin=no_pin, pin_bits=pin_bits)
    graph, mapping = network.task_graph(task, model, pin_first=pin_first, pin_last=pin_last)
    return Source(graph=graph, task=task, checkpoint=checkpoint, model=model, mapping=mapping)
