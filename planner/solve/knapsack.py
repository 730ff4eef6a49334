"""The multiple-choice knapsack: one precision per group, budgets on any metrics, maximum gain.

    maximise    sum_g sum_b gain[g][b] * x[g][b]
    subject to  sum_b x[g][b] = 1                                   for every group g
                sum_g sum_b cost[g][b][m] * x[g][b] <= budget[m]    for every budgeted metric m
                x[g][b] in {0, 1}   (pinned groups offer their pin only)

Solved exactly by OR-Tools CP-SAT on integers. A plan meets a budget B when its total is at
most B + tol with tol = 1e-9 |B| (room for floating-point sums in another order). Costs are
rounded to a grid fine enough that the integer problem lies between "total <= B" and
"total <= B + tol": every plan meeting B exactly is a candidate and every plan CP-SAT returns
meets B + tol. Gains are rounded to 2^-40 of the largest gain; ``gain_error_bound`` says by how
much the integer optimum's total gain can fall short of the real optimum's.

Before CP-SAT, an exact reduction keeps the model small: options dominated by another option of
their group are dropped, and, with the Lagrangian bound of the LP relaxation (OR-Tools GLOP) and
a feasible plan, options that provably cannot be part of a better plan are fixed out
(reduced-cost fixing). Before the first CP-SAT round of 100 or more free groups, an exhaustive
enumeration near the Lagrangian bound (``near_lagrangian``) looks for the optimum; when it finds it
and it is the only optimum, CP-SAT's rounds get it as their hint (the rounds themselves, and so the
plan and the solver record, are those without it). A round with one budget that CP-SAT has not
proved within a fixed amount of deterministic work (instances with many near-equal groups, such as
an LLM's blocks, where the proof can take minutes) is finished by an exact dynamic programme on
the same integers (``one_budget``). The paper's case (two precisions, one budget)
can also go to OR-Tools' 0-1 knapsack solver (``method="knapsack"``), after the same dominance
reduction, which makes every item's weight and profit positive whatever the order of the costs
and the signs of the gains.
"""
from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass, field

import numpy as np

from planner.errors import MpqError
from planner.solve import near_lagrangian

Costs = list[dict[int, dict[str, float]]]   # costs[group][bits][metric]
GainTable = list[dict[int, float]]           # gains[group][bits]

_GAIN_GRID = 2.0 ** 40   # integer units of the largest gain magnitude
_TOLERANCE = 1e-9        # relative room of a budget for floating-point rounding
_MAX_COEFFICIENT_SUM = 2.0 ** 60  # keep CP-SAT's linear sums far from int64 overflow
_SEARCH_FROM = 100       # free groups of a CP-SAT round from which the optimum is first enumerated
_ONE_BUDGET_WORK = 1.0   # CP-SAT deterministic time of a one-budget round before the programme certifies it


@dataclass
class Solution:
    """A solve's result. ``bits[g]`` is the chosen precision of group g."""

    bits: list[int]
    status: str
    objective: float
    bound: float
    wall_time_s: float
    method: str
    totals: dict[str, float]
    gain_error_bound: float = 0.0
    budget_slack_bound: dict[str, float] = field(default_factory=dict)
    fixed_groups: int = 0

    @property
    def gap(self) -> float:
        """The relative optimality gap (bound - objective) / |bound|, at least 0 (0 when the bound is 0)."""
        return max(0.0, self.bound - self.objective) / max(abs(self.bound), 1e-300) if self.bound else 0.0

    def to_json(self, timings: bool = False) -> dict:
        """The solver record of a plan file: status, objective, bound, gap, method, error bounds and
        presolve count (numbers to 12 significant digits); the wall time (s) only with ``timings``."""
        doc = {"status": self.status, "objective": _round(self.objective), "bound": _round(self.bound),
               "relative_gap": _round(self.gap), "method": self.method,
               "gain_error_bound": _round(self.gain_error_bound),
               "budget_slack_bound": {m: _round(v) for m, v in sorted(self.budget_slack_bound.items())},
               "groups_fixed_by_presolve": self.fixed_groups}
        if timings:
            doc["wall_time_s"] = round(self.wall_time_s, 4)
        return doc


def _round(x: float) -> float:
    return float(f"{x:.12g}")


def _scale(grid: float, largest: float) -> float:
    """Integer units per real unit so that ``largest`` becomes ``grid`` (1 for negligible values)."""
    return grid / largest if largest > 1e-200 else 1.0


def _slack(limit: float) -> float:
    """The largest total that meets budget ``limit``: sums of the same costs in another order
    must not turn a plan that meets it exactly into one that does not."""
    return limit + abs(limit) * _TOLERANCE


def totals(costs: Costs, bits: list[int]) -> dict[str, float]:
    """The totals per metric of the plan ``bits`` (bits per group), summed exactly (``math.fsum``)."""
    metrics = next(iter(costs[0].values())).keys() if costs else []
    return {m: float(math.fsum(costs[g][b][m] for g, b in enumerate(bits))) for m in metrics}


