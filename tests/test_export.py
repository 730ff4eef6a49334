"""Exports a compiler or runtime reads: standard QDQ (the element types carry the plan's bits),
onnxruntime TensorQuantOverrides and AIMET encodings, each checked in onnxruntime against the
float or torch network."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

from conftest import export, mpq
from planner import load_graph
from planner.export.qdq import layer_bits, qdq_model, session
from planner.export.qdq import calibrate


class Attention(nn.Module):
    """One head of self-attention with an output projection: Q·Kᵀ and P·V are MatMuls of two
    activations; P (softmax) is non-negative, V is signed."""

    def __init__(self, width: int = 32):
        super().__init__()
        self.query, self.key, self.value, self.out = (nn.Linear(width, width) for _ in range(4))

    def forward(self, x):
        q, k, v = self.query(x), self.key(x), self.value(x)
        p = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]), -1)
        return self.out(p @ v)


@pytest.fixture(scope="module")
def attention(tmp_path_factory):
    torch.manual_seed(0)
    model = Attention().eval()
    path = export(model, (torch.randn(2, 16, 32),), tmp_path_factory.mktemp("attention") / "attention.onnx",
                  "torchscript", input_names=["x"], dynamic_axes={"x": {0: "batch"}})
    x, calibration = torch.randn(64, 16, 32), torch.randn(256, 16, 32)
    with torch.no_grad():
        reference = model(x).numpy()
    return path, x.numpy(), reference, calibration.numpy()


def _run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})[0]


def test_attention_matmuls_quantize_each_input_with_its_own_step_and_sign(attention):
    """At 8 bits everywhere, quantizing the activations adds little error to the weights' own
    (issue 11 item 3: P·V took P's unsigned quantizer for V and clipped V's negative half)."""
    path, x, reference, calibration = attention
    graph = load_graph(path, pin_first=None, pin_last=None)
    bits = {l.name: 8 for l in graph.layers}
    two_inputs = [l for l in graph.layers if l.weight is None]
    assert len(two_inputs) == 2
    steps = calibrate(graph, bits, [(calibration,)])
    pv = two_inputs[1]
    (p_step, p_signed), (v_step, v_signed) = steps[pv.name]
    assert not p_signed and v_signed and p_step != v_step
    weights_only = np.abs(_run(qdq_model(graph, bits).model, x) - reference).max()
    everything = np.abs(_run(qdq_model(graph, bits, activation_steps=steps).model, x) - reference).max()
    print(f"8-bit attention: max output error {weights_only:.4f} weights only, {everything:.4f} with activations")
    assert everything < 3 * weights_only


# ------------------------------------------------------------------------------ standard QDQ on a CNN

_PLANS: dict[tuple, Path] = {}


def _plan(model, tmp_path, name: str, *args) -> Path:
    """``mpq plan MODEL --hw northpole ARGS`` (made once per model and arguments in this session)."""
    key = (str(model), args)
    if key not in _PLANS:
        out = tmp_path / f"{name}.json"
        result = mpq("plan", model, "--hw", "northpole", *args, "-o", out)
        assert result.returncode == 0, result.stderr
        _PLANS[key] = out
    return _PLANS[key]


def _uniform_plan(model, tmp_path, bits: int) -> Path:
    """A plan with every layer at ``bits`` (no pins)."""
    return _plan(model, tmp_path, f"u{bits}", "--bits", str(bits), "--no-pin", "--budget", "latency=1")


def _uniform_export(model, tmp_path, bits: int) -> Path:
    """The QDQ export of :func:`_uniform_plan` at ``tmp_path/u{bits}.onnx``."""
    out = tmp_path / f"u{bits}.onnx"
    result = mpq("export", _uniform_plan(model, tmp_path, bits), model, "-o", out)
    assert result.returncode == 0, result.stderr
    return out


def _inspected_bits(model: Path) -> dict[str, tuple]:
    result = mpq("inspect", model, "--json")
    assert result.returncode == 0, result.stderr
    return {l["name"]: (l["w_bits"], l["a_bits"]) for l in json.loads(result.stdout)["layers"]}


def _element_types(model: onnx.ModelProto) -> dict[str, int]:
    """Levels tensor -> ONNX element type, read with onnx alone (independent of mpq)."""
    return {t.name: t.data_type for t in model.graph.initializer}


def _random_input(model: Path, batch: int = 2) -> tuple[str, np.ndarray]:
    (graph_input,) = onnx.load(model).graph.input
    shape = [d.dim_value or batch for d in graph_input.type.tensor_type.shape.dim]
    return graph_input.name, np.random.default_rng(0).standard_normal(shape).astype(np.float32)


def test_cnn_round_trip_bits_read_back_from_the_types(exported, tmp_path):
    """A 2/4/8-bit plan on ResNet-18: mpq inspect reads every layer's weight and input bits from
    the exported Q/DQ element types and they equal the plan; the plan names the tensors as the
    exported model has them; the model runs in onnxruntime."""
    model = exported("resnet18")
    plan = _plan(model, tmp_path, "mixed", "--bits", "2,4,8", "--budget", "latency=0.15", "--gains", "qerror")
    layers = json.loads(plan.read_text())["layers"]
    assert {l["w_bits"] for l in layers} == {2, 4, 8}
    name, x = _random_input(model)
    (tmp_path / "inputs").mkdir()
    np.save(tmp_path / "inputs" / "batch0.npy", x)
    out = tmp_path / "mixed.qdq.onnx"
    result = mpq("export", plan, model, "--inputs", tmp_path / "inputs", "-o", out)
    assert result.returncode == 0, result.stderr
    assert "opset 25" in result.stdout and "disabled_optimizers" in result.stdout
    read = _inspected_bits(out)
    assert read == {l["name"]: (l["w_bits"], [l["a_bits"]]) for l in layers}
    proto = onnx.load(out)
    types = _element_types(proto)
    expected = {2: onnx.TensorProto.INT2, 4: onnx.TensorProto.INT4, 8: onnx.TensorProto.INT8}
    quantized = {n.input[0] for n in proto.graph.node if n.op_type == "QuantizeLinear"}
    for layer in layers:
        assert types[layer["weight_qdq"]] == expected[layer["w_bits"]]
        assert set(layer["inputs"]) <= quantized
    logits = session(str(out)).run(None, {name: x})[0]
    assert np.isfinite(logits).all()


def test_int4_export_is_at_most_0_6_of_the_int8_export(exported, tmp_path):
    model = exported("resnet18")
    sizes = {}
    for bits in (4, 8):
        sizes[bits] = _uniform_export(model, tmp_path, bits).stat().st_size
    print(f"ResNet-18 QDQ export: all-4-bit {sizes[4]:,} B, all-8-bit {sizes[8]:,} B ({sizes[4] / sizes[8]:.2f}x)")
    assert sizes[4] <= 0.6 * sizes[8]


# ------------------------------------------------------------------------------ batch norms folded

@pytest.fixture(scope="module")
def mnist_net(tmp_path_factory):
    """The MNIST task's ResNet (narrow) with non-trivial batch-norm statistics, exported as mpq
    exports task models (batch norms kept as BatchNormalization nodes)."""
    from planner.tasks.mnist import SmallResNet
    from planner.quant.torchmap import export_onnx

    torch.manual_seed(0)
    model = SmallResNet(widths=(4, 8, 8)).eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    x = torch.randn(16, 1, 28, 28)
    path = export_onnx(model, (x[:1],), tmp_path_factory.mktemp("mnist") / "mnist.onnx")
    with torch.no_grad():
        reference = model(x).numpy()
    return path, x.numpy(), reference


def test_batch_norms_are_folded_and_the_weights_stay_on_the_grid(mnist_net, tmp_path):
    path, x, reference = mnist_net
    assert "BatchNormalization" in {n.op_type for n in onnx.load(path).graph.node}
    outputs = {}
    for bits in (4, 8):
        out = _uniform_export(path, tmp_path, bits)
        proto = onnx.load(out)
        assert "BatchNormalization" not in {n.op_type for n in proto.graph.node}
        producers = {o: n for n in proto.graph.node for o in n.output}
        levels = {t.name: onnx.numpy_helper.to_array(t) for t in proto.graph.initializer}
        for conv in (n for n in proto.graph.node if n.op_type == "Conv"):
            dq = producers[conv.input[1]]  # the conv reads the dequantized levels directly
            assert dq.op_type == "DequantizeLinear" and levels[dq.input[0]].dtype.itemsize == 1
            q = levels[dq.input[0]].astype(np.int32)
            assert q.min() >= -2 ** (bits - 1) and q.max() <= 2 ** (bits - 1) - 1
            consumers = [n.op_type for n in proto.graph.node if conv.output[0] in n.input]
            assert "BatchNormalization" not in consumers and "Mul" not in consumers
        outputs[bits] = session(str(out)).run(None, {"input": x})[0]
    # weights only (no task: activations float): 8 bits is close to the float network with its batch norms
    error = np.abs(outputs[8] - reference).max() / np.abs(reference).max()
    print(f"MNIST ResNet, batch norms folded: relative max logit error {error:.4f} at W8, "
          f"{np.abs(outputs[4] - reference).max() / np.abs(reference).max():.4f} at W4")
    assert error < 0.02


def test_checkpoint_export_keeps_the_learned_levels_through_folded_batch_norms(tmp_path):
    """An LSQ network (2/4/8 bits, batch norms with negative scales too) exported from its
    checkpoint: the QDQ model in onnxruntime computes what torch computes."""
    from planner.export import handoff
    from planner.quant import network
    from planner.export.plan import read_plan
    from planner.quant.checkpoint import save_checkpoint
    from planner.tasks import load_task

    task = load_task(str(Path(__file__).with_name("tiny_task.py")) + ":task")
    model = task.model().eval()
    with torch.no_grad():
        for k, m in enumerate(mm for mm in model.modules() if isinstance(mm, nn.BatchNorm2d)):
            m.weight.uniform_(-1.5, 1.5)
            m.running_mean.uniform_(-0.3, 0.3)
            m.running_var.uniform_(0.5, 2.0)
    onnx_path = network.save_onnx_for_planning(task, model, tmp_path / "float.onnx")
    plan_path = _plan(onnx_path, tmp_path, "plan", "--bits", "2,4,8", "--budget", "latency=0.3", "--gains", "qerror")
    plan = read_plan(plan_path)
    assert {l["w_bits"] for l in plan.doc["layers"]} >= {2, 8}
    quantized = network.apply_plan(task, model, plan).eval()
    x = torch.stack([task.test_data()[k][0] for k in range(200)])
    with torch.no_grad():
        quantized(x[:100])  # LSQ steps start from the first batch
        reference = quantized(x).numpy()
    save_checkpoint(tmp_path / "q.pt", quantized, task)
    from planner.quant.checkpoint import load_checkpoint

    result = handoff.export_qdq(plan, onnx_path, task=task, model=load_checkpoint(tmp_path / "q.pt", task))
    assert "BatchNormalization" not in {n.op_type for n in result.model.graph.node}
    logits = session(result.model).run(None, {"input": x.numpy()})[0]
    difference = np.abs(logits - reference).max() / np.abs(reference).max()
    agreement = (logits.argmax(1) == reference.argmax(1)).mean()
    print(f"checkpoint export vs torch: top-1 agreement {agreement:.3f}, relative max logit difference {difference:.2e}")
    assert agreement == 1.0 and difference < 1e-5


# ------------------------------------------------------------------------------ onnxruntime overrides

def _dq_types(model: onnx.ModelProto, layer_names: list[str]) -> dict[str, tuple]:
    """Per layer node: (weight DQ levels type, [activation DQ zero-point types]), read with onnx."""
    producers = {o: n for n in model.graph.node for o in n.output}
    types = {t.name: t.data_type for t in model.graph.initializer}
    nodes = {n.name: n for n in model.graph.node}
    out = {}
    for name in layer_names:
        node = nodes[name]
        weight = producers.get(node.input[1])
        activation = producers.get(node.input[0])
        out[name] = (types.get(weight.input[0]) if weight is not None and weight.op_type == "DequantizeLinear" else None,
                     types.get(activation.input[2]) if activation is not None and activation.op_type == "DequantizeLinear"
                     else None)
    return out


def test_ort_overrides_are_realized_by_quantize_static(exported, tmp_path):
    """quantize_static with mpq's overrides (read from the JSON file) on ResNet-18 gives every
    layer the planned weight and activation types (2-bit as 4-bit: onnxruntime has no 2-bit)."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, quantize_static

    from planner.export.ortoverrides import read_overrides

    model = exported("resnet18")
    plan = _plan(model, tmp_path, "mixed", "--bits", "2,4,8", "--budget", "latency=0.15", "--gains", "qerror")
    layers = json.loads(plan.read_text())["layers"]
    name, x = _random_input(model)
    (tmp_path / "inputs").mkdir()
    np.save(tmp_path / "inputs" / "batch0.npy", x)
    result = mpq("export", plan, model, "--format", "ort-overrides", "-o", tmp_path / "overrides.json",
                 "--inputs", tmp_path / "inputs", "--calibrate", tmp_path / "ort.onnx")
    assert result.returncode == 0, result.stderr
    assert "no 2-bit QuantType" in result.stdout

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.batches = iter([{name: x}])

        def get_next(self):
            return next(self.batches, None)

    float_model = onnx.version_converter.convert_version(onnx.load(model), 21)  # standard INT4 Q/DQ
    onnx.save(float_model, tmp_path / "float21.onnx")
    quantize_static(str(tmp_path / "float21.onnx"), str(tmp_path / "mine.onnx"), Reader(), quant_format=QuantFormat.QDQ,
                    per_channel=True, extra_options={"TensorQuantOverrides": read_overrides(tmp_path / "overrides.json")})
    signed = {2: onnx.TensorProto.INT4, 4: onnx.TensorProto.INT4, 8: onnx.TensorProto.INT8}
    unsigned = {2: onnx.TensorProto.UINT4, 4: onnx.TensorProto.UINT4, 8: onnx.TensorProto.UINT8}
    expected = {l["name"]: (signed[l["w_bits"]], unsigned[l["a_bits"]]) for l in layers}
    for quantized in ("mine.onnx", "ort.onnx"):
        proto = onnx.load(tmp_path / quantized)
        assert _dq_types(proto, list(expected)) == expected, quantized
    logits = session(str(tmp_path / "ort.onnx")).run(None, {name: x})[0]
    assert np.isfinite(logits).all()


