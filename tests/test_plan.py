"""EAGL, the exact solver, plans and frontiers."""
from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import mpq
from costmodels import load_cost_model
from hw import load_spec
from planner import MpqError, load_graph
from planner.costs import cost_table
from planner.gains import compute, grid
from planner.gains.eagl import layer_entropies
from planner.solve import greedy, solve


# ------------------------------------------------------------------------------ EAGL

def test_entropy_of_uniform_levels_is_their_bit_count():
    step = 0.1
    sixteen = np.repeat(np.arange(-8, 8), 50) * step
    assert layer_entropies(sixteen, [4], learned={4: step})[4] == pytest.approx(4.0)
    two = np.repeat([-1.0, 1.0], 300) * step
    assert layer_entropies(two, [4], learned={4: step})[4] == pytest.approx(1.0)
    assert layer_entropies(np.full(100, 0.3), [4], learned={4: step})[4] == pytest.approx(0.0)


def test_entropy_ignores_the_order_of_weights():
    rng = np.random.default_rng(0)
    w = rng.standard_t(4, size=(64, 32, 3, 3)).astype(np.float32)
    shuffled = rng.permutation(w.reshape(-1)).reshape(w.shape)
    assert layer_entropies(w, [2, 4, 8]) == layer_entropies(shuffled, [2, 4, 8])


def test_level_counts_stream_in_chunks(monkeypatch):
    rng = np.random.default_rng(1)
    w = rng.normal(size=300_001).astype(np.float32)
    whole = grid.level_counts(w, {4: 0.3, 8: 0.02})
    monkeypatch.setattr(grid, "CHUNK", 4096)
    monkeypatch.setattr(grid, "SORT_CHUNK", 4093)
    chunked = grid.level_counts(w, {4: 0.3, 8: 0.02})
    assert all((whole[b] == chunked[b]).all() for b in (4, 8))
    assert whole[4].sum() == w.size and len(whole[8]) == 256


def direct_counts(w: np.ndarray, step, bits: int) -> np.ndarray:
    """The level histogram by its definition, clip(floor(w / step + 1/2)) in float32, on the whole
    tensor at once (np.unique), for comparison with grid.level_counts."""
    qn = 2 ** (bits - 1)
    y = np.asarray(w, np.float32) * np.float32(1.0 / step) if not np.ndim(step) else (
        np.asarray(w, np.float32) / np.asarray(step, np.float32))
    levels = np.clip(np.floor(y + np.float32(qn + 0.5)), 0, 2 ** bits - 1).astype(np.int64).reshape(-1)
    used, count = np.unique(levels, return_counts=True)
    out = np.zeros(2 ** bits, np.int64)
    out[used] = count
    return out


def direct_entropy(counts: np.ndarray) -> float:
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log2(p)).sum())


def test_level_counts_of_real_weights_equal_a_direct_count(exported):
    """Every precision from 2 to 16 bits, counted in one pass per tensor, equals the definition."""
    from planner.weights import layer_weights

    graph = load_graph(exported("resnet18"))
    for layer in graph.layers[::6]:
        w = layer_weights(graph, layer).values
        mean = float(np.abs(w).mean())
        steps = {b: grid.lsq_step(mean, b) for b in (2, 3, 4, 8, 16)}
        counts = grid.level_counts(w, steps)
        for b, step in steps.items():
            assert (counts[b] == direct_counts(w, step, b)).all(), (layer.name, b)
    w = layer_weights(graph, graph.layers[0]).values  # per-output-channel steps, and a heavy tail
    per_channel = np.abs(w).mean(axis=(1, 2, 3), keepdims=True) + 1e-3
    counts = grid.level_counts(w, {4: per_channel, 8: per_channel / 16})
    assert (counts[4] == direct_counts(w, per_channel, 4)).all()
    assert (counts[8] == direct_counts(w, per_channel / 16, 8)).all()
    tail = np.random.default_rng(3).standard_t(1.5, size=200_003).astype(np.float32)
    counts = grid.level_counts(tail, {2: 0.7, 4: 0.2, 8: 0.01, 16: 1e-4})
    assert all((counts[b] == direct_counts(tail, s, b)).all() for b, s in {2: 0.7, 4: 0.2, 8: 0.01, 16: 1e-4}.items())