def cheapest(costs: Costs, metric: str) -> float:
    """The lowest reachable total of ``metric``: every group at its cheapest option."""
    return float(math.fsum(min(c[metric] for c in options.values()) for options in costs))


def dearest(costs: Costs, metric: str) -> float:
    """The highest total of ``metric``: every group at its dearest option."""
    return float(math.fsum(max(c[metric] for c in options.values()) for options in costs))


def check_feasible(costs: Costs, budgets: dict[str, float]) -> None:
    """Raise MpqError naming the cheapest reachable value if one budget alone is out of reach."""
    from planner.units import si, unit

    for metric, limit in budgets.items():
        low = cheapest(costs, metric)
        if low > _slack(limit):
            raise MpqError(f"budget {metric}<={si(limit, unit(metric))} is infeasible: the cheapest plan reaches "
                           f"{metric}={si(low, unit(metric))} ({low:.6g}; every free group at its cheapest precision, "
                           "pinned groups at their pins); raise the budget")


def solve(gains: GainTable, costs: Costs, budgets: dict[str, float], *, method: str = "cpsat",
          time_limit_s: float = 60.0, workers: int = 1, stop: threading.Event | None = None) -> Solution:
    """Maximise total gain under ``budgets`` ({metric: limit}); see the module docstring.

    ``gains[g]`` must give a value for every option in ``costs[g]``. Every gain, cost and limit
    must be a finite number. A limit above the dearest plan's total constrains nothing: it is
    solved as that total (every plan meets it), so huge limits (1e300) cannot overflow the
    integer model. Raises MpqError when an input is not finite or the budgets cannot be met.

    ``stop``: for solves run beside others in worker threads; once it is set, the CP-SAT search in
    progress is stopped and :class:`SearchStopped` raised (in the main thread Ctrl-C does that
    without it, as a KeyboardInterrupt).
    """
    start = time.perf_counter()
    _check_finite(gains, costs, budgets)
    check_feasible(costs, budgets)
    budgets = {m: min(limit, dearest(costs, m)) for m, limit in budgets.items()}
    metrics = sorted(budgets)
    if method == "knapsack":
        solution = _knapsack(gains, costs, budgets, time_limit_s)
        if solution is None:
            solution = _cpsat(gains, costs, budgets, metrics, time_limit_s, workers, stop)
            solution.method = "cp-sat (the knapsack's integer weights were too coarse for this budget)"
    elif method == "cpsat":
        solution = _cpsat(gains, costs, budgets, metrics, time_limit_s, workers, stop)
    else:
        raise MpqError(f"unknown solver method '{method}'; use cpsat or knapsack")
    solution.wall_time_s = time.perf_counter() - start
    return solution


def _check_finite(gains: GainTable, costs: Costs, budgets: dict[str, float]) -> None:
    """Raise MpqError naming the first gain, cost or limit that is missing or not a finite number."""
    for metric, limit in budgets.items():
        if not math.isfinite(limit):
            raise MpqError(f"budget {metric}<={limit} is not a finite number; give a finite limit")
    for g, options in enumerate(costs):
        for b, cost in options.items():
            if b not in gains[g]:
                raise MpqError(f"group {g} has no gain for {b} bits, which the cost model offers; "
                               "give gains for every precision")
            if not math.isfinite(gains[g][b]):
                raise MpqError(f"the gain of group {g} at {b} bits is {gains[g][b]}; gains must be finite numbers")
            bad = [m for m in budgets if not math.isfinite(cost[m])]
            if bad:
                raise MpqError(f"the {bad[0]} cost of group {g} at {b} bits is {cost[bad[0]]}; costs must be finite")
    for metric in budgets:
        if not math.isfinite(dearest(costs, metric)):
            raise MpqError(f"the {metric} costs add up beyond floating point (over 1e308); rescale that metric")


# --------------------------------------------------------------------------------------------
# Exact reduction: dominance, Lagrangian bound, reduced-cost fixing


def _undominated(gains: GainTable, costs: Costs, metrics: list[str]) -> list[list[int]]:
    """Per group, the options no other option beats (no dearer on any budgeted metric and no
    less gain); among equals the higher precision stays."""
    kept = []
    for g, options in enumerate(costs):
        bits = sorted(options, reverse=True)
        keep = []
        for b in bits:
            dominated = any(
                o != b and gains[g][o] >= gains[g][b] and all(options[o][m] <= options[b][m] for m in metrics)
                and (gains[g][o] > gains[g][b] or any(options[o][m] < options[b][m] for m in metrics) or o > b)
                for o in bits)
            if not dominated:
                keep.append(b)
        kept.append(sorted(keep))
    return kept