# ------------------------------------------------------------------------------ AIMET encodings

# AIMET's encoding format 1.0.0 as published (entries of param_encodings / activation_encodings).
AIMET_ENTRY = {
    "type": "object", "required": ["name", "dtype", "enc_type", "bw", "is_sym", "scale", "offset"],
    "properties": {"name": {"type": "string"}, "dtype": {"enum": ["INT", "FLOAT"]},
                   "enc_type": {"enum": ["PER_TENSOR", "PER_CHANNEL", "PER_BLOCK", "LPBQ"]},
                   "bw": {"type": "integer", "minimum": 1, "maximum": 32}, "is_sym": {"type": "boolean"},
                   "scale": {"type": "array", "items": {"type": "number", "exclusiveMinimum": 0}, "minItems": 1},
                   "offset": {"type": "array", "items": {"type": "integer"}, "minItems": 1}},
}
AIMET_SCHEMA = {"type": "object", "required": ["version", "activation_encodings", "param_encodings"],
                "properties": {"version": {"const": "1.0.0"},
                               "activation_encodings": {"type": "array", "items": AIMET_ENTRY},
                               "param_encodings": {"type": "array", "items": AIMET_ENTRY}}}


def test_aimet_encodings_follow_the_format_and_the_plan(mnist_net, tmp_path):
    """AIMET 1.0.0 encodings of a 2/4/8-bit plan: valid against the published format, one
    encoding per planned weight and input at the planned bits, and AIMET's fake quantization
    with them, x = (clamp(round(w / scale) - offset, 0, 2^bw - 1) + offset) * scale, gives the
    weights of the QDQ export."""
    import jsonschema

    path, x, _ = mnist_net
    plan = _plan(path, tmp_path, "mixed", "--bits", "2,4,8", "--budget", "latency=0.3", "--gains", "qerror")
    layers = json.loads(plan.read_text())["layers"]
    assert {l["w_bits"] for l in layers} >= {2, 8}
    (tmp_path / "inputs").mkdir()
    np.save(tmp_path / "inputs" / "b0.npy", x)
    result = mpq("export", plan, path, "--format", "aimet", "--inputs", tmp_path / "inputs", "-o", tmp_path / "enc.json")
    assert result.returncode == 0, result.stderr
    doc = json.loads((tmp_path / "enc.json").read_text())
    jsonschema.validate(doc, AIMET_SCHEMA)
    params = {e["name"]: e for e in doc["param_encodings"]}
    activations = {e["name"]: e for e in doc["activation_encodings"]}
    float_model = onnx.load(tmp_path / "enc.onnx")  # the float model the encodings name (batch norms folded)
    weights = {t.name: onnx.numpy_helper.to_array(t) for t in float_model.graph.initializer}
    assert "BatchNormalization" not in {n.op_type for n in float_model.graph.node}
    assert mpq("export", plan, path, "--inputs", tmp_path / "inputs", "-o", tmp_path / "q.onnx").returncode == 0
    qdq = onnx.load(tmp_path / "q.onnx")
    qdq_init = {t.name: onnx.numpy_helper.to_array(t) for t in qdq.graph.initializer}
    for layer in layers:
        e = params[layer["weight"]]
        assert e["bw"] == layer["w_bits"] and e["enc_type"] == "PER_CHANNEL" and e["is_sym"]
        w = weights[layer["weight"]]
        scale = np.array(e["scale"]).reshape([-1] + [1] * (w.ndim - 1))
        offset = np.array(e["offset"]).reshape(scale.shape)
        fake = (np.clip(np.round(w / scale) - offset, 0, 2 ** e["bw"] - 1) + offset) * scale
        levels = qdq_init[layer["weight_qdq"]].astype(np.float64)
        exported = levels * qdq_init[layer["weight"] + "_scale"].astype(np.float64).reshape(scale.shape)
        assert np.allclose(fake, exported, rtol=1e-5, atol=1e-7)
        for tensor in layer["inputs"]:
            assert activations[tensor]["bw"] == layer["a_bits"]
            assert tensor in {v for n in float_model.graph.node for v in n.input}


