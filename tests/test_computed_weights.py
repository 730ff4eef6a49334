"""Weights computed by ops on constants: counted, costed, read and exported as the tensor the layer
consumes, on real architectures whose weight initializers are rewritten into op producers."""
from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from archs import count_macs_params
from conftest import mpq
from planner import load_graph
from planner.gains.eagl import eagl
from planner.export.qdq import qdq_model
from planner.graph.weights import layer_weights

HOWS = ["constantofshape", "expand", "tile", "mul", "reshape_of_expand"]


def _producer(how: str, name: str, w: np.ndarray) -> tuple[list, list, np.ndarray]:
    """(nodes, initializers) computing a tensor named ``name`` of ``w``'s shape, and its values
    (numpy's, the independent reference)."""
    shape = numpy_helper.from_array(np.array(w.shape, np.int64), f"{name}__shape")
    if how == "constantofshape":
        fill = np.float32(0.01 * (1 + w.shape[0] % 7))
        node = helper.make_node("ConstantOfShape", [shape.name], [name],
                                value=numpy_helper.from_array(np.array([fill], np.float32)))
        return [node], [shape], np.full(w.shape, fill, np.float32)
    if how == "expand":  # one value per output channel, broadcast over the rest
        small = np.ascontiguousarray(w.reshape(w.shape[0], -1)[:, :1].reshape((w.shape[0],) + (1,) * (w.ndim - 1)))
        node = helper.make_node("Expand", [f"{name}__small", shape.name], [name])
        return [node], [numpy_helper.from_array(small, f"{name}__small"), shape], np.broadcast_to(small, w.shape)
    if how == "tile":  # the first output channel's filter, repeated
        first = np.ascontiguousarray(w[:1])
        repeats = numpy_helper.from_array(np.array([w.shape[0]] + [1] * (w.ndim - 1), np.int64), f"{name}__repeats")
        node = helper.make_node("Tile", [f"{name}__first", repeats.name], [name])
        return [node], [numpy_helper.from_array(first, f"{name}__first"), repeats], np.tile(first, [w.shape[0]] + [1] * (w.ndim - 1))
    if how == "mul":  # W = (W / s) * s with s a power of two per output channel: exact
        s = (2.0 ** (np.arange(w.shape[0]) % 3)).astype(np.float32).reshape((-1,) + (1,) * (w.ndim - 1))
        scaled = numpy_helper.from_array((w / s).astype(np.float32), f"{name}__scaled")
        factor = numpy_helper.from_array(s, f"{name}__factor")
        return [helper.make_node("Mul", [scaled.name, factor.name], [name])], [scaled, factor], w
    if how == "reshape_of_expand":  # a flat Expand, reshaped to the weight's shape
        flat = numpy_helper.from_array(np.array([w.size], np.int64), f"{name}__flat")
        one = numpy_helper.from_array(np.array([0.02], np.float32), f"{name}__one")
        nodes = [helper.make_node("Expand", [one.name, flat.name], [f"{name}__expanded"]),
                 helper.make_node("Reshape", [f"{name}__expanded", shape.name], [name])]
        return nodes, [flat, one, shape], np.full(w.shape, 0.02, np.float32)
    raise ValueError(how)


def computed_copy(path, out, how: str) -> dict[str, np.ndarray]:
    """Rewrite every Conv/Gemm/MatMul weight initializer of ``path`` into a producer ``how``;
    write the model to ``out`` and return {weight tensor: expected values}."""
    model = onnx.load(str(path))
    g = model.graph
    inits = {t.name: t for t in g.initializer}
    weights = sorted({n.input[1] for n in g.node if n.op_type in ("Conv", "Gemm", "MatMul") and n.input[1] in inits})
    expected, nodes = {}, []
    for name in weights:
        w = numpy_helper.to_array(inits[name])
        g.initializer.remove(inits[name])
        made, extra, values = _producer(how, name, w)
        nodes += made
        g.initializer.extend(extra)
        expected[name] = values
    rest = list(g.node)
    del g.node[:]
    g.node.extend(nodes + rest)
    onnx.checker.check_model(model)
    onnx.save(model, str(out))
    return expected


