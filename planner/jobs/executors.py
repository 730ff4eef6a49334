"""Executors: run independent jobs (ALPS groups, fine-tunes) and hand each result back as it
finishes, so the caller can checkpoint it at once.

``local``: in this process, one after another. ``processes``: a pool of worker processes
(spawned, so each starts clean). Every job sets its own seeds and thread count, so results do
not depend on the executor or on the order jobs finish in.
"""
from __future__ import annotations

import concurrent.futures as cf
import multiprocessing
from collections.abc import Callable

from planner.errors import MpqError

EXECUTORS = ("local", "processes", "ray")


def run_jobs(fn: Callable, jobs: dict[str, dict], on_result: Callable[[str, object], None], *,
             executor: str = "local", workers: int = 1, ray_address: str | None = None) -> None:
    """Call ``fn(**jobs[key])`` for every key and ``on_result(key, value)`` as each finishes.
    ``fn`` must be importable by name (a module-level function) for the process and Ray executors."""
    if not jobs:
        return
    if executor == "local" or (executor == "processes" and workers <= 1):
        for key, kwargs in jobs.items():
            on_result(key, fn(**kwargs))
    elif executor == "processes":
        context = multiprocessing.get_context("spawn")
        with cf.ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
            futures = {pool.submit(fn, **kwargs): key for key, kwargs in jobs.items()}
            try:
                for future in cf.as_completed(futures):
                    on_result(futures[future], future.result())
            except BaseException:
                for future in futures:
                    future.cancel()
                raise
    elif executor == "ray":
        from planner.jobs.ray_executor import run_ray

        run_ray(fn, jobs, on_result, workers=workers, address=ray_address)
    else:
        raise MpqError(f"unknown executor '{executor}'; use one of {', '.join(EXECUTORS)}")
