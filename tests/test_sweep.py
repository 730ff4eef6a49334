"""mpq sweep: variants of a spec, the exact frontier per variant, plans at targets and budgets."""
from __future__ import annotations

import csv
import io
import itertools
import json
import math

import numpy as np
import pytest

from conftest import assert_user_error, kill_when_lines, mpq
from costmodels import load_cost_model
from hw import load_spec
from planner import load_graph
from planner.costs import cost_table
from planner.gains import compute
from planner.solve import solve
from planner.solve.sweep import apply, load_base, pareto_frontier, parse_vary, variants


@pytest.fixture(scope="module")
def small(exported):
    """A real MobileNetV2-style graph (17 groups, 15 free) and its northpole costs and EAGL gains."""
    graph = load_graph(exported("mobilenet"))
    table = cost_table(graph, load_spec("northpole"), load_cost_model("northpole"))
    return graph, table, compute("eagl", graph, [2, 4, 8])


def _rows(path) -> list[dict]:
    return list(csv.DictReader(io.StringIO(open(path).read())))


def _sweep(model, tmp_path, *args, name="s"):
    out = tmp_path / f"{name}.json"
    result = mpq("sweep", model, *args, "-o", out, "-o", tmp_path / f"{name}.csv")
    assert result.returncode == 0, result.stderr
    return json.loads(out.read_text()), _rows(tmp_path / f"{name}.csv"), result


# ------------------------------------------------------------------------------ the exact frontier

@pytest.mark.parametrize("method", ["eagl", "uniform"])
def test_frontier_is_every_pareto_optimal_plan(small, method):
    """Against brute force: all 3^9 plans of the first 9 groups, their Pareto set by sorting
    (uniform gains: many plans tie on gain)."""
    graph, table, gains = small
    gains = gains if method == "eagl" else compute("uniform", graph, [2, 4, 8])
    costs, values = table.groups[:9], gains.by_group[:9]
    plans = []
    for bits in itertools.product(*(sorted(c) for c in costs)):
        cost = gain = 0.0
        for g, b in enumerate(bits):
            cost += costs[g][b]["latency_s"]
            gain += values[g][b]
        plans.append((cost, -gain))
    expected, best = [], -math.inf
    for cost, neg in sorted(plans):
        if -neg > best:
            expected.append((cost, -neg))
            best = -neg
    front = pareto_frontier(values, costs, "latency_s")
    assert len(front.costs) == len(expected) > 10
    assert list(front.costs) == pytest.approx([c for c, _ in expected], rel=1e-12)
    assert list(front.gains) == pytest.approx([g for _, g in expected], rel=1e-12)
    for i in range(len(front.costs)):  # each point's plan has that point's cost and gain
        bits = front.plan(i)
        assert sum(costs[g][b]["latency_s"] for g, b in enumerate(bits)) == pytest.approx(front.costs[i], rel=1e-12)
        assert sum(values[g][b] for g, b in enumerate(bits)) == pytest.approx(front.gains[i], rel=1e-12)


def test_frontier_agrees_with_the_cpsat_optimum_at_every_budget(small):
    _, table, gains = small
    front = pareto_frontier(gains.by_group, table.groups, "latency_s")
    low, high = front.costs[0], front.costs[-1]
    for r in (0.0, 0.1, 0.33, 0.5, 0.77, 1.0):
        limit = low + r * (high - low)
        solution = solve(gains.by_group, table.groups, {"latency_s": limit})
        assert solution.status == "OPTIMAL"
        assert front.gains[front.best_within(limit)] == pytest.approx(solution.objective, rel=1e-9, abs=1e-9)


# ------------------------------------------------------------------------------ properties