# ------------------------------------------------------------------------------ the MiniLM transformer

def test_minilm_export_agrees_with_the_torch_network(tmp_path):
    """A 4/8-bit plan on all-MiniLM-L6-v2 with every layer quantized in torch (LSQ steps calibrated
    post-training on training texts; attention MatMuls with a step and sign per input): the QDQ export read back by mpq
    inspect has the plan's bits on every layer, both inputs of each attention MatMul have their
    own scale, and in onnxruntime it retrieves what the torch network retrieves."""
    from planner.quant import network
    from planner.export.plan import read_plan
    from planner.quant.checkpoint import load_checkpoint, save_checkpoint
    from planner.tasks import minilm

    torch.set_num_threads(1)
    task = minilm.MiniLMTask(sizes={"test": 24, "val": 2, "train": 16})
    model = task.model()
    onnx_path = network.save_onnx_for_planning(task, model, tmp_path / "minilm.onnx")
    plan_path = _plan(onnx_path, tmp_path, "plan", "--bits", "4,8", "--budget", "latency=0.5", "--gains", "params")
    plan = read_plan(plan_path)
    assert {l["w_bits"] for l in plan.doc["layers"]} == {4, 8}
    quantized = network.calibrate(task, network.apply_plan(task, model, plan))  # on the 32 training texts
    queries, documents = task._tokens["queries"], task._tokens["documents"]
    save_checkpoint(tmp_path / "q.pt", quantized, task)
    (tmp_path / "inputs").mkdir()
    np.save(tmp_path / "inputs" / "queries.npy", queries[:8].numpy())
    out = tmp_path / "minilm.qdq.onnx"
    result = mpq("export", plan_path, onnx_path, "--task", "minilm", "--checkpoint", tmp_path / "q.pt",
                 "--inputs", tmp_path / "inputs", "-o", out)
    assert result.returncode == 0, result.stderr
    assert "stay float" not in result.stdout and "fidelity vs the fine-tuned torch network" in result.stdout
    print(result.stdout)
    layers = plan.doc["layers"]
    read = layer_bits(load_graph(out))
    assert {n: (b["w_bits"], b["a_bits"]) for n, b in read.items()} == {
        l["name"]: (l["w_bits"] if l["weight"] else None, [l["a_bits"]] * len(l["inputs"])) for l in layers}
    proto = onnx.load(out)
    producers = {o: n for n in proto.graph.node for o in n.output}
    for layer in (l for l in layers if l["weight"] is None):
        node = next(n for n in proto.graph.node if n.name == layer["name"])
        scales = [producers[i].input[1] for i in node.input]
        assert len(set(scales)) == 2  # one quantizer per input

    torch_model = load_checkpoint(tmp_path / "q.pt", task)
    with torch.no_grad():
        reference = [minilm.encode(torch_model, t).numpy() for t in (queries, documents)]
    run = session(str(out))
    exported = [np.concatenate([run.run(None, {"input": t[k:k + 8].numpy()})[0] for k in range(0, len(t), 8)])
                for t in (queries, documents)]
    difference = max(np.abs(a - b).max() for a, b in zip(exported, reference))
    retrieved = [(q @ d.T).argmax(1) for q, d in (exported, reference)]
    agreement = float((retrieved[0] == retrieved[1]).mean())
    print(f"MiniLM QDQ vs torch on {len(queries)} queries: top-1 retrieval agreement {agreement:.3f}, "
          f"max embedding difference {difference:.2e}")
    assert agreement >= 0.99


