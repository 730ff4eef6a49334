"""EAGL, the exact solver, plans and frontiers."""
from __future__ import annotations

import json
import math
import subprocess
import sys

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
from planner.solve.knapsack import greedy, solve


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


def test_entropy_of_subnormal_weights(recwarn):
    """Weights around 1e-42 (float32 subnormals) have an LSQ step whose inverse overflows float32:
    every weight's level was inf or NaN, EAGL printed numpy's overflow warnings and gave 1 bit at
    4 and 8 bits. Now the entropies equal the float64 count of the same levels, with no warning."""
    w = (np.random.default_rng(0).standard_normal(4096) * 2.0 ** -140).astype(np.float32)
    assert 0 < np.abs(w).max() < np.finfo(np.float32).tiny
    got = layer_entropies(w, [2, 4, 8])
    w64 = w.astype(np.float64)
    for bits in (2, 4, 8):
        qn, qp = grid.qrange(bits)
        step = 2 * np.abs(w64).mean() / np.sqrt(qp)
        levels = np.clip(np.floor(w64 / step + 0.5), -qn, qp)
        p = np.unique(levels, return_counts=True)[1] / levels.size
        assert got[bits] == pytest.approx(-(p * np.log2(p)).sum(), rel=1e-3)
    assert got[8] > 4 and not [w for w in recwarn if issubclass(w.category, RuntimeWarning)]


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
    from planner.graph.weights import layer_weights

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


def test_weights_streamed_from_the_file_equal_onnx_load(exported, monkeypatch):
    """A large initializer is read from the .onnx file in chunks (planner.onnxfile.FileTensor):
    the chunks, the whole read and mean |w| equal onnx.load's array and the definition of
    mean_abs (float32 sum per CHUNK weights, chunks added in float64), at chunk sizes that do and
    do not divide the tensor; level counts from the stream equal those of the array."""
    path = exported("resnet18")
    graph = load_graph(path)
    weights = onnx_weights(path)
    layer = max((l for l in graph.layers if l.weight), key=lambda l: l.params)
    stream = graph.tensors.stream(layer.weight)
    expected = weights[layer.weight]
    assert stream is not None and stream.size == expected.size
    for size in (4096, 4093, 1 << 20):
        monkeypatch.setattr(grid, "CHUNK", size)
        assert np.array_equal(np.concatenate([c.copy() for c in grid.chunks(stream)]), expected.reshape(-1))
        flat = expected.reshape(-1)
        definition = 0.0
        for start in range(0, flat.size, size):
            definition += float(np.abs(flat[start:start + size]).sum(dtype=np.float32))
        assert grid.mean_abs(stream) == grid.mean_abs(expected) == definition / flat.size
    assert np.array_equal(np.asarray(stream), expected)
    buffer = np.full(stream.size + 7, np.nan, np.float32)  # a reused buffer, larger than the tensor
    assert np.array_equal(stream.read_into(buffer), expected) and np.isnan(buffer[stream.size:]).all()
    steps = {2: 0.05, 4: 0.01, 8: 0.001}
    from_file, from_array = grid.level_counts(stream, steps), grid.level_counts(expected, steps)
    assert all(np.array_equal(from_file[b], from_array[b]) for b in steps)


def test_file_tensor_read_into_a_buffer_refuses_a_short_file(tmp_path):
    from planner.graph.onnxfile import FileTensor

    path = tmp_path / "w.bin"
    np.arange(10, dtype=np.float32).tofile(path)
    assert np.array_equal(FileTensor(path, 8, np.float32, (2, 4)).read_into(np.empty(16, np.float32)),
                          np.arange(2, 10, dtype=np.float32).reshape(2, 4))
    with pytest.raises(MpqError, match="ends inside a tensor's data"):
        FileTensor(path, 8, np.float32, (3, 4)).read_into(np.empty(12, np.float32))


