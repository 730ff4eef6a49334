"""Specs and cost models: hand-computed costs, NorthPole/GPU behaviour, bad specs, plugins."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
import yaml

from conftest import assert_user_error, export, mpq
from costmodels import load_cost_model
from hw import load_spec, parse_spec, shipped_specs
from planner import MpqError, load_graph
from planner.costs import cost_table

SMALL_SPEC = {
    "name": "tiny", "precisions": [2, 4, 8], "cores": 2, "clock_hz": 1e6,
    "macs_per_cycle_per_core": {8: 10, 4: 20, 2: 40},
    "memory": {"on_chip_bytes": 1000, "offchip_bandwidth_bytes_per_s": 1000, "output_bits": 8},
    "energy": {"per_mac_j": {8: 1.0, 4: 0.5, 2: 0.25}, "per_byte_onchip_j": 0.1, "per_byte_offchip_j": 2.0},
}


@pytest.fixture(scope="module")
def two_layers(tmp_path_factory):
    """fc1: 1x16 @ 16x8 (128 MACs, 128 weights); fc2: 1x8 @ 8x4 (32 MACs, 32 weights)."""
    model = torch.nn.Sequential(torch.nn.Linear(16, 8, bias=False), torch.nn.ReLU(), torch.nn.Linear(8, 4, bias=False))
    path = export(model.eval(), (torch.randn(1, 16),), tmp_path_factory.mktemp("two") / "two.onnx", "torchscript")
    graph = load_graph(path, pin_first=None, pin_last=None)
    assert [(l.macs, l.params, l.in_elems, l.out_elems) for l in graph.layers] == [(128, 128, 16, 8), (32, 32, 8, 4)]
    return graph


def test_northpole_hand_computed(two_layers):
    spec = parse_spec(SMALL_SPEC, "tiny")
    fc1, fc2 = two_layers.layers
    model = load_cost_model("northpole")
    # 128 MACs / (2 cores x 10 MACs/cycle x 1 MHz) = 6.4 us; energy 128 x 1 J + (128 + 16 + 8) B x 0.1 J
    assert model.layer_cost(fc1, 8, spec) == pytest.approx({"latency_s": 6.4e-6, "weight_bytes": 128, "energy_j": 128 + 15.2})
    # at 4 bits: 3.2 us, 64 B, 128 x 0.5 + (64 + 8 + 4) x 0.1
    assert model.layer_cost(fc1, 4, spec) == pytest.approx({"latency_s": 3.2e-6, "weight_bytes": 64, "energy_j": 64 + 7.6})
    assert model.layer_cost(fc2, 2, spec) == pytest.approx({"latency_s": 32 / 80e6, "weight_bytes": 8, "energy_j": 8 + (8 + 2 + 1) * 0.1})


def test_northpole_weights_that_do_not_fit_are_not_offered(two_layers):
    spec = parse_spec({**SMALL_SPEC, "memory": {"on_chip_bytes": 100}}, "tight")
    fc1 = two_layers.layers[0]
    model = load_cost_model("northpole")
    assert model.layer_cost(fc1, 8, spec) is None  # 128 B > 100 B
    assert model.layer_cost(fc1, 4, spec)["weight_bytes"] == 64
    table = cost_table(two_layers, spec, model)
    assert table.options(0) == [2, 4] and table.options(1) == [2, 4, 8]


def test_bops_hand_computed(two_layers):
    spec = parse_spec(SMALL_SPEC, "tiny")
    model = load_cost_model("bops")
    assert model.layer_cost(two_layers.layers[0], 4, spec) == {"bops": 128 * 16, "weight_bytes": 64}
    assert model.layer_cost(two_layers.layers[1], 2, spec) == {"bops": 32 * 4, "weight_bytes": 8}
    assert model.layer_cost(two_layers.layers[1], 3, spec) is None


def test_roofline_hand_computed(two_layers):
    spec = parse_spec(SMALL_SPEC, "tiny")
    fc1 = two_layers.layers[0]
    model = load_cost_model("roofline")
    # 8 bits: compute 6.4 us; bytes 128 + 16 + 8 (outputs at 8 bits) = 152 B / 1000 B/s = 0.152 s: memory-bound
    assert model.layer_cost(fc1, 8, spec) == pytest.approx({"latency_s": 0.152, "weight_bytes": 128, "energy_j": 128 + 152 * 2})
    # 4 bits: 64 + 8 + 8 = 80 B -> 0.08 s: less than 2x, the outputs stay 8-bit
    cost4 = model.layer_cost(fc1, 4, spec)
    assert cost4["latency_s"] == pytest.approx(0.08)
    assert 0.152 / cost4["latency_s"] < 2


def test_lut_hand_computed_and_missing_rows(two_layers, tmp_path):
    spec = parse_spec(SMALL_SPEC, "tiny")
    fc1, fc2 = two_layers.layers
    table = tmp_path / "lat.csv"
    rows = [(fc1.name, 8, 5e-6), (fc1.name, 4, 3e-6), (fc1.name, 2, 2e-6), (fc2.name, 8, 1e-6), (fc2.name, 4, 1e-6)]
    table.write_text("layer,bits,latency_s\n" + "".join(f"{n},{b},{t}\n" for n, b, t in rows))
    model = load_cost_model("lut", table=table)
    assert model.layer_cost(fc1, 4, spec) == {"latency_s": 3e-6, "weight_bytes": 64}
    with pytest.raises(MpqError, match=rf"missing rows for {fc2.name}@2"):
        cost_table(two_layers, spec, model)


def torch_layer_shapes(module, inputs) -> list[dict]:
    """Per Conv2d/Linear call, in forward order: MACs, weights, input and output elements,
    counted with forward hooks on the torch module (independent of mpq's ONNX reading)."""
    rows = []

    def hook(layer, args, out):
        kernel = layer.weight[0].numel()  # in_channels/groups x kh x kw, or in_features
        rows.append({"macs": out.numel() * kernel, "params": layer.weight.numel(),
                     "in": args[0].numel(), "out": out.numel(), "depthwise": getattr(layer, "groups", 1) > 1})

    handles = [m.register_forward_hook(hook) for m in module.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    with torch.no_grad():
        module(*inputs)
    for h in handles:
        h.remove()
    return rows


def test_northpole_latency_from_published_figures(exported, built):
    """ResNet-50 at uniform 8 and 2 bits: MACs counted in torch / (256 cores x 2,048 or 8,192
    MACs per cycle x 400 MHz), the figures of hw/northpole.yaml's sources."""
    rows = torch_layer_shapes(*built("resnet50"))
    macs = sum(r["macs"] for r in rows)
    assert macs == 4_089_184_256  # ResNet-50 at 224x224: 4.09 GMACs, as published
    graph = load_graph(exported("resnet50"), pin_first=None, pin_last=None)
    table = cost_table(graph, load_spec("northpole"), load_cost_model("northpole"))
    assert table.total(table.uniform(8))["latency_s"] == pytest.approx(macs / (256 * 2048 * 4.0e8), rel=1e-12)
    assert table.total(table.uniform(2))["latency_s"] == pytest.approx(macs / (256 * 8192 * 4.0e8), rel=1e-12)
    assert table.total(table.uniform(4))["weight_bytes"] == sum(r["params"] for r in rows) / 2


def test_gpu_has_no_2bit_and_depthwise_convs_are_memory_bound(exported, built):
    """MobileNetV2 on the A100-like spec: every depthwise conv's latency from its torch shapes and
    the A100's published figures (108 SMs x 2,048 INT8 MACs x 1.41 GHz, 1,555 GB/s, outputs in
    FP16, 2 us launch): memory traffic, not compute, sets it."""
    graph = load_graph(exported("mobilenet"), pin_first=None, pin_last=None)
    spec = load_spec("gpu_a100")
    table = cost_table(graph, spec, load_cost_model(spec.cost_model))
    assert table.uniform(2) is None and all(2 not in table.groups[g.id] for g in graph.groups)
    rows = torch_layer_shapes(*built("mobilenet"))
    assert len(rows) == len(graph.layers)
    depthwise = [(layer, r) for layer, r in zip(graph.layers, rows) if r["depthwise"]]
    assert depthwise
    for layer, r in depthwise:
        compute_s = r["macs"] / (108 * 2048 * 1.41e9)
        memory_s = (r["params"] + r["in"] + r["out"] * 2) / 1.555e12  # 8-bit weights and inputs, FP16 outputs
        assert memory_s > compute_s
        assert table.layers[layer.name][8]["latency_s"] == pytest.approx(memory_s + 2e-6, rel=1e-12)



def test_uniform_plans_never_hold_a_free_layer_at_another_width(exported, built, tmp_path):
    """On edge_npu with 1 MB of SRAM, ResNet-18's layer4 3x3 convs (512x512x3x3 weights: 2.36 MB at
    8 bits, 1.18 MB at 4) run at 2 bits only. No uniform 8- or 4-bit plan exists then; the uniform
    2-bit one is every free layer at 2 bits and the pinned conv1 and fc at 8, its latency counted
    from the torch module's MACs and the spec's MAC rates."""
    data = yaml.safe_load(open(load_spec("edge_npu").path))
    data["memory"]["on_chip_bytes"] = 1.0e6
    spec_path = tmp_path / "edge_1mb.yaml"
    spec_path.write_text(yaml.safe_dump(data))
    rows = torch_layer_shapes(*built("resnet18"))
    model = exported("resnet18")
    graph = load_graph(model)
    table = cost_table(graph, load_spec(spec_path), load_cost_model("northpole"))
    only_2bit = [l.name for l in graph.layers if list(table.layers[l.name]) == [2]]
    assert len(only_2bit) == 3  # layer4.0.conv2, layer4.1.conv1, layer4.1.conv2
    assert table.uniform(8) is None and table.uniform(4) is None
    pinned = [r["macs"] for r in (rows[0], rows[-1])]  # conv1 and fc, at 8 bits
    expected = sum(pinned) / (16 * 256 * 8e8) + (sum(r["macs"] for r in rows) - sum(pinned)) / (16 * 1024 * 8e8)
    assert table.total(table.uniform(2))["latency_s"] == pytest.approx(expected, rel=1e-12)

    report = json.loads(mpq("cost", model, "--hw", spec_path, "--bits", "2", "--json").stdout)
    assert report["uniform"]["8"] is None and report["uniform"]["4"] is None
    assert report["speedup_over_8bit"] == {"4bit": None, "2bit": None}
    assert report["totals"]["latency_s"] == pytest.approx(expected, rel=1e-12)
    assert_user_error(mpq("cost", model, "--hw", spec_path), "does not offer 8 bits")
    assert_user_error(mpq("cost", model, "--hw", spec_path, "--bits", "4"), "does not offer 4 bits", "offered: [2]")

def test_shipped_specs_validate_and_carry_sources():
    assert {"northpole", "gpu_a100", "edge_npu"} <= set(shipped_specs())
    np_spec = load_spec("northpole")
    assert np_spec.cores == 256 and np_spec.macs_per_cycle == {2: 8192, 4: 4096, 8: 2048}
    assert np_spec.on_chip_bytes == 224e6
    # IBM's "operations" read as MACs: marked as an assumption, the source says the paper does not say
    assert set(np_spec.assumptions) == {"clock_hz", "memory.per_core_bytes", *(f"macs_per_cycle_per_core.{b}" for b in (2, 4, 8))}
    assert all("1 op = 1 MAC" in np_spec.sources[f"macs_per_cycle_per_core.{b}"] for b in (2, 4, 8))
    assert all(p in np_spec.sources for p in ("cores", "clock_hz", "macs_per_cycle_per_core.8", "memory.on_chip_bytes"))
    gpu = load_spec("gpu_a100")
    assert gpu.precisions == (4, 8) and gpu.offchip_bandwidth
    edge = load_spec("edge_npu")
    assert edge.energy_per_mac_j and edge.on_chip_bytes < 4e6



BAD_SPECS = {
    "missing field": (lambda d: d.pop("cores"), ["cores", "missing required field"]),
    "wrong type": (lambda d: d.__setitem__("clock_hz", "fast"), ["clock_hz", '"fast"', "expected a number"]),
    "negative throughput": (lambda d: d["macs_per_cycle_per_core"].__setitem__(4, -5), ["macs_per_cycle_per_core.4", "-5", "> 0"]),
    "zero throughput": (lambda d: d["macs_per_cycle_per_core"].__setitem__(8, {"value": 0, "source": "x"}), ["macs_per_cycle_per_core.8.value", "> 0"]),
    "precision without throughput": (lambda d: d["macs_per_cycle_per_core"].pop(2), ["macs_per_cycle_per_core", "no entry for 2 bits"]),
    "unknown key": (lambda d: d.__setitem__("colour", "blue"), ["colour", "unknown field"]),
    "unknown nested key": (lambda d: d["memory"].__setitem__("l3_bytes", 5), ["memory.l3_bytes", "unknown field"]),
}


@pytest.mark.parametrize("case", sorted(BAD_SPECS))
def test_bad_specs_are_rejected_on_one_line(tmp_path, case):
    data = yaml.safe_load(open(load_spec("northpole").path))
    mutate, words = BAD_SPECS[case]
    mutate(data)
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(data))
    assert_user_error(mpq("spec", "validate", path), str(path), *words)


def test_spec_cli_validate_and_show():
    ok = mpq("spec", "validate", *(load_spec(n).path for n in shipped_specs()))
    assert ok.returncode == 0 and ok.stdout.count(": ok") == len(shipped_specs())
    shown = mpq("spec", "show", "northpole")
    assert shown.returncode == 0 and "Science 382:329" in shown.stdout and "assumed" in shown.stdout
    assert_user_error(mpq("spec", "show", "nosuchchip"), "no hardware spec named 'nosuchchip'")


PLUGIN = textwrap.dedent('''
    class MacCount:
        """Cost = MACs, at any precision the spec lists (a user's own model)."""
        name = "maccount"
        metrics = ("macs",)

        def layer_cost(self, layer, bits, spec):
            return {"macs": float(layer.macs) * bits / 8} if bits in spec.precisions else None
''')


def test_plugin_cost_model_from_file(exported, tmp_path):
    (tmp_path / "plugin.py").write_text(PLUGIN)
    result = mpq("cost", exported("resnet18"), "--hw", "northpole", "--cost-model", f"{tmp_path / 'plugin.py'}:MacCount",
                 "--bits", "4", "--json", "--no-pin")
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["cost_model"] == "maccount" and doc["totals"]["macs"] == pytest.approx(1814073344 / 2)
    assert_user_error(mpq("cost", exported("resnet18"), "--hw", "northpole", "--cost-model", f"{tmp_path / 'plugin.py'}:Nope"),
                    "has no 'Nope'")


def test_plugin_cost_model_from_entry_point(exported, tmp_path):
    (tmp_path / "mpq_maccount.py").write_text(PLUGIN)
    dist = tmp_path / "mpq_maccount-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: mpq-maccount\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[mpq.costmodels]\nmaccount = mpq_maccount:MacCount\n")
    env = {**__import__("os").environ, "PYTHONPATH": str(tmp_path)}
    result = subprocess.run([sys.executable, "-m", "planner", "cost", str(exported("resnet18")), "--hw", "northpole",
                             "--cost-model", "maccount", "--json"], capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["cost_model"] == "maccount"


def test_cost_and_compare_cli(exported, built, tmp_path):
    model = exported("resnet50")
    result = mpq("cost", model, "--hw", "northpole")
    assert result.returncode == 0 and "speedup over uniform 8-bit (latency_s): 4-bit x1." in result.stdout
    plot = tmp_path / "cmp.png"
    result = mpq("compare", model, "--hw", "northpole", "--hw", "gpu_a100", "--hw", "edge_npu", "--plot", plot, "--json")
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert [p["spec"] for p in doc["pairs"]] == ["northpole", "gpu_a100", "edge_npu"]
    np_vs_gpu = next(c for c in doc["correlations"] if c["a"] == "northpole/northpole" and c["b"] == "gpu_a100/roofline"
                     and c["step"] == "8to4")
    # NorthPole's 8 -> 4 saving of a layer is half its share of the MACs (counted in torch)
    rows = torch_layer_shapes(*built("resnet50"))
    northpole, gpu = (p["saving_8to4"] for p in doc["pairs"][:2])
    assert northpole == pytest.approx([r["macs"] / 2 / sum(x["macs"] for x in rows) for r in rows], rel=1e-9)
    # Spearman: Pearson correlation of the ranks (ties averaged), computed here with numpy
    ranks = [np.argsort(np.argsort(v, kind="stable"), kind="stable").astype(float) for v in (northpole, gpu)]
    for r, v in zip(ranks, (northpole, gpu)):
        v = np.asarray(v)
        for value in np.unique(v):
            r[v == value] = r[v == value].mean()
    assert np_vs_gpu["spearman"] == pytest.approx(np.corrcoef(*ranks)[0, 1], abs=1e-12)
    assert np_vs_gpu["disagree"]
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert_user_error(mpq("cost", model, "--hw", "gpu_a100", "--bits", "2"), "does not offer 2 bits")


def onnx_weight_elements(path) -> dict[str, int]:
    """Element count of every Conv/Gemm/MatMul weight initializer, read with onnx alone."""
    import math

    import onnx

    model = onnx.load(str(path))
    inits = {t.name: math.prod(t.dims) for t in model.graph.initializer}
    return {n.name: inits[n.input[1]] for n in model.graph.node
            if n.op_type in ("Conv", "Gemm", "MatMul") and len(n.input) > 1 and n.input[1] in inits}


@pytest.fixture
def small_northpole(tmp_path):
    """NorthPole with 16 KiB per core: 256 x 16 KiB = 4,194,304 B of on-chip weight memory."""
    data = yaml.safe_load(open(load_spec("northpole").path))
    data["memory"]["per_core_bytes"] = 16384
    path = tmp_path / "small_northpole.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_northpole_capacity_is_the_smaller_of_chip_and_cores():
    spec = load_spec("northpole")
    assert spec.weights_on_chip and spec.weight_capacity == 256 * 768 * 1024  # < 224e6
    assert load_spec("gpu_a100").weight_capacity is None
    no_memory = {**SMALL_SPEC, "memory": {"weights_on_chip": True}}
    with pytest.raises(MpqError, match="weights_on_chip: true needs memory.on_chip_bytes"):
        parse_spec(no_memory, "x")


def test_plan_must_fit_the_chip(exported, small_northpole, tmp_path):
    """resnet18 has 11.7 M weights: 11.7 MB at 8 bits, 2.9 MB at 2 bits; the chip holds 4.19 MB.
    At 8 bits the plan is refused with what fits; a free plan meets the capacity although the
    latency budget alone would allow all-8-bit; `mpq cost` reports the fit."""
    model = exported("resnet18")
    elements = onnx_weight_elements(model)
    capacity = 256 * 16384
    assert sum(elements.values()) > capacity  # the model does not fit at 8 bits
    refused = mpq("plan", model, "--hw", small_northpole, "--bits", "8", "--budget", "latency=1", "-o", tmp_path / "p.json")
    need = f"{sum(elements.values()) / 1e6:.3g}MB"
    assert_user_error(refused, "do not fit on chip", need, "4.19MB")
    assert not (tmp_path / "p.json").exists()

    out = tmp_path / "plan.json"
    result = mpq("plan", model, "--hw", small_northpole, "--budget", "latency=1", "-o", out)
    assert result.returncode == 0, result.stderr
    doc = json.loads(out.read_text())
    on_chip = sum(elements[l["name"]] * l["w_bits"] / 8 for l in doc["layers"])
    assert on_chip <= capacity and doc["solver"]["status"] == "OPTIMAL"
    assert {"metric": "on_chip_weight_bytes", "limit": capacity} .items() <= doc["budgets"][-1].items()
    eight = json.loads(mpq("cost", model, "--hw", small_northpole, "--bits", "8", "--json").stdout)["fit"]
    two = json.loads(mpq("cost", model, "--hw", small_northpole, "--bits", "2", "--json").stdout)["fit"]
    assert eight["fits"] is False and two["fits"] is True and eight["capacity_bytes"] == capacity
    pinned = [l.name for l in load_graph(model).layers if l.pinned_bits]
    assert two["on_chip_weight_bytes"] == sum(n * (8 if name in pinned else 2) / 8 for name, n in elements.items())
    text = mpq("cost", model, "--hw", small_northpole, "--bits", "8", "--summary").stdout
    assert "weights on chip" in text and "does NOT fit" in text
