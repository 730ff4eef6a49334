"""ONNX model -> LayerGraph: the layers, their costs' raw counts, precision groups and pins.

A *layer* is a node that multiplies an activation by a weight (or by another activation):
Conv, ConvTranspose, Gemm, MatMul, Einsum of two operands, their integer / QLinear forms and
onnxruntime's com.microsoft forms of them (FusedConv, FusedGemm, FusedMatMul, QGemm,
DynamicQuantizeMatMul, MatMulIntegerToFloat). A *group* is a set of
layers that read the same activation (after walking back through precision-transparent ops)
and so must run at one precision. *First* layers read a graph input with no other layer
upstream; *last* layers reach a graph output through non-layer ops and have no other layer
downstream (a transformer's residual stream reaches the output from every block, so "reaches
an output" alone would pin every block). Groups holding a first or last layer are pinned
(8-bit by default).
"""
from __future__ import annotations

import math
import os
from collections import Counter
from dataclasses import asdict, dataclass, field

import networkx as nx
import numpy as np
import onnx

from planner.errors import MpqError
from planner.graph.onnxfile import TensorStore, read_model
from planner.graph.shapes import (Shape, fix_input_shapes, infer_shapes, outer_inputs, run_for_shapes,
                                  topological_order)

# op_type -> (index of the activation operand, index of the weight operand) for layers with
# one weight; MatMul-like ops may have the weight on either side.
LAYER_OPS: dict[str, tuple[int, int]] = {
    "Conv": (0, 1), "ConvTranspose": (0, 1), "ConvInteger": (0, 1), "QLinearConv": (0, 3),
    "Gemm": (0, 1), "MatMul": (0, 1), "MatMulInteger": (0, 1), "QLinearMatMul": (0, 3),
    "FusedConv": (0, 1), "FusedGemm": (0, 1), "FusedMatMul": (0, 1), "QGemm": (0, 3),
    "DynamicQuantizeMatMul": (0, 1), "MatMulIntegerToFloat": (0, 1), "Einsum": (0, 1),
}
_MATMUL_LIKE = {"Gemm", "MatMul", "MatMulInteger", "QLinearMatMul", "FusedGemm", "FusedMatMul", "QGemm",
                "DynamicQuantizeMatMul", "MatMulIntegerToFloat", "Einsum"}
# onnxruntime's fusions (a Conv or Gemm with its activation, a MatMul with a Transpose or a scale,
# a dynamically quantized MatMul with its quantizer or dequantizer), which models saved after
# onnxruntime's graph optimizations hold, and its quantized Gemm (QGemm, from quantize_static's
# QOperator format, operands laid out as QLinearMatMul's): Conv, Gemm and MatMul with the same
# operands and attributes, in the com.microsoft domain. Every other layer op is ONNX's.
_MICROSOFT_LAYER_OPS = frozenset({"FusedConv", "FusedGemm", "FusedMatMul", "QGemm", "DynamicQuantizeMatMul",
                                  "MatMulIntegerToFloat"})

# Ops whose output carries its (first) input's values at the same precision: a quantizer
# placed on either side is the same quantizer. Groups are found by walking back through them.
TRANSPARENT_OPS = frozenset({
    "Identity", "Relu", "Clip", "MaxPool", "Reshape", "Flatten", "Transpose", "Squeeze",
    "Unsqueeze", "Pad", "Dropout", "Cast", "QuantizeLinear", "DequantizeLinear",
})

# Ops between a stored weight and the layer that uses it; the stored tensor is the weight. They
# keep the element count, so the stored tensor's count is the consumed weight's.
_WEIGHT_CHAIN_OPS = frozenset({
    "Identity", "Transpose", "Cast", "Reshape", "Squeeze", "Unsqueeze", "Flatten",
    "DequantizeLinear",
})

# Ops whose outputs describe a tensor's shape, not its values: no data flows through them.
_SHAPE_OPS = frozenset({"Shape", "Size"})


