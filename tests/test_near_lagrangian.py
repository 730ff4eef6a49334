"""The enumeration near the Lagrangian bound (planner.solve.near_lagrangian) and the hint it gives CP-SAT.

The enumeration is checked against brute force over every plan of small random instances (its
optimum, its deficit, its uniqueness verdict, its limit); the hint against the solver without it
(same bits, same solver record) on instances large enough for the solver to use it.
"""
from __future__ import annotations

import itertools
import math
import sys
from pathlib import Path

import numpy as np
import pytest

from planner.errors import MpqError
from planner.solve import knapsack, near_lagrangian
from planner.solve.knapsack import solve

TOLERANCE = 1e-9  # rivals may exceed a budget by this fraction of it, as in the solver


def random_instance(rng, n: int, n_budgets: int, kind: str):
    """n groups x 3 precisions; costs rising with the bits or arbitrary; gains real or from a few
    values (ties); each budget between the cheapest and the dearest plan."""
    bits = [2, 4, 8]
    costs, gains = [], []
    for _ in range(n):
        if kind == "ties":
            costs.append({b: {f"m{k}": float(rng.choice([1.0, 2.0, 3.0])) * b for k in range(n_budgets)}
                          for b in bits})
            gains.append({b: float(rng.choice([0, 1, 2])) for b in bits})
        elif kind == "rising":
            size = rng.lognormal(0, 1.5, n_budgets)
            costs.append({b: {f"m{k}": size[k] * b / 8 * rng.uniform(0.9, 1.1) for k in range(n_budgets)} for b in bits})
            step = rng.lognormal(0, 1, 2)
            gains.append({2: 0.0, 4: step[0], 8: step[0] + step[1]})
        else:
            costs.append({b: {f"m{k}": rng.uniform(0.01, 10) for k in range(n_budgets)} for b in bits})
            gains.append({b: rng.uniform(-5, 5) for b in bits})
    budgets = {}
    for k in range(n_budgets):
        low = sum(min(c[f"m{k}"] for c in o.values()) for o in costs)
        high = sum(max(c[f"m{k}"] for c in o.values()) for o in costs)
        budgets[f"m{k}"] = low + rng.uniform(0.2, 0.8) * (high - low)
    return gains, costs, budgets


def reduction(gains, costs, budgets):
    """What the solver hands the enumeration: options, metrics, multipliers, bound, reduced costs."""
    metrics = sorted(budgets)
    options = knapsack._undominated(gains, costs, metrics)
    lam, upper = knapsack._lagrangian(gains, costs, options, budgets, metrics)
    value = [{b: knapsack._lagrangian_value(gains, costs, g, b, metrics, lam) for b in opts}
             for g, opts in enumerate(options)]
    reduced = [{b: max(v.values()) - x for b, x in v.items()} for v in value]
    return options, metrics, lam, upper, reduced


def every_plan(gains, costs, budgets, options):
    """(gain, meets the budgets exactly, meets them within the tolerance, bits) of every plan."""
    for bits in itertools.product(*options):
        spent = {m: math.fsum(costs[g][b][m] for g, b in enumerate(bits)) for m in budgets}
        yield (math.fsum(gains[g][b] for g, b in enumerate(bits)),
               all(spent[m] <= limit for m, limit in budgets.items()),
               all(spent[m] <= limit + abs(limit) * TOLERANCE for m, limit in budgets.items()), list(bits))