# ------------------------------------------------------------------------------ other widths

def test_sixteen_bit_layers_export_as_int16(tmp_path):
    """16-bit levels get INT16 Q/DQ (issue 11 item 8: they used to wrap into int8, a logit of
    307.5 came out as -5.9)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4)).eval()
    with torch.no_grad():
        model[2].weight.mul_(200.0)
    path = export(model, (torch.randn(1, 16),), tmp_path / "mlp.onnx", "torchscript", input_names=["x"],
                  dynamic_axes={"x": {0: "batch"}})
    x = torch.randn(64, 16)
    with torch.no_grad():
        reference = model(x).numpy()
    assert np.abs(reference).max() > 100
    graph = load_graph(path, pin_first=None, pin_last=None)
    bits = {l.name: 16 for l in graph.layers}
    result = qdq_model(graph, bits, activation_steps=calibrate(graph, bits, [(x.numpy(),)]))
    assert result.opset == 21
    types = {t.data_type for t in result.model.graph.initializer if t.name.endswith("_quantized")}
    assert types == {onnx.TensorProto.INT16}
    logits = session(result.model).run(None, {"x": x.numpy()})[0]
    assert np.abs(logits - reference).max() < 1e-3 * np.abs(reference).max()


def test_two_bit_levels_in_int4_containers_below_opset_25(mnist_net, tmp_path):
    """With --max-opset 21 there is no INT2: 2-bit layers get INT4 types holding only 2-bit
    levels; the output says so and mpq inspect reports 2 bits (from mpq's metadata)."""
    path, x, _ = mnist_net
    plan = _plan(path, tmp_path, "mixed", "--bits", "2,4,8", "--budget", "latency=0.3", "--gains", "qerror")
    layers = json.loads(plan.read_text())["layers"]
    (tmp_path / "inputs").mkdir()
    np.save(tmp_path / "inputs" / "b0.npy", x)
    out = tmp_path / "q21.onnx"
    result = mpq("export", plan, path, "--max-opset", "21", "--inputs", tmp_path / "inputs", "-o", out)
    assert result.returncode == 0, result.stderr
    assert "opset 21" in result.stdout and "2-bit levels in 4-bit Q/DQ types" in result.stdout
    assert "fidelity vs the float model" in result.stdout
    assert _inspected_bits(out) == {l["name"]: (l["w_bits"], [l["a_bits"]]) for l in layers}
    proto = onnx.load(out)
    init = {t.name: t for t in proto.graph.initializer}
    for layer in (l for l in layers if l["w_bits"] == 2):
        levels = init[layer["weight_qdq"]]
        assert levels.data_type == onnx.TensorProto.INT4
        q = onnx.numpy_helper.to_array(levels).astype(int)
        assert q.min() >= -2 and q.max() <= 1
    assert np.isfinite(session(str(out)).run(None, {"input": x})[0]).all()


# ------------------------------------------------------------------------------ options and user errors

def test_per_tensor_option_and_same_bytes(mnist_net, tmp_path):
    path, _, _ = mnist_net
    plan = _uniform_plan(path, tmp_path, 4)
    written = []
    for k, extra in enumerate(([], [], ["--per-tensor"])):
        out = tmp_path / f"e{k}.onnx"
        assert mpq("export", plan, path, *extra, "-o", out).returncode == 0
        written.append(out.read_bytes())
    assert written[0] == written[1]
    per_tensor = onnx.load_from_string(written[2])
    weights = [n for n in per_tensor.graph.node if n.op_type == "DequantizeLinear"]
    assert weights and not any(a.name == "axis" for n in weights for a in n.attribute)
    init = {t.name: onnx.numpy_helper.to_array(t) for t in per_tensor.graph.initializer}
    assert all(init[n.input[1]].ndim == 0 for n in weights)


def test_export_user_errors(mnist_net, tmp_path):
    from conftest import assert_user_error

    path, _, _ = mnist_net
    plan = _uniform_plan(path, tmp_path, 4)
    (tmp_path / "empty").mkdir()
    assert_user_error(mpq("export", plan, path, "--inputs", tmp_path / "empty", "-o", tmp_path / "a.onnx"),
                      "no .npy or .npz")
    assert_user_error(mpq("export", plan, path, "--calibrate", tmp_path / "c.onnx", "-o", tmp_path / "b.onnx"),
                      "--calibrate goes with --format ort-overrides")
    assert_user_error(mpq("export", plan, path, "--format", "ort-overrides", "--calibrate", tmp_path / "c.onnx",
                          "-o", tmp_path / "o.json"), "calibration inputs")
    assert_user_error(mpq("export", plan, path, "--format", "aimet", "-o", tmp_path / "enc.onnx"), ".json")
    assert not [p for p in tmp_path.iterdir() if p.suffix in (".onnx", ".json") and p.name != "u4.json"]


# ------------------------------------------------------------------------------ frontier with measured fidelity

def test_frontier_scores_every_plan_against_the_float_model(mnist_net, tmp_path):
    """mpq frontier --inputs measures each optimal plan exported post-training; the figure for a
    budget equals what mpq plan + mpq export --inputs report for that budget, and the dearest plan
    is at least as faithful as the cheapest."""
    path, x, _ = mnist_net
    (tmp_path / "inputs").mkdir()
    np.save(tmp_path / "inputs" / "b0.npy", x)
    result = mpq("frontier", path, "--hw", "northpole", "--between", "2,4", "--points", "3", "--gains", "qerror",
                 "--inputs", tmp_path / "inputs", "--json", "--plot", tmp_path / "frontier.png")
    assert result.returncode == 0, result.stderr
    points = json.loads(result.stdout)["points"]
    assert all(0 < p["fidelity"]["cosine"] <= 1 for p in points)
    assert points[-1]["fidelity"]["cosine"] >= points[0]["fidelity"]["cosine"]
    middle = points[1]
    plan = _plan(path, tmp_path, "middle", "--between", "2,4", "--budget", f"latency={middle['fraction']}",
                 "--gains", "qerror")
    assert [l["w_bits"] for l in json.loads(plan.read_text())["layers"]] == [
        middle["bits"][g] for g in (l.group for l in load_graph(path).layers)]
    exported = mpq("export", plan, path, "--inputs", tmp_path / "inputs", "-o", tmp_path / "middle.onnx")
    assert f"output cosine {middle['fidelity']['cosine']:.4f}" in exported.stdout, exported.stdout
    assert (tmp_path / "frontier.png").stat().st_size > 0


def test_inspect_measures_shapes_of_a_model_with_large_packed_weights(tmp_path):
    """A QDQ export whose shapes ONNX inference cannot follow is sized by one onnxruntime run of
    its weightless skeleton; its large INT4/INT2 weights cannot be numpy feeds and must become zero
    initializers there (`make demo`'s `mpq inspect` of the EfficientNet export failed on this)."""
    from onnx import TensorProto, helper, numpy_helper

    from planner.graph.shapes import run_for_shapes

    rows, cols = 128, 64  # 8,192 elements: above the size whose values the skeleton keeps
    nodes = [
        helper.make_node("DequantizeLinear", ["w4", "s"], ["w"], name="dq4"),
        helper.make_node("DequantizeLinear", ["w2", "s"], ["v"], name="dq2"),
        helper.make_node("Add", ["w", "v"], ["wv"]),
        helper.make_node("Shape", ["x"], ["x_shape"]),
        helper.make_node("Reshape", ["x", "x_shape"], ["x2"]),  # a shape computed at run time
        helper.make_node("MatMul", ["x2", "wv"], ["y"], name="fc"),
    ]
    initializers = [helper.make_tensor("w4", TensorProto.INT4, [rows, cols], bytes(rows * cols // 2), raw=True),
                    helper.make_tensor("w2", TensorProto.INT2, [rows, cols], bytes(rows * cols // 4), raw=True),
                    numpy_helper.from_array(np.array(0.1, np.float32), "s")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", rows])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 25)])
    shapes = run_for_shapes(model, {"x": (3, rows)}, ["x2", "y"], str(tmp_path / "m.onnx"))
    assert shapes == {"x2": (3, rows), "y": (3, cols)}


# ------------------------------------------------------------------------------ what the export reads besides the plan

class _Detector(nn.Module):
    """A small fully convolutional detector: any input height and width."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 16, 3, stride=2, padding=1),
                                  nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1), nn.ReLU())
        self.head = nn.Conv2d(16, 6, 1)

    def forward(self, images):
        return self.head(self.body(images))


def _detector(tmp_path) -> tuple[nn.Module, Path]:
    """The detector exported with symbolic batch, height and width, as detectors ship."""
    torch.manual_seed(0)
    model = _Detector().eval()
    path = export(model, torch.randn(1, 3, 32, 48), tmp_path / "detector.onnx", "torchscript", input_names=["images"],
                  dynamic_axes={"images": {0: "batch", 2: "height", 3: "width"}})
    return model, path


def test_a_model_with_symbolic_dims_exports_at_the_shapes_it_was_planned_at(tmp_path):
    """Planning such a model needs --input-shape; every export format then takes the shapes from
    the plan (it asked for an --input-shape that mpq export does not have), and so does mpq cost
    --plan. The QDQ model keeps the symbolic dimensions: it runs at another size, close to the
    torch network at 8 bits."""
    model, path = _detector(tmp_path)
    unshaped = mpq("plan", path, "--hw", "northpole", "--bits", "8", "--budget", "latency=1", "-o", tmp_path / "x.json")
    assert unshaped.returncode == 2 and "--input-shape" in unshaped.stderr
    plan = tmp_path / "plan.json"
    result = mpq("plan", path, "--hw", "northpole", "--bits", "8", "--no-pin", "--budget", "latency=1",
                 "--input-shape", "images=1x3x32x48", "-o", plan)
    assert result.returncode == 0, result.stderr
    for fmt, out in (("qdq", "q.onnx"), ("ort-overrides", "overrides.json"), ("aimet", "encodings.json")):
        result = mpq("export", plan, path, "--format", fmt, "-o", tmp_path / out)
        assert result.returncode == 0, (fmt, result.stderr)
        assert (tmp_path / out).exists()
    costed = mpq("cost", path, "--hw", "northpole", "--plan", plan, "--no-pin", "--json")
    assert costed.returncode == 0, costed.stderr
    assert json.loads(costed.stdout)["what"] == f"plan {plan}"
    qdq = onnx.load(tmp_path / "q.onnx")
    dims = [d.dim_param or d.dim_value for d in qdq.graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["batch", 3, "height", "width"]
    x = np.random.default_rng(0).standard_normal((2, 3, 40, 64)).astype(np.float32)
    (got,) = session(tmp_path / "q.onnx").run(None, {"images": x})
    with torch.no_grad():
        want = model(torch.from_numpy(x)).numpy()
    assert got.shape == want.shape == (2, 6, 20, 32)
    assert np.abs(got - want).max() < 0.02 * np.abs(want).max()


def test_an_already_quantized_model_plans_but_does_not_export(tmp_path):
    """A QDQ model (mpq's own export) and a dynamically quantized one (ConvInteger, by
    onnxruntime's quantize_dynamic) can be planned, but exporting a plan on them would stack a
    second grid on the first (the QDQ one: 2 x the Q/DQ pairs, exit 0) or hand ConvInteger float
    operands (an invalid model, exit 0): exit 2 naming the layer, and no output file."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    _, path = _detector(tmp_path)
    shape = ("--input-shape", "images=1x3x32x48")
    float_plan = _plan(path, tmp_path, "det8", "--bits", "8", "--no-pin", "--budget", "latency=1", *shape)
    assert mpq("export", float_plan, path, "-o", tmp_path / "qdq.onnx").returncode == 0
    quantize_dynamic(str(path), str(tmp_path / "dynamic.onnx"), weight_type=QuantType.QUInt8)
    assert "ConvInteger" in {n.op_type for n in onnx.load(tmp_path / "dynamic.onnx").graph.node}
    for model, words in ((tmp_path / "qdq.onnx", "through DequantizeLinear"), (tmp_path / "dynamic.onnx", "ConvInteger")):
        plan = _plan(model, tmp_path, model.stem, "--budget", "latency=0.5", *shape)
        for fmt in ("qdq", "ort-overrides", "aimet"):
            out = tmp_path / f"again-{model.stem}-{fmt}.json"
            result = mpq("export", plan, model, "--format", fmt, "-o", out)
            assert result.returncode == 2 and "already quantized" in result.stderr and words in result.stderr, result.stderr
            assert len(result.stderr.strip().splitlines()) == 1
            assert not out.exists() and not out.with_suffix(".onnx").exists()


@pytest.mark.parametrize("name", ["light_squeezenet", "light_inception_v1"])
def test_old_zoo_models_with_ir_3_export_and_run(name, tmp_path):
    """The ``light`` zoo models that ship with the onnx package (IR version 3, opset 9: every
    initializer is also a graph input; weights made by ConstantOfShape): the export converts them
    to the Q/DQ opset, where IR 3 is invalid (the checker raised, exit 1). Now: exit 0, a newer IR
    version, only the image as graph input, and onnxruntime's output equals the float model's."""
    path = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light" / f"{name}.onnx"
    source = onnx.load(path)
    assert source.ir_version == 3 and len(source.graph.input) > 1
    plan = _plan(path, tmp_path, name, "--budget", "latency=0.5")
    out = tmp_path / f"{name}.qdq.onnx"
    result = mpq("export", plan, path, "-o", out)
    assert result.returncode == 0, result.stderr
    exported = onnx.load(out)
    stored = {t.name for t in source.graph.initializer}
    assert exported.ir_version >= 4
    assert [i.name for i in exported.graph.input] == [i.name for i in source.graph.input if i.name not in stored]
    (image,) = exported.graph.input
    x = np.random.default_rng(0).random([d.dim_value for d in image.type.tensor_type.shape.dim], dtype=np.float32)
    quiet = ort.SessionOptions()
    quiet.log_severity_level = 3  # IR 3: a warning per initializer listed as an input
    float_session = ort.InferenceSession(str(path), quiet, providers=["CPUExecutionProvider"])
    want = float_session.run(None, {image.name: x})[0]
    got = session(out).run(None, {image.name: x})[0]
    assert got.shape == want.shape and np.allclose(got, want, atol=1e-6)  # constant weights sit on every grid


@pytest.mark.parametrize("dtype", [torch.float16, torch.float64])
def test_a_model_computing_in_float16_or_double_exports_with_its_types(dtype, tmp_path):
    """A network exported by torch in float16 (a CNN) or double (an MLP: onnxruntime has no double
    Conv): the QDQ model bound float32 Q/DQ outputs to the model's float16 / double layers
    (onnxruntime refused to load it, exit 0). Now every tensor keeps its type (Q/DQ in float32
    between Casts): the model passes onnx.checker's full check, returns the float model's type,
    stays close to it at 8 bits, and mpq inspect reads the plan's weight and input bits back."""
    torch.manual_seed(0)
    if dtype == torch.float16:
        net, shape = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3), nn.ReLU(),
                                   nn.Flatten(), nn.Linear(8 * 6 * 6, 5)), (1, 3, 8, 8)
    else:
        net, shape = nn.Sequential(nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 5)), (4, 12)
    path = export(net.eval().to(dtype), (torch.randn(shape, dtype=dtype),), tmp_path / "net.onnx", "torchscript",
                  input_names=["x"])
    plan = _plan(path, tmp_path, f"net-{dtype}", "--bits", "8", "--no-pin", "--budget", "latency=1")
    layers = json.loads(plan.read_text())["layers"]
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float16 if dtype == torch.float16 else np.float64)
    (tmp_path / "inputs").mkdir()
    np.save(tmp_path / "inputs" / "0.npy", x)
    out = tmp_path / "net.qdq.onnx"
    result = mpq("export", plan, path, "--inputs", tmp_path / "inputs", "-o", out)
    assert result.returncode == 0, result.stderr
    onnx.checker.check_model(onnx.load(out), full_check=True)
    assert _inspected_bits(out) == {l["name"]: (8, [8]) for l in layers}
    (got,) = session(out).run(None, {"x": x})
    (want,) = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})
    assert got.dtype == want.dtype == x.dtype
    assert np.abs(got.astype(np.float64) - want).max() < 0.05 * np.abs(want.astype(np.float64)).max()


def _mlp(tmp_path) -> Path:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 5)).eval()
    return export(net, (torch.randn(4, 12),), tmp_path / "mlp.onnx", "torchscript", input_names=["x"],
                  dynamic_axes={"x": {0: "batch"}})