def _lagrangian(gains, costs, options, budgets, metrics) -> tuple[np.ndarray, float]:
    """Multipliers of the budgets from the LP relaxation (GLOP) and the Lagrangian upper bound
    they give; the bound is valid for any multipliers >= 0, whatever the LP's accuracy."""
    from ortools.linear_solver import pywraplp

    lp = pywraplp.Solver.CreateSolver("GLOP")
    x = {(g, b): lp.NumVar(0, 1, "") for g, opts in enumerate(options) for b in opts}
    for g, opts in enumerate(options):  # coefficients set one by one: no Python expression trees
        one = lp.Constraint(1, 1)
        for b in opts:
            one.SetCoefficient(x[g, b], 1)
    rows, scales = [], []
    for m in metrics:
        scale = _scale(1.0, dearest(costs, m))
        scales.append(scale)
        row = lp.Constraint(-lp.infinity(), budgets[m] * scale)
        for (g, b), var in x.items():
            row.SetCoefficient(var, costs[g][b][m] * scale)
        rows.append(row)
    objective = lp.Objective()
    for (g, b), var in x.items():
        objective.SetCoefficient(var, gains[g][b])
    objective.SetMaximization()
    status = lp.Solve()
    if status not in (pywraplp.Solver.OPTIMAL, pywraplp.Solver.FEASIBLE):
        if status == pywraplp.Solver.INFEASIBLE:
            raise MpqError("the budgets cannot all be met at once (each alone can); loosen one of them")
        return np.zeros(len(metrics)), math.inf
    multipliers = np.array([abs(r.dual_value()) * s for r, s in zip(rows, scales)])
    multipliers[~np.isfinite(multipliers)] = 0.0  # any multipliers >= 0 give a valid bound
    return multipliers, _lagrangian_bound(gains, costs, options, budgets, metrics, multipliers)


def _lagrangian_value(gains, costs, g, b, metrics, lam) -> float:
    return gains[g][b] - sum(l * costs[g][b][m] for l, m in zip(lam, metrics))


def _lagrangian_bound(gains, costs, options, budgets, metrics, lam) -> float:
    best = math.fsum(max(_lagrangian_value(gains, costs, g, b, metrics, lam) for b in opts) for g, opts in enumerate(options))
    return best + math.fsum(l * budgets[m] for l, m in zip(lam, metrics))


def greedy(gains: GainTable, costs: Costs, budgets: dict[str, float], options: list[list[int]] | None = None) -> list[int] | None:
    """AIMET-style greedy: start every group at its most valuable option and repeatedly make the
    move that loses the least gain per unit of (budget-normalised) cost saved, until every budget
    holds; then spend what is left on the moves that gain most per unit of cost. None if no move
    can meet the budgets. O(moves x log(options)) with a heap."""
    import heapq

    options = options or [sorted(c) for c in costs]
    metrics = sorted(budgets)
    bits = [max(opts, key=lambda b: (gains[g][b], b)) for g, opts in enumerate(options)]
    total = totals(costs, bits) if costs else {}
    version = [0] * len(options)

    def violated() -> tuple[str, ...]:
        return tuple(m for m in metrics if total[m] > _slack(budgets[m]))

    def move(g: int, b: int) -> None:
        for m in total:
            total[m] += costs[g][b][m] - costs[g][bits[g]][m]
        bits[g] = b
        version[g] += 1

    def lowering_moves(g: int, over: tuple[str, ...]):
        here = costs[g][bits[g]]
        for b in options[g]:
            saved = sum((here[m] - costs[g][b][m]) / max(abs(budgets[m]), 1e-300) for m in over)
            if saved > 0:
                yield ((gains[g][bits[g]] - gains[g][b]) / saved, g, b, version[g])

    def keeps_others(g: int, b: int, over: tuple[str, ...]) -> bool:
        return all(total[m] + costs[g][b][m] - costs[g][bits[g]][m] <= _slack(budgets[m]) for m in metrics if m not in over)

    # Each move lowers the violated budgets' normalised sum and breaks no budget that holds,
    # so the loop ends: the set of violated budgets only shrinks, the sum only falls.
    over = violated()
    while over:
        heap = [item for g in range(len(options)) for item in lowering_moves(g, over)]
        heapq.heapify(heap)
        while heap and violated() == over:
            _, g, b, seen = heapq.heappop(heap)
            if seen != version[g] or not keeps_others(g, b, over):
                continue
            move(g, b)
            for item in lowering_moves(g, over):
                heapq.heappush(heap, item)
        if violated() == over:  # no move left that saves on the violated budgets
            return None
        over = violated()

    def raising_moves(g: int):
        here = gains[g][bits[g]]
        for b in options[g]:
            extra = gains[g][b] - here
            if extra > 0:
                spent = sum(max(0.0, costs[g][b][m] - costs[g][bits[g]][m]) / budgets[m] for m in metrics if budgets[m] > 0)
                yield (-extra / max(spent, 1e-300), g, b, version[g])

    heap = [item for g in range(len(options)) for item in raising_moves(g)]
    heapq.heapify(heap)
    while heap:
        _, g, b, seen = heapq.heappop(heap)
        if seen != version[g]:
            continue
        if any(total[m] + costs[g][b][m] - costs[g][bits[g]][m] > _slack(budgets[m]) for m in metrics):
            continue
        move(g, b)
        for item in raising_moves(g):
            heapq.heappush(heap, item)
    return bits