def test_sixteen_bit_entropy_in_linear_memory(exported):
    """A 16-bit grid: EAGL's entropies equal a direct computation, and counting 2M weights
    allocates a few MB (the chunk buffers and 2^16 counts), not a table per level pair."""
    import tracemalloc

    from planner.weights import layer_weights

    graph = load_graph(exported("resnet18"))
    gains = compute("eagl", graph, [8, 16])
    for layer in graph.layers:
        w = layer_weights(graph, layer).values
        expected = direct_entropy(direct_counts(w, grid.lsq_step(grid.mean_abs(w), 16), 16))
        assert gains.extra["entropy_bits"][layer.name]["16"] == pytest.approx(expected, abs=1e-6)  # stored to 6 decimals
    assert all(v[16] > 0 for v, g in zip(gains.by_group, graph.groups) if not g.pinned_bits)
    with pytest.raises(MpqError, match="1- to 16-bit grids"):
        compute("eagl", graph, [8, 32])
    w = np.random.default_rng(4).normal(size=2_000_000).astype(np.float32)
    tracemalloc.start()
    counts = grid.level_counts(w, {16: grid.lsq_step(float(np.abs(w).mean()), 16)})
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert counts[16].sum() == w.size and peak < 8 * 2**20, peak


def test_lsq_and_mse_steps():
    w = np.random.default_rng(2).normal(size=10_000)
    assert grid.lsq_step(np.abs(w).mean(), 4) == pytest.approx(2 * np.abs(w).mean() / np.sqrt(7))
    mse = grid.mse_step(w, 4)
    assert grid.quant_error(w, mse, 4) <= grid.quant_error(w, grid.lsq_step(np.abs(w).mean(), 4), 4)


def test_eagl_gains_on_a_real_graph(exported):
    graph = load_graph(exported("resnet18"))
    gains = compute("eagl", graph, [2, 4, 8])
    for group, values in zip(graph.groups, gains.by_group):
        if group.pinned_bits:
            assert values == {8: 0.0}
        else:
            assert values[2] == 0 and 0 < values[4] <= 4 * len(group.layers) and values[8] > values[4]
    difference = compute("eagl", graph, [2, 4], mode="difference")
    assert all(v[4] < g[4] for v, g, grp in zip(difference.by_group, gains.by_group, graph.groups) if not grp.pinned_bits)


def test_plan_end_to_end_with_a_sixteen_bit_spec(exported, tmp_path):
    """precisions [8, 16]: `mpq plan` runs EAGL at 16 bits and gives each group the value of its
    16-bit entropies (the sum over its layers, computed here from the weights directly)."""
    import yaml

    from planner.weights import layer_weights

    spec = yaml.safe_load(open("hw/gpu_a100.yaml"))
    spec.update(name="a100_int16", precisions=[8, 16])
    spec["macs_per_cycle_per_core"] = {8: spec["macs_per_cycle_per_core"][8], 16: {"value": 1024, "source": "test"}}
    spec["energy"]["per_mac_j"] = {8: spec["energy"]["per_mac_j"][8], 16: {"value": 8e-13, "source": "test"}}
    (tmp_path / "a100_int16.yaml").write_text(yaml.safe_dump(spec))
    model = exported("resnet18")
    result = mpq("plan", model, "--hw", tmp_path / "a100_int16.yaml", "--budget", "latency=0.5", "-o", tmp_path / "plan.json")
    assert result.returncode == 0, result.stderr
    doc = json.loads((tmp_path / "plan.json").read_text())
    assert {g["bits"] for g in doc["groups"]} == {8, 16}
    graph = load_graph(model)
    for group in doc["groups"]:
        if group["pinned_bits"] is None:
            expected = sum(direct_entropy(direct_counts(w, grid.lsq_step(grid.mean_abs(w), 16), 16))
                           for w in (layer_weights(graph, graph.layer(n)).values for n in group["layers"]))
            assert group["options"]["16"]["gain"] == pytest.approx(expected, rel=1e-9)


def test_eagl_weightless_layers_get_the_median(exported):
    graph = load_graph(exported("bert"))
    gains = compute("eagl", graph, [2, 4])
    assert len(gains.extra["estimated_layers"]) == 24


# ------------------------------------------------------------------------------ solver

def brute_force(gains, costs, budgets):
    """Best total gain over every combination (numpy, vectorised over the product)."""
    options = [sorted(c) for c in costs]
    index = np.stack(np.meshgrid(*[np.arange(len(o)) for o in options], indexing="ij"), -1).reshape(-1, len(options))
    total_gain = sum(np.array([gains[g][b] for b in options[g]])[index[:, g]] for g in range(len(options)))
    feasible = np.ones(len(index), bool)
    for m, limit in budgets.items():
        spent = sum(np.array([costs[g][b][m] for b in options[g]])[index[:, g]] for g in range(len(options)))
        feasible &= spent <= limit * (1 + 1e-9)
    if not feasible.any():
        return None
    return float(total_gain[feasible].max())