@pytest.mark.parametrize("n, keys, extremes", [(1, 4096, False), (65536, 4096, True), (70_000, 4096, False),
                                               (4093, 4096, True), (300_001, 65536, True), (100_000, 16, False)])
def test_sorted_key_counts_by_binary_search_and_by_runs_equal_bincount(n, keys, extremes):
    """Both ways of counting a chunk's sorted keys (binary search where the keys are few, runs
    otherwise) give np.bincount of the keys, whichever keys occur (with and without the
    smallest and largest possible key)."""
    rng = np.random.default_rng(n)
    drawn = np.clip(rng.normal(keys / 3, keys / 20, n), 1, keys - 2).astype(np.uint16)  # some keys never occur
    if extremes:
        drawn[:2] = [0, keys - 1]
    counts = np.full(keys, 5, np.int64)
    grid._add_sorted_counts(np.sort(drawn), counts)
    assert np.array_equal(counts - 5, np.bincount(drawn, minlength=keys))


def test_level_counts_skip_clipping_only_where_the_peak_fits():
    """Given max |w| (grid.abs_stats), a grid on which +-peak land inside the levels is counted
    without clipping, one whose levels fit int16 is clipped on the integers, others as float32:
    the counts equal the definition whether the peak fits, sits exactly on the top level's edge,
    overflows, or lies beyond int16's range, and whether the peak is given or not."""
    rng = np.random.default_rng(5)
    w = (rng.standard_t(3, size=300_007) * 0.02).astype(np.float32)
    mean, peak = grid.abs_stats(w)
    assert mean == grid.mean_abs(w) and peak == float(np.abs(w).max())
    qn8 = 2 ** 7
    exact_top = float(peak / np.float32(qn8 - 1))  # step where peak lands on level 127's upper edge or near it
    tiny = peak / 40_000  # y beyond int16's range: clipped as float32
    for steps in ({4: 0.3 * peak, 8: 2 * peak / 250}, {8: exact_top}, {2: peak / 10, 8: peak / 300},
                  {4: tiny, 8: tiny}, {4: peak / 20, 15: peak / 20_000}, {16: peak / 40_000}):
        for known_peak in (peak, None):
            counts = grid.level_counts(w, steps, peak=known_peak)
            for b, step in steps.items():
                assert (counts[b] == direct_counts(w, step, b)).all(), (steps, b, known_peak)
    assert [grid._clipping(b, np.float32(1 / s), peak) for b, s in ((4, peak / 20), (8, 2 * peak / 250),
                                                                    (4, tiny), (16, peak / 40_000))] \
        == ["int16", "none", "float", "float"]
    nan = w.copy()
    nan[7] = np.nan
    assert np.isnan(grid.abs_stats(nan)[1])


def test_sixteen_bit_entropy_in_linear_memory(exported):
    """A 16-bit grid: EAGL's entropies equal a direct computation, and counting 2M weights
    allocates a few MB (the chunk buffers and 2^16 counts), not a table per level pair."""
    import tracemalloc

    from planner.graph.weights import layer_weights

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


def numpy_entropy(w: np.ndarray, bits: int) -> float:
    """Entropy (bits) of w's levels on the signed b-bit grid with LSQ's initial step
    2 mean|w| / sqrt(Q_P), computed with np.unique (independent of mpq's streaming histograms)."""
    qn, qp = 2 ** (bits - 1), 2 ** (bits - 1) - 1
    w = w.astype(np.float64).ravel()
    step = 2 * np.abs(w).mean() / np.sqrt(qp)
    _, counts = np.unique(np.clip(np.floor(w / step + 0.5), -qn, qp), return_counts=True)
    p = counts / counts.sum()
    return float(-(p * np.log2(p)).sum())


def onnx_weights(path) -> dict[str, np.ndarray]:
    import onnx
    from onnx import numpy_helper

    return {t.name: numpy_helper.to_array(t) for t in onnx.load(str(path)).graph.initializer}