@dataclass
class Layer:
    """One layer: an ONNX node multiplying by a weight or by a second activation.

    ``weight`` is the stored constant (initializer or Constant output) behind the weight operand
    where only layout ops, casts and DequantizeLinear lie between them; where the weight is
    computed by other ops on constants (ConstantOfShape, Expand, Tile, W * s, ...) it is the
    weight operand itself, whose values are evaluated on demand (``LayerGraph.tensors``); None
    for activation x activation MatMuls. ``weight_shape`` is the shape of ``weight`` and
    ``params`` its element count, which is the consumed weight's (biases are not quantized and
    not counted). ``macs`` are per inference at the resolved input shapes.
    ``input`` is the activation the layer quantizes; ``in_elems`` counts all its activation
    operands' elements. ``weight_scale`` names the DequantizeLinear scale in front of the weight
    where the model carries one.
    """

    name: str
    op_type: str
    weight: str | None
    weight_shape: list[int] | None
    params: int
    macs: int
    input: str
    in_elems: int
    out_elems: int
    output: str
    activation_inputs: list[str] = field(default_factory=list)
    weight_operand: str | None = None
    weight_scale: str | None = None
    group: int = -1
    pinned_bits: int | None = None
    first: bool = False
    last: bool = False


@dataclass
class Group:
    """Layers that read one activation (``source``) and so share one precision."""

    id: int
    layers: list[str]
    source: str
    pinned_bits: int | None = None


class _WhenRead:
    """A dataclass field that may be given a zero-argument function instead of its value: the
    first read calls it and keeps what it returns (the model's sha256, hashed on a background
    thread while the graph is built and planned)."""

    def __set_name__(self, owner, name: str) -> None:
        self.slot = f"_{name}"

    def __get__(self, obj, owner=None):
        if obj is None:
            raise AttributeError(self.slot)  # no default value for the dataclass field
        value = obj.__dict__[self.slot]
        if callable(value):
            value = obj.__dict__[self.slot] = value()
        return value

    def __set__(self, obj, value) -> None:
        obj.__dict__[self.slot] = value


@dataclass
class ModelInfo:
    """Where a graph comes from: the model file (``path``, None when read from memory or a
    temporary file), its ``sha256``, ONNX ``opset``, ``producer`` and the graph input shapes used
    (input name -> dimensions)."""

    path: str | None
    sha256: str = _WhenRead()  # the hex digest; read it to wait for it
    opset: int
    producer: str
    input_shapes: dict[str, list[int]]

    def __getstate__(self) -> dict:
        """Pickled and copied with the digest itself (never the function that waits for it)."""
        return {**self.__dict__, "_sha256": self.sha256}

    def hashing(self) -> bool:
        """True while the model file is still being hashed on a background thread (a CPU busy)."""
        pending = self.__dict__.get("_sha256")
        return callable(pending) and bool(getattr(pending, "running", lambda: False)())


@dataclass
class LayerGraph:
    """The layers of a model (in topological order), their data-flow graph and their groups.

    ``graph`` is a networkx DiGraph over layer names (node attribute ``layer``); an edge u -> v
    means v reads data produced by u through non-layer ops only. ``tensors`` reads weights.
    """

    layers: list[Layer]
    groups: list[Group]
    graph: nx.DiGraph
    model: ModelInfo
    tensors: TensorStore = field(repr=False)
    producers: dict[str, onnx.NodeProto] = field(repr=False, default_factory=dict)
    metadata: dict[str, str] = field(repr=False, default_factory=dict)

    def layer(self, name: str) -> Layer:
        """The layer named ``name``; raises KeyError if there is none."""
        return self.graph.nodes[name]["layer"]

    def group_of(self, layer_name: str) -> Group:
        """The precision group of the layer named ``layer_name``; raises KeyError if there is none."""
        return self.groups[self.layer(layer_name).group]

    @property
    def free_groups(self) -> list[Group]:
        """The groups without a pin (those whose precision is planned), in id order."""
        return [g for g in self.groups if g.pinned_bits is None]

    def totals(self) -> dict[str, int]:
        """Counts of the graph: ``layers``, ``groups``, ``pinned_groups``, ``macs`` (multiply-accumulates
        per inference) and ``params`` (weights, each stored weight once however many layers read it, as
        the cost models' ``weight_bytes`` count it: layers that read one weight form one group)."""
        stored = {l.weight: l.params for l in self.layers if l.weight is not None}
        return {"layers": len(self.layers), "groups": len(self.groups),
                "pinned_groups": sum(g.pinned_bits is not None for g in self.groups),
                "macs": sum(l.macs for l in self.layers), "params": sum(stored.values())}

    def to_json(self) -> dict:
        """The ``mpq inspect --json`` document of DESIGN.md."""
        layer_keys = ["name", "op_type", "weight", "weight_shape", "params", "macs", "input",
                      "in_elems", "out_elems", "group", "pinned_bits", "first", "last"]
        return {
            "model": asdict(self.model),
            "layers": [{k: getattr(l, k) for k in layer_keys} for l in self.layers],
            "groups": [asdict(g) for g in self.groups],
            "totals": self.totals(),
        }


