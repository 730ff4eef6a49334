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
(reduced-cost fixing). The paper's case (two precisions, one budget)
can also go to OR-Tools' 0-1 knapsack solver (``method="knapsack"``).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np

from .errors import MpqError

Costs = list[dict[int, dict[str, float]]]   # costs[group][bits][metric]
GainTable = list[dict[int, float]]           # gains[group][bits]

_GAIN_GRID = 2.0 ** 40   # integer units of the largest gain magnitude
_TOLERANCE = 1e-9        # relative room of a budget for floating-point rounding
_MAX_COEFFICIENT_SUM = 2.0 ** 60  # keep CP-SAT's linear sums far from int64 overflow


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
        return max(0.0, self.bound - self.objective) / max(abs(self.bound), 1e-300) if self.bound else 0.0

    def to_json(self, timings: bool = False) -> dict:
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
    metrics = next(iter(costs[0].values())).keys() if costs else []
    return {m: float(math.fsum(costs[g][b][m] for g, b in enumerate(bits))) for m in metrics}


def cheapest(costs: Costs, metric: str) -> float:
    return float(math.fsum(min(c[metric] for c in options.values()) for options in costs))


def dearest(costs: Costs, metric: str) -> float:
    return float(math.fsum(max(c[metric] for c in options.values()) for options in costs))


def check_feasible(costs: Costs, budgets: dict[str, float]) -> None:
    """Raise MpqError naming the cheapest reachable value if one budget alone is out of reach."""
    from .costs import unit
    from .report import si

    for metric, limit in budgets.items():
        low = cheapest(costs, metric)
        if low > _slack(limit):
            raise MpqError(f"budget {metric}<={si(limit, unit(metric))} is infeasible: the cheapest plan reaches "
                           f"{metric}={si(low, unit(metric))} ({low:.6g}; every free group at its cheapest precision, "
                           "pinned groups at their pins); raise the budget")


def solve(gains: GainTable, costs: Costs, budgets: dict[str, float], *, method: str = "cpsat",
          time_limit_s: float = 60.0, workers: int = 1) -> Solution:
    """Maximise total gain under ``budgets`` ({metric: limit}); see the module docstring.

    ``gains[g]`` must give a value for every option in ``costs[g]``. Raises MpqError when the
    budgets cannot be met.
    """
    start = time.perf_counter()
    for g, options in enumerate(costs):
        missing = [b for b in options if b not in gains[g]]
        if missing:
            raise MpqError(f"group {g} has no gain for {missing[0]} bits, which the cost model offers; "
                           "give gains for every precision")
    check_feasible(costs, budgets)
    metrics = sorted(budgets)
    if method == "knapsack":
        solution = _knapsack(gains, costs, budgets)
    elif method == "cpsat":
        solution = _cpsat(gains, costs, budgets, metrics, time_limit_s, workers)
    else:
        raise MpqError(f"unknown solver method '{method}'; use cpsat or knapsack")
    solution.wall_time_s = time.perf_counter() - start
    return solution


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


def _objective(gains: GainTable, bits: list[int]) -> float:
    return float(math.fsum(gains[g][b] for g, b in enumerate(bits)))


# --------------------------------------------------------------------------------------------
# CP-SAT


