"""Data-free baselines to compare gain estimators against.

- ``uniform``: every group gains the same for each step up in precision (gain(b) = rank of b).
- ``random``: a seeded random gain per step (uniform in [0, 1)), cumulative over steps.
- ``params``: a group's weight count per step up (large layers matter more).
- ``qerror``: the drop in weight quantization error ||W - Q_low(W)||^2 - ||W - Q_b(W)||^2, the
  data-free half of HAWQ's metric; steps as in EAGL (``step="lsq"`` or ``"mse"``). Weightless
  layers get the median of the others.
"""
from __future__ import annotations

import numpy as np

from planner.graph import LayerGraph
from planner.graph.weights import layer_weights, require_finite
from planner.gains import Gains, grid


def _per_group(graph: LayerGraph, bits: list[int], value) -> list[dict[int, float]]:
    out = []
    for group in graph.groups:
        out.append({group.pinned_bits: 0.0} if group.pinned_bits is not None else
                   {b: float(value(group, k)) for k, b in enumerate(bits)})
    return out


def uniform(graph: LayerGraph, precisions: list[int]) -> Gains:
    """Gains where each step up in ``precisions`` is worth 1 in every free group (gain = rank of
    the precision, 0 at the lowest)."""
    bits = sorted(set(precisions))
    return Gains("uniform", {}, _per_group(graph, bits, lambda g, k: k))


def random(graph: LayerGraph, precisions: list[int], *, seed: int = 0) -> Gains:
    """Gains with a random worth, uniform in [0, 1), of each step up per free group, cumulative over
    the steps (0 at the lowest precision); the same ``seed`` gives the same gains."""
    bits = sorted(set(precisions))
    rng = np.random.default_rng(seed)
    steps = rng.random((len(graph.groups), len(bits)))
    steps[:, 0] = 0.0
    cumulative = steps.cumsum(axis=1)
    return Gains("random", {"seed": seed}, _per_group(graph, bits, lambda g, k: cumulative[g.id, k]))


def params(graph: LayerGraph, precisions: list[int]) -> Gains:
    """Gains of a free group = its weight count x the rank of the precision (0 at the lowest)."""
    bits = sorted(set(precisions))
    count = {g.id: sum(graph.layer(n).params for n in g.layers) for g in graph.groups}
    return Gains("params", {}, _per_group(graph, bits, lambda g, k: k * count[g.id]))


def qerror(graph: LayerGraph, precisions: list[int], *, step: str = "lsq") -> Gains:
    """Gains of a free group = the drop in its layers' weight quantization error (sum of squares)
    from the lowest of ``precisions`` to each one, with steps by ``step`` (``lsq`` or ``mse``, see
    :func:`planner.gains.eagl.grid_steps`). Weightless layers get the median drop of the others
    (named in ``extra["estimated_layers"]``). MpqError for a weight with NaN or infinite values."""
    from planner.gains.eagl import grid_steps

    bits = sorted(set(precisions))
    errors: dict[str, dict[int, float]] = {}
    for layer in graph.layers:
        view = layer_weights(graph, layer)
        if view is None:
            continue
        values = view.values if view.scale is None else view.values * view.scale
        mean, peak = grid.abs_stats(values)
        require_finite(graph, layer, peak)
        steps = grid_steps(values, bits, step=step, mean=mean)
        errors[layer.name] = {b: grid.quant_error(values, steps[b], b) for b in bits}
    drop = {n: {b: e[bits[0]] - e[b] for b in bits} for n, e in errors.items()}
    median = {b: float(np.median([d[b] for d in drop.values()])) if drop else 0.0 for b in bits}
    per_layer = {l.name: drop.get(l.name, median) for l in graph.layers}
    return Gains("qerror", {"step": step}, _per_group(graph, bits, lambda g, k: sum(per_layer[n][bits[k]] for n in g.layers)),
                 extra={"estimated_layers": [l.name for l in graph.layers if l.name not in drop]} if len(drop) < len(graph.layers) else {})


METHODS = {"uniform": uniform, "random": random, "params": params, "qerror": qerror}