def load_graph(model: str | os.PathLike | onnx.ModelProto, input_shapes: dict[str, Shape] | None = None,
               *, pin_first: int | None = 8, pin_last: int | None = 8) -> LayerGraph:
    """Read an ONNX model into a :class:`LayerGraph`.

    ``model`` is a path (external data is read relative to it, through memory maps) or a
    ModelProto. ``input_shapes`` fixes symbolic input dimensions ({name: shape}); symbolic batch
    (first) dimensions default to 1. ``pin_first`` / ``pin_last`` are the bits of the groups
    holding first / last layers (None: not pinned). Raises MpqError on any user-fixable problem.
    """
    proto, base_dir, digest = read_model(model, lazy_digest=True)
    where = str(model) if not isinstance(model, onnx.ModelProto) else "model"
    graph = proto.graph
    _check_single_assignment(graph, where)
    _check_no_layers_in_functions(proto, where)
    tensors = TensorStore(graph, base_dir, where)
    fixed_inputs = fix_input_shapes(graph, input_shapes, where)
    elem_types: dict[str, int] = {}
    shapes = infer_shapes(proto, fixed_inputs, where, elem_types)
    nodes = _topological(graph.node, set(tensors.tensors) | {i.name for i in graph.input}, where)
    constant = _constant_tensors(nodes, tensors)
    producers = {o: n for n in nodes for o in n.output}
    tensors.add_computed(producers, constant, {t: (s, elem_types.get(t, 0)) for t, s in shapes.items() if s is not None},
                         list(proto.opset_import))

    found = [(n, *_operands(n, constant)) for n in nodes if _is_layer(n, constant, where)]
    if not found:
        nested = _nested_layer_ops(graph)
        raise MpqError(f"{where}: no layers found (no Conv, ConvTranspose, Gemm, MatMul or Einsum on an activation)"
                       + (f"; its {nested} such nodes sit inside If/Loop/Scan subgraphs, which mpq does not plan: "
                          "export the model without control flow (e.g. one model per branch)" if nested else
                          "; nothing to plan"))
    needed = sorted({t for n, acts, _ in found for t in [*acts, n.output[0]] if shapes.get(t) is None})
    folded: dict[str, np.ndarray] = {}
    for _ in range(8):  # first fold the shape operands that decide the missing shapes (each fold may
        if not needed:  # resolve shapes that decide further operands), then measure the rest
            break
        more = _fold_shape_constants(nodes, shapes, elem_types, tensors, constant, producers)
        if not more.keys() - folded.keys():
            break
        folded.update(more)
        shapes = infer_shapes(proto, fixed_inputs, where, elem_types, values=folded)
        tensors.add_computed(producers, constant,
                             {t: (s, elem_types.get(t, 0)) for t, s in shapes.items() if s is not None},
                             list(proto.opset_import))
        needed = [t for t in needed if shapes.get(t) is None]
    if needed:
        shapes.update(run_for_shapes(proto, fixed_inputs, needed, where))
    named = Counter(n.name for n, _, _ in found)
    layers = [_make_layer(n, acts, w, shapes, tensors, producers, where, shared_name=named[n.name] > 1)
              for n, acts, w in found]

    info = ModelInfo(path=None if isinstance(model, onnx.ModelProto) else str(model), sha256=digest,
                     opset=_default_opset(proto), producer=f"{proto.producer_name} {proto.producer_version}".strip(),
                     input_shapes={k: list(v) for k, v in fixed_inputs.items()})
    dag = _layer_dag(nodes, layers, graph)
    groups = _group(layers, producers)
    _pin(layers, groups, dag, nodes, graph, pin_first, pin_last)
    return LayerGraph(layers=layers, groups=groups, graph=dag, model=info, tensors=tensors, producers=producers,
                      metadata={p.key: p.value for p in proto.metadata_props})