def _cpsat(gains, costs, budgets, metrics, time_limit_s, workers) -> Solution:
    """Exact solve by rounds: CP-SAT on the options whose Lagrangian reduced cost is within a
    margin, the margin widened until it covers the gap between the Lagrangian bound and the best
    plan found. A plan better than the incumbent can only use options whose reduced cost is below
    that gap, so the last round's optimum is the global one."""
    deadline = time.perf_counter() + time_limit_s
    options = _undominated(gains, costs, metrics)
    if metrics:
        lam, upper = _lagrangian(gains, costs, options, budgets, metrics)
    else:
        lam, upper = np.zeros(0), math.fsum(max(gains[g][b] for b in opts) for g, opts in enumerate(options))
    reduced = [{b: _lagrangian_value(gains, costs, g, b, metrics, lam) for b in opts} for g, opts in enumerate(options)]
    reduced = [{b: max(r.values()) - v for b, v in r.items()} for r in reduced]
    incumbent = greedy(gains, costs, budgets, options)
    lower = _objective(gains, incumbent) if incumbent else -math.inf
    if not math.isfinite(upper) or incumbent is None:
        upper, margin = math.inf, math.inf  # no usable bound: one round over every option
    else:
        margin = max((upper - lower) / 1000, 1e-12 * (abs(upper) + 1.0))
    while True:
        allowed = [sorted({b for b in opts if reduced[g][b] <= margin} | ({incumbent[g]} if incumbent else set()))
                   for g, opts in enumerate(options)]
        complete = all(len(a) == len(o) for a, o in zip(allowed, options))
        bits, status, round_bound, scales = _cpsat_round(gains, costs, budgets, metrics, allowed, incumbent,
                                                         max(0.1, deadline - time.perf_counter()), workers)
        if bits is not None and (incumbent is None or _objective(gains, bits) > lower):
            incumbent, lower = bits, _objective(gains, bits)
        # A better plan than the incumbent uses only options with reduced cost below upper - lower.
        covers = complete or margin >= upper - lower + 1e-12 * (abs(upper) + 1.0)
        if status != "OPTIMAL" or time.perf_counter() >= deadline:
            if incumbent is None:
                raise MpqError(f"no plan found within {time_limit_s:g} s (solver status {status}); raise --time-limit")
            bound = min(upper, round_bound) if covers else upper
            return _solution(gains, costs, incumbent, "FEASIBLE", max(bound, lower), allowed, scales, metrics)
        if covers:
            return _solution(gains, costs, incumbent, "OPTIMAL", lower, allowed, scales, metrics)
        margin = max(margin * 10, upper - lower + 1e-12 * (abs(upper) + 1.0)) if margin * 10 >= upper - lower else margin * 10


def _cpsat_round(gains, costs, budgets, metrics, options, hint, time_limit_s, workers):
    """One CP-SAT solve over the allowed options; returns (bits or None, status, bound, scales)."""
    from ortools.sat.python import cp_model

    n = len(costs)
    free = [g for g in range(n) if len(options[g]) > 1]
    fixed = [g for g in range(n) if len(options[g]) == 1]
    gain_scale = _scale(_GAIN_GRID, max((abs(gains[g][b]) for g in free for b in options[g]), default=0.0))
    base = {m: math.fsum(costs[g][options[g][0]][m] for g in fixed) for m in metrics}
    cost_scale = {m: _cost_scale(costs, options, free, budgets[m], m) for m in metrics}
    scales = (gain_scale, cost_scale, len(free), len(fixed))
    if any(base[m] > _slack(budgets[m]) for m in metrics):
        return None, "INFEASIBLE", -math.inf, scales
    model = cp_model.CpModel()
    x = {(g, b): model.new_bool_var(f"g{g}_b{b}") for g in free for b in options[g]}
    variables = list(x.values())
    for g in free:
        model.add_exactly_one(x[g, b] for b in options[g])
    for m in metrics:
        half_tolerance = abs(budgets[m]) * _TOLERANCE / 2
        capacity = math.floor((budgets[m] + half_tolerance - base[m]) * cost_scale[m])
        coefficients = [round(costs[g][b][m] * cost_scale[m]) for (g, b) in x]
        model.add(cp_model.LinearExpr.weighted_sum(variables, coefficients) <= capacity)
    model.maximize(cp_model.LinearExpr.weighted_sum(variables, [round(gains[g][b] * gain_scale) for (g, b) in x]))
    if hint is not None:
        for (g, b), var in x.items():
            model.add_hint(var, hint[g] == b)
    solver = cp_model.CpSolver()
    solver.parameters.num_workers = workers
    solver.parameters.optimize_with_core = True  # proves the bound fast on near-symmetric instances (LLM blocks)
    solver.parameters.linearization_level = 2
    solver.parameters.max_time_in_seconds = time_limit_s
    solver.parameters.random_seed = 0
    status = _solve_interruptibly(solver, model)
    name = solver.status_name(status)
    if status not in (cp_model.OPTIMAL, cp_model.FEASIBLE):
        return None, name, -math.inf, scales
    bits = [options[g][0] if len(options[g]) == 1 else next(b for b in options[g] if solver.boolean_value(x[g, b]))
            for g in range(n)]
    spent = totals(costs, bits)
    if any(spent[m] > _slack(budgets[m]) for m in metrics):  # only where the grid had to be coarsened
        return None, "ROUNDING", -math.inf, scales
    fixed_gain = math.fsum(gains[g][options[g][0]] for g in fixed)
    bound = fixed_gain + solver.best_objective_bound / gain_scale + 0.5 * len(free) / gain_scale
    return bits, name, bound, scales


