"""How fast is planning? Ratios and times measured in one run.

    python benchmarks/bench_plan.py

1. EAGL over every weight of ResNet-50 and BERT-base (precisions 2/4/8) divided by one numpy
   pass over the same weights (a float32 sum per tensor): the physical floor. Target <= 10.
2. The solver on random multiple-choice knapsacks, 50 / 500 / 5,000 groups x 3 precisions x 3
   budgets (lognormal costs, budgets half way between cheapest and dearest): wall time, status,
   gap, and how far the AIMET-style greedy falls short. Target: proven optimal, 5,000 under 5 s.
3. The whole ``mpq plan`` command on ResNet-50 and BERT-base (NorthPole, latency=0.5).
   Targets: under 2 s and 5 s.
"""
from __future__ import annotations

import math
import subprocess
import sys
import time

import numpy as np

from _common import exported, median_time

from planner import load_graph
from planner.gains.eagl import eagl
from planner.solve import _objective, greedy, solve
from planner.weights import layer_weights


def bench_eagl() -> None:
    print("EAGL over all weights (precisions 2, 4, 8)")
    print(f"  {'model':10} {'weights':>10} {'EAGL':>9} {'numpy sum':>10} {'ratio':>7}")
    for arch in ("resnet50", "bert-base"):
        graph = load_graph(exported(arch))
        arrays = [layer_weights(graph, l).values for l in graph.layers if l.weight is not None]
        count = sum(a.size for a in arrays)
        floor = median_time(lambda: [np.sum(a, dtype=np.float32) for a in arrays])
        ours = median_time(lambda: eagl(graph, [2, 4, 8]))
        print(f"  {arch:10} {count / 1e6:8.1f}M {ours * 1e3:7.0f}ms {floor * 1e3:8.1f}ms {ours / floor:6.1f}x")
    print("  target: ratio <= 10")


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


def bench_solver() -> None:
    print("\nSolver: groups x 3 precisions x 3 budgets (latency, weight bytes, energy at r = 0.5)")
    print(f"  {'groups':>6} {'status':>8} {'wall':>8} {'gap':>8} {'fixed':>6} {'greedy':>8} {'greedy short by':>16}")
    for n in (50, 500, 5000):
        gains, costs, budgets = random_instance(n)
        solution = solve(gains, costs, budgets)
        start = time.perf_counter()
        bits = greedy(gains, costs, budgets)
        greedy_time = time.perf_counter() - start
        short = 1 - _objective(gains, bits) / solution.objective
        print(f"  {n:6d} {solution.status:>8} {solution.wall_time_s:7.2f}s {solution.gap:8.1e} {solution.fixed_groups:6d} "
              f"{greedy_time:7.2f}s {100 * short:15.4f}%")
    print("  target: OPTIMAL, 5,000 groups under 5 s")


def bench_cli() -> None:
    print("\nWhole `mpq plan` (NorthPole, --budget latency=0.5, EAGL), median of 3 runs")
    for arch, target in (("resnet50", 2.0), ("bert-base", 5.0)):
        path = exported(arch)
        command = [sys.executable, "-m", "planner", "plan", str(path), "--hw", "northpole", "--budget", "latency=0.5"]
        subprocess.run(command, check=True, capture_output=True)  # warm the page cache
        wall = median_time(lambda: subprocess.run(command, check=True, capture_output=True), repeats=3)
        print(f"  {arch:10} {wall:5.2f} s (target < {target:g} s)")


if __name__ == "__main__":
    bench_eagl()
    bench_solver()
    bench_cli()
