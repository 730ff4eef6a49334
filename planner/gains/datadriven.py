"""Shared pieces of the data-driven gain methods (ALPS, Hessian, sensitivity): the modules and
bits of a group, the gains of pinned and unmeasured groups, and the resumable runner of the
measure-per-group methods."""
from __future__ import annotations

import hashlib
import json

from planner.errors import MpqError
from planner.graph import LayerGraph


def group_modules(graph: LayerGraph, mapping: dict[str, str], group) -> list[str]:
    """Module paths of a group's layers (Conv2d / Linear / MatMul modules; a layer without a module,
    e.g. a bare ``torch.matmul``, contributes none)."""
    return sorted({mapping[n] for n in group.layers if n in mapping})


def group_bits(graph: LayerGraph, mapping: dict[str, str], base_bits: dict[str, int], group) -> int | None:
    """The precision a checkpoint runs a group at (None: the group's layers are not quantized)."""
    bits = {base_bits.get(m) for m in group_modules(graph, mapping, group)}
    if len(bits) > 1:
        raise MpqError(f"the checkpoint runs the layers of group {group.id} ({group.layers[0]}) at different bits "
                       f"{sorted(map(str, bits))}; a group shares one precision")
    return bits.pop() if bits else None


def lower(precisions: list[int], bits: int) -> int | None:
    """The next precision of ``precisions`` below ``bits``; None when ``bits`` is the lowest or below."""
    below = [b for b in sorted(precisions) if b < bits]
    return below[-1] if below else None


def config_key(**config) -> str:
    """A short hash of everything a result depends on (checkpoint keys stay valid only for it)."""
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:16]


def group_gains(graph: LayerGraph, precisions: list[int], measured: dict[int, dict[int, float]]) -> list[dict[int, float]]:
    """``by_group`` for a Gains: a pinned group gets ``{pin: 0.0}``, a measured one its
    ``measured[id]``, and a free group that could not be measured (nothing to lower) gain 0 at
    every precision."""
    by_group = []
    for group in graph.groups:
        if group.pinned_bits is not None:
            by_group.append({group.pinned_bits: 0.0})
        elif group.id in measured:
            by_group.append(measured[group.id])
        else:
            by_group.append(dict.fromkeys(sorted(precisions), 0.0))
    return by_group


def measure(job, jobs: dict[str, dict], *, resume=None, progress=None, executor: str = "local", workers: int = 1,
            ray_address: str | None = None) -> dict[str, float]:
    """Run ``job(**jobs[key])`` for every key and return ``{key: value}``.

    Keys found in ``resume`` (a :class:`planner.jobs.store.JobStore`, or None for no store) are not
    run again; every finished job is stored there at once, so an interrupted run resumes.
    ``progress(key, value)`` is called for each job, stored ones included."""
    from planner.jobs.executors import run_jobs

    results: dict[str, float] = {}
    for key in jobs:
        if resume is not None and key in resume:
            results[key] = resume.get(key)
            if progress:
                progress(key, results[key])

    def finished(key: str, value: float) -> None:
        if resume is not None:
            resume.put(key, value)
        results[key] = value
        if progress:
            progress(key, value)

    run_jobs(job, {k: v for k, v in jobs.items() if k not in results}, finished, executor=executor, workers=workers,
             ray_address=ray_address)
    return results