def _solve_interruptibly(solver, model) -> int:
    """``solver.solve(model)`` in a helper thread, so that Ctrl-C reaches this (main) thread as a
    KeyboardInterrupt at once: the search is stopped and the interrupt re-raised. CP-SAT's own
    SIGINT handling is off: it would end the search as if its time were up, and leave Python's
    handler replaced."""
    import threading

    solver.parameters.catch_sigint_signal = False
    result: dict = {}
    done = threading.Event()  # not Thread.join: an interrupted join can leave the thread looking finished

    def work() -> None:
        try:
            result["status"] = solver.solve(model)
        except BaseException as e:  # handed to the main thread
            result["error"] = e
        finally:
            done.set()

    threading.Thread(target=work, name="cp-sat", daemon=True).start()
    try:
        while not done.wait(0.05):
            pass
    except KeyboardInterrupt:
        solver.stop_search()
        while not done.wait(0.05):
            pass
        raise
    if "error" in result:
        raise result["error"]
    return result["status"]


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


def _solution(gains, costs, bits, status, bound, options, scales, metrics) -> Solution:
    gain_scale, cost_scale, free, fixed = scales
    objective = _objective(gains, bits)
    return Solution(bits=bits, status=status, objective=objective, bound=max(bound, objective), wall_time_s=0.0,
                    method="cp-sat", totals=totals(costs, bits), gain_error_bound=free / gain_scale,
                    budget_slack_bound={m: max(0.5 * free / cost_scale[m], 0.0) for m in metrics}, fixed_groups=fixed)


# --------------------------------------------------------------------------------------------
# OR-Tools 0-1 knapsack (two options per group, one budget)


def _knapsack(gains, costs, budgets) -> Solution:
    from ortools.algorithms.python import knapsack_solver

    if len(budgets) != 1:
        raise MpqError("the knapsack method takes exactly one budget; use cpsat for several")
    (metric, limit), = budgets.items()
    if any(len(c) > 2 for c in costs):
        raise MpqError("the knapsack method takes at most two precisions per group; use cpsat")
    low = [min(c) for c in costs]
    items = [g for g, c in enumerate(costs) if len(c) == 2]
    high = {g: max(costs[g]) for g in items}
    base = math.fsum(costs[g][low[g]][metric] for g in range(len(costs)))
    scale_c = _cost_scale([{0: {metric: abs(costs[g][high[g]][metric] - costs[g][low[g]][metric])}} for g in items],
                          [[0]] * len(items), list(range(len(items))), limit, metric) if items else 1.0
    extra_gain = {g: gains[g][high[g]] - gains[g][low[g]] for g in items}
    scale_g = _scale(_GAIN_GRID, max((abs(v) for v in extra_gain.values()), default=0.0))
    chosen = []
    if items:
        positive = [g for g in items if extra_gain[g] > 0 or costs[g][high[g]][metric] <= costs[g][low[g]][metric]]
        solver = knapsack_solver.KnapsackSolver(
            knapsack_solver.SolverType.KNAPSACK_MULTIDIMENSION_BRANCH_AND_BOUND_SOLVER, "mpq")
        profits = [max(0, round(extra_gain[g] * scale_g)) for g in positive]
        weights = [[max(0, round((costs[g][high[g]][metric] - costs[g][low[g]][metric]) * scale_c)) for g in positive]]
        capacity = [max(0, math.floor((limit + abs(limit) * _TOLERANCE / 2 - base) * scale_c))]
        solver.init(profits, weights, capacity)
        solver.solve()
        chosen = [g for k, g in enumerate(positive) if solver.best_solution_contains(k)]
    bits = [high[g] if g in chosen else low[g] for g in range(len(costs))]
    objective = _objective(gains, bits)
    return Solution(bits=bits, status="OPTIMAL", objective=objective, bound=objective, wall_time_s=0.0,
                    method="knapsack", totals=totals(costs, bits), gain_error_bound=len(items) / scale_g,
                    budget_slack_bound={metric: 0.5 * len(items) / scale_c})


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