def test_outputs_without_a_shape_get_their_rank_in_the_export(tmp_path):
    """A model whose graph output has a type but no shape (onnx-graphsurgeon writes such outputs;
    onnxruntime runs them, onnx.checker refuses them): the export ended in the checker's
    ValidationError (exit 1). Now the output gets its inferred rank with open dimensions: the QDQ
    model passes the full check and runs at another batch size, close to the float model."""
    model = onnx.load(_mlp(tmp_path))
    model.graph.output[0].type.tensor_type.ClearField("shape")
    path = tmp_path / "shapeless.onnx"
    onnx.save(model, path)
    plan = _plan(path, tmp_path, "shapeless", "--bits", "8", "--budget", "latency=1")
    out = tmp_path / "shapeless.qdq.onnx"
    result = mpq("export", plan, path, "-o", out)
    assert result.returncode == 0, result.stderr
    exported = onnx.load(out)
    onnx.checker.check_model(exported, full_check=True)
    dims = exported.graph.output[0].type.tensor_type.shape.dim
    assert len(dims) == 2 and not any(d.HasField("dim_value") or d.HasField("dim_param") for d in dims)
    x = np.random.default_rng(0).standard_normal((7, 12)).astype(np.float32)
    (got,) = session(out).run(None, {"x": x})
    (want,) = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})
    assert got.shape == want.shape == (7, 5)
    assert np.abs(got - want).max() < 0.05 * np.abs(want).max()