@pytest.mark.parametrize("how", HOWS)
def test_params_and_values_are_the_consumed_tensors(exported, built, tmp_path, how):
    source = exported("resnet18")
    expected = computed_copy(source, tmp_path / "m.onnx", how)
    graph = load_graph(tmp_path / "m.onnx")
    macs, params = count_macs_params(*built("resnet18"))  # the torch module's own count
    assert graph.totals()["params"] == params and graph.totals()["macs"] == pytest.approx(macs, rel=1e-3)
    by_operand = {l.weight_operand: l for l in graph.layers}
    assert set(by_operand) == set(expected)
    for name, values in expected.items():
        layer = by_operand[name]
        assert layer.weight_shape == list(values.shape) and layer.params == values.size
        assert np.array_equal(layer_weights(graph, layer).values, values)


def test_inspect_and_cost_agree_with_the_stored_model(exported, tmp_path):
    source = exported("resnet18")
    computed_copy(source, tmp_path / "m.onnx", "constantofshape")
    docs = []
    for path in (source, tmp_path / "m.onnx"):
        inspect = mpq("inspect", path, "--json")
        cost = mpq("cost", path, "--hw", "northpole", "--summary", "--json")
        assert inspect.returncode == 0 and cost.returncode == 0, inspect.stderr + cost.stderr
        docs.append((json.loads(inspect.stdout), json.loads(cost.stdout)))
    (stored, stored_cost), (computed, computed_cost) = docs
    keys = ("op_type", "weight_shape", "params", "macs")
    assert [[l[k] for k in keys] for l in computed["layers"]] == [[l[k] for k in keys] for l in stored["layers"]]
    assert computed["totals"] == stored["totals"]
    assert computed_cost["totals"] == stored_cost["totals"] and computed_cost["uniform"] == stored_cost["uniform"]
    text = mpq("inspect", tmp_path / "m.onnx").stdout
    assert f"{stored['totals']['params']:,} params" in text


def test_eagl_and_qdq_read_the_evaluated_weights(exported, tmp_path):
    """W computed as (W/s)*s has the stored model's values: EAGL and the QDQ export must match it."""
    source = exported("resnet18")
    computed_copy(source, tmp_path / "m.onnx", "mul")
    stored, computed = load_graph(source), load_graph(tmp_path / "m.onnx")
    bits = [2, 4, 8]
    assert eagl(computed, bits).by_group == eagl(stored, bits).by_group
    x = np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)
    outputs = []
    for graph in (stored, computed):
        plan = {l.name: 4 for l in graph.layers}
        model = qdq_model(graph, plan).model
        session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        outputs.append(session.run(None, {session.get_inputs()[0].name: x})[0])
    reference = ort.InferenceSession(str(source), providers=["CPUExecutionProvider"])
    float_out = reference.run(None, {reference.get_inputs()[0].name: x})[0]
    assert np.allclose(outputs[1], outputs[0], atol=1e-5)
    assert not np.allclose(outputs[1], float_out, atol=1e-3)  # the weights were quantized


def test_weight_in_a_small_constant_model():
    """A MatMul weight from ConstantOfShape in a hand-built graph: 16x8 elements, not the 2-element shape."""
    nodes = [helper.make_node("ConstantOfShape", ["shape"], ["W"], value=numpy_helper.from_array(np.array([0.5], np.float32))),
             helper.make_node("MatMul", ["x", "W"], ["y"], name="fc")]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8])],
                          [numpy_helper.from_array(np.array([16, 8], np.int64), "shape")])
    graph = load_graph(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), pin_first=None, pin_last=None)
    fc = graph.layer("fc")
    assert (fc.weight, fc.weight_shape, fc.params, fc.macs) == ("W", [16, 8], 128, 128)
    assert np.array_equal(layer_weights(graph, fc).values, np.full((16, 8), 0.5, np.float32))