def test_eagl_gains_on_a_real_graph(exported):
    """Every group's gain is the sum of its layers' level entropies (entropy mode) or of their
    entropy above the 2-bit one (difference mode), recomputed here with numpy from the ONNX file."""
    path = exported("resnet18")
    graph = load_graph(path)
    weights = onnx_weights(path)
    gains = compute("eagl", graph, [2, 4, 8])
    difference = compute("eagl", graph, [2, 4], mode="difference")
    for group, values, diff in zip(graph.groups, gains.by_group, difference.by_group):
        if group.pinned_bits:
            assert values == {8: 0.0}
            continue
        h = {b: [numpy_entropy(weights[graph.layer(n).weight], b) for n in group.layers] for b in (2, 4, 8)}
        assert values[2] == 0
        # rel 1e-6: mpq divides in float32, so a weight within float32 rounding of a level boundary may move
        assert values[4] == pytest.approx(sum(h[4]), rel=1e-6) and values[8] == pytest.approx(sum(h[8]), rel=1e-6)
        assert diff[4] == pytest.approx(sum(h[4]) - sum(h[2]), rel=1e-6)


def test_eagl_weightless_layers_get_the_median(tmp_path):
    """Attention's activation x activation MatMuls have no weights: each gets the median over
    the weighted layers of their entropies (numpy, from the ONNX file)."""
    import archs
    from conftest import export

    path = export(*archs.bert(blocks=2, hidden=64, heads=4, seq=16), tmp_path / "bert.onnx", "torchscript")
    graph = load_graph(path, pin_first=None, pin_last=None)
    weights = onnx_weights(path)
    gains = compute("eagl", graph, [2, 4, 8])
    weighted = [l for l in graph.layers if l.weight is not None]
    weightless = {l.name for l in graph.layers if l.weight is None}
    assert len(weightless) == 4 and set(gains.extra["estimated_layers"]) == weightless  # Q.K^T and P.V per block
    median = {b: float(np.median([numpy_entropy(weights[l.weight], b) for l in weighted])) for b in (4, 8)}
    checked = 0
    for group, values in zip(graph.groups, gains.by_group):
        if set(group.layers) <= weightless:
            checked += 1
            assert values[4] == pytest.approx(len(group.layers) * median[4], rel=1e-6)
            assert values[8] == pytest.approx(len(group.layers) * median[8], rel=1e-6)
    assert checked >= 2


def test_plan_end_to_end_with_a_sixteen_bit_spec(exported, tmp_path):
    """precisions [8, 16]: `mpq plan` runs EAGL at 16 bits and gives each group the value of its
    16-bit entropies (the sum over its layers, computed here from the weights directly)."""
    import yaml

    from planner.graph.weights import layer_weights

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
def instances(draw, bits=(2, 4, 8), max_budgets=2):
    """Random instances of every shape the solver must handle: costs rising with the bits
    (NorthPole), arbitrary per option (measured latency tables: a higher precision may cost less),
    or from a few values (equal costs); gains rising, of any sign, or from a few values (ties)."""
    n = draw(st.integers(1, 12))
    n_budgets = draw(st.integers(1, max_budgets))
    cost_kind = draw(st.sampled_from(["monotone", "arbitrary", "equal"]))
    gain_kind = draw(st.sampled_from(["rising", "signed", "ties"]))
    costs, gains = [], []
    for _ in range(n):
        pinned = draw(st.booleans()) and draw(st.booleans())
        offered = [8] if pinned else list(bits)
        base = [draw(st.floats(0.01, 100)) for _ in range(n_budgets)]
        if cost_kind == "monotone":
            costs.append({b: {f"m{k}": base[k] * (b / 8) ** draw(st.floats(0.5, 1.5)) for k in range(n_budgets)} for b in offered})
        elif cost_kind == "arbitrary":
            costs.append({b: {f"m{k}": draw(st.floats(0.01, 100)) for k in range(n_budgets)} for b in offered})
        else:
            costs.append({b: {f"m{k}": base[k] * draw(st.sampled_from([0.5, 1.0, 2.0])) for k in range(n_budgets)} for b in offered})
        if gain_kind == "rising":
            steps = [draw(st.floats(0, 10)) for _ in offered]
            gains.append({b: float(sum(steps[:i])) for i, b in enumerate(offered)})
        elif gain_kind == "signed":
            gains.append({b: draw(st.floats(-10, 10)) for b in offered})
        else:
            gains.append({b: float(draw(st.sampled_from([-1, 0, 1, 2]))) for b in offered})
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
    assert_meets(solution, budgets)
    for g, options in enumerate(costs):
        assert solution.bits[g] in options  # pinned groups (one option) keep their pin
    bits = greedy(gains, costs, budgets)
    if bits is not None:
        assert sum(gains[g][b] for g, b in enumerate(bits)) <= solution.objective + 1e-9


