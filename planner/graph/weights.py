"""The weight values behind a layer, as the model stores them, one tensor at a time.

For a plain weight this is the stored tensor itself (a memory map for external data); layout
ops between it and the layer (Transpose, Reshape, Cast, ...) change neither the values nor
their distribution and are not applied. For a weight behind DequantizeLinear it is the integer
levels (q - zero point) together with the scale: a QDQ model carries its quantization grid
(its bit width from the model's ``mpq.weight_bits`` metadata, else the narrowest grid that holds
the levels).
Weights computed by other ops on constants (ConstantOfShape, Expand, W * s, ...) are the layer's
evaluated operand (see :class:`planner.graph.onnxfile.TensorStore`).
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass

import numpy as np
import onnx

from planner.errors import MpqError
from planner.graph.layers import Layer, LayerGraph

# Metadata key under which mpq's QDQ export records each weight's bit width ({levels tensor: bits}):
# an int8 tensor alone does not say whether its levels are a 2-, 4- or 8-bit grid.
WEIGHT_BITS_KEY = "mpq.weight_bits"


@dataclass
class WeightView:
    """``values``: the weights (or integer levels for a QDQ weight). ``scale``: None, or the
    DequantizeLinear scale broadcastable against ``values``. ``model_bits``: the bit width the
    levels occupy (signed), for QDQ weights."""

    values: np.ndarray
    scale: np.ndarray | None = None
    model_bits: int | None = None


def layer_weights(graph: LayerGraph, layer: Layer, *, stream: bool = False) -> WeightView | None:
    """The weights of ``layer`` (None for activation x activation layers). With ``stream``, a
    plain weight stored as external data comes as a :class:`planner.onnxfile.FileTensor` (read
    in chunks, for one front-to-back pass) instead of an array."""
    if layer.weight is None:
        return None
    store = graph.tensors
    dq = next((n for n in _chain(graph, layer) if n.op_type == "DequantizeLinear"), None)
    if dq is None:
        return WeightView(values=(store.stream(layer.weight) if stream else None) or store.array(layer.weight))
    values = store.array(layer.weight)
    q = values.astype(np.int32)
    if len(dq.input) > 2 and dq.input[2] and dq.input[2] in store:
        zero = store.array(dq.input[2]).astype(np.int32)
        q = q - _broadcast(zero, q, dq)
    scale = _broadcast(np.asarray(store.array(dq.input[1]), dtype=np.float64), q, dq)
    recorded = json.loads(graph.metadata.get(WEIGHT_BITS_KEY, "{}")).get(layer.weight)
    if recorded is None:  # the narrowest signed grid that holds the levels
        peak = max(int(q.max(initial=0)), -int(q.min(initial=0)) - 1, 0)
        recorded = max(1, int(peak).bit_length() + 1)
    return WeightView(values=q, scale=scale, model_bits=int(recorded))


def require_finite(graph: LayerGraph, layer: Layer, peak: float) -> None:
    """MpqError where ``peak``, the largest magnitude of ``layer``'s weights (NaN where one is
    NaN), is not finite: every grid, entropy and quantization error computed from such weights
    is meaningless."""
    if not math.isfinite(peak):
        raise MpqError(f"{graph.model.path or 'model'}: layer '{layer.name}': its weight '{layer.weight}' holds NaN "
                       "or infinite values; the model is broken (export it again from a good checkpoint), or plan "
                       "it with gains that read no weights (--gains params)")


def _broadcast(per_axis: np.ndarray, q: np.ndarray, node: onnx.NodeProto) -> np.ndarray:
    if per_axis.ndim == 0 or per_axis.size == 1:
        return per_axis.reshape(())
    axis = next((a.i for a in node.attribute if a.name == "axis"), 1) % q.ndim
    shape = [1] * q.ndim
    shape[axis] = per_axis.size
    return per_axis.reshape(shape)


def _chain(graph: LayerGraph, layer: Layer) -> list[onnx.NodeProto]:
    """Ops from ``layer.weight`` to the layer's operand: layout ops, casts and DequantizeLinear
    (none where the weight is the operand itself)."""
    chain, name = [], layer.weight_operand
    while name != layer.weight:
        node = graph.producers[name]
        chain.append(node)
        name = node.input[0]
    return chain