def objective(gains: GainTable, bits: list[int]) -> float:
    """Total gain of a plan: the sum over groups of ``gains[group][bits[group]]`` (exactly rounded)."""
    return float(math.fsum(gains[g][b] for g, b in enumerate(bits)))


# --------------------------------------------------------------------------------------------
# CP-SAT


def _cpsat(gains, costs, budgets, metrics, time_limit_s, workers, stop=None) -> Solution:
    """Exact solve by rounds: CP-SAT on the options whose Lagrangian reduced cost is within a
    margin, the margin widened tenfold until it covers the gap between the Lagrangian bound and
    the best plan found. A plan better than the incumbent can only use options whose reduced cost
    is below that gap, so the last round's optimum is the global one.

    The rounds between are skipped when they cannot matter: after a round that did not improve
    the incumbent, the covering round is solved at once, and if it finds no better plan, neither
    would the rounds before it (their options are a subset of its options, the incumbent and hint
    the same), so the result is the one the full sequence gives. When it does find a better plan
    the sequence goes on round by round, so ties and figures stay those of the full sequence,
    and jumps again once a round reaches that plan's objective (the optimum)."""
    deadline = time.perf_counter() + time_limit_s
    options = _undominated(gains, costs, metrics)
    if metrics:
        lam, upper = _lagrangian(gains, costs, options, budgets, metrics)
    else:
        lam, upper = np.zeros(0), math.fsum(max(gains[g][b] for b in opts) for g, opts in enumerate(options))
    reduced = [{b: _lagrangian_value(gains, costs, g, b, metrics, lam) for b in opts} for g, opts in enumerate(options)]
    reduced = [{b: max(r.values()) - v for b, v in r.items()} for r in reduced]
    incumbent = greedy(gains, costs, budgets, options)
    lower = objective(gains, incumbent) if incumbent else -math.inf
    known, searched = None, False  # the unique optimum (see _unique_optimum), once searched for
    if not math.isfinite(upper) or incumbent is None:
        upper, margin = math.inf, math.inf  # no usable bound: one round over every option
    else:
        margin = max((upper - lower) / 1000, 1e-12 * (abs(upper) + 1.0))

    certified = []  # one entry per round whose optimum the one-budget programme certified

    def solve_round(margin):
        nonlocal known, searched
        allowed = [sorted({b for b in opts if reduced[g][b] <= margin} | ({incumbent[g]} if incumbent else set()))
                   for g, opts in enumerate(options)]
        complete = all(len(a) == len(o) for a, o in zip(allowed, options))
        if not searched and sum(len(a) > 1 for a in allowed) >= _SEARCH_FROM and metrics and incumbent is not None \
                and math.isfinite(upper) and upper > lower:
            searched = True  # before the first round big enough that CP-SAT may take long to find the optimum
            known = _unique_optimum(gains, costs, options, budgets, metrics, lam, reduced, upper, lower, deadline)
        optimum_allowed = known is not None and all(b in a for b, a in zip(known, allowed))
        return allowed, complete, *_cpsat_round(gains, costs, budgets, metrics, allowed,
                                                known if optimum_allowed else incumbent,
                                                max(0.1, deadline - time.perf_counter()), workers,
                                                hint_is_unique_optimum=optimum_allowed, stop=stop,
                                                certified=certified)

    def widen(margin):
        if margin * 10 >= upper - lower:
            return max(margin * 10, upper - lower + 1e-12 * (abs(upper) + 1.0))
        return margin * 10

    best_known = None
    while True:
        allowed, complete, bits, status, round_bound, scales = solve_round(margin)
        improved = bits is not None and (incumbent is None or objective(gains, bits) > lower)
        if improved:
            incumbent, lower = bits, objective(gains, bits)
        # A better plan than the incumbent uses only options with reduced cost below upper - lower.
        covers = complete or margin >= upper - lower + 1e-12 * (abs(upper) + 1.0)
        if status != "OPTIMAL" or time.perf_counter() >= deadline:
            if incumbent is None:
                raise MpqError(f"no plan found within {time_limit_s:g} s (solver status {status}); raise --time-limit")
            bound = min(upper, round_bound) if covers else upper
            return _solution(gains, costs, incumbent, "FEASIBLE", max(bound, lower), allowed, scales, metrics,
                             certified)
        if covers:
            return _solution(gains, costs, incumbent, "OPTIMAL", lower, allowed, scales, metrics, certified)
        margin = widen(margin)
        jump = margin
        while jump < upper - lower + 1e-12 * (abs(upper) + 1.0):
            jump = widen(jump)
        # Jump where the covering round is likely (the incumbent held) or sure (it reached the
        # optimum an earlier covering round found) to find nothing better.
        if jump > margin and (lower >= best_known if best_known is not None else not improved):
            allowed, _, bits, status, _, scales = solve_round(jump)
            if status == "OPTIMAL" and time.perf_counter() < deadline:
                if bits is None or objective(gains, bits) <= lower:
                    return _solution(gains, costs, incumbent, "OPTIMAL", lower, allowed, scales, metrics,
                                     certified)
                best_known = objective(gains, bits)  # the optimum: go on round by round until reached


