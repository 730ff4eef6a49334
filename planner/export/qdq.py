"""Standard QDQ ONNX: each planned layer's weights stored as integer levels behind a
DequantizeLinear and its activation inputs passed through QuantizeLinear -> DequantizeLinear,
with element types that carry the planned bits, so that a compiler or runtime reads the plan
from the model itself.

Types: INT8 / UINT8 at 8 bits (opset 13), INT4 / UINT4 at 4 bits and INT16 / UINT16 at 16 bits
(opset 21), INT2 / UINT2 at 2 bits (opset 25). When ``max_opset`` rules a type out (INT2 with
``max_opset=21``) or the bits have no type of their own (3, 6, ...), the levels sit in the
narrowest wider type ("container"); weights then only use the b-bit levels, activations get a
Clip to the b-bit range before the QuantizeLinear, and the model's ``mpq.weight_bits`` /
``mpq.activation_bits`` metadata record the true widths. Zero points are 0 (symmetric weights,
except -1 on channels whose learned levels meet a negative batch-norm factor, see ``folds``;
activations signed or unsigned as their values).

Steps: a checkpoint's learned LSQ steps where they were learned at the planned bits (one per
tensor); otherwise weights get one step per output channel (or per tensor), the step that
minimises the squared quantization error over 20 clipping ranges (5% .. 100% of the largest
magnitude), and activations one per tensor from calibration data: the same search below 8 bits,
the full range seen at 8 bits and above (where clipping the rare large values, e.g. attention
probabilities, costs more than it saves).

Names (what a compiler joins the plan on, the convention of onnxruntime's quantizer): weight
``W`` becomes the initializer ``W_quantized`` with ``W_scale`` / ``W_zero_point`` and the
DequantizeLinear output ``W``; an activation ``x`` becomes ``x_QuantizeLinear_Output`` /
``x_DequantizeLinear_Output`` with ``x_scale`` / ``x_zero_point`` (a suffix ``_2``, ``_3`` ... where
one tensor gets several quantizers).

Models that compute in float16, bfloat16 or double: the Q/DQ pairs work in float32 (scales are
float32 at every opset, and DequantizeLinear has no double output), with a Cast on each side,
so every tensor of the model keeps its type: a float16 weight ``W`` is the DequantizeLinear
output ``W_float`` cast to float16 as ``W`` (an integer weight that the model casts to float
becomes the float DequantizeLinear output ``W`` itself); an activation ``x`` is cast to
``x_float`` before its QuantizeLinear, and ``x_DequantizeLinear_Output`` back to
``x_DequantizeLinear_Output_float16`` (the type's name) for its reader.

onnxruntime 1.32 on CPU runs these models with four of its graph optimizers off, which
:func:`session` does (``disabled_optimizers=DISABLED_OPTIMIZERS``): ``QDQSelectorActionTransformer``
and ``ClipQuantRewrite`` build invalid fused nodes around INT2 weights and UINT2 / UINT4
activations (the session fails to load), ``MatMulAddFusion`` turns a MatMul + Add on a 3-D
activation (as torch's dynamo exporter writes BERT's projections) into a Gemm behind a
QuantizeLinear whose output type contradicts its zero point (the session fails to load), and
``WeightBiasQuantization`` rounds each float bias to
int32 at input step x weight step, which for batch-norm biases folded into 2-bit layers moves
outputs by up to half a (large) step; without it the model computes what the fine-tuned torch
network computes. A compiler that keeps biases in int32 at the accumulator scale adds that
rounding.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

import ml_dtypes
import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from planner.errors import MpqError
from planner.graph import LayerGraph
from planner.graph.shapes import add_outputs, infer_shapes, ort_model_errors, topological_order
from planner.graph.weights import WEIGHT_BITS_KEY, require_finite

ACTIVATION_BITS_KEY = "mpq.activation_bits"
# bits -> (signed type, unsigned type, numpy signed, numpy unsigned, first opset with the type)
TYPES = {
    2: (TensorProto.INT2, TensorProto.UINT2, ml_dtypes.int2, ml_dtypes.uint2, 25),
    4: (TensorProto.INT4, TensorProto.UINT4, ml_dtypes.int4, ml_dtypes.uint4, 21),
    8: (TensorProto.INT8, TensorProto.UINT8, np.int8, np.uint8, 13),
    16: (TensorProto.INT16, TensorProto.UINT16, np.int16, np.uint16, 21),
}
TYPE_BITS = {t: b for b, (s, u, *_) in TYPES.items() for t in (s, u)}
DISABLED_OPTIMIZERS = ["QDQSelectorActionTransformer", "ClipQuantRewrite", "MatMulAddFusion", "WeightBiasQuantization"]
CLIP_RATIOS = np.linspace(0.05, 1.0, 20)
# Float types other than float32, which DequantizeLinear does not write at every opset (double at none).
_OTHER_FLOATS = (TensorProto.FLOAT16, TensorProto.BFLOAT16, TensorProto.DOUBLE)
# Ops whose weight layout maps an output channel of the layer to one axis of the stored tensor.
_LAYOUT_OPS = {"Identity", "Cast", "Transpose"}


@dataclass
class QdqExport:
    """The QDQ model, the opset it was written at, what a user must know about it (containers,
    tensors left float; one line each) and the float model it quantized where the caller keeps it."""

    model: onnx.ModelProto
    opset: int
    notes: list[str] = field(default_factory=list)
    float_model: onnx.ModelProto | None = None  # the float model the export quantized (batch norms folded)


@dataclass
class Fold:
    """A weight into which an affine op (BatchNormalization, Mul by a per-channel constant) was
    folded: ``original`` is the weight before, ``factor`` the per-output-channel multiplier along
    ``axis`` of the stored tensor (the folded weight is original * factor)."""

    original: np.ndarray
    factor: np.ndarray
    axis: int


def weight_tensor_name(weight: str) -> str:
    """The initializer holding ``weight``'s integer levels in the exported model."""
    return f"{weight}_quantized"


