"""Numbers mpq prints, checked against independent counts and formulas."""
from __future__ import annotations

import re

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from archs import count_macs_params
from conftest import EXPORTERS, export, mpq
from planner import load_graph
from planner.units import si

_PREFIXES = {"T": 1e12, "G": 1e9, "M": 1e6, "K": 1e3, "": 1.0, "m": 1e-3, "u": 1e-6, "n": 1e-9}


def test_si_keeps_three_digits_below_each_prefix():
    """Every value prints as a number below 1000 with a prefix, within 0.5% of the value (three
    significant digits), also where rounding reaches the next prefix (999.6e6 is 1G)."""
    values = [999.6e6, 999.96e3, 9.996e-7, 999.5, 1.5e-6, 4.61e6, 123456, 0.9996e-9, 2.5e-12, 7, 1e12, -999.7e3]
    for value in values:
        text = si(value, "s")
        number, prefix = re.fullmatch(r"(-?[0-9.e+-]+?)([TGMKmun]?)s", text).groups()
        assert abs(float(number) * _PREFIXES[prefix] - value) <= 5e-3 * abs(value), (value, text)
        if abs(value) >= 1e-9:
            assert "e" not in number and abs(float(number)) < 1000, (value, text)
    assert si(999.6e6) == "1G" and si(1.5e-6, "s") == "1.5us" and si(0.9996e-9, "s") == "1ns"


def test_inspect_prints_a_conv_just_below_a_billion_macs(tmp_path):
    """A 3x3 conv, 64 -> 64 channels on 113x240 (padding 1): 113 x 240 x 64 x 64 x 9 = 999,751,680
    MACs, printed as 1G."""
    weight = numpy_helper.from_array(np.zeros((64, 64, 3, 3), np.float32), "w")
    conv = helper.make_node("Conv", ["x", "w"], ["y"], name="conv", pads=[1, 1, 1, 1])
    graph = helper.make_graph([conv], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64, 113, 240])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [weight])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(tmp_path / "conv.onnx"))
    result = mpq("inspect", tmp_path / "conv.onnx")
    assert result.returncode == 0, result.stderr
    assert f"{113 * 240 * 64 * 64 * 9:,} MACs (1G)" in result.stdout


@pytest.mark.parametrize("arch", ["resnet18", "bert"])
def test_models_saved_after_onnxruntime_optimization_keep_their_layers(exported, built, arch, tmp_path):
    """onnxruntime's extended optimizations fuse Conv + Relu into com.microsoft FusedConv and
    MatMul + Transpose / scale into FusedMatMul; the saved model has the same layers, MACs and
    weights as the torch module (counted with forward hooks, attention matmuls included)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(str(exported(arch)), options, providers=["CPUExecutionProvider"])
    fused = {n.op_type for n in onnx.load(options.optimized_model_filepath).graph.node if n.domain == "com.microsoft"}
    assert fused & {"FusedConv", "FusedMatMul"}
    graph = load_graph(options.optimized_model_filepath)
    macs, params = count_macs_params(*built(arch))
    assert (graph.totals()["macs"], graph.totals()["params"]) == (macs, params)
    assert len(graph.layers) == len(load_graph(exported(arch)).layers)


class _EinsumAttention(torch.nn.Module):
    """Attention written with torch.einsum, as Keras' EinsumDense and many research codes write it:
    Q/K/V projections (activation x weight) and the two attention products (activation x activation)."""

    def __init__(self, hidden: int = 32, heads: int = 4):
        super().__init__()
        self.heads, self.head_dim = heads, hidden // heads
        self.qkv = torch.nn.Parameter(torch.randn(3, hidden, heads, hidden // heads) / hidden ** 0.5)
        self.out = torch.nn.Parameter(torch.randn(heads, hidden // heads, hidden) / hidden ** 0.5)

    def forward(self, x):  # x: (batch, seq, hidden)
        q, k, v = (torch.einsum("bsd,dhe->bhse", x, w) for w in self.qkv)
        attention = torch.einsum("bhqe,bhke->bhqk", q, k).softmax(-1)
        return torch.einsum("bhse,hed->bsd", torch.einsum("bhqk,bhke->bhqe", attention, v), self.out)


@pytest.mark.parametrize("exporter", EXPORTERS)
def test_einsum_products_are_layers(exporter, tmp_path):
    """Every two-operand product of the einsum attention is a layer (the Einsum nodes of the
    TorchScript export, the MatMuls the dynamo exporter makes of them), with the MACs of the
    hand formulas at batch 2 x sequence 10: 3 projections and the output projection of
    b*s*d*d each, and the two attention products of b*h*s*s*e each."""
    b, s, d, h = 2, 10, 32, 4
    module = _EinsumAttention(d, h).eval()
    path = export(module, (torch.randn(b, s, d),), tmp_path / "einsum.onnx", exporter)
    graph = load_graph(path)
    if exporter == "torchscript":
        assert {l.op_type for l in graph.layers} == {"Einsum"}
    assert graph.totals()["macs"] == 4 * b * s * d * d + 2 * b * h * s * s * (d // h)
    assert graph.totals()["params"] == 4 * d * d
    assert sorted(l.macs for l in graph.layers if l.weight is None) == [b * h * s * s * (d // h)] * 2


def test_a_model_quantized_by_onnxruntime_in_qoperator_format_keeps_its_layers(exported, built, tmp_path):
    """onnxruntime's quantize_static in QOperator format writes QLinearConv for the convs and
    com.microsoft QGemm for the classifier: all 21 layers of ResNet-18 stay, with the torch
    module's MACs and weights."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, quantize_static

    source = exported("resnet18")
    name = onnx.load(str(source), load_external_data=False).graph.input[0].name

    class Samples(CalibrationDataReader):
        def __init__(self):
            rng = np.random.default_rng(0)
            self.left = [{name: rng.standard_normal((1, 3, 224, 224)).astype(np.float32)} for _ in range(2)]

        def get_next(self):
            return self.left.pop() if self.left else None

    quantize_static(str(source), str(tmp_path / "qop.onnx"), Samples(), quant_format=QuantFormat.QOperator)
    ops = {n.op_type for n in onnx.load(str(tmp_path / "qop.onnx")).graph.node}
    assert {"QLinearConv", "QGemm"} <= ops and not ops & {"Conv", "Gemm"}
    graph = load_graph(tmp_path / "qop.onnx")
    assert len(graph.layers) == 21 and graph.layers[-1].op_type == "QGemm"
    assert (graph.totals()["macs"], graph.totals()["params"]) == count_macs_params(*built("resnet18"))


