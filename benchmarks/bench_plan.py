"""How fast is planning? Ratios and times measured in one run; writes benchmarks/results/bench_plan.json.

    python benchmarks/bench_plan.py

1. The solver on random multiple-choice knapsacks, 50 and 5,000 groups x 3 precisions x 3 budgets
   (lognormal costs, budgets half way between cheapest and dearest): ``planner.solve.knapsack.solve`` against
   one plain CP-SAT solve of the same model (every option, the solver's integer scaling and
   parameters, 1 worker; see ``plain_cpsat``). Targets: 50 groups <= 3x the plain solve and
   <= 20 ms; 5,000 groups proven optimal in < 2 s.
2. EAGL over every weight of ResNet-50 and BERT-base (precisions 2/4/8, default threads: one per
   core) over one numpy pass over the same weights (a float32 sum per tensor, one thread): the
   physical floor. Target <= 5. Also EAGL on one thread over the same pass (no target).
3. The whole ``mpq plan`` process (NorthPole, latency=0.5, EAGL) on ResNet-50 and BERT-base
   (tests/archs.py's networks). Targets < 1 s and < 2 s.
4. BERT-base from Hugging Face ``transformers`` (random weights, attention mask): the whole
   ``mpq plan`` process over ``onnx.load`` of the file (target <= 2), and the solver on that plan's
   instance over one plain CP-SAT solve of it (1 worker; target <= 3).
5. A 21-point ``mpq frontier`` on ResNet-50 over one ``mpq plan`` (whole processes; target <= 3).

Times are medians (solver: of 5, processes: of 3) on the machine described in the JSON; the
machine may be shared, so the ratios, measured back to back, are what counts.
"""
from __future__ import annotations

import math
import statistics
import subprocess
import sys
import time

import numpy as np

from _common import exported, figure, median_time, show, write_results

from planner import load_graph
from planner.gains.eagl import eagl
from planner.solve import solve
from planner.graph.weights import layer_weights

PLAN = ["--hw", "northpole", "--budget", "latency=0.5"]


