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
          progress=None, time_limit_s: float = 60.0) -> list[FrontierPoint]:
    """Solve every (gain method, fraction); ``progress(done, total)`` is called after each."""
    low, high = endpoints(table, metric, between)
    table, chip = table.with_chip_limit()  # every plan fits on a chip that keeps the weights on chip
    points, total, done = [], len(gains_list) * len(fractions), 0
    for gains in gains_list:
        method_key = hashlib.sha256(json.dumps([key_prefix, gains.method, gains.params, gains.by_group, metric,
                                                list(between or [])] + ([chip] if chip else []),
                                               sort_keys=True, default=str).encode()).hexdigest()[:16]
        for r in fractions:
            key = f"{method_key}:{r:.9g}"
            cached = checkpoint.get(key) if checkpoint else None
            if cached is None:
                limit = low + r * (high - low)
                budgets = {metric: limit, **chip}
                solution = solve(gains.by_group, table.groups, budgets, time_limit_s=time_limit_s)
                greedy_bits = greedy(gains.by_group, table.groups, budgets)
                point = FrontierPoint(
                    method=gains.method, fraction=r, limit=limit, objective=solution.objective, bound=solution.bound,
                    status=solution.status, totals=solution.totals, bits=solution.bits,
                    greedy_objective=objective(gains.by_group, greedy_bits) if greedy_bits else None,
                    solve_time_s=solution.wall_time_s)
                if checkpoint:
                    checkpoint.put(key, point.to_json())
            else:
                point = FrontierPoint(**cached)
            points.append(point)
            done += 1
            if progress:
                progress(done, total)
    return points
