"""AIMET-style sensitivity (Qualcomm AIMET AMP, phase 1): lower one group at a time to each
lower precision, without fine-tuning, and score on the validation split; a precision's gain is
how much better the network scores there than at the group's lowest precision.

Each (group, precision) is an independent job: any executor, results checkpointed as they
finish, the same numbers whichever runs them."""
from __future__ import annotations

from pathlib import Path

from ..checkpoint import Checkpoint
from ..executors import run_jobs
from ..graph import LayerGraph
from . import Gains
from .datadriven import config_key, group_bits, group_modules


def sensitivity_job(task_ref: str, checkpoint: str, bits_by_module: dict[str, int], metric: str) -> float:
    """Score of the checkpoint with some modules at other bits (no fine-tuning)."""
    import torch

    from ..quant.checkpoint import load_checkpoint
    from ..quant.lsq import apply_bits
    from ..quant.train import score
    from ..tasks import load_task

    torch.set_num_threads(1)
    torch.manual_seed(0)
    task = load_task(task_ref)
    base = load_checkpoint(checkpoint, task)
    return score(apply_bits(base, bits_by_module), task, task.eval_data(), metric, teacher=base)


def sensitivity_gains(task, checkpoint: str | Path, graph: LayerGraph, mapping: dict[str, str], precisions: list[int],
                      *, metric: str = "loss", executor: str = "local", workers: int = 1,
                      ray_address: str | None = None, resume: Checkpoint | None = None, progress=None) -> Gains:
    from ..quant.checkpoint import file_sha256, read_checkpoint
    from ..torchmap import require_modules
    from ..userfiles import source_sha256

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
    resume = resume or Checkpoint(Path(checkpoint).with_suffix(".sensitivity.jsonl"))
    results = {k: resume.get(k) for k in jobs if k in resume}

    def finished(k: str, value: float) -> None:
        resume.put(k, value)
        results[k] = value
        if progress:
            progress(k, value)

    run_jobs(sensitivity_job, {k: v for k, v in jobs.items() if k not in results}, finished, executor=executor,
             workers=workers, ray_address=ray_address)
    base_score = results[f"{key}:base"]
    by_group, scores = [], {}
    for group in graph.groups:
        if group.pinned_bits is not None:
            by_group.append({group.pinned_bits: 0.0})
            continue
        high, candidates = plan[group.id]
        if not candidates:
            by_group.append(dict.fromkeys(sorted(precisions), 0.0))
            continue
        values = {high: base_score} if high else {}
        values.update({b: results[f"{key}:group:{group.id}:{b}"] for b in candidates})
        low = min(values)
        by_group.append({b: v - values[low] for b, v in sorted(values.items())})
        scores[str(group.id)] = {str(b): v for b, v in values.items()}
    return Gains("sensitivity", {"metric": metric}, by_group, {"base_score": base_score, "scores": scores})