def _unique_optimum(gains, costs, options, budgets, metrics, lam, reduced, upper, lower,
                    deadline: float = math.inf) -> list[int] | None:
    """The optimum, when an enumeration near the Lagrangian bound finds it and it is unique: every
    other plan that CP-SAT's integer model may admit (totals up to each budget's tolerance) has
    less gain by more than the model's rounding of gains (``2^-40`` of the largest gain per group,
    twice) and of floating-point sums can blur. Such a plan is the only optimum of every round
    whose options include it, so hinting CP-SAT with it changes no plan. None otherwise (not found
    below the incumbent's deficit ``upper - lower``, not unique, or the enumeration gave up: too
    many partial sets, or half the time left to ``deadline`` (``time.perf_counter()``) spent)."""
    largest = max((abs(gains[g][b]) for g, opts in enumerate(options) for b in opts), default=0.0)
    tie = 2 * len(options) * largest / _GAIN_GRID + 1e-10 * (abs(upper) + math.fsum(
        float(l) * abs(budgets[m]) for l, m in zip(lam, metrics)) + 1.0)
    now = time.perf_counter()
    found = near_lagrangian.best_near(costs, options, budgets, metrics, lam, reduced, upper - lower, tie, _TOLERANCE,
                                      deadline=now + (deadline - now) / 2)
    return found.bits if found.unique else None


