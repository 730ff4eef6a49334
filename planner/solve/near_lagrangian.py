"""The best plan near the Lagrangian optimum, by exhaustive enumeration: a finder for the CP-SAT rounds.

With multipliers ``lam >= 0`` of the budgets (from the LP relaxation), every plan x satisfies

    upper - gain(x) = sum_g r_g(x_g) + lam . (B - C(x))          (the plan's *deficit*)

where ``upper`` is the Lagrangian bound, ``r_g(b) >= 0`` the reduced cost of option b of group g
(0 for the group's *base* option, the one of greatest gain - lam . cost), B the budgets and C(x)
the plan's totals. For a plan that meets the budgets both terms are >= 0, so a plan of deficit at
most G deviates from the base plan only in options of reduced cost <= G whose reduced costs sum to
at most G.

``search`` enumerates those sets of deviations group by group, keeping a partial set only while a
lower bound on the deficit of its every completion stays within G and within the best deficit found
so far; the bound is the LP relaxation of what the remaining groups can still do with the slack the
partial set leaves (priced by lam; see ``_Remaining``). Every partial set is itself a plan (the
remaining groups at their base options), so plans are found along the way and tighten the pruning.
The enumeration is exhaustive: it returns the plan of least deficit among all plans of deficit <= G
(in floating point), or says it found none, or gives up when more than ``max_states`` partial sets
would have to be kept at once. The solver uses it to hand CP-SAT the optimum as its incumbent and
hint: on instances whose optimum fits the budgets tightly (thousands of groups, several budgets),
CP-SAT proves such an incumbent optimal in a fraction of the time it needs to find it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass
class Found:
    """A search's result: ``bits`` (bits per group) of the best plan found, None if none;
    ``exhaustive`` True when no plan of deficit <= the limit is better (False: gave up)."""

    bits: list[int] | None
    exhaustive: bool


def base_plan(options: list[list[int]], reduced: list[dict[int, float]]) -> list[int]:
    """Per group, the option of least reduced cost (on equal ones, the lowest precision)."""
    return [min(opts, key=lambda b: (reduced[g][b], b)) for g, opts in enumerate(options)]


def search(gains, costs, options, budgets: dict[str, float], metrics: list[str], lam: np.ndarray,
           reduced: list[dict[int, float]], limit: float, max_states: int = 200_000) -> Found:
    """The plan of least deficit among the plans of deficit <= ``limit`` (see the module docstring).

    ``options[g]``: the options of group g the plan may use; ``reduced[g][b]``: the reduced cost of
    option b under the multipliers ``lam`` (one per metric of ``metrics``, >= 0), as the solver
    computes them. Budgets are met exactly (totals <= B, summed with ``math.fsum``); a plan that
    does not is never returned. Gives up (``exhaustive`` False, the best plan found so far) when
    more than ``max_states`` partial sets of deviations would be kept at once.
    """
    base = base_plan(options, reduced)
    lam = np.asarray(lam, dtype=float)
    limits = np.array([budgets[m] for m in metrics])
    spare = limits - np.array([math.fsum(costs[g][base[g]][m] for g in range(len(base))) for m in metrics])
    scale = np.maximum(np.abs(limits), 1e-300)
    groups = []  # (group, [(option, reduced cost, cost change per metric)])
    for g, opts in enumerate(options):
        moves = [(b, reduced[g][b] - reduced[g][base[g]], np.array([costs[g][b][m] - costs[g][base[g]][m] for m in metrics]))
                 for b in opts if b != base[g] and reduced[g][b] - reduced[g][base[g]] <= limit]
        if moves:
            groups.append((g, moves))
    groups.sort(key=lambda item: _order(item, lam))
    remaining = _Remaining([moves for _, moves in groups], lam, len(metrics))

    spent = np.zeros(1)                      # sum of reduced costs of each partial set
    change = np.zeros((len(metrics), 1))     # its cost change per metric
    history = []                             # per level: (parent index, move taken: 0 stay, k: moves[k-1])
    best, where = limit, None                # least deficit found, (level, index) of its partial set

    def consider(level: int) -> None:
        nonlocal best, where
        meets = np.all(change <= spare[:, None], axis=0)
        if meets.any():
            deficit = np.where(meets, spent + lam @ (spare[:, None] - change), np.inf)
            k = int(np.argmin(deficit))
            if deficit[k] <= best:
                best, where = float(deficit[k]), (level, k)

    consider(0)
    for level, (g, moves) in enumerate(groups, start=1):
        n = spent.size
        spent = np.concatenate([spent] + [spent + r for _, r, _ in moves])
        change = np.concatenate([change] + [change + delta[:, None] for _, _, delta in moves], axis=1)
        parent = np.tile(np.arange(n, dtype=np.int64), len(moves) + 1)
        taken = np.repeat(np.arange(len(moves) + 1, dtype=np.int8), n)
        history.append((parent, taken))
        consider(level)
        bound = spent + remaining.bound(level, lam @ (spare[:, None] - change))
        keep = (bound <= best) & np.all(change + remaining.lowest[level][:, None] <= spare[:, None] + 1e-12 * scale[:, None], axis=0)
        index = np.flatnonzero(keep)
        if where is not None and where[0] == level:  # the best partial set stays, for its plan
            kept = np.searchsorted(index, where[1])
            if kept >= index.size or index[kept] != where[1]:
                index = np.insert(index, kept, where[1])
            where = (level, int(kept))
        spent, change = spent[index], change[:, index]
        history[-1] = (parent[index], taken[index])
        if spent.size > max_states:
            return Found(_plan(base, groups, history, where, costs, budgets, metrics), False)
    return Found(_plan(base, groups, history, where, costs, budgets, metrics), True)


def _order(item, lam):
    """Groups with a move that adds gain (net of nothing: gain - 0) first, the largest such gain
    first: the bound then prices the rest of the slack by what is left; then the others, largest
    priced cost change first. Ties by group index."""
    g, moves = item
    # the gain a move adds is lam . change - r (r = reduced cost change, see the module docstring)
    up = max(float(lam @ delta) - r for _, r, delta in moves)
    if up > 0:
        return (0, -up, g)
    return (1, -max(abs(float(lam @ delta)) for _, _, delta in moves), g)


def _plan(base, groups, history, where, costs, budgets, metrics) -> list[int] | None:
    """The bits of the partial set at ``where`` (level, index), the other groups at their base
    options; None if there is none or it misses a budget when summed exactly."""
    if where is None:
        return None
    bits = list(base)
    level, k = where
    for depth in range(level, 0, -1):
        parent, taken = history[depth - 1]
        g, moves = groups[depth - 1]
        if taken[k]:
            bits[g] = moves[taken[k] - 1][0]
        k = int(parent[k])
    if any(math.fsum(costs[g][b][m] for g, b in enumerate(bits)) > budgets[m] for m in metrics):
        return None
    return bits


class _Remaining:
    """What the groups from a level on can still do, for the bound of a partial set.

    A partial set of deviations with reduced costs summing to ``spent`` and leaving ``value`` =
    lam . (B - C) of slack (priced) has deficit ``spent + value`` as it stands. Completing it with
    moves of the remaining groups adds their reduced costs r and takes w = lam . (cost change) off
    the slack, which must stay >= 0 in every metric, so lam . slack >= 0. The completion's
    deficit is therefore at least spent + min over the moves' choice of (sum r + max(0, value -
    sum w)), and at least that of the LP relaxation: each group's moves on the lower convex hull of
    the points (w, r) from (0, 0) become increments taken fractionally in the order of r / w;
    increments with r / w >= 1 never lower the sum. ``lowest[level]`` is per metric the most the
    remaining groups can lower the totals (for the feasibility test)."""

    def __init__(self, moves_per_group, lam, n_metrics: int):
        hulls = [_hull([(float(lam @ delta), r) for _, r, delta in moves]) for moves in moves_per_group]
        self.tables = []
        for level in range(len(moves_per_group) + 1):
            items = sorted((r / w, w, r) for hull in hulls[level:] for w, r in hull)
            w = np.concatenate([[0.0], np.cumsum([t[1] for t in items])])
            r = np.concatenate([[0.0], np.cumsum([t[2] for t in items])])
            ratio = np.array([t[0] for t in items] + [1.0])
            self.tables.append((w, r, ratio))
        lowest = [np.minimum(0.0, np.min([delta for _, _, delta in moves], axis=0)) for moves in moves_per_group]
        suffix = np.zeros((len(moves_per_group) + 1, n_metrics))
        for level in range(len(moves_per_group) - 1, -1, -1):
            suffix[level] = suffix[level + 1] + lowest[level]
        self.lowest = suffix

    def bound(self, level: int, value: np.ndarray) -> np.ndarray:
        """The least deficit the groups from ``level`` on can add to partial sets leaving priced
        slack ``value`` (array), by the LP relaxation described in the class docstring."""
        w, r, ratio = self.tables[level]
        value = np.maximum(value, 0.0)
        k = np.searchsorted(w, value, side="right") - 1
        return r[k] + (value - w[k]) * ratio[k]


def _hull(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """The increments (dw, dr) along the lower convex hull of ``points`` (w, r) from (0, 0), in
    the direction of growing w, while the slope dr / dw stays below 1."""
    out, w0, r0 = [], 0.0, 0.0
    while True:
        step = min(((r - r0) / (w - w0), w, r) for w, r in points if w > w0) if any(w > w0 for w, _ in points) else None
        if step is None or step[0] >= 1.0:
            return out
        out.append((step[1] - w0, step[2] - r0))
        w0, r0 = step[1], step[2]


def best_near(gains, costs, options, budgets: dict[str, float], metrics: list[str], lam: np.ndarray,
              reduced: list[dict[int, float]], gap: float, max_states: int = 200_000, growth: float = 1.2) -> list[int] | None:
    """The optimum by ``search`` with a growing deficit limit, or the best plan found before it gave up.

    ``gap``: the deficit of a known plan (upper bound - its gain); a better plan has a smaller one.
    The limit starts at gap / 1000 and grows by ``growth`` (the enumeration's size grows steeply
    with it, so the first limit above the optimum's deficit is the cheapest that finds it) until
    a search finds a plan within it (then the plan of least deficit of all: the optimum), gives up,
    or reaches ``gap``. Returns bits per group, or None when no plan better than the known one
    was found.
    """
    limit = gap / 1000
    while True:
        limit = min(limit, gap)
        found = search(gains, costs, options, budgets, metrics, lam, reduced, limit, max_states)
        if found.bits is not None or not found.exhaustive or limit >= gap:
            return found.bits
        limit *= growth
