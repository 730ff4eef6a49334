"""A plan as AIMET quantization encodings (format 1.0.0), which AIMET's quantization simulation
and Qualcomm's converters take as overrides.

The encodings are a translation of mpq's QDQ export (:mod:`planner.export.qdq`): the same steps
(learned, or per output channel from the weights, activations calibrated) and the plan's bits.
Per the format, x = (q + offset) * scale with q in 0 .. 2^bw - 1: a signed grid with zero point z
has offset -2^(bw-1) - z, an unsigned one offset -z. ``param_encodings`` are keyed by the weight
initializers of the float model, ``activation_encodings`` by the activation tensors the layers
read; both are names of the float model with its batch norms folded (weights keep their names,
their values change), which the export writes next to the encodings.
"""
from __future__ import annotations

import json

import numpy as np
import onnx
from onnx import numpy_helper

from planner.export.qdq import ACTIVATION_BITS_KEY, TYPE_BITS, QdqExport
from planner.graph.weights import WEIGHT_BITS_KEY

VERSION = "1.0.0"
SIGNED = {onnx.TensorProto.INT2, onnx.TensorProto.INT4, onnx.TensorProto.INT8, onnx.TensorProto.INT16}


def encodings(export: QdqExport) -> dict:
    """The AIMET 1.0.0 encodings document of a QDQ export."""
    model = export.model
    init = {t.name: t for t in model.graph.initializer}
    meta = {p.key: json.loads(p.value) for p in model.metadata_props if p.key in (WEIGHT_BITS_KEY, ACTIVATION_BITS_KEY)}
    weight_bits, activation_bits = meta.get(WEIGHT_BITS_KEY, {}), meta.get(ACTIVATION_BITS_KEY, {})
    params, activations = [], []
    for node in model.graph.node:
        if node.op_type == "DequantizeLinear" and node.input[0] in init:  # a weight: levels -> float weight
            levels, name = node.input[0], node.output[0]
            params.append(_entry(name, init[levels].data_type, weight_bits.get(levels), init[node.input[1]],
                                 init[node.input[2]], per_channel=numpy_helper.to_array(init[node.input[1]]).ndim > 0))
        elif node.op_type == "QuantizeLinear":
            source = node.input[0]
            clip = next((n for n in model.graph.node if n.output and n.output[0] == source and n.op_type == "Clip"), None)
            name = clip.input[0] if clip is not None else source
            zero = init[node.input[2]]
            activations.append(_entry(name, zero.data_type, activation_bits.get(node.output[0]), init[node.input[1]],
                                      zero, per_channel=False))
    return {"version": VERSION, "activation_encodings": _unique(activations), "param_encodings": _unique(params),
            "excluded_layers": [], "quantizer_args": {"dtype": "int", "per_channel_quantization": any(
                p["enc_type"] == "PER_CHANNEL" for p in params)}}


def _entry(name: str, data_type: int, recorded_bits: int | None, scale: onnx.TensorProto, zero: onnx.TensorProto,
           per_channel: bool) -> dict:
    bits = int(recorded_bits or TYPE_BITS[data_type])
    scales = np.atleast_1d(numpy_helper.to_array(scale)).astype(np.float64)
    zeros = np.broadcast_to(np.atleast_1d(numpy_helper.to_array(zero)).astype(np.int64), scales.shape)
    signed = data_type in SIGNED
    offsets = (-(2 ** (bits - 1)) if signed else 0) - zeros
    return {"name": name, "dtype": "INT", "enc_type": "PER_CHANNEL" if per_channel else "PER_TENSOR", "bw": bits,
            "is_sym": bool(signed and not zeros.any()), "scale": [float(s) for s in scales],
            "offset": [int(o) for o in offsets]}


def _unique(entries: list[dict]) -> list[dict]:
    """One encoding per tensor (a tensor read by several layers of one group is quantized alike)."""
    seen: dict[str, dict] = {}
    for e in entries:
        seen.setdefault(e["name"], e)
    return sorted(seen.values(), key=lambda e: e["name"])


def encodings_json(doc: dict) -> str:
    """The encodings document as the file's text: indented, key-sorted JSON ending in a newline."""
    return json.dumps(doc, indent=1, sort_keys=True) + "\n"