def test_adding_a_precision_never_makes_a_frontier_worse(exported, tmp_path):
    doc, rows, _ = _sweep(exported("mobilenet"), tmp_path, "--hw", "northpole", "--vary", "precisions=8/4,8/2,4,8",
                          "--target-gain", "0.5", "--target-gain", "0.8", "--target-gain", "0.95")
    fronts = {tuple(v["values"]["precisions"]): v["frontier"] for v in doc["variants"]}
    for small_set, large_set in [((8,), (4, 8)), ((4, 8), (2, 4, 8)), ((8,), (2, 4, 8))]:
        big = fronts[large_set]
        for cost, gain in zip(*fronts[small_set].values()):
            assert any(c <= cost and g >= gain for c, g in zip(big["costs"], big["gains"])), (small_set, cost, gain)
        for target in ("gain>=0.5", "gain>=0.8", "gain>=0.95"):
            latency = {r["precisions"]: float(r["latency_s"]) for r in rows if r["given"] == target}
            assert latency[" ".join(map(str, large_set))] <= latency[" ".join(map(str, small_set))]
    assert fronts[(2, 4, 8)]["costs"][0] < fronts[(4, 8)]["costs"][0] < fronts[(8,)]["costs"][0]


def test_doubling_cores_halves_every_latency_and_keeps_the_plans(exported, tmp_path):
    doc, rows, _ = _sweep(exported("resnet18"), tmp_path, "--hw", "northpole", "--vary", "cores=64,128,256",
                          "--target-gain", "0.9", "--budget", "latency=0.3", "--budget", "latency=0.7,weight_bytes=0.5")
    for given in ("gain>=0.9", "latency=0.3", "latency=0.7,weight_bytes=0.5"):
        by_cores = {int(r["cores"]): r for r in rows if r["given"] == given}
        for cores in (64, 128):
            slow, fast = by_cores[cores], by_cores[2 * cores]
            assert fast["bits"] == slow["bits"] and fast["objective"] == slow["objective"]
            assert float(fast["latency_s"]) == float(slow["latency_s"]) / 2  # exactly: a power of two
            assert fast["weight_bytes"] == slow["weight_bytes"]
    fronts = {v["values"]["cores"]: v["frontier"] for v in doc["variants"]}
    assert fronts[128]["gains"] == fronts[64]["gains"]
    assert fronts[128]["costs"] == [c / 2 for c in fronts[64]["costs"]]


SHARED = ["method", "fraction", "limit", "objective", "bound", "status", "latency_s", "weight_bytes", "bits"]


def test_one_variant_equals_mpq_frontier_in_the_shared_columns(exported, tmp_path):
    model = exported("mobilenet")
    result = mpq("frontier", model, "--hw", "northpole", "--points", "5", "--csv", tmp_path / "f.csv")
    assert result.returncode == 0, result.stderr
    budgets = [a for r in ("0.0", "0.25", "0.5", "0.75", "1.0") for a in ("--budget", f"latency={r}")]
    _, rows, _ = _sweep(model, tmp_path, "--hw", "northpole", *budgets)
    frontier = _rows(tmp_path / "f.csv")
    assert len(rows) == len(frontier) == 5
    assert [[r[c] for c in SHARED] for r in rows] == [[r[c] for c in SHARED] for r in frontier]
    assert all(r["variant"] == "0" and r["status"] == "OPTIMAL" for r in rows)


def test_killed_sweep_recomputes_only_unfinished_variants(exported, tmp_path):
    model = exported("resnet18")
    args = ["sweep", model, "--hw", "northpole", "--vary", "cores=16,32,64,128,256,512,1024,2048",
            "--vary", "precisions=4,8/2,4,8", "--target-gain", "0.9", "--budget", "latency=0.3",
            "--budget", "latency=0.6", "--resume-file", tmp_path / "resume.jsonl"]
    whole = mpq(*args, "-o", tmp_path / "whole.csv")
    assert whole.returncode == 0, whole.stderr
    (tmp_path / "resume.jsonl").unlink()
    kill_when_lines([*args, "-o", tmp_path / "cut.csv"], tmp_path / "resume.jsonl", 2, timeout_s=120, poll_s=0.005)
    done = len((tmp_path / "resume.jsonl").read_text().splitlines())
    assert 2 <= done < 16 and not (tmp_path / "cut.csv").exists()
    again = mpq(*args, "-o", tmp_path / "cut.csv")
    assert again.returncode == 0, again.stderr
    progress = [line for line in again.stderr.splitlines() if line.startswith("sweep [")]
    assert len(progress) == 16
    assert sum("from the job store" in line for line in progress) == done
    assert sum("computed" in line for line in progress) == 16 - done
    assert (tmp_path / "cut.csv").read_bytes() == (tmp_path / "whole.csv").read_bytes()