# Shape operands (Reshape/Expand/Tile shapes, Slice bounds, Pad pads, ...) are scalars or vectors of
# at most this many elements.
_SHAPE_ELEMENTS = 64


def _fold_shape_constants(nodes, shapes: dict, elem_types: dict, tensors: TensorStore, constant: set[str],
                          producers: dict) -> dict[str, np.ndarray]:
    """Values of the integer shape operands (scalars and vectors of at most ``_SHAPE_ELEMENTS``
    elements) that feed a node whose outputs ONNX inference left without a static shape and that
    follow from constants and the static shapes of other tensors: an Expand's target made by
    Where/ConstantOfShape, a Slice bound made from Shape(input_ids), as transformers' exports have.
    With them inference resolves what would otherwise need a run of the whole model. They are
    computed with numpy where their ops allow (:func:`_numpy_value`), else, for constants, by
    ONNX's reference evaluator; the others are left out (the run measures those shapes)."""
    folded: dict[str, np.ndarray] = {}
    cache: dict[str, np.ndarray | None] = {}
    for node in nodes:
        if all(shapes.get(o) is not None for o in node.output if o):
            continue
        for name in node.input:
            if not name or name in folded or tensors.is_stored(name):
                continue
            shape, elem = shapes.get(name), elem_types.get(name, 0)
            if shape is None or len(shape) > 1 or int(np.prod(shape, dtype=np.int64)) > _SHAPE_ELEMENTS:
                continue
            if not elem or not np.issubdtype(np.dtype(onnx.helper.tensor_dtype_to_np_dtype(elem)), np.integer):
                continue
            try:
                value = _numpy_value(name, producers, tensors, shapes, cache)
            except (ValueError, IndexError, TypeError, KeyError):  # operands numpy refuses: measured instead
                value = None
            if value is None and name in constant and name in tensors:
                try:
                    value = np.asarray(tensors.array(name))
                except MpqError:
                    continue
            if value is not None and value.shape == tuple(shape):
                folded[name] = value
    return folded


# The elementwise ops that build shape operands in exporters' graphs, evaluated with numpy; see
# _numpy_value for the others.
_NUMPY_OPS = {
    "Add": lambda a, b: np.add(a, b), "Sub": lambda a, b: np.subtract(a, b), "Mul": lambda a, b: np.multiply(a, b),
    "Equal": lambda a, b: np.equal(a, b), "Where": lambda c, a, b: np.where(c, a, b), "Identity": lambda a: a,
}