@st.composite
def instances(draw):
    n = draw(st.integers(1, 12))
    n_budgets = draw(st.integers(1, 2))
    bits = [2, 4, 8]
    costs, gains = [], []
    for _ in range(n):
        pinned = draw(st.booleans()) and draw(st.booleans())
        offered = [8] if pinned else bits
        base = [draw(st.floats(0.01, 100)) for _ in range(n_budgets)]
        costs.append({b: {f"m{k}": base[k] * (b / 8) ** draw(st.floats(0.5, 1.5)) for k in range(n_budgets)} for b in offered})
        steps = [draw(st.floats(0, 10)) for _ in offered]
        gains.append({b: float(sum(steps[:i])) for i, b in enumerate(offered)})
    fractions = [draw(st.floats(0, 1)) for _ in range(n_budgets)]
    budgets = {}
    for k in range(n_budgets):
        low = sum(min(c[f"m{k}"] for c in o.values()) for o in costs)
        high = sum(max(c[f"m{k}"] for c in o.values()) for o in costs)
        budgets[f"m{k}"] = low + fractions[k] * (high - low)
    return gains, costs, budgets


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(instances())
def test_cpsat_optimum_equals_brute_force(instance):
    gains, costs, budgets = instance
    best = brute_force(gains, costs, budgets)
    try:
        solution = solve(gains, costs, budgets)
    except MpqError:
        assert best is None
        return
    assert solution.status == "OPTIMAL"
    assert solution.objective == pytest.approx(best, rel=1e-9, abs=1e-9)
    for m, limit in budgets.items():
        assert solution.totals[m] <= limit * (1 + 1e-9)
    for g, options in enumerate(costs):
        assert solution.bits[g] in options  # pinned groups (one option) keep their pin
    bits = greedy(gains, costs, budgets)
    if bits is not None:
        assert sum(gains[g][b] for g, b in enumerate(bits)) <= solution.objective + 1e-9


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.floats(0.01, 50), st.floats(0, 10)), min_size=1, max_size=12), st.floats(0, 1))
def test_knapsack_solver_agrees_with_cpsat(items, fraction):
    costs = [{2: {"latency_s": c / 4}, 4: {"latency_s": c / 2}} for c, _ in items]
    gains = [{2: 0.0, 4: g} for _, g in items]
    budgets = {"latency_s": sum(c / 4 for c, _ in items) + fraction * sum(c / 4 for c, _ in items)}
    a = solve(gains, costs, budgets, method="cpsat")
    b = solve(gains, costs, budgets, method="knapsack")
    assert a.objective == pytest.approx(b.objective, rel=1e-9, abs=1e-9)
    assert b.totals["latency_s"] <= budgets["latency_s"] * (1 + 1e-12)


def test_large_instance_is_proven_optimal():
    rng = np.random.default_rng(0)
    n, bits = 500, [2, 4, 8]
    macs, params = rng.lognormal(0, 1.5, n), rng.lognormal(0, 1.5, n)
    costs = [{b: {"latency_s": macs[i] * b / 8, "weight_bytes": params[i] * b / 8} for b in bits} for i in range(n)]
    step = rng.lognormal(0, 1, (n, 2))
    gains = [{2: 0.0, 4: step[i, 0], 8: step[i, 0] + step[i, 1]} for i in range(n)]
    budgets = {"latency_s": macs.sum() * 0.5, "weight_bytes": params.sum() * 0.6}
    solution = solve(gains, costs, budgets)
    assert solution.status == "OPTIMAL" and solution.gap == 0


# ------------------------------------------------------------------------------ CLI: plan and frontier

def test_resnet50_plan_on_northpole(exported, tmp_path):
    model = exported("resnet50")
    result = mpq("plan", model, "--hw", "northpole", "--budget", "latency=0.5", "-o", tmp_path / "plan.json",
                 "--csv", tmp_path / "bitmap.csv")
    assert result.returncode == 0, result.stderr
    assert "solver OPTIMAL" in result.stdout
    doc = json.loads((tmp_path / "plan.json").read_text())
    assert doc["schema"] == "mpq.plan/v1" and doc["solver"]["status"] == "OPTIMAL"
    graph = load_graph(model)
    bits = {l["name"]: l["w_bits"] for l in doc["layers"]}
    assert bits[graph.layers[0].name] == 8 and bits[graph.layers[-1].name] == 8
    for group in graph.groups:
        assert len({bits[n] for n in group.layers}) == 1  # downsample convs keep their partner's bits
    assert doc["totals"]["latency_s"] <= doc["budgets"][0]["limit"]
    csv = (tmp_path / "bitmap.csv").read_text().splitlines()
    assert csv[0] == "layer,weight,w_bits,a_bits" and len(csv) == 55