# ------------------------------------------------------------------------------ rows, costs, outputs

def test_infeasible_variants_are_rows(exported, tmp_path):
    _, rows, result = _sweep(exported("mobilenet"), tmp_path, "--hw", "northpole",
                             "--vary", "memory.on_chip_bytes=1000,2.24e8", "--target-gain", "0.9",
                             "--budget", "latency_s<=1e-12")
    tiny = [r for r in rows if r["memory.on_chip_bytes"] == "1000"]
    assert [r["status"] for r in tiny] == ["infeasible", "infeasible"]
    assert all("on-chip memory" in r["note"] and not r["bits"] for r in tiny)
    big = {r["given"]: r for r in rows if r["memory.on_chip_bytes"] == "224000000"}
    assert big["gain>=0.9"]["status"] == "OPTIMAL" and big["gain>=0.9"]["bits"]
    assert big["latency_s<=1e-12"]["status"] == "infeasible" and "cheapest plan" in big["latency_s<=1e-12"]["note"]


def test_hardware_cost_and_pareto_set(exported, tmp_path):
    doc, rows, result = _sweep(exported("mobilenet"), tmp_path, "--hw", "northpole_area",
                               "--vary", "cores=64,128,256", "--vary", "precisions=4,8/2,4,8", "--target-gain", "0.6",
                               "--target-gain", "0.95")
    for r in rows:  # cores x sum over precisions of MACs/cycle x area per MAC unit + bytes x area per byte
        per_core = 2048 * 4.19e-4 + 4096 * 6.7e-5 + (8192 * 3.6e-5 if r["precisions"] == "2 4 8" else 0.0)
        assert float(r["hardware_cost"]) == pytest.approx(int(r["cores"]) * per_core + 2.24e8 * 4.0e-6, rel=1e-12)
    for given in ("gain>=0.6", "gain>=0.95"):
        mine = [r for r in rows if r["given"] == given]
        points = [(float(r["hardware_cost"]), float(r["latency_s"])) for r in mine]
        for r, (hw, lat) in zip(mine, points):
            beaten = any(h <= hw and l <= lat and (h, l) != (hw, lat) for h, l in points)
            assert r["pareto"] == ("no" if beaten else "yes")
    # at 95% the 2-bit mode buys no latency on this model: its variants cost more for the same plan
    assert {r["precisions"] for r in rows if r["given"] == "gain>=0.95" and r["pareto"] == "yes"} == {"4 8"}
    assert "*" in result.stdout and doc["hardware_cost_unit"] == "mm2 at 45 nm"


def test_outputs_are_deterministic_on_any_executor(exported, tmp_path):
    args = [exported("mobilenet"), "--hw", "northpole", "--vary", "cores=128,256", "--target-gain", "0.9",
            "--budget", "latency=0.5"]
    _sweep(*args[:1], tmp_path, *args[1:], name="a")
    _sweep(*args[:1], tmp_path, *args[1:], "--executor", "processes", "--workers", "2", name="b")
    for suffix in ("csv", "json"):
        assert (tmp_path / f"a.{suffix}").read_bytes() == (tmp_path / f"b.{suffix}").read_bytes()


def test_samples_are_seeded_points_of_the_box():
    base, data = load_base("northpole")
    axes = [parse_vary("cores=64,512"), parse_vary("clock_hz=2e8,1e9"), parse_vary("precisions=4,8/2,4,8")]
    first = variants(data, base.path, axes, samples=20, seed=3)
    again = variants(data, base.path, axes, samples=20, seed=3)
    assert [v.values for v in first] == [v.values for v in again] != [v.values for v in variants(data, base.path, axes, samples=20, seed=4)]
    for v in first:
        assert isinstance(v.values["cores"], int) and 64 <= v.values["cores"] <= 512 and v.spec.cores == v.values["cores"]
        assert 2e8 <= v.spec.clock_hz <= 1e9
        assert v.spec.precisions == v.values["precisions"]
    assert len({v.values["precisions"] for v in first}) == 2