def _numpy_value(name: str, producers: dict, tensors: TensorStore, shapes: dict, cache: dict) -> np.ndarray | None:
    """The value of ``name`` computed with numpy (ONNX semantics, opset 13 and later) from stored
    tensors of at most 4096 elements and from the static ``shapes`` of others, through Shape,
    Constant, ConstantOfShape, Cast, Concat, Gather, Reshape, Slice (positive steps), Squeeze, Unsqueeze and
    the ops in ``_NUMPY_OPS``; None where anything else is on the way (cached in ``cache``)."""
    if name in cache:
        return cache[name]
    cache[name] = None  # also guards against cycles
    if tensors.is_stored(name):
        if tensors.size(name) > 4096:
            return None
        cache[name] = np.asarray(tensors.array(name))
        return cache[name]
    node = producers.get(name)
    if node is None or node.domain not in ("", "ai.onnx") or len(node.output) != 1:
        return None
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    if node.op_type == "Shape":  # needs the input's shape only
        known = shapes.get(node.input[0])
        if known is None:
            return None
        cache[name] = np.array(known[attrs.get("start", 0):attrs.get("end", len(known))], dtype=np.int64)
        return cache[name]
    inputs = [_numpy_value(i, producers, tensors, shapes, cache) if i else None for i in node.input]
    if any(v is None for v in inputs):
        return None
    op = node.op_type
    if op in _NUMPY_OPS:
        value = _NUMPY_OPS[op](*inputs)
    elif op == "ConstantOfShape" and len(inputs) == 1:
        fill = onnx.numpy_helper.to_array(attrs["value"]).reshape(-1) if "value" in attrs else np.zeros(1, np.float32)
        value = np.full([int(d) for d in inputs[0]], fill[0], dtype=fill.dtype)
    elif op == "Cast" and len(inputs) == 1 and "saturate" not in attrs:
        value = inputs[0].astype(onnx.helper.tensor_dtype_to_np_dtype(attrs["to"]))
    elif op == "Concat" and inputs:
        value = np.concatenate(inputs, axis=attrs["axis"])
    elif op == "Gather" and len(inputs) == 2:
        value = np.take(inputs[0], inputs[1], axis=attrs.get("axis", 0))
    elif op == "Unsqueeze" and len(inputs) == 2:  # opset 13+: the axes are an input
        rank = inputs[0].ndim + inputs[1].size
        value = np.expand_dims(inputs[0], tuple(sorted(int(a) % rank for a in inputs[1].reshape(-1))))
    elif op == "Squeeze" and len(inputs) == 2:  # opset 13+
        value = np.squeeze(inputs[0], tuple(int(a) % inputs[0].ndim for a in inputs[1].reshape(-1)))
    elif op == "Reshape" and len(inputs) == 2:  # 0 copies the input's dimension unless allowzero
        target = [int(d) for d in inputs[1].reshape(-1)]
        if not attrs.get("allowzero", 0):
            target = [inputs[0].shape[k] if d == 0 else d for k, d in enumerate(target)]
        value = np.reshape(inputs[0], target)
    elif op == "Slice" and 3 <= len(inputs) <= 5:  # opset 10+: bounds are inputs
        data = inputs[0]
        axes = inputs[3].reshape(-1) if len(inputs) > 3 else np.arange(len(inputs[1].reshape(-1)))
        steps = inputs[4].reshape(-1) if len(inputs) > 4 else np.ones(len(axes), np.int64)
        if (steps <= 0).any():  # negative steps clamp differently from Python slices
            return None
        index = [slice(None)] * data.ndim
        for start, stop, axis, step in zip(inputs[1].reshape(-1), inputs[2].reshape(-1), axes, steps):
            index[int(axis) % data.ndim] = slice(int(start), int(stop), int(step))
        value = data[tuple(index)]
    else:
        return None
    cache[name] = np.asarray(value)
    return cache[name]


def _default_opset(proto: onnx.ModelProto) -> int:
    return next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 0)


def _check_single_assignment(graph: onnx.GraphProto, where: str) -> None:
    """MpqError where the graph defines a tensor name twice: two nodes with the same output, a
    node output that is also an initializer or a graph input, or two initializers of one name.
    ONNX graphs are in single static assignment form (onnx.checker and onnxruntime refuse such a
    model); which value a reader gets would be a guess. Old IR versions list initializers as graph
    inputs too, which is not a second definition."""
    defined: dict[str, str] = {}
    for tensor in list(graph.initializer) + [t.values for t in graph.sparse_initializer]:
        if tensor.name in defined:
            raise MpqError(f"{where}: two initializers are named '{tensor.name}'; the graph is not valid ONNX "
                           "(every tensor has one definition): fix or export the model again")
        defined[tensor.name] = "an initializer"
    for value in graph.input:
        defined.setdefault(value.name, "a graph input")
    for node in graph.node:
        for output in node.output:
            if not output:
                continue
            if output in defined:
                raise MpqError(f"{where}: '{output}' is defined twice (by {defined[output]} and by node "
                               f"'{node.name or node.op_type}'); the graph is not valid ONNX (every tensor has "
                               "one definition): fix or export the model again")
            defined[output] = f"node '{node.name or node.op_type}'"


def _topological(nodes, available: set[str], where: str) -> list[onnx.NodeProto]:
    """Nodes in a topological order (the file's order when it already is one); MpqError naming
    the first node that reads a tensor nothing produces."""
    ordered, stuck = topological_order(nodes, available)
    if stuck:
        produced = set(available) | {""} | {o for n in ordered for o in n.output}
        missing = next((i for i in stuck[0].input if i not in produced), None) \
            or sorted(outer_inputs(stuck[0]) - produced)[0]  # read inside its subgraphs
        raise MpqError(f"{where}: node '{stuck[0].name or stuck[0].op_type}' reads '{missing}', which nothing "
                       "produces; the graph is broken")
    return ordered