def test_same_inputs_same_bytes(exported, tmp_path):
    model = exported("resnet18")
    outputs = []
    for k in range(2):
        out = tmp_path / f"plan{k}.json"
        assert mpq("plan", model, "--hw", "northpole", "--budget", "latency=0.4", "--budget", "weight_bytes<=8MB",
                   "-o", out, "--csv", tmp_path / f"b{k}.csv").returncode == 0
        outputs.append((out.read_bytes(), (tmp_path / f"b{k}.csv").read_bytes()))
    assert outputs[0] == outputs[1]


@pytest.mark.parametrize("budget,words", [
    ("latency_s<=1e-12", ["infeasible", "the cheapest plan reaches latency_s="]),
    ("latency<=", ["expected METRIC<=VALUE"]),
    ("latency=1.5", ["fractional budget"]),
    ("weight_bytes<=3parsecs", ["unit"]),
    ("power_w<=5", ["unknown metric 'power_w'"]),
])
def test_bad_budgets_exit_2_and_write_nothing(exported, tmp_path, budget, words):
    out = tmp_path / "plan.json"
    result = mpq("plan", exported("resnet18"), "--hw", "northpole", "--budget", budget, "-o", out, "--csv", tmp_path / "b.csv")
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert all(w in result.stderr for w in words), result.stderr
    assert not out.exists() and not (tmp_path / "b.csv").exists() and list(tmp_path.iterdir()) == []


def test_gains_file_for_another_model(exported, tmp_path):
    gains = tmp_path / "gains.json"
    assert mpq("gains", "eagl", exported("mobilenet"), "--hw", "northpole", "-o", gains).returncode == 0
    out = tmp_path / "plan.json"
    result = mpq("plan", exported("resnet18"), "--hw", "northpole", "--budget", "latency=0.5", "--gains", gains, "-o", out)
    assert result.returncode == 2 and "for another model" in result.stderr and not out.exists()
    ok = mpq("plan", exported("mobilenet"), "--hw", "northpole", "--budget", "latency=0.5", "--gains", gains, "--json")
    assert ok.returncode == 0 and json.loads(ok.stdout)["gains"]["method"] == "eagl"


def test_explain_and_frontier(exported, tmp_path):
    model = exported("resnet18")
    result = mpq("plan", model, "--hw", "northpole", "--budget", "latency=0.5", "--explain")
    assert result.returncode == 0 and "most contested groups" in result.stdout
    result = mpq("frontier", model, "--hw", "northpole", "--points", "5", "--gains", "eagl", "--gains", "params",
                 "--plot", tmp_path / "f.png", "--csv", tmp_path / "f.csv", "--json")
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert len(doc["points"]) == 10 and all(p["status"] == "OPTIMAL" for p in doc["points"])
    eagl = [p["objective"] for p in doc["points"] if p["method"] == "eagl"]
    assert eagl == sorted(eagl)  # more budget never lowers the optimum
    assert (tmp_path / "f.png").read_bytes()[:4] == b"\x89PNG"
    assert not (tmp_path / "f.csv.partial.jsonl").exists()


def test_frontier_resumes_from_its_checkpoint(exported, tmp_path):
    from planner.checkpoint import Checkpoint
    from planner.frontier import sweep

    graph = load_graph(exported("resnet18"))
    table = cost_table(graph, load_spec("northpole"), load_cost_model("northpole"))
    gains = compute("eagl", graph, [2, 4, 8])
    checkpoint = Checkpoint(tmp_path / "ck.jsonl")
    first = sweep(table, [gains], "latency_s", [0.0, 0.5], checkpoint=checkpoint)
    calls = []
    again = sweep(table, [gains], "latency_s", [0.0, 0.5, 1.0], checkpoint=Checkpoint(tmp_path / "ck.jsonl"),
                  progress=lambda d, t: calls.append(d))
    assert [p.objective for p in again[:2]] == [p.objective for p in first]
    assert len(Checkpoint(tmp_path / "ck.jsonl").done) == 3
