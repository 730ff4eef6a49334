"""The accuracy-cost frontier: optimal plans over a sweep of budgets on one metric.

For every gain method and every fraction r in ``fractions`` of the way from the low endpoint to
the high one (cheapest to dearest plan, or two uniform precisions), the exact optimum, its
totals and how far the AIMET-style greedy falls short of it. On a spec that keeps every weight
on chip, every point also meets the chip's capacity. Points already computed are kept
in a checkpoint (JSON lines) so an interrupted sweep resumes.
"""
from __future__ import annotations

import hashlib
import json
import os
import threading
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass

from planner.solve.budget import endpoints
from planner.jobs.store import JobStore
from planner.costs import CostTable
from planner.gains import Gains
from planner.solve.knapsack import greedy, objective, solve


@dataclass
class FrontierPoint:
    """One solved point of a frontier: gain ``method``, budget ``fraction`` (0 = cheapest plan,
    1 = dearest, or between the ``between`` uniform plans) and its absolute ``limit`` of the swept
    metric; the solver's ``objective`` (total gain), ``bound`` and ``status``; the plan's ``totals``
    per metric and ``bits`` per group; the greedy reference's total gain (None when greedy finds
    no plan) and the solve's wall time in seconds."""

    method: str
    fraction: float
    limit: float
    objective: float
    bound: float
    status: str
    totals: dict[str, float]
    bits: list[int]
    greedy_objective: float | None
    solve_time_s: float

    def to_json(self) -> dict:
        """The point as a plain dict of its fields (JSON data; :class:`FrontierPoint` ``(**d)`` reads it back)."""
        return self.__dict__.copy()


def sweep(table: CostTable, gains_list: list[Gains], metric: str, fractions: list[float], *,
          between: tuple[int, int] | None = None, checkpoint: JobStore | None = None, key_prefix: str = "",
          progress=None, time_limit_s: float = 60.0, workers: int | None = None) -> list[FrontierPoint]:
    """Solve every (gain method, fraction); the points in that order (methods outer).

    Points not in ``checkpoint`` are solved on ``workers`` threads (default: one per CPU), each
    point on its own: the same points whatever the number of threads, as CP-SAT searches on one
    worker each and no point starts from another's plan (unless a search ends at its time limit,
    whose plan depends on the machine's speed on one thread too). Each point is checkpointed as soon as it
    is solved; ``progress(done, total)`` is called after each (checkpointed points first), from
    the calling thread. On Ctrl-C (or an error in one point) the searches still running are
    stopped, the points already solved are checkpointed, and the exception re-raised."""
    low, high = endpoints(table, metric, between)
    table, chip = table.with_chip_limit()  # every plan fits on a chip that keeps the weights on chip
    points: list[FrontierPoint | None] = []
    todo: list[tuple[int, str, Gains, float]] = []  # (index in points, checkpoint key, gains, fraction)
    for gains in gains_list:
        method_key = hashlib.sha256(json.dumps([key_prefix, gains.method, gains.params, gains.by_group, metric,
                                                list(between or [])] + ([chip] if chip else []),
                                               sort_keys=True, default=str).encode()).hexdigest()[:16]
        for r in fractions:
            key = f"{method_key}:{r:.9g}"
            cached = checkpoint.get(key) if checkpoint else None
            if cached is None:
                todo.append((len(points), key, gains, r))
            points.append(FrontierPoint(**cached) if cached is not None else None)
    done, total = len(points) - len(todo), len(points)
    for k in range(1, done + 1):
        if progress:
            progress(k, total)

    def solve_point(gains: Gains, r: float, stop: threading.Event | None) -> FrontierPoint:
        limit = low + r * (high - low)
        budgets = {metric: limit, **chip}
        solution = solve(gains.by_group, table.groups, budgets, time_limit_s=time_limit_s, stop=stop)
        greedy_bits = greedy(gains.by_group, table.groups, budgets)
        return FrontierPoint(
            method=gains.method, fraction=r, limit=limit, objective=solution.objective, bound=solution.bound,
            status=solution.status, totals=solution.totals, bits=solution.bits,
            greedy_objective=objective(gains.by_group, greedy_bits) if greedy_bits else None,
            solve_time_s=solution.wall_time_s)

    def finished(index: int, key: str, point: FrontierPoint) -> None:
        nonlocal done
        if checkpoint:
            checkpoint.put(key, point.to_json())
        points[index] = point
        done += 1
        if progress:
            progress(done, total)

    workers = min(workers or os.cpu_count() or 1, len(todo))
    if workers <= 1:
        for index, key, gains, r in todo:
            finished(index, key, solve_point(gains, r, None))
        return points
    stop = threading.Event()
    pool = ThreadPoolExecutor(workers, thread_name_prefix="frontier")
    futures = {pool.submit(solve_point, gains, r, stop): (index, key) for index, key, gains, r in todo}
    try:
        for future in as_completed(futures):
            finished(*futures[future], future.result())
    except BaseException:
        stop.set()  # the searches in progress end at once, the points not begun never start
        pool.shutdown(wait=True, cancel_futures=True)
        for future, (index, key) in futures.items():  # solved meanwhile: keep them for the rerun
            if points[index] is None and future.done() and not future.cancelled() and future.exception() is None:
                finished(index, key, future.result())
        raise
    pool.shutdown()
    return points