def test_a_precision_set_restricts_every_per_precision_table():
    _, data = load_base("northpole_area")
    varied = apply(data, {"precisions": (4, 8), "macs_per_cycle_per_core.4": 8192})
    assert sorted(varied["macs_per_cycle_per_core"]) == [4, 8] and sorted(varied["hardware_cost"]["per_mac_unit"]) == [4, 8]
    assert varied["macs_per_cycle_per_core"][4]["value"] == 8192 and varied["macs_per_cycle_per_core"][4]["assumption"]
    assert data["macs_per_cycle_per_core"][4]["value"] == 4096  # the base is untouched


@pytest.mark.parametrize("vary, words", [
    ("corez=1,2", ["corez", "not a numeric spec field"]),
    ("pins.first=4", ["pins.first", "not a numeric spec field"]),
    ("cores=64,abc", ["cores", "'abc' is not a number"]),
    ("cores=0", ["cores", "expected a number > 0"]),
    ("cores=1.5", ["cores", "not a whole number"]),
    ("memory.on_chip_bytes=-1", ["memory.on_chip_bytes", "> 0"]),
    ("precisions=4,x", ["precisions", "not a set of bit widths"]),
    ("precisions=3,8", ["precisions", "macs_per_cycle_per_core", "3 bits"]),
    ("precisions=1,8", ["precisions", "1", ">= 2"]),
    ("macs_per_cycle_per_core.3=100", ["macs_per_cycle_per_core.3", "not in precisions"]),
    ("cores", ["cores", "FIELD=V1,V2"]),
])
def test_bad_vary_is_a_user_error_naming_the_field(exported, tmp_path, vary, words):
    out = tmp_path / "s.csv"
    result = mpq("sweep", exported("mobilenet"), "--hw", "northpole", "--vary", vary, "--target-gain", "0.9", "-o", out)
    assert_user_error(result, *words)
    assert not out.exists()


def test_a_target_or_budget_is_needed_and_targets_are_fractions(exported):
    assert_user_error(mpq("sweep", exported("mobilenet"), "--hw", "northpole"), "--target-gain", "--budget")
    assert_user_error(mpq("sweep", exported("mobilenet"), "--hw", "northpole", "--target-gain", "1.5"), "--target-gain 1.5")


# ------------------------------------------------------------------------------ plans fit the chip

def _weight_bytes(graph, bits) -> float:
    """On-chip bytes of a plan counted from the graph's layers: parameters x bits / 8."""
    params = {layer.name: layer.params for layer in graph.layers}
    return sum(params[name] * b / 8 for group, b in zip(graph.groups, bits) for name in group.layers)


def _byte_costs(graph, table) -> list[dict[int, dict[str, float]]]:
    """Each group's options with its latency and its weight bytes counted from the graph."""
    params = {layer.name: layer.params for layer in graph.layers}
    return [{b: {"latency_s": options[b]["latency_s"], "bytes": sum(params[n] for n in group.layers) * b / 8}
             for b in options} for group, options in zip(graph.groups, table.groups)]


@pytest.mark.parametrize("share", [0.15, 0.5, 0.85])
def test_frontier_under_a_binding_capacity_is_every_pareto_optimal_plan_that_fits(small, share):
    """Against brute force: the 3^8 plans of the first 9 groups with a capacity that some but
    not all of them meet; their bytes counted from the graph, their Pareto set by sorting."""
    graph, table, gains = small
    costs, values = table.groups[:9], gains.by_group[:9]
    sizes = _byte_costs(graph, table)[:9]
    plans = []
    for bits in itertools.product(*(sorted(c) for c in costs)):
        plans.append((sum(costs[g][b]["latency_s"] for g, b in enumerate(bits)),
                      sum(values[g][b] for g, b in enumerate(bits)),
                      sum(sizes[g][b]["bytes"] for g, b in enumerate(bits))))
    low, high = min(p[2] for p in plans), max(p[2] for p in plans)
    capacity = low + share * (high - low)
    fitting = [(cost, gain) for cost, gain, size in plans if size <= capacity]
    assert 0 < len(fitting) < len(plans)
    expected, best = [], -math.inf
    for cost, gain in sorted(fitting, key=lambda p: (p[0], -p[1])):
        if gain > best:
            expected.append((cost, gain))
            best = gain
    free = pareto_frontier(values, costs, "latency_s")
    front = pareto_frontier(values, costs, "latency_s", resident=table.resident[:9], capacity=capacity)
    assert len(front.costs) == len(expected) > 5
    assert list(front.costs) == pytest.approx([c for c, _ in expected], rel=1e-12)
    assert list(front.gains) == pytest.approx([g for _, g in expected], rel=1e-12)
    assert front.gains[-1] < free.gains[-1]  # the limit binds: the dearest plans do not fit
    for i in range(len(front.costs)):
        bits = front.plan(i)
        assert sum(sizes[g][b]["bytes"] for g, b in enumerate(bits)) <= capacity
        assert sum(costs[g][b]["latency_s"] for g, b in enumerate(bits)) == pytest.approx(front.costs[i], rel=1e-12)