def test_a_model_that_onnx_checker_refuses_is_a_user_error_at_export(tmp_path):
    """A float model that onnx.checker refuses (here an IR version newer than the installed onnx
    knows) is planned, but its QDQ model would be refused too: the export said so with a
    traceback (exit 1); now exit 2, one line with the checker's finding, no file."""
    model = onnx.load(_mlp(tmp_path))
    model.ir_version = 99
    path = tmp_path / "ir99.onnx"
    onnx.save(model, path)
    plan = _plan(path, tmp_path, "ir99", "--budget", "latency=0.5")
    result = mpq("export", plan, path, "-o", tmp_path / "ir99.qdq.onnx")
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "onnx.checker" in result.stderr and "ir_version 99" in result.stderr
    assert not (tmp_path / "ir99.qdq.onnx").exists()


def test_calibrating_a_model_onnxruntime_cannot_run_is_a_user_error(tmp_path):
    """A double-precision CNN (onnxruntime has no double Conv): planned and exported without data,
    but calibrating it on --inputs ended in onnxruntime's NotImplemented traceback (exit 1). Now
    exit 2, one line saying what to do, no file; the export without --inputs still works."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 4, 3)).eval().double()
    path = export(net, (torch.randn(1, 3, 8, 8, dtype=torch.float64),), tmp_path / "conv64.onnx", "torchscript",
                  input_names=["x"])
    plan = _plan(path, tmp_path, "conv64", "--budget", "latency=0.5")
    (tmp_path / "inputs").mkdir()
    np.save(tmp_path / "inputs" / "0.npy", np.random.default_rng(0).standard_normal((1, 3, 8, 8)))
    out = tmp_path / "conv64.qdq.onnx"
    result = mpq("export", plan, path, "--inputs", tmp_path / "inputs", "-o", out)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "onnxruntime cannot run" in result.stderr
    assert "without --inputs" in result.stderr and not out.exists()
    assert mpq("export", plan, path, "-o", out).returncode == 0
    onnx.checker.check_model(onnx.load(out), full_check=True)


def test_batch_norms_folded_in_an_ir_3_model_leave_no_inputs_behind(tmp_path):
    """torch's opset-7 export (IR 3: every initializer is also a graph input) of a Conv + BatchNorm
    net: folding the batch norm removed its initializers but kept them as graph inputs, so the QDQ
    model and AIMET's float model asked to be fed the batch norm's scale and bias (onnxruntime:
    "Required inputs are missing", exit 0). Now the image is the only input they need and the QDQ
    model stays close to the float model."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 8, 3), nn.ReLU(),
                        nn.Flatten(), nn.Linear(8 * 6 * 6, 5)).eval()
    path = export(net, (torch.randn(1, 3, 8, 8),), tmp_path / "bn7.onnx", "torchscript", input_names=["x"],
                  opset_version=7)
    assert onnx.load(path).ir_version == 3
    plan = _plan(path, tmp_path, "bn7", "--bits", "8", "--budget", "latency=1")
    for fmt, out in (("qdq", tmp_path / "bn7.qdq.onnx"), ("aimet", tmp_path / "bn7-aimet.json")):
        result = mpq("export", plan, path, "--format", fmt, "-o", out)
        assert result.returncode == 0, result.stderr
        graph = onnx.load(out.with_suffix(".onnx")).graph
        stored = {t.name for t in graph.initializer}
        assert [i.name for i in graph.input if i.name not in stored] == ["x"]  # the inputs one must feed
    x = np.random.default_rng(0).standard_normal((1, 3, 8, 8)).astype(np.float32)
    (got,) = session(tmp_path / "bn7.qdq.onnx").run(None, {"x": x})
    with torch.no_grad():
        want = net(torch.from_numpy(x)).numpy()
    assert np.abs(got - want).max() < 0.05 * np.abs(want).max()