def _cpsat_round(gains, costs, budgets, metrics, options, hint, time_limit_s, workers,
                 hint_is_unique_optimum: bool = False, stop: threading.Event | None = None,
                 certified: list | None = None):
    """One CP-SAT solve over the allowed options; returns (bits or None, status, bound, scales).
    A round whose optimum the one-budget programme certified (below) appends to ``certified``.

    ``hint_is_unique_optimum``: the hint is the round's only optimum (see ``_unique_optimum``), so
    only its proof is left: the LP-based search does that faster than the core-based one (about 2x
    on the 5,000-group benchmark), and with a single optimum the search cannot change the plan.

    With one budget the search stops after ``_ONE_BUDGET_WORK`` units of CP-SAT's deterministic
    time (about 0.6 s here; the same point of the search on any machine) and, if it has not proved
    its plan optimal by then, the integer model's optimum comes from ``one_budget.best_plan``:
    CP-SAT's plan when it has that gain (the plan the unlimited search ends with: it would only
    have proved it), else the programme's. The round is then OPTIMAL. Where the programme gives up
    (too many partial plans), the search runs again without the limit, as it would have. Once a
    round of a solve needed the programme, the solve's later one-budget rounds ask the programme
    first (CP-SAT searches only where it gives up): their instance is one where CP-SAT is slow.

    The model is written straight into CP-SAT's protocol buffer (one Boolean per free option,
    exactly one per group, one row per budget, the gain objective, the hint), as
    ``cp_model.CpModel`` would write it but without its per-variable Python objects and without
    importing pandas, which that module pulls in: on small instances both cost more than the solve.
    """
    from ortools.sat.python import cp_model_helper as helper

    n = len(costs)
    free = [g for g in range(n) if len(options[g]) > 1]
    fixed = [g for g in range(n) if len(options[g]) == 1]
    gain_scale = _scale(_GAIN_GRID, max((abs(gains[g][b]) for g in free for b in options[g]), default=0.0))
    base = {m: math.fsum(costs[g][options[g][0]][m] for g in fixed) for m in metrics}
    cost_scale = {m: _cost_scale(costs, options, free, budgets[m], m) for m in metrics}
    scales = (gain_scale, cost_scale, len(free), len(fixed))
    if any(base[m] > _slack(budgets[m]) for m in metrics):
        return None, "INFEASIBLE", -math.inf, scales
    keys = [(g, b) for g in free for b in options[g]]  # variable k is option keys[k]
    model = helper.CpModelProto()
    for g, b in keys:
        var = model.variables.add()
        var.name = f"g{g}_b{b}"
        var.domain.extend((0, 1))
    k = 0
    for g in free:
        model.constraints.add().exactly_one.literals.extend(range(k, k + len(options[g])))
        k += len(options[g])
    for m in metrics:
        half_tolerance = abs(budgets[m]) * _TOLERANCE / 2
        capacity = math.floor((budgets[m] + half_tolerance - base[m]) * cost_scale[m])
        cost_coefficients = [round(costs[g][b][m] * cost_scale[m]) for g, b in keys]
        row = model.constraints.add().linear
        _add_terms(row, cost_coefficients)
        row.domain.extend((-2 ** 63, capacity))
    gain_coefficients = [round(gains[g][b] * gain_scale) for g, b in keys]
    _add_terms(model.objective, [-c for c in gain_coefficients])  # CP-SAT minimises
    model.objective.scaling_factor = -1
    one_budget_work = len(metrics) == 1 and bool(keys)
    if hint is not None and keys:
        model.solution_hint.vars.extend(range(len(keys)))
        model.solution_hint.values.extend(int(hint[g] == b) for g, b in keys)
    parameters = helper.SatParameters()
    parameters.num_workers = workers
    parameters.optimize_with_core = not hint_is_unique_optimum  # proves the bound fast on near-symmetric
    # instances (LLM blocks), which have ties, so no unique optimum
    parameters.linearization_level = 2
    parameters.max_time_in_seconds = time_limit_s
    parameters.random_seed = 0
    parameters.catch_sigint_signal = False  # Ctrl-C goes to Python: see _solve_interruptibly
    if one_budget_work:
        parameters.max_deterministic_time = _ONE_BUDGET_WORK
    sizes = [len(options[g]) for g in free]
    optimum = None
    if one_budget_work and certified:  # an earlier round of this solve was slow: the programme first
        optimum = _one_budget_optimum(sizes, cost_coefficients, gain_coefficients, capacity, [])
        if optimum is not None:
            certified.append(len(free))
            name, solution = "OPTIMAL", optimum[1]
    if optimum is None:
        name, solution, optimum, response = _search(helper, model, parameters, time_limit_s, stop, one_budget_work,
                                                    sizes, cost_coefficients, gain_coefficients, capacity, certified)
    if name not in ("OPTIMAL", "FEASIBLE"):
        return None, name, -math.inf, scales
    chosen = {keys[k] for k, value in enumerate(solution) if value}
    bits = [options[g][0] if len(options[g]) == 1 else next(b for b in options[g] if (g, b) in chosen)
            for g in range(n)]
    spent = totals(costs, bits)
    if any(spent[m] > _slack(budgets[m]) for m in metrics):  # only where the grid had to be coarsened
        return None, "ROUNDING", -math.inf, scales
    fixed_gain = math.fsum(gains[g][options[g][0]] for g in fixed)
    best_bound = optimum[0] if optimum is not None else response.best_objective_bound
    bound = fixed_gain + best_bound / gain_scale + 0.5 * len(free) / gain_scale
    return bits, name, bound, scales


def _search(helper, model, parameters, time_limit_s: float, stop, one_budget_work: bool, sizes: list[int],
            cost_coefficients: list[int], gain_coefficients: list[int], capacity: int, certified: list | None):
    """A round's CP-SAT search (see ``_cpsat_round``): (status name, the variables' values, the
    one-budget programme's optimum or None, CP-SAT's response). A one-budget search stopped at
    ``_ONE_BUDGET_WORK`` is finished by the programme (the round is then OPTIMAL and appends its
    free group count to ``certified``) or, where the programme gives up, run again without that
    limit within what is left of ``time_limit_s``."""
    started = time.perf_counter()
    solver = helper.SolveWrapper()
    solver.set_parameters(parameters)
    response = _solve_interruptibly(solver, model, stop)
    name, solution = response.status.name, list(response.solution)
    if not (one_budget_work and name in ("FEASIBLE", "UNKNOWN") and response.deterministic_time >= _ONE_BUDGET_WORK):
        return name, solution, None, response
    optimum = _one_budget_optimum(sizes, cost_coefficients, gain_coefficients, capacity, solution)
    if optimum is not None:
        if certified is not None:
            certified.append(len(sizes))
        return "OPTIMAL", optimum[1], optimum, response
    parameters.max_deterministic_time = math.inf  # its default: the search CP-SAT would have gone on with
    parameters.max_time_in_seconds = max(0.1, time_limit_s - (time.perf_counter() - started))
    solver = helper.SolveWrapper()
    solver.set_parameters(parameters)
    response = _solve_interruptibly(solver, model, stop)
    return response.status.name, list(response.solution), None, response