def assert_meets(solution, budgets):
    for m, limit in budgets.items():
        assert solution.totals[m] <= limit + abs(limit) * 1e-9, (m, solution.totals[m], limit)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(instances(bits=(2, 4), max_budgets=1))
def test_knapsack_solver_equals_cpsat_and_brute_force(instance):
    """Two precisions, one budget: the 0-1 knapsack path finds CP-SAT's optimum, which is the
    brute-force optimum, on costs of any order and gains of any sign."""
    gains, costs, budgets = instance
    best = brute_force(gains, costs, budgets)
    try:
        a = solve(gains, costs, budgets, method="cpsat")
    except MpqError:
        assert best is None
        with pytest.raises(MpqError):
            solve(gains, costs, budgets, method="knapsack")
        return
    b = solve(gains, costs, budgets, method="knapsack")
    assert a.objective == pytest.approx(best, rel=1e-9, abs=1e-9)
    assert b.objective == pytest.approx(a.objective, rel=1e-9, abs=1e-9)
    assert b.status == "OPTIMAL" and b.method == "knapsack" and b.bound == pytest.approx(best, rel=1e-9, abs=1e-9)
    assert_meets(b, budgets)
    assert all(bits in options for bits, options in zip(b.bits, costs))


def test_knapsack_hands_coarse_weights_to_cpsat():
    """A weight of 1e12 next to a budget of 1 forces integer weights so coarse that an item 3e-7
    over the budget would round into it; the knapsack path then hands the instance to CP-SAT
    and says so, and the plan meets the budget (only the all-cheap plan does)."""
    from planner.solve.knapsack import _MAX_COEFFICIENT_SUM

    units = _MAX_COEFFICIENT_SUM / 2e21 * 2e9  # integer units per cost unit after coarsening
    limit = (math.floor(units) + 0.01) / units  # the capacity's fractional part is almost 0
    costs = [{2: {"t": 0.0}, 4: {"t": 1e12}}, {2: {"t": 0.0}, 4: {"t": limit * (1 + 3e-7)}}]
    gains = [{2: 0.0, 4: 1.0}, {2: 0.0, 4: 1.0}]
    solution = solve(gains, costs, {"t": limit}, method="knapsack")
    assert solution.bits == [2, 2] and solution.totals["t"] == 0.0
    assert solution.method.startswith("cp-sat") and "knapsack" in solution.method