class _Score(nn.Module):
    """An MLP whose output is one number per call (a 0-d tensor), as scorers and losses export."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 1))

    def forward(self, x):
        return self.body(x).sum()


def test_fidelity_of_a_model_with_a_scalar_output(tmp_path):
    """Exporting with --inputs measured fidelity assuming a batch axis on the output: a 0-d output
    was an IndexError traceback (exit 1) after the QDQ model had been written. Now exit 0, the
    figures printed, and the QDQ output close to torch's."""
    torch.manual_seed(0)
    net = _Score().eval()
    path = export(net, (torch.randn(4, 12),), tmp_path / "score.onnx", "torchscript", input_names=["x"])
    plan = _plan(path, tmp_path, "score", "--bits", "8", "--budget", "latency=1")
    x = np.random.default_rng(0).standard_normal((4, 12)).astype(np.float32)
    (tmp_path / "inputs").mkdir()
    np.save(tmp_path / "inputs" / "0.npy", x)
    out = tmp_path / "score.qdq.onnx"
    result = mpq("export", plan, path, "--inputs", tmp_path / "inputs", "-o", out)
    assert result.returncode == 0, result.stderr
    assert "fidelity vs the float model on 1 inputs" in result.stdout
    (got,) = session(out).run(None, {"x": x})
    with torch.no_grad():
        want = float(net(torch.from_numpy(x)))
    assert got.shape == () and abs(float(got) - want) < 0.05 * max(1.0, abs(want))


def test_a_float16_conversion_that_appends_its_casts_exports(tmp_path):
    """onnxruntime's float16 converter with keep_io_types appends the input and output Casts after
    the nodes that read them. ONNX shape inference follows the file's order, so the element types
    of the float16 activations were unknown, taken as float32, and the export with --inputs built
    float32 quantizers on float16 tensors (onnxruntime refused the model: a traceback, exit 1). Now
    inference reads the nodes in a topological order: the model exports, passes the full check and
    stays close to the float model."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(8, 8, 3), nn.ReLU(),
                        nn.Flatten(), nn.Linear(8 * 2 * 2, 5)).eval()
    path = export(net, (torch.randn(1, 3, 8, 8),), tmp_path / "net.onnx", "torchscript", input_names=["x"])
    half = convert_float_to_float16(onnx.load(path), keep_io_types=True)
    position = {o: k for k, n in enumerate(half.graph.node) for o in n.output}
    assert any(position.get(i, -1) > k for k, n in enumerate(half.graph.node) for i in n.input)  # a reader before its Cast
    onnx.save(half, tmp_path / "half.onnx")
    plan = _plan(tmp_path / "half.onnx", tmp_path, "half", "--bits", "8", "--budget", "latency=1")
    x = np.random.default_rng(0).standard_normal((1, 3, 8, 8)).astype(np.float32)
    (tmp_path / "inputs").mkdir()
    np.save(tmp_path / "inputs" / "0.npy", x)
    out = tmp_path / "half.qdq.onnx"
    result = mpq("export", plan, tmp_path / "half.onnx", "--inputs", tmp_path / "inputs", "-o", out)
    assert result.returncode == 0, result.stderr
    onnx.checker.check_model(onnx.load(out), full_check=True)
    (got,) = session(out).run(None, {"x": x})
    with torch.no_grad():
        want = net(torch.from_numpy(x)).numpy()
    assert np.abs(got - want).max() < 0.05 * np.abs(want).max()


def test_ort_overrides_calibrate_a_double_model(tmp_path):
    """quantize_static's calibration reader cast every float64 batch to float32, so a model that
    reads double failed in onnxruntime (a traceback, exit 1). Now the batches keep the type the
    model reads, and the calibrated model runs close to the float model."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 5)).eval().double()
    path = export(net, (torch.randn(4, 12, dtype=torch.float64),), tmp_path / "mlp64.onnx", "torchscript",
                  input_names=["x"])
    plan = _plan(path, tmp_path, "mlp64", "--bits", "8", "--budget", "latency=1")
    x = np.random.default_rng(0).standard_normal((4, 12))
    (tmp_path / "inputs").mkdir()
    np.save(tmp_path / "inputs" / "0.npy", x)
    result = mpq("export", plan, path, "--format", "ort-overrides", "--calibrate", tmp_path / "cal.onnx",
                 "--inputs", tmp_path / "inputs", "-o", tmp_path / "overrides.json")
    assert result.returncode == 0, result.stderr
    (got,) = ort.InferenceSession(str(tmp_path / "cal.onnx"), providers=["CPUExecutionProvider"]).run(None, {"x": x})
    with torch.no_grad():
        want = net(torch.from_numpy(x)).numpy()
    assert got.dtype == np.float64 and np.abs(got - want).max() < 0.05 * np.abs(want).max()