def _check_no_layers_in_functions(proto: onnx.ModelProto, where: str) -> None:
    """MpqError where the main graph calls a model-local function that holds a layer op (directly
    or through other local functions; torch's ``export_modules_as_functions`` writes such models):
    mpq reads the main graph only, so those layers would be missing from every count and plan."""
    functions = {(f.domain, f.name): f for f in proto.functions}
    holding: set[tuple[str, str]] = set()
    changed = True
    while changed:  # a function holds a layer when its nodes are layer ops or call one that does
        changed = False
        for key, function in functions.items():
            if key not in holding and any(n.op_type in LAYER_OPS and n.domain in ("", "ai.onnx")
                                          or (n.domain, n.op_type) in holding for n in function.node):
                holding.add(key)
                changed = True
    calls = [n for n in proto.graph.node if (n.domain, n.op_type) in holding]
    if calls:
        raise MpqError(f"{where}: {len(calls)} nodes (e.g. '{calls[0].name or calls[0].op_type}') call model-local "
                       f"functions that hold Conv/Gemm/MatMul layers, which mpq does not read; inline them first: "
                       "onnx.save(onnx.inliner.inline_local_functions(onnx.load(MODEL)), INLINED)")


def _nested_layer_ops(graph: onnx.GraphProto) -> int:
    """The number of layer ops (:data:`LAYER_OPS`) inside the subgraphs of ``graph``'s nodes."""
    count = 0
    for node in graph.node:
        for attr in node.attribute:
            for sub in ([attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)):
                count += sum(n.op_type in LAYER_OPS for n in sub.node) + _nested_layer_ops(sub)
    return count


def _constant_tensors(nodes: list[onnx.NodeProto], tensors: TensorStore) -> set[str]:
    """Tensors whose value does not depend on any graph input."""
    constant = set(tensors.tensors)
    for node in nodes:
        if node.op_type in ("RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Multinomial"):
            continue
        inputs = [i for i in node.input if i]
        if node.op_type == "Constant" or (inputs and all(i in constant for i in inputs) and not outer_inputs(node)):
            constant.update(node.output)
    return constant


def _is_layer(node: onnx.NodeProto, constant: set[str], where: str) -> bool:
    """True for a layer op with at least one operand that is not constant. Raises MpqError
    for a layer op that lacks one of its two operands."""
    domains = ("com.microsoft",) if node.op_type in _MICROSOFT_LAYER_OPS else ("", "ai.onnx")
    if node.op_type not in LAYER_OPS or node.domain not in domains:
        return False
    if node.op_type == "Einsum" and (len(node.input) != 2 or not all(node.input)):
        return False  # a trace, transpose or three-way product: not a product of two operands
    a, w = LAYER_OPS[node.op_type]
    if len(node.input) <= max(a, w) or not node.input[a] or not node.input[w]:
        raise MpqError(f"{where}: {node.op_type} node '{node.name or node.op_type}' has {len(node.input)} "
                       f"input(s) but needs an input and a weight; the model is broken, export it again")
    operands = [node.input[a], node.input[w]]
    return not all(x in constant for x in operands)  # a product of constants is folded, not run


def _operands(node: onnx.NodeProto, constant: set[str]) -> tuple[list[str], str | None]:
    """(activation operands, weight operand or None) of a layer node."""
    a, w = LAYER_OPS[node.op_type]
    first, second = node.input[a], node.input[w]
    if second in constant:
        return [first], second
    if first in constant and node.op_type in _MATMUL_LIKE:
        return [second], first
    return [first, second], None