def test_a_dynamically_quantized_transformer_saved_after_optimization_keeps_its_layers(exported, built, tmp_path):
    """quantize_dynamic, then onnxruntime's extended optimizations: the projections become
    com.microsoft DynamicQuantizeMatMul / MatMulIntegerToFloat and the attention products
    FusedMatMul. The BERT encoder keeps every layer, with the torch module's MACs and weights."""
    import onnxruntime as ort
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(str(exported("bert")), str(tmp_path / "dynamic.onnx"), weight_type=QuantType.QInt8)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(str(tmp_path / "dynamic.onnx"), options, providers=["CPUExecutionProvider"])
    ops = {n.op_type for n in onnx.load(options.optimized_model_filepath).graph.node}
    assert ops & {"DynamicQuantizeMatMul", "MatMulIntegerToFloat"}
    graph = load_graph(options.optimized_model_filepath)
    assert len(graph.layers) == len(load_graph(exported("bert")).layers)
    assert (graph.totals()["macs"], graph.totals()["params"]) == count_macs_params(*built("bert"))


def test_a_model_of_qgemm_layers_plans_but_does_not_export(tmp_path):
    """An MLP quantized by onnxruntime in QOperator format is all QGemm: its integer weights are
    costed and planned, and exporting a plan on it is refused as for QLinearConv (quantizing its
    int8 weights again would stack a second grid on the first)."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, quantize_static

    module = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 32), torch.nn.ReLU(),
                                 torch.nn.Linear(32, 4)).eval()
    source = export(module, (torch.randn(1, 16),), tmp_path / "mlp.onnx", "torchscript", input_names=["x"])

    class Samples(CalibrationDataReader):
        def __init__(self):
            self.left = [{"x": np.random.default_rng(k).standard_normal((1, 16)).astype(np.float32)} for k in range(2)]

        def get_next(self):
            return self.left.pop() if self.left else None

    quantize_static(str(source), str(tmp_path / "qgemm.onnx"), Samples(), quant_format=QuantFormat.QOperator)
    graph = load_graph(tmp_path / "qgemm.onnx")
    assert [l.op_type for l in graph.layers] == ["QGemm"] * 3
    assert graph.totals()["macs"] == graph.totals()["params"] == 16 * 32 + 32 * 32 + 32 * 4
    plan = tmp_path / "plan.json"
    assert mpq("plan", tmp_path / "qgemm.onnx", "--hw", "northpole", "--budget", "latency=0.5", "-o", plan).returncode == 0
    result = mpq("export", plan, tmp_path / "qgemm.onnx", "-o", tmp_path / "again.onnx")
    assert result.returncode == 2 and "already quantized" in result.stderr and "QGemm" in result.stderr, result.stderr
    assert not (tmp_path / "again.onnx").exists()