def test_frontier_under_a_capacity_on_adversarial_instances():
    """Seeded random instances against brute force: costs not monotone in bits, equal costs and
    gains (ties), negative gains, groups with one option, capacities at the smallest plan, the
    largest and between."""
    rng = np.random.default_rng(7)
    checked = 0
    for _ in range(300):
        groups = int(rng.integers(1, 7))
        costs, values, sizes = [], [], []
        for _ in range(groups):
            bits = sorted(int(b) for b in rng.choice([2, 4, 8], size=int(rng.integers(1, 4)), replace=False))
            params = int(rng.integers(0, 40))
            costs.append({b: {"latency_s": float(rng.integers(0, 4) if rng.random() < 0.5 else rng.random())} for b in bits})
            values.append({b: float(rng.integers(-2, 4) if rng.random() < 0.5 else rng.normal()) for b in bits})
            sizes.append({b: params * b / 8 for b in bits})
        plans = [(sum(costs[g][b]["latency_s"] for g, b in enumerate(bits)), sum(values[g][b] for g, b in enumerate(bits)),
                  sum(sizes[g][b] for g, b in enumerate(bits)))
                 for bits in itertools.product(*(sorted(c) for c in costs))]
        low, high = min(p[2] for p in plans), max(p[2] for p in plans)
        capacity = [low, high, low + float(rng.random()) * (high - low)][int(rng.integers(3))]
        expected, best = [], -math.inf
        for cost, gain, _ in sorted((p for p in plans if p[2] <= capacity), key=lambda p: (p[0], -p[1])):
            if gain > best + 1e-9:
                expected.append((cost, gain))
                best = gain
        front = pareto_frontier(values, costs, "latency_s", resident=sizes, capacity=capacity)
        assert list(front.costs) == pytest.approx([c for c, _ in expected], abs=1e-9)
        assert list(front.gains) == pytest.approx([g for _, g in expected], abs=1e-9)
        for i in range(len(front.costs)):
            assert sum(sizes[g][b] for g, b in enumerate(front.plan(i))) <= capacity
        checked += low < capacity < high
    assert checked > 50


def _variant_table(graph, **values):
    """The northpole cost table of a variant of the northpole spec (fields by dotted path)."""
    from hw import parse_spec

    base, data = load_base("northpole")
    return cost_table(graph, parse_spec(apply(data, values), base.path), load_cost_model("northpole"))


def test_frontier_under_a_binding_capacity_agrees_with_cpsat_at_every_budget(small):
    """On the whole model with 40 kB of on-chip memory (its plans take 24 to 55 kB): at every
    budget, the frontier's best point is CP-SAT's optimum with the bytes as a second budget."""
    graph, _, gains = small
    table = _variant_table(graph, **{"memory.on_chip_bytes": 40000})
    sizes = _byte_costs(graph, table)
    front = pareto_frontier(gains.by_group, table.groups, "latency_s", resident=table.resident, capacity=40000)
    whole = solve(gains.by_group, sizes, {"bytes": 40000})
    assert whole.status == "OPTIMAL" and front.gains[-1] == pytest.approx(whole.objective, rel=1e-9)
    assert whole.objective < pareto_frontier(gains.by_group, table.groups, "latency_s").gains[-1]
    low, high = front.costs[0], front.costs[-1]
    for r in (0.0, 0.1, 0.33, 0.5, 0.77, 1.0):
        limit = low + r * (high - low)
        solution = solve(gains.by_group, sizes, {"latency_s": limit, "bytes": 40000})
        assert solution.status == "OPTIMAL"
        assert front.gains[front.best_within(limit)] == pytest.approx(solution.objective, rel=1e-9, abs=1e-9)
        assert _weight_bytes(graph, front.plan(front.best_within(limit))) <= 40000


