"""EAGL: Entropy Approximation Guided Layer selection (Bablani et al., arXiv 2301.13330).

For each layer, quantize its weights to the signed b-bit grid, take the empirical distribution
over the 2^b levels and its entropy H_b in bits: the bit width the layer's weights actually use
at b bits. No data, no training: one pass for mean |w| and one for the level counts.

The step of the grid:
- ``step="auto"`` (default): the step the model carries (a QDQ DequantizeLinear scale, or the
  learned LSQ steps passed in ``steps``), else LSQ's initialisation 2*mean(|w|)/sqrt(Q_P);
- ``"lsq"``: always LSQ's initialisation; ``"mse"``: the step minimising ||w - Q_b(w)||^2.
At a precision other than the one a model's step was learned at, the step is rescaled by the
ratio of LSQ's initial steps, sqrt(Q_P(model bits) / Q_P(b)).

Group gains (options that change them):
- ``mode="entropy"`` (the paper): gain(b) = sum over the group's layers of H_b for every b above
  the group's lowest precision, 0 at the lowest. With two precisions this is the paper's rule:
  the value of keeping the high precision is its entropy. With three, moving 4 -> 8 is worth
  H_8 - H_4.
- ``mode="difference"``: gain(b) = sum of H_b - H_low: the information the lowest precision
  loses, so a layer whose 4-bit weights carry little more than 2 bits is worth little.
- ``weighting="params"``: each layer's entropy is multiplied by its weight count (large
  layers matter more); ``"none"`` (default) as in the paper.
Layers without weights (activation x activation MatMuls) get the median of the weighted
layers' values at each precision; ``extra["estimated_layers"]`` lists them.
"""
from __future__ import annotations

import threading

import numpy as np

from planner.errors import MpqError
from planner.graph import LayerGraph
from planner.graph.weights import layer_weights, require_finite
from planner.gains import Gains, grid
from planner.gains.datadriven import group_gains

STEP_CHOICES = ("auto", "lsq", "mse")
MODES = ("entropy", "difference")
WEIGHTINGS = ("none", "params")
READ_WHOLE_BYTES = 16 << 20  # a streamed weight up to this size is read once into a buffer reused per thread, larger ones twice in chunks


def layer_entropies(values: np.ndarray, bits: list[int], *, step: str = "auto", model_step=None,
                    model_bits: int | None = None, learned: dict[int, float] | None = None,
                    check=None) -> dict[int, float]:
    """Entropy (bits) of one weight tensor's levels at every precision in ``bits``. ``check``:
    called with the largest |w| of float weights before they are counted (it raises on NaN or
    infinite weights, see :func:`planner.graph.weights.require_finite`)."""
    mean = peak = None
    if step == "lsq" or (step == "auto" and not learned and model_step is None):  # LSQ's initial step
        mean, peak = grid.abs_stats(values)  # one pass; the peak spares the levels' clipping where it can
    if check is not None and model_step is None:
        check(grid.abs_stats(values)[1] if peak is None else peak)  # a second pass only for learned or mse steps
    steps = grid_steps(values, bits, step=step, model_step=model_step, model_bits=model_bits, learned=learned,
                       mean=mean)
    return {b: grid.entropy(c) for b, c in grid.level_counts(values, steps, peak=peak).items()}


def grid_steps(values: np.ndarray, bits: list[int], *, step: str = "auto", model_step=None,
               model_bits: int | None = None, learned: dict[int, float] | None = None,
               mean: float | None = None) -> dict[int, float]:
    """The quantization step at every precision, by the rules in the module docstring.

    For QDQ weights ``values`` are integer levels and ``model_step`` is 1 in their units.
    ``mean``: mean |w| (grid.mean_abs) where already computed.
    """
    if step not in STEP_CHOICES:
        raise MpqError(f"unknown EAGL step '{step}'; choose from {', '.join(STEP_CHOICES)}")
    steps: dict[int, float] = {}
    for b in bits:
        if step == "auto" and learned and b in learned:
            steps[b] = learned[b]
        elif step == "auto" and learned:
            ref_bits = min(learned, key=lambda r: abs(r - b))
            steps[b] = learned[ref_bits] * _ratio(ref_bits, b)
        elif step == "auto" and model_step is not None:
            steps[b] = model_step * _ratio(model_bits, b)
        elif step == "mse":
            steps[b] = grid.mse_step(values, b)
        else:
            mean = grid.mean_abs(values) if mean is None else mean
            steps[b] = grid.lsq_step(mean, b) or 1.0
    return steps


def _ratio(from_bits: int, to_bits: int) -> float:
    """LSQ initial step at ``to_bits`` over the one at ``from_bits``."""
    return float(np.sqrt(max(grid.qrange(from_bits)[1], 1) / max(grid.qrange(to_bits)[1], 1)))


