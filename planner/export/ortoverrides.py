"""A plan as onnxruntime ``TensorQuantOverrides``: the per-tensor element types that
``onnxruntime.quantization.quantize_static(..., quant_format=QuantFormat.QDQ, extra_options=
{"TensorQuantOverrides": overrides})`` realizes.

Each planned layer's weight initializer gets ``{"quant_type": "QInt<b>", "symmetric": true}`` and
the activation it reads ``{"quant_type": "QUInt<b>"}`` (onnxruntime quantizes activations with a
zero point, so unsigned types hold signed tensors too). onnxruntime gives the outputs of
Reshape, Transpose, Squeeze, Unsqueeze, Flatten, Slice, Pad, MaxPool, AveragePool, Resize,
Split and Gather their input's parameters and ignores overrides there, so an activation's
override sits on the tensor above a chain of those ops. Scales come from onnxruntime's own
calibration. QuantType has no 2-bit type: 2-bit layers get QInt4 / QUInt4 (4-bit levels, said
in the notes); 16 bits are QInt16 / QUInt16. In the JSON file ``quant_type`` is the QuantType's
name; :func:`read_overrides` turns it back into the enum.
"""
from __future__ import annotations

import json
import tempfile
from pathlib import Path

import onnx

from planner.errors import MpqError
from planner.graph import LayerGraph

# onnxruntime's QDQ quantizer: ops whose output takes its input's quantization parameters.
SHARED_PARAMS = frozenset({"Reshape", "Transpose", "Squeeze", "Unsqueeze", "Flatten", "Slice", "Pad", "MaxPool",
                           "AveragePool", "Resize", "Split", "Gather"})
QUANT_TYPE_BITS = {2: 4, 4: 4, 8: 8, 16: 16}


def _type_name(bits: int, signed: bool) -> str:
    if bits not in QUANT_TYPE_BITS:
        raise MpqError(f"onnxruntime's QuantType has no {bits}-bit type (it has 4, 8 and 16 bits); "
                       "plan with precisions 2, 4, 8 or 16 for --format ort-overrides")
    return f"Q{'' if signed else 'U'}Int{QUANT_TYPE_BITS[bits]}"


def read_tensor(graph: LayerGraph, tensor: str) -> str:
    """The tensor above a chain of ops that share their input's parameters in onnxruntime."""
    node = graph.producers.get(tensor)
    while node is not None and node.op_type in SHARED_PARAMS and node.input[0] not in graph.tensors:
        tensor = node.input[0]
        node = graph.producers.get(tensor)
    return tensor


def ort_overrides(graph: LayerGraph, w_bits: dict[str, int], a_bits: dict[str, int]) -> tuple[dict, list[str]]:
    """({tensor: [override]}, notes) for the planned layers of ``graph`` (JSON-ready: quant types
    by name). Raises MpqError for bits onnxruntime has no type for."""
    overrides: dict[str, list[dict]] = {}
    bits_of: dict[str, int] = {}
    conflicts = []
    for layer in graph.layers:
        if layer.name not in w_bits:
            continue
        wanted = []
        if layer.weight is not None and layer.weight not in graph.producers:  # an initializer
            wanted.append((layer.weight, w_bits[layer.name], True))
        wanted += [(read_tensor(graph, t), a_bits[layer.name], False) for t in layer.activation_inputs]
        for tensor, bits, is_weight in wanted:
            if tensor in bits_of and bits_of[tensor] != bits:
                conflicts.append(tensor)
                bits = max(bits, bits_of[tensor])
            bits_of[tensor] = bits
            override = {"quant_type": _type_name(bits, is_weight)}
            if is_weight:
                override["symmetric"] = True
            overrides[tensor] = [override]
    notes = []
    two = sorted({n for n, b in w_bits.items() if b == 2})
    if two:
        notes.append(f"{len(two)} 2-bit layers get QInt4 / QUInt4 overrides: onnxruntime has no 2-bit QuantType, "
                     "so quantize_static realizes them with 4-bit levels (mpq export --format qdq writes INT2)")
    if conflicts:
        notes.append(f"{len(conflicts)} tensors are read at two precisions ({conflicts[0]}, ...): they get the higher")
    return dict(sorted(overrides.items())), notes


def overrides_json(overrides: dict) -> str:
    """The overrides as the file's text: indented, key-sorted JSON ending in a newline."""
    return json.dumps(overrides, indent=1, sort_keys=True) + "\n"


def read_overrides(path: str | Path) -> dict:
    """The overrides of a JSON file with ``quant_type`` as onnxruntime's QuantType enum, ready for
    ``extra_options={"TensorQuantOverrides": ...}``."""
    from onnxruntime.quantization import QuantType

    with open(path) as f:
        doc = json.load(f)
    return {t: [dict(o, quant_type=QuantType[o["quant_type"]]) for o in entries] for t, entries in doc.items()}


def quantize_with_overrides(float_model: str | Path, output: str | Path, overrides: dict, feeds: list,
                            per_channel: bool = True) -> onnx.ModelProto:
    """Run onnxruntime's ``quantize_static`` (QDQ format, min-max calibration on ``feeds``, tuples of
    input arrays or dicts by input name) on ``float_model`` with the JSON-ready ``overrides`` and
    write the quantized model to ``output`` (opset 21 or more, standard Q/DQ types); returns it."""
    import numpy as np
    import onnxruntime as ort
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    inputs = ort.InferenceSession(str(float_model), providers=["CPUExecutionProvider"]).get_inputs()
    names = [i.name for i in inputs]
    reads_float = {i.name for i in inputs if i.type == "tensor(float)"}

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.batches = iter([f if isinstance(f, dict) else dict(zip(names, f)) for f in feeds])

        def get_next(self):  # float64 arrays cast to float32 where the model reads float32
            batch = next(self.batches, None)
            return None if batch is None else {
                k: np.asarray(v, np.float32) if np.asarray(v).dtype == np.float64 and k in reads_float
                else np.asarray(v) for k, v in batch.items()}

    enums = {t: [dict(o, quant_type=QuantType[o["quant_type"]]) for o in entries] for t, entries in overrides.items()}
    with tempfile.TemporaryDirectory() as folder:
        source = onnx.load(str(float_model))
        opset = next((o.version for o in source.opset_import if o.domain in ("", "ai.onnx")), 0)
        if opset < 21:  # standard INT4 / UINT4 / 16-bit Q/DQ (quantize_static alone keeps 4-bit in com.microsoft)
            source = onnx.version_converter.convert_version(source, 21)
        onnx.save(source, Path(folder) / "float.onnx")
        quantize_static(str(Path(folder) / "float.onnx"), str(output), Reader(), quant_format=QuantFormat.QDQ,
                        per_channel=per_channel, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        extra_options={"TensorQuantOverrides": enums})
    return onnx.load(str(output))