def test_a_sweep_keeps_every_plan_on_chip_and_says_how_much_fits(exported, small, tmp_path):
    """Capacity min(224 MB, cores x per-core bytes): 20 kB holds no plan (an infeasible row
    saying so), 40 kB holds some; every plan fits, the largest gain is CP-SAT's optimum under
    the capacity, and each target plan is the cheapest reaching its threshold (CP-SAT finds none
    a little cheaper)."""
    graph, table, gains = small
    doc, rows, _ = _sweep(exported("mobilenet"), tmp_path, "--hw", "northpole", "--vary", "cores=1,256",
                          "--vary", "memory.per_core_bytes=20000,40000", "--target-gain", "0.9",
                          "--target-gain", "1", "--budget", "latency=0.5", "--budget", "latency=1")
    sizes = _byte_costs(graph, table)
    largest = {}
    for r in rows:
        capacity = min(2.24e8, int(r["cores"]) * int(r["memory.per_core_bytes"]))
        if capacity < 24000:  # the smallest plan takes 23,960 bytes
            assert r["status"] == "infeasible" and not r["bits"]
            assert "do not fit on chip" in r["note"] and "holds 20KB" in r["note"], r["note"]
            continue
        assert r["status"] == "OPTIMAL", r
        bits = [int(b) for b in r["bits"].split()]
        assert _weight_bytes(graph, bits) <= capacity
        assert float(r["weight_bytes"]) == _weight_bytes(graph, bits)
        if capacity not in largest:
            largest[capacity] = solve(gains.by_group, sizes, {"bytes": capacity}).objective
        assert float(r["max_gain"]) == pytest.approx(largest[capacity], rel=1e-9)
        if r["kind"] == "target":
            threshold = float(r["gain_threshold"])
            assert float(r["objective"]) >= threshold
            latency = float(r["latency_s"]) * int(r["cores"]) / 256  # in the 256-core table (exactly: compute-bound)
            cheaper = solve(gains.by_group, sizes, {"latency_s": latency * (1 - 1e-6), "bytes": capacity})
            assert cheaper.objective < threshold
    assert sorted(largest) == [40000, 5120000, 10240000] and largest[40000] < largest[5120000] == largest[10240000]
    capacities = {(v["values"]["cores"], v["values"]["memory.per_core_bytes"]): v["weight_capacity"] for v in doc["variants"]}
    assert capacities == {(1, 20000): 20000, (1, 40000): 40000, (256, 20000): 5120000, (256, 40000): 10240000}
    assert [v["status"] for v in doc["variants"]] == ["infeasible", "ok", "ok", "ok"]


def test_one_variant_equals_mpq_frontier_when_the_chip_limit_binds(exported, tmp_path):
    import yaml

    _, data = load_base("northpole")
    data["memory"]["on_chip_bytes"]["value"] = 40000  # the plans of this model take 24 to 55 kB
    spec = tmp_path / "small_northpole.yaml"
    spec.write_text(yaml.safe_dump(data))
    model = exported("mobilenet")
    result = mpq("frontier", model, "--hw", spec, "--points", "5", "--csv", tmp_path / "f.csv")
    assert result.returncode == 0, result.stderr
    budgets = [a for r in ("0.0", "0.25", "0.5", "0.75", "1.0") for a in ("--budget", f"latency={r}")]
    _, rows, _ = _sweep(model, tmp_path, "--hw", spec, *budgets)
    frontier = _rows(tmp_path / "f.csv")
    assert [[r[c] for c in SHARED] for r in rows] == [[r[c] for c in SHARED] for r in frontier]
    assert [r["on_chip_weight_bytes"] for r in rows] == [r["on_chip_weight_bytes"] for r in frontier]
    assert all(r["status"] == "OPTIMAL" and float(r["on_chip_weight_bytes"]) <= 40000 for r in rows)
    assert float(rows[-1]["weight_bytes"]) < 54848  # the dearest plan (all 8-bit) does not fit
