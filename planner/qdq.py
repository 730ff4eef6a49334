"""QDQ ONNX: a model with each planned layer's weights on their b-bit grid and its input
activations passed through QuantizeLinear / DequantizeLinear, runnable in onnxruntime.

Weights become int8 initializers holding the b-bit levels (-2^(b-1) .. 2^(b-1)-1) behind a
DequantizeLinear whose scale is the step (the checkpoint's learned LSQ step, else LSQ's initial
step 2*mean|W|/sqrt(Q_P)). Activations get Clip -> QuantizeLinear -> DequantizeLinear with int8
(signed) or uint8 (unsigned) zero-point 0; the Clip keeps the levels inside the b-bit range,
which emulates 2- and 4-bit activations with 8-bit types. Activation steps come from the
checkpoint, else from calibration inputs; without either, activations stay float.
"""
from __future__ import annotations

import json
import math

import numpy as np
import onnx
from onnx import helper, numpy_helper

from .errors import MpqError
from .graph import LayerGraph
from .weights import WEIGHT_BITS_KEY


def qdq_model(graph: LayerGraph, bits_by_layer: dict[str, int], *, weights: dict[str, np.ndarray] | None = None,
              steps: dict[str, dict] | None = None,
              activation_steps: dict[str, list[tuple[float, bool]]] | None = None) -> onnx.ModelProto:
    """The QDQ model of ``graph`` (read again from its file) at ``bits_by_layer``.

    ``weights[layer]``: float weights to use instead of the file's (same shape as its stored
    weight); ``steps[layer]``: {"bits", "weight_step", "input_step", "input_signed"} learned at
    some bits (used where they match the planned bits); ``activation_steps[layer]``: one (step, signed)
    per activation input of the layer (two for attention's Q·Kᵀ and P·V), from calibration, used
    where no learned step applies. Every input gets its own quantizer.
    """
    if not graph.model.path:
        raise MpqError("the QDQ export needs the model's ONNX file")
    model = onnx.load(graph.model.path)
    opset = next((o for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    if opset is None or opset.version < 13:
        model = onnx.version_converter.convert_version(model, 13)
    g = model.graph
    initializers = {t.name: t for t in g.initializer}
    constants = {n.output[0]: n for n in g.node if n.op_type == "Constant"}
    new_nodes: list[onnx.NodeProto] = []
    consumers_rewired: dict[str, dict[str, str]] = {}
    replaced: set[str] = set()
    weight_bits: dict[str, int] = {}
    for layer in graph.layers:
        bits = bits_by_layer.get(layer.name)
        if bits is None:
            continue
        qn, qp = 2 ** (bits - 1), 2 ** (bits - 1) - 1
        learned = (steps or {}).get(layer.name, {})
        use_learned = learned.get("bits") == bits
        if layer.weight is not None and layer.weight not in replaced:
            w = (weights or {}).get(layer.name)
            if w is None:
                w = graph.tensors.array(layer.weight).astype(np.float32)
            step = learned["weight_step"] if use_learned else 2 * float(np.abs(w).mean()) / math.sqrt(max(qp, 1))
            step = step if step > 0 else 1.0
            levels = np.clip(np.round(w / np.float32(step)), -qn, qp).astype(np.int8)
            q_name, s_name, z_name = f"{layer.weight}__levels", f"{layer.weight}__scale", f"{layer.weight}__zero"
            g.initializer.extend([numpy_helper.from_array(levels, q_name),
                                  numpy_helper.from_array(np.array(step, np.float32), s_name),
                                  numpy_helper.from_array(np.array(0, np.int8), z_name)])
            if layer.weight in initializers:
                g.initializer.remove(initializers[layer.weight])
            elif layer.weight in constants:
                g.node.remove(constants[layer.weight])
            new_nodes.append(helper.make_node("DequantizeLinear", [q_name, s_name, z_name], [layer.weight],
                                              name=f"{layer.weight}__dequantize"))
            replaced.add(layer.weight)
            weight_bits[q_name] = bits
        acts = None
        if use_learned:
            acts = [(learned["input_step"], learned["input_signed"])]
        elif activation_steps and layer.name in activation_steps:
            acts = activation_steps[layer.name]
        if acts is None:
            continue
        for k, (tensor, (step, signed)) in enumerate(zip(layer.activation_inputs, acts)):
            lo, hi = (-qn, qp) if signed else (0, 2 ** bits - 1)
            prefix = f"{layer.name}__in{k}"
            dtype = np.int8 if signed else np.uint8
            g.initializer.extend([numpy_helper.from_array(np.array(lo * step, np.float32), prefix + "_lo"),
                                  numpy_helper.from_array(np.array(hi * step, np.float32), prefix + "_hi"),
                                  numpy_helper.from_array(np.array(step, np.float32), prefix + "_scale"),
                                  numpy_helper.from_array(np.array(0, dtype), prefix + "_zero")])
            new_nodes += [
                helper.make_node("Clip", [tensor, prefix + "_lo", prefix + "_hi"], [prefix + "_clipped"], name=prefix + "_clip"),
                helper.make_node("QuantizeLinear", [prefix + "_clipped", prefix + "_scale", prefix + "_zero"],
                                 [prefix + "_q"], name=prefix + "_quantize"),
                helper.make_node("DequantizeLinear", [prefix + "_q", prefix + "_scale", prefix + "_zero"],
                                 [prefix + "_dq"], name=prefix + "_dequantize"),
            ]
            consumers_rewired.setdefault(layer.name, {})[tensor] = prefix + "_dq"
    by_output = {n.output[0]: n for n in g.node if n.output}
    outputs = {l.name: l.output for l in graph.layers}
    for layer_name, renames in consumers_rewired.items():
        node = by_output[outputs[layer_name]]
        for i, name in enumerate(node.input):
            if name in renames:
                node.input[i] = renames[name]
    nodes = list(g.node)
    del g.node[:]
    g.node.extend(new_nodes + nodes)
    for prop in [p for p in model.metadata_props if p.key == WEIGHT_BITS_KEY]:
        model.metadata_props.remove(prop)
    model.metadata_props.add(key=WEIGHT_BITS_KEY, value=json.dumps(weight_bits, sort_keys=True))
    return _sorted(model)


def _sorted(model: onnx.ModelProto) -> onnx.ModelProto:
    """Put the nodes back in topological order (the new ones were prepended)."""
    g = model.graph
    available = {t.name for t in g.initializer} | {i.name for i in g.input} | {""}
    pending, ordered = list(g.node), []
    while pending:
        progress = False
        rest = []
        for node in pending:
            if all(i in available for i in node.input):
                ordered.append(node)
                available.update(node.output)
                progress = True
            else:
                rest.append(node)
        if not progress:
            raise MpqError("QDQ export produced a graph with a cycle; this is a bug in mpq")
        pending = rest
    del g.node[:]
    g.node.extend(ordered)
    return model