def test_solving_imports_no_pandas():
    """CP-SAT's Python model layer imports pandas (about 0.3-1 s, more than a 50-group solve);
    the solver writes the model straight into CP-SAT's protocol buffer instead."""
    code = ("import sys\nfrom planner.solve.knapsack import solve\n"
            "s = solve([{2: 0.0, 4: 1.0}, {2: 0.0, 4: 2.0}], [{2: {'t': 1.0}, 4: {'t': 2.0}}] * 2, {'t': 3.0})\n"
            "print(s.bits, s.status, 'pandas' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["[2,", "4]", "OPTIMAL", "False"]


def test_large_instance_equals_an_independent_milp():
    """500 groups x 3 precisions x 2 budgets: the optimum equals that of SciPy's HiGHS MILP (an
    independent exact solver, on the same data in floating point)."""
    from scipy.optimize import Bounds, LinearConstraint, milp

    rng = np.random.default_rng(0)
    n, bits = 500, [2, 4, 8]
    macs, params = rng.lognormal(0, 1.5, n), rng.lognormal(0, 1.5, n)
    costs = [{b: {"latency_s": macs[i] * b / 8, "weight_bytes": params[i] * b / 8} for b in bits} for i in range(n)]
    step = rng.lognormal(0, 1, (n, 2))
    gains = [{2: 0.0, 4: step[i, 0], 8: step[i, 0] + step[i, 1]} for i in range(n)]
    budgets = {"latency_s": macs.sum() * 0.5, "weight_bytes": params.sum() * 0.6}
    solution = solve(gains, costs, budgets)
    assert solution.status == "OPTIMAL"
    assert_meets(solution, budgets)

    gain = np.array([gains[g][b] for g in range(n) for b in bits])
    one = np.kron(np.eye(n), np.ones(len(bits)))
    rows = np.array([[costs[g][b][m] for g in range(n) for b in bits] for m in sorted(budgets)])
    reference = milp(-gain, integrality=np.ones(gain.size), bounds=Bounds(0, 1),
                     constraints=[LinearConstraint(one, 1, 1),
                                  LinearConstraint(rows, -np.inf, [budgets[m] for m in sorted(budgets)])],
                     options={"mip_rel_gap": 1e-12})
    assert reference.success
    assert solution.objective == pytest.approx(-reference.fun, rel=1e-8)


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
    assert csv[0] == "layer,weight,w_bits,a_bits,weight_qdq,inputs" and len(csv) == 55


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
    ("latency_s<=1e400", ["not a finite number"]),
    ("weight_bytes<=1e300TB", ["not a finite number"]),
    ("latency=-0.5", ["-0.5 is negative", "from 0 (cheapest plan) to 1"]),  # was "'-0.5' is not a number"
    ("weight_bytes<=-1MB", ["-1MB is negative", "0 or more"]),
])
def test_bad_budgets_exit_2_and_write_nothing(exported, tmp_path, budget, words):
    out = tmp_path / "plan.json"
    result = mpq("plan", exported("resnet18"), "--hw", "northpole", "--budget", budget, "-o", out, "--csv", tmp_path / "b.csv")
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert all(w in result.stderr for w in words), result.stderr
    assert not out.exists() and not (tmp_path / "b.csv").exists() and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("limit", ["1e20", "1e300", "1.7e308"])
def test_budget_above_every_plan_gives_the_unconstrained_optimum(exported, limit):
    """Far above every plan's cost (int64 overflow inside the solver before): the optimum is
    every group at its most valuable option, computed here from the plan's own options."""
    for method in ("cpsat", "knapsack"):
        result = mpq("plan", exported("resnet18"), "--hw", "northpole", "--budget", f"latency_s<={limit}", "--json",
                     "--method", method, "--bits", "2,4")
        assert result.returncode == 0, result.stderr
        doc = json.loads(result.stdout)
        best = math.fsum(max(o["gain"] for o in g["options"].values()) for g in doc["groups"])
        assert doc["solver"]["status"] == "OPTIMAL" and doc["solver"]["objective"] == pytest.approx(best, rel=1e-12)