def test_a_model_whose_if_branches_read_outer_tensors_exports_in_order(tmp_path):
    """silero-vad's shipped opset-15 model: an If node whose branches read tensors computed
    outside them. Sorting the QDQ model's nodes ignored those reads and put the If before their
    producers, and onnx.checker refused the export (a traceback, exit 1). Now the model exports
    with --inputs, passes the full check and runs close to the float model."""
    import importlib.util

    spec = importlib.util.find_spec("silero_vad")
    path = Path(spec.submodule_search_locations[0]) / "data" / "silero_vad_16k_op15.onnx"
    shapes = ("--input-shape", "input=1x512", "--input-shape", "state=2x1x128")
    plan = _plan(path, tmp_path, "silero", "--bits", "8", "--budget", "latency=1", *shapes)
    rng = np.random.default_rng(0)
    feed = {"input": rng.standard_normal((1, 512)).astype(np.float32) * 0.1, "state": np.zeros((2, 1, 128), np.float32),
            "sr": np.array(16000, np.int64)}
    (tmp_path / "inputs").mkdir()
    np.savez(tmp_path / "inputs" / "0.npz", **feed)
    out = tmp_path / "silero.qdq.onnx"
    result = mpq("export", plan, path, "--inputs", tmp_path / "inputs", "-o", out)
    assert result.returncode == 0, result.stderr
    onnx.checker.check_model(onnx.load(out), full_check=True)
    (probability, state) = session(out).run(None, feed)
    (want_probability, want_state) = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feed)
    assert probability.shape == want_probability.shape and np.abs(probability - want_probability).max() < 0.02
    cosine = (state * want_state).sum() / np.linalg.norm(state) / np.linalg.norm(want_state)
    assert state.shape == want_state.shape and cosine > 0.95


def test_integer_weights_behind_a_cast_dequantize_to_float(tmp_path):
    """A weight stored as int8 levels and cast to float by the model (as weight-compressed models
    store them) is quantized again as a float weight: its DequantizeLinear output feeds the Cast
    as float, never cast back to int8 (which would truncate every dequantized value)."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    levels = rng.integers(-100, 100, (16, 16)).astype(np.int8)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w0"], ["a"], name="m0"), helper.make_node("Cast", ["w1i"], ["w1"], to=1),
         helper.make_node("MatMul", ["a", "w1"], ["b"], name="m1"), helper.make_node("MatMul", ["b", "w2"], ["y"], name="m2")],
        "intw", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 4])],
        [numpy_helper.from_array(rng.standard_normal((8, 16)).astype(np.float32), "w0"),
         numpy_helper.from_array(levels, "w1i"), numpy_helper.from_array(rng.standard_normal((16, 4)).astype(np.float32), "w2")])
    path = tmp_path / "intw.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    plan = _plan(path, tmp_path, "intw", "--bits", "8", "--budget", "latency=1")
    out = tmp_path / "intw.qdq.onnx"
    assert mpq("export", plan, path, "-o", out).returncode == 0
    exported = onnx.load(out)
    dq = next(n for n in exported.graph.node if n.op_type == "DequantizeLinear" and n.input[0].startswith("w1i"))
    assert [n.op_type for n in exported.graph.node if dq.output[0] in n.input] == ["Cast"]
    assert not any(n.op_type == "Cast" and n.attribute[0].i == TensorProto.INT8 for n in exported.graph.node)
    x = rng.standard_normal((2, 8)).astype(np.float32)
    (got,) = session(out).run(None, {"x": x})
    (want,) = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})
    assert np.abs(got - want).max() < 0.02 * np.abs(want).max()


def test_a_dynamo_bert_exported_with_calibration_loads_in_onnxruntime(tmp_path):
    """torch's dynamo exporter writes BERT's projections as MatMul + Add on 3-D activations.
    onnxruntime's MatMulAddFusion turned them into Gemms behind a QuantizeLinear whose type
    contradicted its zero point, so the calibrated QDQ model did not load: measuring its fidelity
    was a traceback (exit 1). planner.export.qdq.session now leaves that fusion off too: the
    export with --inputs succeeds and the model stays close to the float model."""
    import archs

    model, (ids, mask) = archs.bert(blocks=2, hidden=64, heads=4, seq=16)
    path = export(model, (ids, mask), tmp_path / "bert.onnx", "dynamo", input_names=["input_ids", "attention_mask"])
    plan = _plan(path, tmp_path, "bert-dynamo", "--budget", "latency=0.5")
    feed = {"input_ids": ids.numpy(), "attention_mask": mask.numpy()}
    (tmp_path / "inputs").mkdir()
    np.savez(tmp_path / "inputs" / "0.npz", **feed)
    out = tmp_path / "bert.qdq.onnx"
    result = mpq("export", plan, path, "--inputs", tmp_path / "inputs", "-o", out)
    assert result.returncode == 0, result.stderr
    assert "activation quantizers" in result.stdout and "fidelity vs the float model" in result.stdout
    (got,) = session(out).run(None, feed)
    (want,) = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feed)
    cosine = (got * want).sum() / np.linalg.norm(got) / np.linalg.norm(want)
    assert got.shape == want.shape and cosine > 0.99


class _Unrolled(nn.Module):
    """A recurrence unrolled over three steps: one Linear (one stored weight) read by three layers."""

    def __init__(self):
        super().__init__()
        self.inp, self.cell, self.out = nn.Linear(8, 16), nn.Linear(16, 16), nn.Linear(16, 4)

    def forward(self, x):
        h = torch.tanh(self.inp(x))
        for _ in range(3):
            h = torch.tanh(self.cell(h) + h)
        return self.out(h)


def test_layers_sharing_a_weight_share_a_precision(tmp_path):
    """The three steps of an unrolled recurrence read one stored weight but were three groups, so a
    plan could give them different bits while the export quantized the weight once, at the first
    one's bits: the exported model did not carry the plan (read back, the bits differed). Now they
    are one group, and the bits read back from the export equal the plan's for every layer."""
    torch.manual_seed(0)
    path = export(_Unrolled().eval(), (torch.randn(2, 8),), tmp_path / "unrolled.onnx", "torchscript",
                  input_names=["x"])
    graph = load_graph(path)
    cells = [l for l in graph.layers if l.weight == graph.layers[1].weight]
    assert len(cells) == 3 and len({l.group for l in cells}) == 1
    plan = _plan(path, tmp_path, "unrolled", "--bits", "2,4", "--gains", "random", "--seed", "1",
                 "--budget", "latency=0.5")
    layers = json.loads(plan.read_text())["layers"]
    out = tmp_path / "unrolled.qdq.onnx"
    assert mpq("export", plan, path, "-o", out).returncode == 0
    assert {name: bits[0] for name, bits in _inspected_bits(out).items()} == {l["name"]: l["w_bits"] for l in layers}


def test_a_weight_read_by_several_layers_is_stored_once(tmp_path):
    """The unrolled recurrence's cell weight (16 x 16) is stored once, but the model size
    (weight_bytes), the on-chip bytes and inspect's parameter count summed it once per step. Now
    all three count the model's three stored weights once each: (8 x 16 + 16 x 16 + 16 x 4)."""
    torch.manual_seed(0)
    path = export(_Unrolled().eval(), (torch.randn(2, 8),), tmp_path / "unrolled.onnx", "torchscript",
                  input_names=["x"])
    stored = sum(t.dims[0] * t.dims[1] for t in onnx.load(path).graph.initializer if len(t.dims) == 2)
    assert stored == 8 * 16 + 16 * 16 + 16 * 4
    result = mpq("cost", path, "--hw", "northpole", "--bits", "8", "--json")
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["totals"]["weight_bytes"] == doc["fit"]["on_chip_weight_bytes"] == stored
    assert load_graph(path).totals()["params"] == stored  # inspect's count (it was 8 x 16 + 3 x 256 + 16 x 4)