def _one_budget_optimum(sizes: list[int], cost_coefficients: list[int], gain_coefficients: list[int], capacity: int,
                        solution: list[int]) -> tuple[int, list[int]] | None:
    """(optimal integer gain, the values of the variables in an optimal plan) of a round's integer
    model with one budget row (see ``_cpsat_round``: variables in group order, ``sizes`` of them
    per free group, their cost and gain coefficients, the row's ``capacity``), by
    ``one_budget.best_plan``: the ``solution`` CP-SAT holds when it reaches that gain, else the
    programme's plan. None where the programme gives up."""
    from planner.solve import one_budget

    starts = np.cumsum([0] + sizes[:-1]).tolist()
    found = one_budget.best_plan([cost_coefficients[k:k + size] for k, size in zip(starts, sizes)],
                                 [gain_coefficients[k:k + size] for k, size in zip(starts, sizes)], capacity)
    if found is None:
        return None
    value, picks = found
    if solution and sum(c for c, x in zip(gain_coefficients, solution) if x) == value:
        return value, solution
    plan = [0] * len(gain_coefficients)
    for k, pick in zip(starts, picks):
        plan[k + pick] = 1
    return value, plan


def _add_terms(row, coefficients: list[int]) -> None:
    """Append the non-zero coefficients (variable k has coefficient ``coefficients[k]``)."""
    kept = [k for k, c in enumerate(coefficients) if c]
    row.vars.extend(kept)
    row.coeffs.extend(coefficients[k] for k in kept)


class SearchStopped(Exception):
    """A solve's ``stop`` event was set (see :func:`solve`): its search was stopped, no plan."""


def _solve_interruptibly(solver, model, stop: threading.Event | None = None):
    """``solver.solve(model)`` (a CP-SAT ``SolveWrapper`` and a ``CpModelProto``; its response) in
    a helper thread, so that Ctrl-C reaches this (main) thread as a KeyboardInterrupt at once: the
    search is stopped and the interrupt re-raised. CP-SAT's own SIGINT handling must be off
    (``catch_sigint_signal``): it would end the search as if its time were up, and leave Python's
    handler replaced. Called from a worker thread, where no KeyboardInterrupt arrives, ``stop``
    does the same: once set (before or during the search), the search is stopped and
    :class:`SearchStopped` raised."""
    if stop is not None and stop.is_set():
        raise SearchStopped("the search was stopped before it began")
    result: dict = {}
    done = threading.Event()  # not Thread.join: an interrupted join can leave the thread looking finished

    def work() -> None:
        try:
            result["response"] = solver.solve(model)
        except BaseException as e:  # handed to the main thread
            result["error"] = e
        finally:
            done.set()

    threading.Thread(target=work, name="cp-sat", daemon=True).start()
    try:
        while not done.wait(0.05):
            if stop is not None and stop.is_set():
                solver.stop_search()
                done.wait()
                raise SearchStopped("the search was stopped")
    except KeyboardInterrupt:
        solver.stop_search()
        while not done.wait(0.05):
            pass
        raise
    if "error" in result:
        raise result["error"]
    return result["response"]


def _cost_scale(costs, options, free, limit: float, metric: str) -> float:
    """Integer units per unit of ``metric``: fine enough that rounding every free option to the
    nearest unit moves a plan's total by at most half the budget's tolerance."""
    tolerance = abs(limit) * _TOLERANCE
    reference = sum(max(costs[g][b][metric] for b in options[g]) for g in free)
    if reference <= 1e-300:
        return 1.0
    scale = len(free) / tolerance if tolerance > 1e-300 else _MAX_COEFFICIENT_SUM / reference
    total = sum(costs[g][b][metric] for g in free for b in options[g]) * scale
    return scale if total <= _MAX_COEFFICIENT_SUM else _MAX_COEFFICIENT_SUM / total * scale


def _solution(gains, costs, bits, status, bound, options, scales, metrics, certified=()) -> Solution:
    gain_scale, cost_scale, free, fixed = scales
    value = objective(gains, bits)
    method = "cp-sat" if not certified else (
        f"cp-sat; {len(certified)} round(s) proved optimal by the one-budget dynamic programme")
    return Solution(bits=bits, status=status, objective=value, bound=max(bound, value), wall_time_s=0.0,
                    method=method, totals=totals(costs, bits), gain_error_bound=free / gain_scale,
                    budget_slack_bound={m: max(0.5 * free / cost_scale[m], 0.0) for m in metrics}, fixed_groups=fixed)


# --------------------------------------------------------------------------------------------
# OR-Tools 0-1 knapsack (two options per group, one budget)