def container_bits(bits: int, max_opset: int) -> int:
    """The width of the narrowest integer Q/DQ type that holds ``bits``-bit levels at ``max_opset``."""
    for width, (*_, opset) in sorted(TYPES.items()):
        if width >= bits and opset <= max_opset:
            return width
    raise MpqError(f"{bits}-bit levels need an ONNX type wider than any Q/DQ type up to opset {max_opset}; "
                   "plan at most 16 bits")


def grid_steps(values: np.ndarray, bits: int, signed: bool, axis: int | None = None,
               peak: np.ndarray | float | None = None) -> np.ndarray:
    """The step per slice along ``axis`` (or one step, shape ()) of a b-bit grid that minimises
    the squared error of round-and-clip over 20 clipping ranges. Levels run -2^(b-1)..2^(b-1)-1
    (signed) or 0..2^b-1. ``peak``: the largest magnitude when ``values`` is a sample."""
    qn, qp = (2 ** (bits - 1), 2 ** (bits - 1) - 1) if signed else (0, 2 ** bits - 1)
    x = (np.moveaxis(values, axis, 0).reshape(values.shape[axis], -1) if axis is not None
         else values.reshape(1, -1)).astype(np.float32)
    top = np.abs(x).max(1) if peak is None else np.broadcast_to(np.asarray(peak, np.float32), (x.shape[0],))
    top = np.where(top > 0, top, 1.0).astype(np.float32)
    best, best_error = None, None
    for ratio in CLIP_RATIOS:
        step = (ratio * top / max(qp, 1)).astype(np.float32)[:, None]
        error = ((np.clip(np.round(x / step), -qn, qp) * step - x) ** 2).sum(1)
        if best is None:
            best, best_error = step[:, 0].copy(), error
        else:
            better = error < best_error
            best[better], best_error[better] = step[better, 0], error[better]
    return best if axis is not None else best.reshape(())


def calibrate(graph: LayerGraph, bits_by_layer: dict[str, int], feeds, sample: int = 1 << 16
              ) -> dict[str, list[tuple[float, bool]]]:
    """Activation step and sign of each activation input of every planned layer: layer ->
    [(step, signed) per ``layer.activation_inputs``], each input measured on its own (attention's
    P·V reads non-negative P and signed V). ``feeds`` yields tuples of input arrays in the model's
    input order (or dicts by input name; float64 arrays are cast to float32 where the model reads
    float32); the float model at ``graph.model.path`` runs on them in onnxruntime. A tensor is
    unsigned when every value seen is >= 0; below 8 bits its step minimises the squared error on
    up to ``sample`` values per batch (see :func:`grid_steps`), at 8 bits and above it spans the
    largest magnitude seen."""
    tensors = {t for l in graph.layers if l.name in bits_by_layer for t in l.activation_inputs}
    return steps_from_stats(graph, activation_stats(graph, tensors, feeds, sample), bits_by_layer)


