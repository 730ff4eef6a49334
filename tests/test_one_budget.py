"""The one-budget dynamic programme (planner.solve.one_budget) and the CP-SAT rounds it certifies."""
from __future__ import annotations

import itertools
import random

import pytest

from planner.solve import knapsack, one_budget
from planner.solve.sweep import pareto_frontier


def brute_force(costs, gains, capacity):
    """The greatest total gain of a plan within ``capacity``, by trying every plan (None if none fits)."""
    plans = itertools.product(*(range(len(c)) for c in costs))
    values = [sum(gains[g][k] for g, k in enumerate(plan)) for plan in plans
              if sum(costs[g][k] for g, k in enumerate(plan)) <= capacity]
    return max(values) if values else None


def test_best_plan_equals_brute_force_on_random_integer_instances():
    """500 random instances (1-6 groups of 1-3 options, costs 0-20, gains -5..20, any capacity):
    the optimum of every plan, a plan that reaches it within the capacity, None when none fits."""
    rng = random.Random(0)
    for _ in range(500):
        groups = rng.randint(1, 6)
        costs = [[rng.randint(0, 20) for _ in range(rng.randint(1, 3))] for _ in range(groups)]
        gains = [[rng.randint(-5, 20) for _ in c] for c in costs]
        capacity = rng.randint(-2, sum(max(c) for c in costs) + 2)
        expected = brute_force(costs, gains, capacity)
        found = one_budget.best_plan(costs, gains, capacity)
        if expected is None:
            assert found is None
            continue
        value, picks = found
        assert value == expected == sum(gains[g][k] for g, k in enumerate(picks))
        assert sum(costs[g][k] for g, k in enumerate(picks)) <= capacity


def test_best_plan_gives_up_beyond_its_state_limit_and_handles_int64_sums():
    costs = [[0, 1 << k] for k in range(12)]  # 4,096 distinct totals, all fitting: every partial plan is kept
    gains = [[0, 1 << k] for k in range(12)]
    assert one_budget.best_plan(costs, gains, 1 << 13, max_states=1000) is None
    assert one_budget.best_plan(costs, gains, 1 << 13, max_work=5000) is None
    assert one_budget.best_plan(costs, gains, 1 << 13)[0] == (1 << 12) - 1
    big = 1 << 58  # sums beyond float64's integers: still exact
    value, picks = one_budget.best_plan([[big, big + 1], [big, big + 1]], [[1, 2], [1, 2]], 2 * big + 1)
    assert (value, sorted(picks)) == (3, [0, 1])


def symmetric_instance(groups: int, seed: int):
    """An LLM-like instance: blocks of four groups with the same costs and near-equal gains, one budget."""
    rng = random.Random(seed)
    gains, costs = [], []
    for g in range(groups):
        kind = g % 4
        gains.append({2: 0.0, 4: 2.0 + kind + rng.gauss(0, 1e-3), 8: 3.0 + kind + rng.gauss(0, 1e-3)})
        costs.append({b: {"latency_s": (kind + 1) * b * 1e-6} for b in (2, 4, 8)})
    low = sum(c[2]["latency_s"] for c in costs)
    high = sum(c[8]["latency_s"] for c in costs)
    return gains, costs, {"latency_s": low + 0.49 * (high - low)}


@pytest.mark.parametrize("seed", [0, 1])
def test_a_round_cut_short_is_certified_optimal(monkeypatch, seed):
    """A one-budget round stopped at its work limit (here at once) is completed by the programme:
    the solve is OPTIMAL, with the optimum of the exact frontier (sweep.pareto_frontier, another
    dynamic programme, on the floats) and of the unlimited CP-SAT search; where the programme
    gives up, the search runs again without the limit and returns that search's plan."""
    gains, costs, budgets = symmetric_instance(96, seed)
    monkeypatch.setattr(knapsack, "_ONE_BUDGET_WORK", 1e9)
    unlimited = knapsack.solve(gains, costs, budgets)
    frontier = pareto_frontier(gains, costs, "latency_s")
    best = frontier.gains[frontier.best_within(budgets["latency_s"] * (1 + 1e-9))]
    monkeypatch.setattr(knapsack, "_ONE_BUDGET_WORK", 1e-9)
    cut = knapsack.solve(gains, costs, budgets)
    assert cut.status == unlimited.status == "OPTIMAL"
    assert "dynamic programme" in cut.method and unlimited.method == "cp-sat"
    assert cut.objective == pytest.approx(best, abs=1e-9)
    assert cut.objective == pytest.approx(unlimited.objective, abs=1e-9)
    assert cut.bound == pytest.approx(cut.objective, abs=1e-9)
    assert cut.totals["latency_s"] <= budgets["latency_s"] * (1 + 1e-9)
    monkeypatch.setattr(one_budget, "best_plan", lambda *args, **kwargs: None)
    rerun = knapsack.solve(gains, costs, budgets)
    assert (rerun.bits, rerun.status) == (unlimited.bits, unlimited.status)