def _knapsack(gains, costs, budgets, time_limit_s: float) -> Solution | None:
    """The paper's case as a 0-1 knapsack: every group starts at its cheaper option and an item
    is the move to its dearer one (weight: the extra cost, profit: the extra gain).

    The transformation is exact for any input: options dominated by another option of their
    group are dropped first (as for CP-SAT), so a group keeps either one option (fixed) or two
    whose costs and gains are both strictly ordered the same way, where every weight and profit
    is positive. A higher precision that costs no more than a lower one, or has less gain, thus
    never reaches the knapsack solver. The status is the solver's own (OPTIMAL when it proved
    optimality, FEASIBLE when the time limit stopped it, with the LP bound of the knapsack).
    None when the integer weights, coarsened to stay within int64, let a plan over the budget
    through."""
    from ortools.algorithms.python import knapsack_solver

    if len(budgets) != 1:
        raise MpqError("the knapsack method takes exactly one budget; use cpsat for several")
    (metric, limit), = budgets.items()
    if any(len(c) > 2 for c in costs):
        raise MpqError("the knapsack method takes at most two precisions per group; use cpsat")
    options = _undominated(gains, costs, [metric])
    low = [min(opts, key=lambda b: costs[g][b][metric]) for g, opts in enumerate(options)]
    items = [g for g, opts in enumerate(options) if len(opts) == 2]
    high = {g: next(b for b in options[g] if b != low[g]) for g in items}
    base = math.fsum(costs[g][low[g]][metric] for g in range(len(costs)))
    weight = {g: costs[g][high[g]][metric] - costs[g][low[g]][metric] for g in items}
    profit = {g: gains[g][high[g]] - gains[g][low[g]] for g in items}
    scale_c = _cost_scale([{0: {metric: weight[g]}} for g in items], [[0]] * len(items), list(range(len(items))),
                          limit, metric) if items else 1.0
    scale_g = _scale(_GAIN_GRID, max(profit.values(), default=0.0))
    chosen, optimal = set(), True
    if items:
        solver = knapsack_solver.KnapsackSolver(
            knapsack_solver.SolverType.KNAPSACK_MULTIDIMENSION_BRANCH_AND_BOUND_SOLVER, "mpq")
        solver.set_time_limit(time_limit_s)
        capacity = math.floor((limit + abs(limit) * _TOLERANCE / 2 - base) * scale_c)
        solver.init([round(profit[g] * scale_g) for g in items], [[round(weight[g] * scale_c) for g in items]],
                    [max(0, capacity)])
        solver.solve()
        optimal = solver.is_solution_optimal()
        chosen = {g for k, g in enumerate(items) if solver.best_solution_contains(k)}
    bits = [high[g] if g in chosen else low[g] for g in range(len(costs))]
    value = objective(gains, bits)
    spent = totals(costs, bits)
    if spent[metric] > _slack(limit):  # only where the weights had to be coarsened to fit int64
        return None
    bound = value
    if not optimal:  # Dantzig's bound: items by profit per weight, the last one fractionally
        room, bound = limit - base, objective(gains, low)
        for g in sorted(items, key=lambda g: -profit[g] / weight[g]):
            take = min(1.0, max(0.0, room) / weight[g])
            bound, room = bound + take * profit[g], room - take * weight[g]
        bound = max(bound + len(items) / scale_g, value)
    return Solution(bits=bits, status="OPTIMAL" if optimal else "FEASIBLE", objective=value, bound=bound,
                    wall_time_s=0.0, method="knapsack", totals=spent, gain_error_bound=len(items) / scale_g,
                    budget_slack_bound={metric: 0.5 * len(items) / scale_c},
                    fixed_groups=len(costs) - len(items))


# --------------------------------------------------------------------------------------------
# Why each group got its bits


def explain(gains: GainTable, costs: Costs, budgets: dict[str, float], bits: list[int], top: int = 10) -> list[dict]:
    """For the most contested free groups: the chosen option against its runner-up.

    The LP relaxation prices each budgeted metric (``price[m]``: gain per unit of m at the
    margin). An option's net value is gain - sum_m price[m] * cost[m]; a group keeps the option
    with the best net value unless the budgets bind elsewhere. Groups whose runner-up comes
    closest in net value are the most contested.
    """
    metrics = sorted(budgets)
    options = [sorted(c) for c in costs]
    lam = _lagrangian(gains, costs, options, budgets, metrics)[0] if metrics else np.zeros(0)
    rows = []
    for g, opts in enumerate(options):
        if len(opts) < 2:
            continue
        net = {b: _lagrangian_value(gains, costs, g, b, metrics, lam) for b in opts}
        chosen = bits[g]
        runner = max((b for b in opts if b != chosen), key=lambda b: (net[b], b))
        delta_cost = {m: costs[g][chosen][m] - costs[g][runner][m] for m in metrics}
        rows.append({
            "group": g, "bits": chosen, "runner_up": runner,
            "gain": gains[g][chosen], "gain_runner_up": gains[g][runner],
            "delta_gain": gains[g][chosen] - gains[g][runner], "delta_cost": delta_cost,
            "gain_per_cost": {m: (gains[g][chosen] - gains[g][runner]) / d if d else None for m, d in delta_cost.items()},
            "price": {m: float(l) for m, l in zip(metrics, lam)},
            "margin": net[chosen] - net[runner],
        })
    rows.sort(key=lambda r: (abs(r["margin"]), r["group"]))
    return rows[:top]
