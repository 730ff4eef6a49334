"""ALPS: Accuracy-aware Layer Precision Selection (Bablani et al., arXiv 2301.13330).

From the network trained at the high precision (a quantized checkpoint), for every unpinned
group: lower the group one step (e.g. 4 -> 2 bits), fine-tune ``epochs`` (1, as the paper),
score on the task's held-out validation split; the group's gain of keeping the high precision
is ``base score - score``. Every layer of a free group needs a torch module (attention's
products as ``planner.quant.lsq.MatMul`` modules, lowered like any layer); a model without one
is refused (MpqError) rather than given gain 0. Groups that the checkpoint runs in float or
already at the lowest precision have nothing to lower: gain 0 at every precision, listed in
``extra["unmeasured_groups"]``. The base score is the unchanged network fine-tuned the same way,
over ``seeds`` seeds: their spread is the noise floor, reported next to the gains, below which a
gain says nothing. Each lowered network is fine-tuned and scored over the same seeds (same data
order and initialisation as the base of that seed), and a group's gain is the mean of the paired
differences ``base score(seed) - score(seed)``; their standard deviation over the seeds is the
group's paired spread (``extra["paired_spread"]``, None for one seed), which cancels the noise
that a seed adds to the base and the lowered network alike.

The score (``metric``): ``accuracy`` (the task's validation accuracy), ``loss`` (minus the
validation loss) or ``kl`` (minus the KL divergence of the outputs to the high-precision
network's). Continuous scores separate groups on small tasks where accuracy is below noise.

Every job sets its own seed and runs single-threaded, so results are the same for any executor
and worker count. Finished jobs go to a checkpoint at once; a rerun skips them.
"""
from __future__ import annotations

import statistics
from pathlib import Path

from planner.jobs.store import JobStore
from planner.graph import LayerGraph
from planner.gains import Gains
from planner.gains.datadriven import config_key, group_bits, group_gains, group_modules, lower, measure


def alps_job(task_ref: str, checkpoint: str, bits_by_module: dict[str, int], epochs: float, lr: float, seed: int,
             metric: str) -> float:
    """One ALPS measurement: the checkpoint with some modules at other bits, fine-tuned, scored."""
    from planner.quant.network import tuned_from_checkpoint
    from planner.quant.train import score

    task, base, model = tuned_from_checkpoint(task_ref, checkpoint, bits_by_module, epochs=epochs, lr=lr, seed=seed)
    return score(model, task, task.eval_data(), metric, teacher=base)


def alps(task, checkpoint: str | Path, graph: LayerGraph, mapping: dict[str, str], precisions: list[int], *,
         epochs: float = 1.0, lr: float | None = None, metric: str = "loss", seeds: int = 3,
         executor: str = "local", workers: int = 1, ray_address: str | None = None,
         resume: JobStore | None = None, progress=None) -> Gains:
    """ALPS gains of every free group of ``graph`` (the network at ``checkpoint``, layers mapped to
    its modules by ``mapping``): each group dropped one step below the bits the checkpoint runs it
    at, fine-tuned ``epochs`` (at ``lr``, default the task's fine-tuning rate) and scored by
    ``metric`` on the validation split; the same over ``seeds`` seeds for the base network.

    Returns Gains whose high option is the mean paired difference (base minus lowered, same
    seed); ``extra`` holds the scores, the base's spread (``noise_floor``) and each group's paired
    spread. Jobs run on ``executor`` (local, processes or ray with ``workers``); ``resume`` (a
    JobStore, or None for none) keeps finished jobs so a rerun resumes. ``progress(key, value)``
    is called as each job finishes (also for jobs found in ``resume``). Raises MpqError when a
    planned layer has no torch module."""
    from planner.quant.checkpoint import file_sha256, read_checkpoint
    from planner.quant.torchmap import require_modules
    from planner.userfiles import source_sha256

    require_modules(graph, mapping)
    checkpoint = str(Path(checkpoint).resolve())
    base_bits = read_checkpoint(checkpoint)["bits"]
    lr = lr if lr is not None else getattr(task, "finetune_lr", 0.01)
    task_ref = getattr(task, "ref", task.name)
    key = config_key(method="alps", task=task_ref, task_source=source_sha256(task_ref),
                     modules={g.id: group_modules(graph, mapping, g) for g in graph.free_groups},
                     checkpoint=file_sha256(checkpoint), epochs=epochs, lr=lr,
                     metric=metric, precisions=sorted(precisions))
    jobs: dict[str, dict] = {}
    common = {"task_ref": task_ref, "checkpoint": checkpoint, "epochs": epochs, "lr": lr, "metric": metric}
    for seed in range(seeds):
        jobs[f"{key}:base:{seed}"] = {**common, "bits_by_module": {}, "seed": seed}
    steps: dict[int, tuple[int, int]] = {}
    for group in graph.free_groups:
        high = group_bits(graph, mapping, base_bits, group)
        low = lower(precisions, high) if high else None
        if low is None:  # the checkpoint runs the group in float or at the lowest precision: nothing to lower
            continue
        steps[group.id] = (low, high)
        for seed in range(seeds):
            jobs[f"{key}:group:{group.id}:{seed}"] = {
                **common, "seed": seed, "bits_by_module": dict.fromkeys(group_modules(graph, mapping, group), low)}
    results = measure(alps_job, jobs, resume=resume, progress=progress, executor=executor, workers=workers,
                      ray_address=ray_address)
    base_scores = [results[f"{key}:base:{s}"] for s in range(seeds)]
    base = statistics.fmean(base_scores)
    measured, scores, spread = {}, {}, {}
    for group_id, (low, high) in steps.items():
        scores[str(group_id)] = [results[f"{key}:group:{group_id}:{s}"] for s in range(seeds)]
        differences = [b - g for b, g in zip(base_scores, scores[str(group_id)])]
        spread[str(group_id)] = statistics.stdev(differences) if seeds > 1 else None
        measured[group_id] = {low: 0.0, high: statistics.fmean(differences)}
    by_group = group_gains(graph, precisions, measured)
    extra = {"unmeasured_groups": [g.id for g in graph.free_groups if g.id not in steps],
             "base_scores": base_scores, "base_score": base,
             "noise_floor": statistics.stdev(base_scores) if len(base_scores) > 1 else None,
             "group_scores": scores, "paired_spread": spread, "steps": {str(g): list(s) for g, s in steps.items()}}
    return Gains("alps", {"metric": metric, "epochs": epochs, "lr": lr, "seeds": seeds}, by_group, extra)


def job_count(graph: LayerGraph, seeds: int) -> int:
    """Jobs of an ALPS run: the base and every free group, each over ``seeds`` seeds."""
    return seeds * (1 + len(graph.free_groups))