def activation_stats(graph: LayerGraph, tensors, feeds, sample: int = 1 << 16) -> dict[str, tuple]:
    """tensor -> (sampled values, largest magnitude, all >= 0) over ``feeds`` (see :func:`calibrate`).
    MpqError where onnxruntime cannot load the float model (it has no kernel for one of its ops)."""
    import onnxruntime as ort

    model = onnx.load(graph.model.path)
    wanted = sorted(tensors)
    add_outputs(model, wanted)
    try:
        session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    except ort_model_errors() as e:
        raise MpqError(f"onnxruntime cannot run the float model to calibrate its activations "
                       f"({str(e).strip().splitlines()[0]}); export without --inputs or --task (the layer "
                       "inputs then stay float)") from None
    names = [i.name for i in session.get_inputs()]
    reads_float = {i.name for i in session.get_inputs() if i.type == "tensor(float)"}
    seen: dict[str, list] = {n: [[], 0.0, True] for n in wanted}
    for arrays in feeds:
        feed = arrays if isinstance(arrays, dict) else dict(zip(names, arrays))
        feed = {k: np.asarray(v, np.float32) if np.asarray(v).dtype == np.float64 and k in reads_float
                else np.asarray(v) for k, v in feed.items()}
        for name, v in zip(wanted, session.run(wanted, feed)):
            flat = np.asarray(v, np.float32).ravel()
            seen[name][0].append(flat[::max(1, flat.size // sample)])
            seen[name][1] = max(seen[name][1], float(np.abs(flat).max(initial=0.0)))
            seen[name][2] &= bool((flat >= 0).all())
    if any(not s[0] for s in seen.values()):
        raise MpqError("calibration needs at least one input batch")
    return {n: (np.concatenate(v), peak, nonneg) for n, (v, peak, nonneg) in seen.items()}


def steps_from_stats(graph: LayerGraph, stats: dict[str, tuple], bits_by_layer: dict[str, int]
                     ) -> dict[str, list[tuple[float, bool]]]:
    """The steps of :func:`calibrate` from :func:`activation_stats` (one collection serves many plans)."""
    out: dict[str, list[tuple[float, bool]]] = {}
    for layer in graph.layers:
        if layer.name in bits_by_layer:
            out[layer.name] = []
            for tensor in layer.activation_inputs:
                values, peak, nonneg = stats[tensor]
                bits = bits_by_layer[layer.name]
                if bits >= 8:  # fine grids: the full range (clipping the rare large values costs more)
                    step = np.float32(max(peak, 1e-8) / (2 ** (bits - 1) - 1 if not nonneg else 2 ** bits - 1))
                else:
                    step = grid_steps(values, bits, not nonneg, peak=peak)
                out[layer.name].append((float(step), not nonneg))
    return out


def qdq_model(graph: LayerGraph, bits_by_layer: dict[str, int], *, activation_bits: dict[str, int] | None = None,
              steps: dict[str, dict] | None = None, activation_steps: dict[str, list[tuple[float, bool]]] | None = None,
              folds: dict[str, Fold] | None = None, per_channel: bool = True, max_opset: int = 25) -> QdqExport:
    """The standard QDQ model of ``graph`` (read again from its file) at ``bits_by_layer``.

    ``activation_bits[layer]``: the bits of the layer's inputs (default: its weight bits).
    ``steps[layer]``: {"bits", "weight_step", "input_step", "input_signed"} learned at some bits,
    used where they match the planned bits ("input_steps" / "inputs_signed": one per activation
    input, as :func:`planner.quant.lsq.learned_steps` gives them). ``activation_steps[layer]``: one (step, signed) per activation input, from
    :func:`calibrate`, used where no learned step applies; without either the layer's inputs
    stay float (said in the notes). ``folds[weight]``: an affine op folded into the stored weight
    after its step was learned; the learned levels are kept and the fold goes into per-channel
    scales. ``per_channel``: one weight step per output channel (else per tensor). ``max_opset``:
    the highest opset the model may use (21: INT2 becomes INT4 containers; 13: INT8 containers).
    Raises MpqError when the model cannot be converted to the opset needed, or a planned layer's
    weight holds NaN or infinite values.
    """
    if not graph.model.path:
        raise MpqError("the QDQ export needs the model's ONNX file")
    activation_bits = activation_bits or {}
    planned = [l for l in graph.layers if l.name in bits_by_layer]
    widths = {bits_by_layer[l.name] for l in planned} | {activation_bits.get(l.name, bits_by_layer[l.name]) for l in planned}
    containers = {b: container_bits(b, max_opset) for b in widths}
    model = onnx.load(graph.model.path)
    opset = max([13, graph.model.opset] + [TYPES[c][4] for c in containers.values()])
    if opset != graph.model.opset:
        try:
            model = onnx.version_converter.convert_version(model, opset)
        except Exception as e:  # the converter raises many kinds of errors on ops it cannot adapt
            raise MpqError(f"{graph.model.path}: cannot convert the model to opset {opset} for its Q/DQ types "
                           f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); "
                           "try a lower --max-opset") from None
    if model.ir_version < 4:  # IR 3 lists every initializer as a graph input too; the new opset needs a newer IR
        stored = {t.name for t in model.graph.initializer}
        inputs = [i for i in model.graph.input if i.name not in stored]
        del model.graph.input[:]
        model.graph.input.extend(inputs)
    model.ir_version = max(model.ir_version, helper.find_min_ir_version_for(model.opset_import, ignore_unknown=True))
    shapes, types = _inferred(model, graph)
    _type_outputs(model, shapes, types)
    builder = _Builder(model, types)
    notes = [f"{b}-bit levels in {c}-bit Q/DQ types (no {b}-bit type up to opset {max_opset})"
             for b, c in sorted(containers.items()) if b != c]
    float_inputs = []
    for layer in planned:
        bits = bits_by_layer[layer.name]
        a_bits = activation_bits.get(layer.name, bits)
        learned = (steps or {}).get(layer.name, {})
        use_learned = learned.get("bits") == bits
        if layer.weight is not None and layer.weight not in builder.weights:
            builder.weight(graph, layer, bits, containers[bits], learned["weight_step"] if use_learned else None,
                           (folds or {}).get(layer.weight), per_channel)
        if use_learned and learned.get("bits") == a_bits:
            acts = list(zip(learned["input_steps"], learned["inputs_signed"])) if "input_steps" in learned \
                else [(learned["input_step"], learned["input_signed"])]
        else:
            acts = (activation_steps or {}).get(layer.name)
        if acts is None:
            float_inputs += layer.activation_inputs
            continue
        node = builder.consumer(layer.output)
        for tensor, (step, signed) in zip(layer.activation_inputs, acts):
            dq = builder.activation(tensor, a_bits, containers[a_bits], float(step), bool(signed))
            for i, name in enumerate(node.input):
                if name == tensor:
                    node.input[i] = dq
    if float_inputs:
        shown = ", ".join(sorted(set(float_inputs))[:3])
        more = len(set(float_inputs)) - 3
        notes.append(f"{len(set(float_inputs))} layer inputs stay float ({shown}{f' and {more} more' if more > 0 else ''}): "
                     "give a checkpoint or calibration data to quantize them")
    if builder.shifted_channels:
        notes.append(f"{builder.shifted_channels} output channels with a negative batch-norm factor store their "
                     "learned levels negated with zero point -1 (exact)")
    return QdqExport(builder.finish(), opset, notes)


def _inferred(model: onnx.ModelProto, graph: LayerGraph) -> tuple[dict[str, tuple | None], dict[str, int]]:
    """The static shape (None where unknown) and the ONNX element type of every tensor of
    ``model``: shape inference at the graph's input shapes; initializers by their own type. Where
    inference fails on the converted model, only the initializers' types (the rest is taken as
    float32, as before types were read)."""
    types: dict[str, int] = {}
    try:
        shapes = infer_shapes(model, {k: tuple(v) for k, v in graph.model.input_shapes.items()}, str(graph.model.path),
                              types)
    except MpqError:
        shapes, types = {}, {}
    types.update({t.name: t.data_type for t in model.graph.initializer})
    return shapes, types


def _type_outputs(model: onnx.ModelProto, shapes: dict[str, tuple | None], types: dict[str, int]) -> None:
    """Give each tensor output of the graph that lacks them its element type and a shape of its
    inferred rank, every dimension left open (the model runs at other input sizes). onnx.checker
    requires both, onnxruntime does not, and some tools write outputs without them."""
    for value in model.graph.output:
        kind = value.type.WhichOneof("value")
        tensor = value.type.tensor_type
        if kind not in (None, "tensor_type") or (tensor.elem_type and tensor.HasField("shape")):
            continue
        if not tensor.elem_type and types.get(value.name):
            tensor.elem_type = types[value.name]
        if not tensor.HasField("shape") and shapes.get(value.name) is not None:
            tensor.shape.dim.extend(onnx.TensorShapeProto.Dimension() for _ in shapes[value.name])


class _Builder:
    """Adds quantizers to a float model in place; ``finish`` sorts the nodes and writes metadata.
    ``types``: the element type of each tensor of the model (float32 where missing)."""

    def __init__(self, model: onnx.ModelProto, types: dict[str, int] | None = None):
        self.model = model
        self.types = types or {}
        g = model.graph
        self.initializers = {t.name: t for t in g.initializer}
        self.constants = {n.output[0]: n for n in g.node if n.op_type == "Constant"}
        self.by_output = {o: n for n in g.node for o in n.output}
        self.names = set(self.initializers) | {o for n in g.node for o in n.output} | {i.name for i in g.input}
        self.new_nodes: list[onnx.NodeProto] = []
        self.weights: set[str] = set()
        self.weight_bits: dict[str, int] = {}
        self.activation_bits: dict[str, int] = {}
        self.quantizers: dict[tuple, str] = {}
        self.shifted_channels = 0

    def consumer(self, output: str) -> onnx.NodeProto:
        return self.by_output[output]

    def _unique(self, base: str) -> str:
        name, k = base, 1
        while name in self.names:
            k += 1
            name = f"{base}_{k}"
        self.names.add(name)
        return name

    def _zero(self, name: str, container: int, signed: bool, shape: tuple) -> onnx.TensorProto:
        return numpy_helper.from_array(np.zeros(shape, TYPES[container][2 if signed else 3]), name)

    def weight(self, graph: LayerGraph, layer, bits: int, container: int, learned_step: float | None,
               fold: Fold | None, per_channel: bool) -> None:
        w = np.asarray(graph.tensors.array(layer.weight), np.float32)
        require_finite(graph, layer, float(np.abs(w).max(initial=0.0)))
        qn, qp = 2 ** (bits - 1), 2 ** (bits - 1) - 1
        axis = _channel_axis(graph, layer) if per_channel or fold is not None else None
        zero = None
        if learned_step is not None and fold is not None:
            # levels l of the learned grid times a negative factor: store -l - 1 (still in
            # [-qn, qp]) with zero point -1, so (q - z) * step * |factor| = -l * step * |factor|
            levels = np.clip(np.round(fold.original / np.float32(learned_step)), -qn, qp)
            shape = [1] * w.ndim
            shape[fold.axis] = -1
            negative = (fold.factor < 0).reshape(shape)
            levels, axis = np.where(negative, -levels - 1, levels), fold.axis
            step = (learned_step * np.abs(fold.factor)).astype(np.float32)
            if negative.any():
                zero = -(fold.factor < 0).astype(np.int64)
                self.shifted_channels += int(negative.sum())
        else:
            if learned_step is not None:
                step = np.array(learned_step, np.float32)
            else:
                step = grid_steps(w, bits, True, axis)
            step = np.where(step > 0, step, 1.0).astype(np.float32)
            shaped = step if axis is None else step.reshape([-1 if a == axis else 1 for a in range(w.ndim)])
            levels = np.clip(np.round(w / shaped), -qn, qp)
        if step.ndim == 0:
            axis = None
        name = layer.weight
        q_name = self._unique(weight_tensor_name(name))
        s_name, z_name = self._unique(f"{name}_scale"), self._unique(f"{name}_zero_point")
        dtype = TYPES[container][2]
        g = self.model.graph
        zero_point = (self._zero(z_name, container, True, step.shape) if zero is None
                      else numpy_helper.from_array(zero.astype(dtype), z_name))
        g.initializer.extend([numpy_helper.from_array(levels.astype(dtype), q_name),
                              numpy_helper.from_array(step, s_name), zero_point])
        dequantized = name
        if name in self.initializers:
            g.initializer.remove(self.initializers[name])
        elif name in self.constants:
            g.node.remove(self.constants[name])
        else:  # a weight computed by ops: its readers read the dequantized levels instead
            dequantized = self._unique(f"{name}_dequantized")
            for node in g.node:
                node.input[:] = [dequantized if i == name else i for i in node.input]
        elem = self.types.get(name, TensorProto.FLOAT)  # integer weights (read through a Cast) become float
        float_out = dequantized if elem not in _OTHER_FLOATS else self._unique(f"{name}_float")
        self.new_nodes.append(helper.make_node("DequantizeLinear", [q_name, s_name, z_name], [float_out],
                                               name=f"{name}_DequantizeLinear",
                                               **({"axis": axis} if axis is not None else {})))
        if float_out != dequantized:
            self.new_nodes.append(helper.make_node("Cast", [float_out], [dequantized], name=f"{dequantized}_Cast", to=elem))
        self.weights.add(name)
        self.weight_bits[q_name] = bits

    def activation(self, tensor: str, bits: int, container: int, step: float, signed: bool) -> str:
        """The DequantizeLinear output that replaces ``tensor`` for a reader at ``bits``."""
        key = (tensor, bits, step, signed)
        if key in self.quantizers:
            return self.quantizers[key]
        scale, zero = self._unique(f"{tensor}_scale"), self._unique(f"{tensor}_zero_point")
        q_out, dq_out = self._unique(f"{tensor}_QuantizeLinear_Output"), self._unique(f"{tensor}_DequantizeLinear_Output")
        g = self.model.graph
        g.initializer.extend([numpy_helper.from_array(np.array(step, np.float32), scale),
                              self._zero(zero, container, signed, ())])
        source = tensor
        elem = self.types.get(tensor, TensorProto.FLOAT)
        if elem != TensorProto.FLOAT:  # Q/DQ in float32 (see the module docstring)
            source = self._unique(f"{tensor}_float")
            self.new_nodes.append(helper.make_node("Cast", [tensor], [source], name=f"{source}_Cast",
                                                   to=TensorProto.FLOAT))
        if container != bits:
            lo, hi = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2 ** bits - 1)
            lo_name, hi_name, clipped = (self._unique(f"{tensor}_clip_{s}") for s in ("min", "max", "output"))
            g.initializer.extend([numpy_helper.from_array(np.array(lo * step, np.float32), lo_name),
                                  numpy_helper.from_array(np.array(hi * step, np.float32), hi_name)])
            self.new_nodes.append(helper.make_node("Clip", [source, lo_name, hi_name], [clipped], name=f"{clipped}_Clip"))
            source = clipped
            self.activation_bits[q_out] = bits
        self.new_nodes += [
            helper.make_node("QuantizeLinear", [source, scale, zero], [q_out], name=f"{q_out}_QuantizeLinear"),
            helper.make_node("DequantizeLinear", [q_out, scale, zero], [dq_out], name=f"{dq_out}_DequantizeLinear"),
        ]
        if elem != TensorProto.FLOAT:
            cast = self._unique(f"{dq_out}_{helper.tensor_dtype_to_string(elem).removeprefix('TensorProto.').lower()}")
            self.new_nodes.append(helper.make_node("Cast", [dq_out], [cast], name=f"{cast}_Cast", to=elem))
            dq_out = cast
        self.quantizers[key] = dq_out
        return dq_out

    def finish(self) -> onnx.ModelProto:
        model, g = self.model, self.model.graph
        nodes = list(g.node)
        del g.node[:]
        g.node.extend(self.new_nodes + nodes)
        for prop in [p for p in model.metadata_props if p.key in (WEIGHT_BITS_KEY, ACTIVATION_BITS_KEY)]:
            model.metadata_props.remove(prop)
        model.metadata_props.add(key=WEIGHT_BITS_KEY, value=json.dumps(self.weight_bits, sort_keys=True))
        if self.activation_bits:
            model.metadata_props.add(key=ACTIVATION_BITS_KEY, value=json.dumps(self.activation_bits, sort_keys=True))
        return _sorted(model)


def _channel_axis(graph: LayerGraph, layer) -> int | None:
    """The axis of the stored weight that indexes the layer's output channels, or None when the
    weight reaches the layer through ops other than Identity / Cast / Transpose."""
    node = graph.producers[layer.output]
    if node.op_type in ("Conv", "ConvTranspose", "FusedConv"):
        axis = 1 if node.op_type == "ConvTranspose" else 0
        if node.op_type == "ConvTranspose" and any(a.name == "group" and a.i > 1 for a in node.attribute):
            return None
    elif node.op_type in ("Gemm", "FusedGemm") and node.input[1] == layer.weight_operand:
        axis = 0 if any(a.name == "transB" and a.i for a in node.attribute) else 1
    elif node.op_type == "MatMul" and node.input[1] == layer.weight_operand:
        axis = -1
    else:
        return None
    rank = len(graph.tensors.shape(layer.weight))
    if rank < 2:
        return None
    axis %= rank
    name = layer.weight_operand
    while name != layer.weight:
        producer = graph.producers.get(name)
        if producer is None or producer.op_type not in _LAYOUT_OPS:
            return None
        if producer.op_type == "Transpose":
            perm = next((list(a.ints) for a in producer.attribute if a.name == "perm"), None)
            axis = (perm or list(reversed(range(rank))))[axis]
        name = producer.input[0]
    return axis


def _sorted(model: onnx.ModelProto) -> onnx.ModelProto:
    """Put the nodes back in topological order (the new ones were prepended); a node with
    subgraphs (If, Loop, Scan) comes after the producers of the outer tensors they read."""
    g = model.graph
    ordered, stuck = topological_order(g.node, {t.name for t in g.initializer} | {i.name for i in g.input})
    if stuck:
        raise MpqError("QDQ export produced a graph with a cycle; this is a bug in mpq")
    del g.node[:]
    g.node.extend(ordered)
    return model


def session(model: onnx.ModelProto | str | os.PathLike):
    """An onnxruntime CPU InferenceSession for an exported model (a path or a ModelProto) with
    ``DISABLED_OPTIMIZERS`` off (see the module docstring)."""
    import onnxruntime as ort

    source = model.SerializeToString() if isinstance(model, onnx.ModelProto) else os.fspath(model)
    return ort.InferenceSession(source, providers=["CPUExecutionProvider"], disabled_optimizers=DISABLED_OPTIMIZERS)


def layer_bits(graph: LayerGraph) -> dict[str, dict]:
    """Per layer, the bits a compiler reads from the model's Q/DQ element types:
    {"w_bits": int | None, "a_bits": [int | None per activation input], "containers": bool}.
    Widths recorded in mpq's metadata (levels in a wider container type) replace the type's
    width, and ``containers`` says so. Layers without Q/DQ read None."""
    recorded_w = json.loads(graph.metadata.get(WEIGHT_BITS_KEY, "{}"))
    recorded_a = json.loads(graph.metadata.get(ACTIVATION_BITS_KEY, "{}"))
    types = {name: t.data_type for name, t in graph.tensors.tensors.items()}
    out = {}
    for layer in graph.layers:
        container = False
        w_bits = None
        if layer.weight is not None and types.get(layer.weight) in TYPE_BITS:
            w_bits = TYPE_BITS[types[layer.weight]]
            if layer.weight in recorded_w and recorded_w[layer.weight] != w_bits:
                w_bits, container = recorded_w[layer.weight], True
        a_bits = []
        for tensor in layer.activation_inputs:
            node = graph.producers.get(tensor)
            while node is not None and node.op_type == "Cast":  # a model computing in float16 or double
                node = graph.producers.get(node.input[0])
            bits = None
            if node is not None and node.op_type == "DequantizeLinear":
                zero = node.input[2] if len(node.input) > 2 else ""
                bits = TYPE_BITS.get(types.get(zero))
                if node.input[0] in recorded_a and bits is not None and recorded_a[node.input[0]] != bits:
                    bits, container = recorded_a[node.input[0]], True
            a_bits.append(bits)
        out[layer.name] = {"w_bits": w_bits, "a_bits": a_bits, "containers": container}
    return out
