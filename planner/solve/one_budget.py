"""The exact optimum of a CP-SAT round's integer model with one budget, by dynamic programming.

A round (see ``knapsack._cpsat_round``) hands CP-SAT integers: per free group, a cost and a gain
coefficient for each allowed option, and one capacity. With a single budget this is a
multiple-choice knapsack whose optimum a Pareto dynamic programme finds exactly (Nemhauser-Ullmann,
as ``planner.solve.sweep.pareto_frontier`` for whole frontiers, here on the integers themselves):
groups are merged one at a time and a partial plan is dropped when another is no dearer and
gains at least as much, or when even the cheapest completion of it exceeds the capacity. Integer
arithmetic (int64) makes it the optimum of the very model CP-SAT searches, ties and rounding
included.

Where it is used: on instances with many near-equal groups (the blocks of an LLM) CP-SAT finds
good plans at once but can search for minutes to prove the last one optimal, or even to find it.
The round then stops at a deterministic work limit, and this programme says whether the plan
CP-SAT holds is optimal (then it is the plan the full search returns, which would only have
proved it) or gives an optimal plan itself.
"""
from __future__ import annotations

import numpy as np


def best_plan(costs: list[list[int]], gains: list[list[int]], capacity: int,
              max_states: int = 300_000, max_work: int = 10_000_000) -> tuple[int, list[int]] | None:
    """(optimal total gain, the option index chosen per group) of: one option k per group g,
    sum of ``costs[g][k]`` at most ``capacity``, greatest sum of ``gains[g][k]``; among optimal
    plans the cheapest, then the one kept first (lower option indices in later groups).

    Coefficients are integers whose sums fit int64 (the CP-SAT model's own bound). None when no
    plan meets the capacity, or when the programme gives up: more than ``max_states`` partial
    plans would have to be kept after some group, or more than ``max_work`` extended partial plans
    examined in all (about 0.5 s; the caller then needs another method). Time O(sum over groups of
    options x partial plans kept x log)."""
    n = len(costs)
    cheapest = [min(c) for c in costs]
    rest = np.zeros(n + 1, dtype=np.int64)  # rest[g]: least cost of groups g.. (rest[n] = 0)
    for g in range(n - 1, -1, -1):
        rest[g] = rest[g + 1] + cheapest[g]
    if rest[0] > capacity:
        return None
    cost = np.zeros(1, dtype=np.int64)
    gain = np.zeros(1, dtype=np.int64)
    steps: list[tuple[np.ndarray, np.ndarray]] = []
    work = 0
    for g in range(n):
        option_cost = np.asarray(costs[g], dtype=np.int64)
        option_gain = np.asarray(gains[g], dtype=np.int64)
        all_cost = (cost[None, :] + option_cost[:, None]).ravel()  # option-major: option k, state i at k * n + i
        all_gain = (gain[None, :] + option_gain[:, None]).ravel()
        work += all_cost.size
        if work > max_work:
            return None
        parents = np.tile(np.arange(cost.size), option_cost.size)
        choices = np.repeat(np.arange(option_cost.size), cost.size)
        fits = np.flatnonzero(all_cost + rest[g + 1] <= capacity)
        order = fits[np.lexsort((-all_gain[fits], all_cost[fits]))]  # by cost, the larger gain first; stable
        ranked = all_gain[order]
        keep = order[np.concatenate([[True], ranked[1:] > np.maximum.accumulate(ranked)[:-1]])]
        if keep.size > max_states:
            return None
        cost, gain = all_cost[keep], all_gain[keep]
        steps.append((parents[keep], choices[keep]))
    i = int(np.argmax(gain))  # gains ascend with cost along the kept plans: the first maximum is the cheapest
    value = int(gain[i])
    chosen = []
    for parents, choices in reversed(steps):
        chosen.append(int(choices[i]))
        i = int(parents[i])
    return value, chosen[::-1]