@pytest.mark.parametrize("pair,example", [("4,2", "e.g. 2,4"), ("8,4", "e.g. 4,8"), ("4,4", "e.g. 2,4")])
def test_between_must_run_from_low_to_high(exported, pair, example):
    """The example is a valid pair (for 4,4 it was "e.g. 4,4")."""
    result = mpq("plan", exported("resnet18"), "--hw", "northpole", "--budget", "latency=0.5", "--between", pair)
    assert result.returncode == 2 and "LOW must be below HIGH" in result.stderr and len(result.stderr.splitlines()) == 1
    assert result.stderr.strip().endswith(example), result.stderr


@pytest.mark.parametrize("where", ["gain", "cost", "budget"])
@pytest.mark.parametrize("value", [math.nan, math.inf])
def test_solver_refuses_non_finite_numbers(where, value):
    gains = [{2: 0.0, 4: 1.0}, {2: 0.0, 4: 2.0}]
    costs = [{2: {"t": 1.0}, 4: {"t": 2.0}}, {2: {"t": 1.0}, 4: {"t": 2.0}}]
    budgets = {"t": 3.0}
    if where == "gain":
        gains[1][4] = value
    elif where == "cost":
        costs[0][4]["t"] = value
    else:
        budgets["t"] = value
    for method in ("cpsat", "knapsack"):
        with pytest.raises(MpqError, match="finite"):
            solve(gains, costs, budgets, method=method)


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
    from planner.jobs.store import JobStore
    from planner.solve.frontier import sweep

    graph = load_graph(exported("resnet18"))
    table = cost_table(graph, load_spec("northpole"), load_cost_model("northpole"))
    gains = compute("eagl", graph, [2, 4, 8])
    checkpoint = JobStore(tmp_path / "ck.jsonl")
    first = sweep(table, [gains], "latency_s", [0.0, 0.5], checkpoint=checkpoint)
    calls = []
    again = sweep(table, [gains], "latency_s", [0.0, 0.5, 1.0], checkpoint=JobStore(tmp_path / "ck.jsonl"),
                  progress=lambda d, t: calls.append(d))
    assert [p.objective for p in again[:2]] == [p.objective for p in first]
    assert len(JobStore(tmp_path / "ck.jsonl").done) == 3


def test_frontier_points_do_not_depend_on_threads_and_ctrl_c_keeps_the_solved_ones(exported, tmp_path):
    """The sweep solves its points on worker threads: they equal the one-thread sweep's (but for
    solve times), in the same order. Ctrl-C (here a KeyboardInterrupt from the progress callback)
    stops the searches still running, keeps every point already solved in the checkpoint, leaves
    no worker thread behind, and a rerun on fewer threads resumes to the same points."""
    import threading

    from planner.jobs.store import JobStore
    from planner.solve.frontier import sweep

    graph = load_graph(exported("resnet18"))
    table = cost_table(graph, load_spec("northpole"), load_cost_model("northpole"))
    gains = [compute("eagl", graph, [2, 4, 8]), compute("params", graph, [2, 4, 8])]
    fractions = [k / 8 for k in range(9)]

    def plain(points):
        return [{**p.to_json(), "solve_time_s": 0} for p in points]

    serial = plain(sweep(table, gains, "latency_s", fractions, workers=1))
    assert [(p["method"], p["fraction"]) for p in serial] == [(g.method, r) for g in gains for r in fractions]
    assert plain(sweep(table, gains, "latency_s", fractions, workers=3)) == serial

    def interrupt(done, total):
        if done == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        sweep(table, gains, "latency_s", fractions, checkpoint=JobStore(tmp_path / "ck.jsonl"), progress=interrupt,
              workers=3)
    assert not [t for t in threading.enumerate() if t.name.startswith("frontier")]
    kept = JobStore(tmp_path / "ck.jsonl").done
    assert 3 <= len(kept) < len(serial)
    calls = []
    resumed = sweep(table, gains, "latency_s", fractions, checkpoint=JobStore(tmp_path / "ck.jsonl"), workers=2,
                    progress=lambda done, total: calls.append(done))
    assert plain(resumed) == serial and calls == list(range(1, len(serial) + 1))
