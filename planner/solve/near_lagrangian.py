"""The optimum near the Lagrangian bound, by exhaustive enumeration: a hint for the CP-SAT rounds.

With multipliers ``lam >= 0`` of the budgets (from the LP relaxation), every plan x satisfies

    upper - gain(x) = sum_g r_g(x_g) + lam . (B - C(x))          (the plan's *deficit*)

where ``upper`` is the Lagrangian bound, ``r_g(b) >= 0`` the reduced cost of option b of group g
(0 for the group's *base* option, the one of greatest gain - lam . cost), B the budgets and C(x)
the plan's totals. For a plan that meets the budgets both terms are >= 0, so a plan of deficit at
most G deviates from the base plan only in options of reduced cost <= G whose reduced costs sum to
at most G.

``search`` enumerates those sets of deviations group by group, keeping a partial set only while a
lower bound on the deficit of its every completion stays within the limit and within the best
deficit found so far; the bound is the LP relaxation of what the remaining groups can still do with
the slack the partial set leaves (priced by lam; see ``_Remaining``). Every partial set is itself a
plan (the remaining groups at their base options), so plans are found along the way and tighten the
pruning. The enumeration is exhaustive: it finds the plan of least deficit among all plans of
deficit <= the limit and says whether it is the only one within ``tie`` of it, or it gives up when
more than ``max_states`` partial sets would have to be kept at once or its ``deadline`` passes.

The solver hints CP-SAT with that plan only when it is unique by more than the integer model's
rounding of gains can blur, among every plan the integer model may admit (totals up to the budgets'
tolerance): it is then the only optimum of any round that allows its options, the one CP-SAT
returns with or without the hint, so plans stay those of the rounds alone, ties included. On
instances whose optimum fits the budgets tightly (thousands of groups, several budgets) CP-SAT
proves such a hint optimal in a fraction of the time it needs to find the optimum.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np


@dataclass
class Found:
    """A search's result. ``bits``: the plan of least deficit within the limit (bits per group), None
    when there is none or it misses a budget when summed exactly; ``deficit``: its deficit (inf if
    none); ``unique``: the search was exhaustive and every other plan within the budgets' tolerance
    has a deficit above ``deficit + tie``; ``exhaustive``: False when the search gave up."""

    bits: list[int] | None
    deficit: float
    unique: bool
    exhaustive: bool


def base_plan(options: list[list[int]], reduced: list[dict[int, float]]) -> list[int]:
    """Per group, the option of least reduced cost (on equal ones, the lowest precision)."""
    return [min(opts, key=lambda b: (reduced[g][b], b)) for g, opts in enumerate(options)]


def search(costs, options, budgets: dict[str, float], metrics: list[str], lam, reduced: list[dict[int, float]],
           limit: float, tie: float = 0.0, tolerance: float = 0.0, max_states: int = 500_000,
           deadline: float = math.inf) -> Found:
    """The plan of least deficit among the plans of deficit <= ``limit`` (see the module docstring).

    ``options[g]``: the options group g may take; ``reduced[g][b]``: the reduced cost of option b
    under the multipliers ``lam`` (one per metric of ``metrics``, >= 0), as the solver computes
    them. Rival plans may exceed each budget B by ``tolerance * |B|``; the plan returned meets every
    budget exactly (totals summed with ``math.fsum``). ``tie``: how close in deficit another plan
    may come before the best one is not ``unique``. Gives up when more than ``max_states`` partial
    sets of deviations would be kept at once (about 100 bytes each, while a group is expanded), or
    when ``time.perf_counter()`` passes ``deadline``.
    """
    deviations = _Deviations(costs, options, budgets, metrics, lam, reduced, limit + tie, tolerance)
    return deviations.search(limit, tie, max_states, deadline)


def best_near(costs, options, budgets: dict[str, float], metrics: list[str], lam, reduced: list[dict[int, float]],
              gap: float, tie: float = 0.0, tolerance: float = 0.0, max_states: int = 500_000,
              growth: float = 1.2, deadline: float = math.inf) -> Found:
    """``search`` with a growing limit: the optimum, if its deficit is below ``gap``.

    ``gap``: the deficit of a known plan (upper bound - its gain). The enumeration grows steeply
    with the limit, so the first limit above the optimum's deficit is the cheapest that finds it:
    the limit starts at gap / 1000 and grows by ``growth`` until a search finds a plan within it
    (the plan of least deficit of all, then), gives up, or reaches ``gap + tie`` (where it finds the
    known plan at least). Returns that search's result.
    """
    widest = gap + tie  # the known plan itself, its deficit summed another way
    deviations = _Deviations(costs, options, budgets, metrics, lam, reduced, widest + tie, tolerance)
    limit = gap / 1000
    while True:
        limit = min(limit, widest)
        found = deviations.search(limit, tie, max_states, deadline)
        if found.deficit <= limit or not found.exhaustive or limit >= widest:
            return found
        limit *= growth


class _Deviations:
    """The base plan, its spare budget per metric and every group's moves away from it (options of
    reduced cost <= ``widest`` above the base option's), prepared once for searches of any limit
    up to ``widest`` (tie included)."""

    def __init__(self, costs, options, budgets, metrics, lam, reduced, widest: float, tolerance: float):
        self.costs, self.budgets, self.metrics = costs, budgets, metrics
        self.lam = np.asarray(lam, dtype=float)
        self.base = base_plan(options, reduced)
        limits = np.array([budgets[m] for m in metrics], dtype=float)
        self.spare = limits - np.array([math.fsum(costs[g][b][m] for g, b in enumerate(self.base)) for m in metrics])
        self.over = tolerance * np.abs(limits)                    # how far a rival may exceed each budget
        self.noise = 1e-12 * np.maximum(np.abs(limits), 1e-300)   # floating-point room of the feasibility test
        self.groups = []  # (group, [(option, reduced cost, cost change per metric)])
        for g, opts in enumerate(options):
            here = reduced[g][self.base[g]]
            moves = [(b, reduced[g][b] - here) for b in opts if b != self.base[g] and reduced[g][b] - here <= widest]
            if moves:
                self.groups.append((g, [(b, r, np.array([costs[g][b][m] - costs[g][self.base[g]][m] for m in metrics]))
                                        for b, r in moves]))

    def search(self, limit: float, tie: float, max_states: int, deadline: float = math.inf) -> Found:
        """``search`` of the module with this limit (limit + tie <= ``widest``)."""
        lam, spare = self.lam, self.spare
        room = spare + self.over
        priced_over = float(lam @ self.over)  # how far below lam . (B - C) a rival's slack may go
        groups = [(g, kept) for g, moves in self.groups if (kept := [move for move in moves if move[1] <= limit + tie])]
        groups.sort(key=lambda item: _order(item, lam))
        remaining = _Remaining([moves for _, moves in groups], lam, len(spare))
        # metrics that no set of moves can push over their room need no test
        rising = np.zeros(len(spare))  # per metric, the most all moves together can add
        for _, moves in groups:
            rising += np.max([np.maximum(delta, 0.0) for _, _, delta in moves], axis=0)
        rows = [m for m in range(len(spare)) if rising[m] > room[m] - self.noise[m]]
        spent = np.zeros(1)                      # sum of reduced costs of each partial set
        value = np.full(1, float(spare @ lam))   # its priced slack lam . (B - C): deficit = spent + value
        change = np.zeros((len(rows), 1))        # its cost change per tested metric
        history = []                             # per level: (parent index, move taken: 0 none, k: moves[k-1])
        best, second, where = math.inf, math.inf, None  # two least deficits found, (level, index) of the best

        def fits(changes: np.ndarray, bound: np.ndarray) -> np.ndarray:  # the columns of ``changes`` within ``bound``
            ok = np.ones(changes.shape[1], dtype=bool)
            for i, m in enumerate(rows):
                ok &= changes[i] <= bound[m]
            return ok

        def consider(level: int, start: int) -> None:
            """Take the plans from index ``start`` on (new at this level) into the two least deficits."""
            nonlocal best, second, where
            deficit = np.where(fits(change[:, start:], room), spent[start:] + value[start:], np.inf)
            k = int(np.argmin(deficit))
            if not math.isfinite(deficit[k]):
                return
            runner = float(np.partition(deficit, 1)[1]) if deficit.size > 1 else math.inf
            if deficit[k] < best:
                second, best, where = min(best, runner), float(deficit[k]), (level, start + k)
            else:
                second = min(second, float(deficit[k]))

        consider(0, 0)
        for level, (g, moves) in enumerate(groups, start=1):
            n = spent.size
            spent = np.concatenate([spent] + [spent + r for _, r, _ in moves])
            value = np.concatenate([value] + [value - float(lam @ delta) for _, _, delta in moves])
            change = np.concatenate([change] + [change + delta[rows, None] for _, _, delta in moves], axis=1)
            consider(level, n)
            threshold = min(best, limit) + tie
            keep = spent + remaining.bound(level, value + priced_over) - priced_over <= threshold
            keep &= fits(change, room - remaining.lowest[level] + self.noise)
            index = np.flatnonzero(keep)
            if where is not None and where[0] == level:  # the best partial set stays, for its plan
                kept = int(np.searchsorted(index, where[1]))
                if kept >= index.size or index[kept] != where[1]:
                    index = np.insert(index, kept, where[1])
                where = (level, kept)
            spent, value, change = spent[index], value[index], change[:, index]
            history.append(((index % n).astype(np.int32), (index // n).astype(np.int8)))
            if spent.size > max_states or time.perf_counter() > deadline:
                return Found(None, math.inf, False, False)
            if not spent.size:  # no partial set can still lead to a plan within the threshold
                break
        if best > limit:
            return Found(None, math.inf, False, True)
        bits = self.plan(groups, history, where)
        return Found(bits, best, bool(bits is not None and second > best + tie), True)

    def plan(self, groups, history, where) -> list[int] | None:
        """The bits of the partial set at ``where`` (level, index), the other groups at their base
        options; None if it misses a budget when summed exactly."""
        bits = list(self.base)
        level, k = where
        for depth in range(level, 0, -1):
            parent, taken = history[depth - 1]
            g, moves = groups[depth - 1]
            if taken[k]:
                bits[g] = moves[taken[k] - 1][0]
            k = int(parent[k])
        spent = {m: math.fsum(self.costs[g][b][m] for g, b in enumerate(bits)) for m in self.metrics}
        return None if any(spent[m] > self.budgets[m] for m in self.metrics) else bits


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


class _Remaining:
    """What the groups from a level on can still do, for the bound of a partial set.

    A partial set of deviations with reduced costs summing to ``spent`` and leaving ``value`` =
    lam . (B - C) of slack (priced) has deficit ``spent + value`` as it stands. Completing it with
    moves of the remaining groups adds their reduced costs r and takes w = lam . (cost change) off
    the slack, which must stay >= 0 in every metric, so lam . slack >= 0. The completion's
    deficit is therefore at least spent + min over the moves' choice of (sum r + max(0, value -
    sum w)), and at least that of the LP relaxation: each group's moves on the lower convex hull of
    the points (w, r) from (0, 0) become increments taken fractionally in the order of r / w;
    increments with r / w >= 1 never lower the sum. (Rivals may overrun each budget by its
    tolerance: the search passes value + lam . overrun and subtracts lam . overrun from the bound.)
    ``lowest[level]`` is per metric the most the remaining groups can lower the totals (for the
    feasibility test)."""

    def __init__(self, moves_per_group, lam, n_metrics: int):
        items = [(level, w, r) for level, moves in enumerate(moves_per_group)
                 for w, r in _hull([(float(lam @ delta), r) for _, r, delta in moves])]
        level_of = np.array([t[0] for t in items], dtype=np.int64)
        w_all = np.array([t[1] for t in items], dtype=float)
        r_all = np.array([t[2] for t in items], dtype=float)
        order = np.argsort(r_all / np.where(w_all > 0, w_all, 1.0), kind="stable") if items else np.zeros(0, np.int64)
        level_of, w_all, r_all = level_of[order], w_all[order], r_all[order]
        self.tables = []
        for level in range(len(moves_per_group) + 1):
            mine = level_of >= level  # the increments of the groups from this level on, by ratio
            w, r = w_all[mine], r_all[mine]
            self.tables.append((np.concatenate([[0.0], np.cumsum(w)]), np.concatenate([[0.0], np.cumsum(r)]),
                                np.concatenate([r / w, [1.0]])))
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