def random_instance(n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    bits = [2, 4, 8]
    macs, params = rng.lognormal(0, 1.5, n), rng.lognormal(0, 1.5, n)
    noise = rng.uniform(0.9, 1.1, (n, 3))
    costs = [{b: {"latency_s": macs[i] * b / 8 * noise[i, k], "weight_bytes": params[i] * b / 8,
                  "energy_j": (macs[i] + params[i]) * (b / 8) ** 1.5} for k, b in enumerate(bits)} for i in range(n)]
    step = rng.lognormal(0, 1, (n, 2))
    gains = [{2: 0.0, 4: step[i, 0], 8: step[i, 0] + step[i, 1]} for i in range(n)]
    budgets = {}
    for m in ("latency_s", "weight_bytes", "energy_j"):
        low = math.fsum(min(c[m] for c in o.values()) for o in costs)
        high = math.fsum(max(c[m] for c in o.values()) for o in costs)
        budgets[m] = low + 0.5 * (high - low)
    return gains, costs, budgets


def plain_cpsat(gains, costs, budgets) -> tuple[float, str]:
    """Build and solve once the model planner.solve.knapsack gives CP-SAT, without its reductions: a
    boolean per option of every group, one per group, each budget and the gains scaled to integers
    as planner.solve.knapsack does (gains: the largest is 2^40 units; costs: rounding all options moves a
    total by at most half of 1e-9 of the budget, coefficient sums below 2^60), the same parameters
    (1 worker, core-based search, linearization level 2, seed 0). Returns (seconds, status)."""
    from ortools.sat.python import cp_model

    start = time.perf_counter()
    n = len(costs)
    model = cp_model.CpModel()
    x = {(g, b): model.new_bool_var(f"x{g}_{b}") for g, options in enumerate(costs) for b in options}
    for g, options in enumerate(costs):
        model.add_exactly_one(x[g, b] for b in options)
    for m, limit in budgets.items():
        scale = n / (abs(limit) * 1e-9)
        total = sum(c[m] for options in costs for c in options.values()) * scale
        scale = scale if total <= 2.0 ** 60 else 2.0 ** 60 / total * scale
        coefficients = [round(costs[g][b][m] * scale) for (g, b) in x]
        model.add(cp_model.LinearExpr.weighted_sum(list(x.values()), coefficients) <= math.floor(limit * (1 + 5e-10) * scale))
    gain_scale = 2.0 ** 40 / max(abs(v) for row in gains for v in row.values())
    model.maximize(cp_model.LinearExpr.weighted_sum(list(x.values()), [round(gains[g][b] * gain_scale) for (g, b) in x]))
    solver = cp_model.CpSolver()
    solver.parameters.num_workers = 1
    solver.parameters.optimize_with_core = True
    solver.parameters.linearization_level = 2
    solver.parameters.random_seed = 0
    status = solver.solve(model)
    return time.perf_counter() - start, solver.status_name(status)


def solver_against_plain(gains, costs, budgets, repeats: int = 5) -> tuple[float, float, str, str]:
    """Median wall time of planner.solve.knapsack.solve and of the plain solve, and their statuses."""
    ours, plain, status, plain_status = [], [], "", ""
    for _ in range(repeats):
        solution = solve(gains, costs, budgets)
        ours.append(solution.wall_time_s)
        status = solution.status
        seconds, plain_status = plain_cpsat(gains, costs, budgets)
        plain.append(seconds)
    return statistics.median(ours), statistics.median(plain), status, plain_status


def bench_solver() -> list[dict]:
    print("Solver: groups x 3 precisions x 3 budgets (latency, weight bytes, energy at r = 0.5)")
    gains, costs, budgets = random_instance(50)
    ours, plain, status, plain_status = solver_against_plain(gains, costs, budgets)
    rows = [show(figure("solver, 50 groups x 3 x 3 / one plain CP-SAT solve", ours / plain, "x", "<= 3",
                        ours_ms=round(ours * 1e3, 2), plain_ms=round(plain * 1e3, 2), status=status,
                        plain_status=plain_status)),
            show(figure("solver, 50 groups x 3 x 3", ours * 1e3, "ms", "<= 20", status=status))]
    gains, costs, budgets = random_instance(5000)
    solution = solve(gains, costs, budgets)
    rows.append(show(figure("solver, 5,000 groups x 3 x 3", solution.wall_time_s, "s", "< 2", status=solution.status,
                            gap=solution.gap)))
    return rows


def bench_eagl() -> list[dict]:
    print("\nEAGL over all weights (precisions 2, 4, 8) / one numpy pass (float32 sum per tensor)")
    rows = []
    for arch, label in (("resnet50", "ResNet-50"), ("bert-base", "BERT-base")):
        graph = load_graph(exported(arch))
        arrays = [layer_weights(graph, l).values for l in graph.layers if l.weight is not None]
        floor, ours, serial = [], [], []
        for _ in range(5):  # interleaved, so that load from other processes hits all alike
            floor.append(median_time(lambda: [np.sum(a, dtype=np.float32) for a in arrays], repeats=1))
            ours.append(median_time(lambda: eagl(graph, [2, 4, 8]), repeats=1))
            serial.append(median_time(lambda: eagl(graph, [2, 4, 8], workers=1), repeats=1))
        floor_s, ours_s, serial_s = statistics.median(floor), statistics.median(ours), statistics.median(serial)
        rows.append(show(figure(f"EAGL / numpy pass, {label}", ours_s / floor_s, "x", "<= 5",
                                eagl_ms=round(ours_s * 1e3, 1), numpy_pass_ms=round(floor_s * 1e3, 2),
                                one_thread_ratio=round(serial_s / floor_s, 2), weights=sum(a.size for a in arrays))))
    return rows


def process_time(arguments: list[str], repeats: int = 3) -> float:
    """Median wall time of ``python -m planner ARGUMENTS`` (after one warm-up run)."""
    command = [sys.executable, "-m", "planner", *map(str, arguments)]
    subprocess.run(command, check=True, capture_output=True)  # warm the page cache
    return median_time(lambda: subprocess.run(command, check=True, capture_output=True), repeats=repeats)


def bench_cli() -> list[dict]:
    print("\nWhole `mpq plan` process (NorthPole, --budget latency=0.5, EAGL), median of 3 runs")
    rows = []
    for arch, label, target in (("resnet50", "ResNet-50", "< 1"), ("bert-base", "BERT-base", "< 2")):
        wall = process_time(["plan", exported(arch), *PLAN])
        rows.append(show(figure(f"whole `mpq plan` process, {label}", wall, "s", target)))
    return rows


def bench_transformers_bert() -> list[dict]:
    import onnx

    from costmodels import load_cost_model
    from hw import load_spec
    from planner.solve.budget import parse_budget, resolve
    from planner.costs import cost_table
    from planner.gains import compute

    print("\nBERT-base from transformers (attention mask): whole `mpq plan` / onnx.load, solver / plain CP-SAT")
    path = exported("hf-bert-base")
    wall = process_time(["plan", path, *PLAN])
    load = median_time(lambda: onnx.load(str(path)), repeats=3)
    rows = [show(figure("whole `mpq plan` / onnx.load, BERT-base from transformers", wall / load, "x", "<= 2",
                        plan_s=round(wall, 3), onnx_load_s=round(load, 3)))]
    spec = load_spec("northpole")
    graph = load_graph(path)
    table = cost_table(graph, spec, load_cost_model(spec.cost_model))
    limits = resolve([parse_budget("latency=0.5", table.metrics)], table, None)
    gains = compute("eagl", graph, sorted({b for options in table.groups for b in options}))
    ours, plain, status, plain_status = solver_against_plain(gains.by_group, table.groups, limits)
    rows.append(show(figure("solver on that BERT's instance / one plain CP-SAT solve (1 worker)", ours / plain, "x",
                            "<= 3", ours_ms=round(ours * 1e3, 2), plain_ms=round(plain * 1e3, 2), status=status,
                            plain_status=plain_status, groups=len(table.groups))))
    return rows


def bench_frontier() -> list[dict]:
    print("\n21-point `mpq frontier` on ResNet-50 / one `mpq plan` (whole processes, median of 3)")
    path = exported("resnet50")
    one = process_time(["plan", path, *PLAN])
    frontier = process_time(["frontier", path, "--hw", "northpole", "--points", "21"])
    return [show(figure("21-point frontier / one plan, ResNet-50", frontier / one, "x", "<= 3",
                        frontier_s=round(frontier, 3), plan_s=round(one, 3)))]


def main() -> None:
    sys.stdout.reconfigure(line_buffering=True)  # progress shows when the output is a file
    figures = bench_solver() + bench_eagl() + bench_cli() + bench_transformers_bert() + bench_frontier()
    print(f"\nwrote {write_results('bench_plan', figures)}")


if __name__ == "__main__":
    main()