def _weight_root(operand: str, tensors: TensorStore, producers: dict) -> tuple[str, str | None]:
    """The tensor that stands for a weight operand, and the DequantizeLinear scale on the way.

    Walks back through layout ops, casts and DequantizeLinear to a stored tensor, which is the
    weight (its scale the DequantizeLinear's, if one was passed). Where another op computes the
    weight from constants (Expand, Tile, ConstantOfShape, W * s, ...), the operand itself is the
    weight and has no scale: its evaluated values are what the layer multiplies by.
    """
    name, scale = operand, None
    while not tensors.is_stored(name):
        node = producers[name]
        if node.op_type not in _WEIGHT_CHAIN_OPS:
            return operand, None
        if node.op_type == "DequantizeLinear":
            scale = node.input[1]
        name = node.input[0]
    return name, scale


def _make_layer(node, activations: list[str], weight_operand: str | None, shapes: dict,
                tensors: TensorStore, producers: dict, where: str, shared_name: bool = False) -> Layer:
    """The layer of ``node``, named by the node's name; where the node has no name, or another
    layer node has the same one (``shared_name``), ``NAME:OUTPUT`` (``NAME`` the op type when
    empty), unique because every tensor has one producer."""
    name = f"{node.name or node.op_type}:{node.output[0]}" if shared_name or not node.name else node.name

    def shape_of(t: str) -> Shape:
        s = shapes.get(t)
        if s is None and t in tensors:
            s = tensors.shape(t)
        if s is None:
            raise MpqError(f"{where}: cannot resolve the shape of '{t}' at layer '{name}'; "
                           "pass --input-shape for the model's inputs")
        return s

    weight, weight_shape, scale, params = None, None, None, 0
    if weight_operand is not None:
        weight, scale = _weight_root(weight_operand, tensors, producers)
        weight_shape = list(tensors.shape(weight))
        params = tensors.size(weight)
        consumed = shapes.get(weight_operand)
        if consumed is not None and math.prod(consumed) != params:
            raise MpqError(f"{where}: layer '{name}' consumes a weight of shape {list(consumed)}, made from "
                           f"'{weight}' of shape {weight_shape} ({params} elements) by ops that keep the count; "
                           "the model is broken, export it again")
    a, w = LAYER_OPS[node.op_type]
    out_shape = shape_of(node.output[0])
    return Layer(name=name, op_type=node.op_type, weight=weight, weight_shape=weight_shape, params=params,
                 macs=_macs(node, shape_of(node.input[a]), shape_of(node.input[w]), out_shape),
                 input=activations[0], in_elems=sum(math.prod(shape_of(t)) for t in activations),
                 out_elems=math.prod(out_shape), output=node.output[0], activation_inputs=list(activations),
                 weight_operand=weight_operand, weight_scale=scale)


def _macs(node, left: Shape, right: Shape, out: Shape) -> int:
    """Multiply-accumulates of one inference, from the shapes of the two operands and the output."""
    op = node.op_type
    attrs = {a.name: a.i for a in node.attribute if a.type == onnx.AttributeProto.INT}
    if op in ("Conv", "ConvInteger", "QLinearConv", "FusedConv"):  # W: (M, C/g, k...)
        return math.prod(out) * math.prod(right[1:])
    if op == "ConvTranspose":  # W: (C, M/g, k...): every input element meets M/g * k... weights
        return math.prod(left) * math.prod(right[1:])
    if op in ("Gemm", "FusedGemm", "QGemm"):
        return math.prod(out) * (left[0] if attrs.get("transA") else left[-1])
    if op == "Einsum":
        return _einsum_macs(next(a.s.decode() for a in node.attribute if a.name == "equation"), left, right, out)
    if op == "FusedMatMul" and attrs.get("transA"):  # K is A's second-last dim, or its first where
        return math.prod(out) * (left[0] if attrs.get("transBatchA") else left[-2])  # transBatchA moves it
    return math.prod(out) * (left[-1] if left else 1)  # MatMul: (..., M, K) @ (..., K, N)