@pytest.mark.parametrize("kind", ["rising", "arbitrary", "ties"])
def test_enumeration_equals_brute_force(kind):
    """On 150 random instances per kind (1-7 groups, 1-3 budgets): the plan of least deficit within
    a limit above the optimum's is the brute-force optimum, its deficit upper - gain; it is unique
    exactly when brute force finds no other plan within the tie; a limit below the optimum's
    deficit finds nothing."""
    rng = np.random.default_rng({"rising": 1, "arbitrary": 2, "ties": 3}[kind])
    checked = unique_seen = 0
    for _ in range(150):
        gains, costs, budgets = random_instance(rng, int(rng.integers(1, 8)), int(rng.integers(1, 4)), kind)
        try:
            options, metrics, lam, upper, reduced = reduction(gains, costs, budgets)
        except MpqError:  # the budgets cannot all be met at once
            continue
        plans = sorted(every_plan(gains, costs, budgets, options), key=lambda p: -p[0])
        rivals = [p for p in plans if p[2]]
        if not rivals:
            continue
        tie = 1e-6
        best_gain = rivals[0][0]
        runner_up = rivals[1][0] if len(rivals) > 1 else -math.inf
        if abs(best_gain - runner_up - tie) < 1e-7:
            continue  # too close to the tie to call
        found = near_lagrangian.search(costs, options, budgets, metrics, lam, reduced, upper - best_gain + 1.0,
                                       tie=tie, tolerance=TOLERANCE)
        assert found.exhaustive
        assert found.deficit == pytest.approx(upper - best_gain, abs=1e-9)
        if rivals[0][1]:  # the best rival meets the budgets exactly: it is the plan returned
            assert found.bits is not None
            assert math.fsum(gains[g][b] for g, b in enumerate(found.bits)) == pytest.approx(best_gain, abs=1e-9)
            assert found.unique == (best_gain - runner_up > tie)
            if found.unique:
                assert found.bits == rivals[0][3]
                unique_seen += 1
        else:
            assert found.bits is None and not found.unique
        if upper - best_gain > 1e-6:
            below = near_lagrangian.search(costs, options, budgets, metrics, lam, reduced,
                                           (upper - best_gain) * (1 - 1e-3) - 1e-9, tie=tie, tolerance=TOLERANCE)
            assert below.bits is None and below.deficit == math.inf and below.exhaustive
        checked += 1
    assert checked >= 100
    if kind != "ties":
        assert unique_seen >= 50


def test_enumeration_gives_up_beyond_its_state_limit():
    gains, costs, budgets = random_instance(np.random.default_rng(5), 12, 2, "rising")
    options, metrics, lam, upper, reduced = reduction(gains, costs, budgets)
    found = near_lagrangian.search(costs, options, budgets, metrics, lam, reduced, 1e6, max_states=3)
    assert not found.exhaustive and not found.unique and found.bits is None
    complete = near_lagrangian.search(costs, options, budgets, metrics, lam, reduced, 1e6)
    assert complete.exhaustive and complete.bits is not None


def bench_like(n: int, seed: int):
    """The solver benchmark's own instance recipe (``benchmarks/bench_plan.py``: lognormal costs,
    3 budgets half way)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
    try:
        from bench_plan import random_instance
    finally:
        sys.path.pop(0)
    return random_instance(n, seed)


@pytest.mark.parametrize("twins", [False, True])
def test_hint_changes_no_plan(twins, monkeypatch):
    """On instances where a CP-SAT round has 100+ free groups, the solver with the enumeration's
    hint returns the same bits and the same solver record (status, objective, bound, error bounds,
    groups fixed) as without it. With twin groups (every group twice: optima come in ties) the
    enumeration must see the tie and give no hint."""
    gains, costs, budgets = bench_like(1000, 4)
    if twins:
        gains, costs = [g for g in gains[:500] for _ in (0, 1)], [c for c in costs[:500] for _ in (0, 1)]
    calls = []
    unique_optimum = knapsack._unique_optimum

    def spy(*args):
        calls.append(unique_optimum(*args))
        return calls[-1]

    monkeypatch.setattr(knapsack, "_unique_optimum", spy)
    hinted = solve(gains, costs, budgets)
    monkeypatch.setattr(knapsack, "_unique_optimum", lambda *args: None)
    plain = solve(gains, costs, budgets)
    assert len(calls) == 1 and (calls[0] is None) == twins
    assert hinted.status == plain.status == "OPTIMAL"
    assert hinted.bits == plain.bits
    assert hinted.to_json() == plain.to_json()