def eagl(graph: LayerGraph, precisions: list[int], *, step: str = "auto", mode: str = "entropy",
         weighting: str = "none", learned_steps: dict[str, dict[int, float]] | None = None,
         workers: int | None = None) -> Gains:
    """EAGL gains for every group of ``graph`` at ``precisions``.

    ``learned_steps[layer][bits]`` are steps learned by quantization-aware training (e.g. an LSQ
    checkpoint); they win over the LSQ initialisation under ``step="auto"``. ``workers``: threads
    that share the layers (default: one per CPU for models of more than 4M weights, else one);
    results do not depend on it. Precisions are 1 to 16 bits (MpqError otherwise).
    """
    if mode not in MODES:
        raise MpqError(f"unknown EAGL mode '{mode}'; choose from {', '.join(MODES)}")
    if weighting not in WEIGHTINGS:
        raise MpqError(f"unknown EAGL weighting '{weighting}'; choose from {', '.join(WEIGHTINGS)}")
    bits = sorted(set(precisions))
    if bits and not 1 <= bits[0] <= bits[-1] <= 16:
        raise MpqError(f"EAGL counts levels of 1- to 16-bit grids; got precisions {bits}")
    needed = bits if mode == "difference" else bits[1:] or bits  # the lowest precision's entropy is unused
    jobs = [(layer.name, needed, step, (learned_steps or {}).get(layer.name)) for layer in graph.layers
            if layer.weight is not None]
    results = _map_layers(graph, jobs, workers)
    entropies = {name: h for name, (h, _) in zip((j[0] for j in jobs), results) if h is not None}
    used_steps = {name: how for name, (_, how) in zip((j[0] for j in jobs), results) if how is not None}
    value = _layer_values(graph, entropies, bits, mode, weighting)
    by_group = group_gains(graph, bits, {group.id: {b: float(sum(value[n][b] for n in group.layers)) for b in bits}
                                         for group in graph.free_groups})
    estimated = [l.name for l in graph.layers if l.name not in entropies]
    extra = {"entropy_bits": {n: {str(b): round(h, 6) for b, h in e.items()} for n, e in entropies.items()},
             "steps": used_steps}
    if estimated:
        extra["estimated_layers"] = estimated
    return Gains(method="eagl", params={"step": step, "mode": mode, "weighting": weighting}, by_group=by_group,
                 extra=extra)


def layer_entropy_job(graph: LayerGraph, name: str, needed: list[int], step: str, learned: dict[int, float] | None,
                      buffers: threading.local) -> tuple[dict[int, float] | None, str | None]:
    """Entropies of one layer's weights and how its step was chosen. ``buffers``: per-thread
    read buffers shared by the jobs of one EAGL run (see :func:`_buffer`)."""
    layer = graph.layer(name)
    view = layer_weights(graph, layer, stream=step != "mse")  # read once, front to back
    if view is None:
        return None, None
    if view.scale is not None and step == "auto" and not learned:
        values = view.values if not np.ndim(view.scale) else view.values.astype(np.float32)
        return (layer_entropies(values, needed, step=step, model_step=np.asarray(1.0), model_bits=view.model_bits),
                f"model scale ({view.model_bits}-bit grid)")
    values = view.values if view.scale is None else view.values * view.scale
    if hasattr(values, "chunks") and values.size * values.dtype.itemsize <= READ_WHOLE_BYTES:
        values = values.read_into(_buffer(buffers, values.size, values.dtype))  # read once for both passes
    how = "learned" if learned and step == "auto" else ("mse" if step == "mse" else "lsq init")
    return layer_entropies(values, needed, step=step, learned=learned,
                           check=lambda peak: require_finite(graph, layer, peak)), how


def _buffer(buffers: threading.local, size: int, dtype) -> np.ndarray:
    """A flat array of at least ``size`` items of ``dtype``, kept in ``buffers`` for the calling
    thread and reused from one tensor to the next (at most READ_WHOLE_BYTES per thread, freed
    with ``buffers``): reading into memory already touched costs a copy, reading into fresh
    memory a page fault per 4 KB as well."""
    buffer = getattr(buffers, "buffer", None)
    if buffer is None or buffer.dtype != dtype or buffer.size < size:
        buffer = buffers.buffer = np.empty(size, dtype)
    return buffer


def _map_layers(graph: LayerGraph, jobs: list[tuple], workers: int | None) -> list:
    """``layer_entropy_job`` over ``jobs``, results in the order of ``jobs``, on ``workers``
    threads (numpy releases the GIL in the loops that count levels). Default: for models of more
    than 4M weights one per CPU that is not hashing the model file (``mpq plan`` hashes it on a
    background thread meanwhile: a third busy thread on two CPUs made the plan about 5% slower),
    else one. The threads take the largest layers first, so that no large layer is left to one
    thread at the end."""
    import os
    from concurrent.futures import ThreadPoolExecutor

    if workers is None:
        total = sum(graph.layer(j[0]).params for j in jobs)
        idle = (os.cpu_count() or 1) - (1 if graph.model.hashing() else 0)
        workers = max(1, idle) if total > 4_000_000 else 1
    buffers = threading.local()
    if workers <= 1 or len(jobs) < 2:
        return [layer_entropy_job(graph, *job, buffers) for job in jobs]
    largest_first = sorted(range(len(jobs)), key=lambda k: -graph.layer(jobs[k][0]).params)
    with ThreadPoolExecutor(min(workers, len(jobs))) as pool:
        futures = {k: pool.submit(layer_entropy_job, graph, *jobs[k], buffers) for k in largest_first}
        return [futures[k].result() for k in range(len(jobs))]


def _layer_values(graph: LayerGraph, entropies, bits: list[int], mode: str, weighting: str) -> dict[str, dict[int, float]]:
    """Per-layer gain at every precision (0 at the lowest), weightless layers at the median."""
    low = bits[0]
    values: dict[str, dict[int, float]] = {}
    for name, h in entropies.items():
        scale = graph.layer(name).params if weighting == "params" else 1.0
        values[name] = {b: 0.0 if b == low else scale * (h[b] - (h[low] if mode == "difference" else 0.0)) for b in bits}
        if len(bits) == 1:
            values[name] = {low: 0.0}
    median = {b: float(np.median([v[b] for v in values.values()])) if values else 0.0 for b in bits}
    for layer in graph.layers:
        values.setdefault(layer.name, dict(median))
    return values