def _einsum_macs(equation: str, left: Shape, right: Shape, out: Shape) -> int:
    """Multiply-accumulates of a two-operand Einsum: every output element sums over the
    letters that the operands have and the output lacks (``bsk,nk->bsn``: k), so it is the
    output's elements times the product of their sizes. Without ``->`` the output holds the
    letters that occur once (numpy's implicit mode); ``...`` stands for broadcast dimensions."""
    terms, arrow, output = equation.replace(" ", "").partition("->")
    operands = terms.split(",")
    if not arrow:
        letters = "".join(operands).replace("...", "")
        output = "".join(sorted(c for c in set(letters) if letters.count(c) == 1))
    sizes: dict[str, int] = {}
    for term, shape in zip(operands, (left, right)):
        head, _, tail = term.partition("...")
        for letter, size in [*zip(head, shape), *zip(tail, shape[len(shape) - len(tail):] if tail else ())]:
            sizes[letter] = max(sizes.get(letter, 1), size)  # a dimension of 1 broadcasts
    return math.prod(out) * math.prod(size for letter, size in sizes.items() if letter not in output)


def _layer_dag(nodes, layers: list[Layer], graph: onnx.GraphProto) -> nx.DiGraph:
    """Edges u -> v where v reads data produced by u through non-layer ops only."""
    by_output = {l.output: l for l in layers}
    by_node_output: dict[str, Layer] = {}
    upstream: dict[str, frozenset[str]] = {}
    for node in nodes:
        layer = by_output.get(node.output[0]) if node.output else None
        if layer is not None:
            for o in node.output:
                upstream[o] = frozenset([layer.name])
            by_node_output[node.output[0]] = layer
        elif node.op_type in _SHAPE_OPS:
            continue
        else:
            merged = frozenset().union(*(upstream.get(i, frozenset()) for i in node.input if i))
            for o in node.output:
                upstream[o] = merged
    dag = nx.DiGraph()
    for layer in layers:
        dag.add_node(layer.name, layer=layer)
    for layer in layers:
        for t in layer.activation_inputs:
            for u in sorted(upstream.get(t, ())):
                dag.add_edge(u, layer.name)
    return dag


def _source(tensor: str, producers: dict) -> str:
    """Walk back from an activation through precision-transparent ops to its source tensor."""
    while tensor in producers and producers[tensor].op_type in TRANSPARENT_OPS:
        tensor = producers[tensor].input[0]
    return tensor


def _group(layers: list[Layer], producers: dict) -> list[Group]:
    """Union-find over the source tensors the layers read, and over the weights they read (a
    weight stored once, e.g. one reused by every step of an unrolled recurrence, has one
    precision); groups numbered in layer order."""
    parent: dict[str, str] = {}

    def find(x: str) -> str:
        while parent.setdefault(x, x) != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for layer in layers:
        for t in layer.activation_inputs:
            parent[find(layer.name)] = find("tensor:" + _source(t, producers))
        if layer.weight is not None:
            parent[find(layer.name)] = find("weight:" + layer.weight)
    groups: dict[str, Group] = {}
    for layer in layers:
        root = find(layer.name)
        if root not in groups:
            groups[root] = Group(id=len(groups), layers=[], source=_source(layer.input, producers))
        groups[root].layers.append(layer.name)
        layer.group = groups[root].id
    return list(groups.values())


def _pin(layers, groups, dag: nx.DiGraph, nodes, graph: onnx.GraphProto,
         pin_first: int | None, pin_last: int | None) -> None:
    """Mark first and last layers and pin their groups (the larger pin wins if both apply)."""
    reaches_output = _reaches_output(nodes, layers, graph)
    for layer in layers:
        layer.first = dag.in_degree(layer.name) == 0
        layer.last = dag.out_degree(layer.name) == 0 and layer.output in reaches_output
    for group in groups:
        members = [dag.nodes[n]["layer"] for n in group.layers]
        pins = [b for b, hit in ((pin_first, any(l.first for l in members)),
                                 (pin_last, any(l.last for l in members))) if hit and b is not None]
        group.pinned_bits = max(pins) if pins else None
        for layer in members:
            layer.pinned_bits = group.pinned_bits


def _reaches_output(nodes, layers: list[Layer], graph: onnx.GraphProto) -> set[str]:
    """Tensors from which a graph output is reached through non-layer, non-shape ops."""
    layer_outputs = {l.output for l in layers}
    reach = {o.name for o in graph.output}
    for node in reversed(nodes):
        if node.op_type in _SHAPE_OPS or (node.output and node.output[0] in layer_outputs):
            continue
        if any(o in reach for o in node.output):
            reach.update(i for i in node.input if i)
    return reach
