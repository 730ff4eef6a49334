"""AIMET-style sensitivity (Qualcomm AIMET AMP, phase 1): lower one group at a time to each
lower precision, without fine-tuning, and score on the validation split; a precision's gain is
how much better the network scores there than at the group's lowest precision.

Each (group, precision) is an independent job: any executor, results checkpointed as they
finish, the same numbers whichever runs them."""
from __future__ import annotations

from pathlib import Path

from planner.jobs.store import JobStore
from planner.graph import LayerGraph
from planner.gains import Gains
from planner.gains.datadriven import config_key, group_bits, group_gains, group_modules, measure


def sensitivity_job(task_ref: str, checkpoint: str, bits_by_module: dict[str, int], metric: str) -> float:
    """Score of the checkpoint with some modules at other bits (no fine-tuning)."""
    import torch

    from planner.quant.checkpoint import load_checkpoint
    from planner.quant.lsq import apply_bits
    from planner.quant.train import score
    from planner.tasks import load_task

    torch.set_num_threads(1)
    torch.manual_seed(0)
    task = load_task(task_ref)
    base = load_checkpoint(checkpoint, task)
    return score(apply_bits(base, bits_by_module), task, task.eval_data(), metric, teacher=base)


def sensitivity_gains(task, checkpoint: str | Path, graph: LayerGraph, mapping: dict[str, str], precisions: list[int],
                      *, metric: str = "loss", executor: str = "local", workers: int = 1,
                      ray_address: str | None = None, resume: JobStore | None = None, progress=None) -> Gains:
    """Sensitivity gains of every free group of ``graph`` (the network at ``checkpoint``, layers
    mapped to its modules by ``mapping``): the group alone lowered to each precision below the
    checkpoint's, scored by ``metric`` on the validation split with no fine-tuning; a precision's
    gain is its score minus the lowest precision's.

    Jobs, ``resume`` and ``progress`` as in :func:`planner.gains.alps.alps`. Raises MpqError when
    a planned layer has no torch module."""
    from planner.quant.checkpoint import file_sha256, read_checkpoint
    from planner.quant.torchmap import require_modules
    from planner.userfiles import source_sha256

    require_modules(graph, mapping)  # a layer without a module would get gain 0: refused instead
    checkpoint = str(Path(checkpoint).resolve())
    base_bits = read_checkpoint(checkpoint)["bits"]
    task_ref = getattr(task, "ref", task.name)
    key = config_key(method="sensitivity", task=task_ref, task_source=source_sha256(task_ref),
                     modules={g.id: group_modules(graph, mapping, g) for g in graph.free_groups},
                     checkpoint=file_sha256(checkpoint), metric=metric,
                     precisions=sorted(precisions))
    common = {"task_ref": task_ref, "checkpoint": checkpoint, "metric": metric}
    jobs = {f"{key}:base": {**common, "bits_by_module": {}}}
    plan: dict[int, tuple[int | None, list[int]]] = {}
    for group in graph.free_groups:
        high = group_bits(graph, mapping, base_bits, group)
        candidates = [b for b in sorted(precisions) if high is None or b < high]
        plan[group.id] = (high, candidates)
        for b in candidates:
            jobs[f"{key}:group:{group.id}:{b}"] = {**common,
                                                   "bits_by_module": dict.fromkeys(group_modules(graph, mapping, group), b)}
    results = measure(sensitivity_job, jobs, resume=resume, progress=progress, executor=executor, workers=workers,
                      ray_address=ray_address)
    base_score = results[f"{key}:base"]
    measured, scores = {}, {}
    for group_id, (high, candidates) in plan.items():
        if not candidates:
            continue
        values = {high: base_score} if high else {}
        values.update({b: results[f"{key}:group:{group_id}:{b}"] for b in candidates})
        low = min(values)
        measured[group_id] = {b: v - values[low] for b, v in sorted(values.items())}
        scores[str(group_id)] = {str(b): v for b, v in values.items()}
    by_group = group_gains(graph, precisions, measured)
    return Gains("sensitivity", {"metric": metric}, by_group, {"base_score": base_score, "scores": scores})
