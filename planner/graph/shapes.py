"""Static shapes of every tensor: graph inputs fixed, then ONNX shape inference.

Batch dimensions (the first dimension of a graph input) that are symbolic default to 1; any
other symbolic input dimension must be given in ``input_shapes``. Inference runs on a skeleton
of the model in which large weights are replaced by typed graph inputs, so no weight bytes are
copied or serialized and models beyond protobuf's 2 GB limit work. Tensors that ONNX inference
leaves without a static shape (shapes computed at run time by old exporters) can be filled in
by running the model once in onnxruntime (:func:`run_for_shapes`).
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper

from planner.errors import MpqError

# Initializers up to this many elements stay in the skeleton: shape inference reads their
# values (Reshape targets, Slice bounds, ...). Larger ones become typed inputs.
_KEEP_ELEMENTS = 4096

Shape = tuple[int, ...]


def graph_inputs(graph: onnx.GraphProto) -> list[onnx.ValueInfoProto]:
    """The real inputs of the graph (old IR versions also list initializers as inputs)."""
    initializers = {t.name for t in graph.initializer}
    return [i for i in graph.input if i.name not in initializers]


def fix_input_shapes(graph: onnx.GraphProto, input_shapes: dict[str, Shape] | None,
                     where: str) -> dict[str, Shape]:
    """Resolve every graph input's shape: given shapes win; a symbolic dimension named like one
    of a given input (the same ``dim_param``: ``batch`` of image and metadata inputs) takes its
    value; else a symbolic first dimension is 1, and any other symbolic dimension is an error
    that names the input and the dimension. A dimension is symbolic where it has a
    ``dim_param``, no value, or a value <= 0 (Paddle's exporter writes -1 for unknown dimensions)."""
    given = dict(input_shapes or {})
    inputs = graph_inputs(graph)
    names = [i.name for i in inputs]
    unknown = sorted(set(given) - set(names))
    if unknown:
        raise MpqError(f"{where}: --input-shape names '{unknown[0]}', which is not a graph input; "
                       f"the inputs are: {', '.join(names)}")
    named: dict[str, int] = {}  # dim_param -> the value a given shape sets it to
    for value in inputs:
        if value.name in given and value.type.tensor_type.HasField("shape"):
            for d, want in zip(value.type.tensor_type.shape.dim, given[value.name]):
                if d.dim_param and not (d.HasField("dim_value") and d.dim_value > 0):
                    named.setdefault(d.dim_param, int(want))
    resolved: dict[str, Shape] = {}
    for value in inputs:
        tensor_type = value.type.tensor_type
        if not value.type.HasField("tensor_type"):
            raise MpqError(f"{where}: input '{value.name}' is not a tensor (sequence or map inputs "
                           "are not supported)")
        dims = list(tensor_type.shape.dim) if tensor_type.HasField("shape") else None
        if value.name in given:
            shape = tuple(int(d) for d in given[value.name])
            if dims is not None and len(dims) != len(shape):
                raise MpqError(f"{where}: --input-shape {value.name} has {len(shape)} dimensions, "
                               f"the input has {len(dims)}")
            for d, want in zip(dims or [], shape):
                if d.HasField("dim_value") and d.dim_value > 0 and d.dim_value != want:
                    raise MpqError(f"{where}: --input-shape {value.name}={'x'.join(map(str, shape))} "
                                   f"conflicts with the model's fixed dimension {d.dim_value}")
            if any(s <= 0 for s in shape):
                raise MpqError(f"{where}: --input-shape {value.name} needs positive dimensions")
            resolved[value.name] = shape
            continue
        if dims is None:
            raise MpqError(f"{where}: input '{value.name}' has no shape in the model; pass "
                           f"--input-shape {value.name}=1x...")
        shape = []
        for axis, d in enumerate(dims):
            if d.HasField("dim_value") and d.dim_value > 0:
                shape.append(int(d.dim_value))
            elif d.dim_param in named:
                shape.append(named[d.dim_param])
            elif axis == 0:
                shape.append(1)
            else:
                label = f"'{d.dim_param}'" if d.dim_param else "unnamed"
                example = "x".join(str(int(x.dim_value)) if x.HasField("dim_value") and x.dim_value > 0
                                   else ("1" if i == 0 else "N") for i, x in enumerate(dims))
                raise MpqError(f"{where}: input '{value.name}' dimension {axis} ({label}) is symbolic; "
                               f"pass --input-shape {value.name}={example} with N set")
        resolved[value.name] = tuple(shape)
    return resolved


def infer_shapes(model: onnx.ModelProto, input_shapes: dict[str, Shape], where: str,
                 elem_types: dict[str, int] | None = None,
                 values: dict[str, np.ndarray] | None = None) -> dict[str, Shape | None]:
    """Shapes of all tensors that ONNX shape inference can resolve statically (None for the rest).
    Where ``elem_types`` is given, it is filled with every inferred tensor's ONNX element type.
    ``values``: node outputs whose values are known (small constants computed from constants, e.g.
    the target shape of an Expand); inference reads them as ``Constant`` nodes in place of the
    nodes that compute them, so that the shapes they decide become static."""
    skeleton, _ = _skeleton(model, input_shapes)
    if values:
        _replace_by_constants(skeleton.graph, values)
    try:
        inferred = onnx.shape_inference.infer_shapes(skeleton, data_prop=True)
    except (onnx.shape_inference.InferenceError, onnx.checker.ValidationError) as e:  # the model is inconsistent
        message = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise MpqError(f"{where}: ONNX shape inference failed ({message}); check the model with "
                       "onnx.checker or pass --input-shape") from None
    shapes: dict[str, Shape | None] = {}
    ig = inferred.graph
    for value in list(ig.input) + list(ig.value_info) + list(ig.output):
        shapes[value.name] = _static_shape(value)
        if elem_types is not None and value.type.HasField("tensor_type"):
            elem_types[value.name] = value.type.tensor_type.elem_type
    for tensor in model.graph.initializer:
        shapes[tensor.name] = tuple(int(d) for d in tensor.dims)
    return shapes


def _replace_by_constants(graph: onnx.GraphProto, values: dict[str, np.ndarray]) -> None:
    """Give every tensor in ``values`` a ``Constant`` node as its producer: a node all of whose
    outputs are in ``values`` is replaced, one with other outputs stays and the named outputs it
    also produced are renamed to unused names."""
    from onnx import numpy_helper

    nodes = []
    for node in graph.node:
        outputs = [o for o in node.output if o]
        if outputs and all(o in values for o in outputs):
            continue
        if any(o in values for o in outputs):
            node = onnx.NodeProto.FromString(node.SerializeToString())
            for k, o in enumerate(node.output):
                if o in values:
                    node.output[k] = f"{o}__mpq_replaced"
        nodes.append(node)
    constants = [helper.make_node("Constant", [], [name], value=numpy_helper.from_array(np.asarray(value), name))
                 for name, value in values.items()]
    del graph.node[:]
    graph.node.extend(constants + nodes)


def _static_shape(value: onnx.ValueInfoProto) -> Shape | None:
    if not value.type.HasField("tensor_type") or not value.type.tensor_type.HasField("shape"):
        return None
    dims = []
    for d in value.type.tensor_type.shape.dim:
        if not d.HasField("dim_value") or d.dim_value < 0:
            return None
        dims.append(int(d.dim_value))
    return tuple(dims)


def outer_inputs(node: onnx.NodeProto) -> set[str]:
    """Tensors of the enclosing graph that a control-flow node's subgraphs read."""
    names: set[str] = set()
    for attr in node.attribute:
        for sub in ([attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)):
            local = {t.name for t in sub.initializer} | {i.name for i in sub.input}
            local |= {o for n in sub.node for o in n.output}
            for n in sub.node:
                names |= {i for i in n.input if i and i not in local} | (outer_inputs(n) - local)
    return names


def topological_order(nodes, available: set[str]) -> tuple[list[onnx.NodeProto], list[onnx.NodeProto]]:
    """(``nodes`` in a topological order, the nodes that cannot be placed): a node is placed once
    every tensor it reads, its subgraphs' outer tensors included (see :func:`outer_inputs`), is in
    ``available`` (graph inputs and initializers) or produced by a node placed before it; the
    file's order is kept where it already is one. The nodes left over, in the file's order, read
    a tensor that nothing produces (or sit on a cycle): the caller says what that means."""
    produced = set(available) | {""}
    ordered, pending = [], list(nodes)
    while pending:
        rest = []
        for node in pending:
            if all(i in produced for i in node.input) and not outer_inputs(node) - produced:
                ordered.append(node)
                produced.update(node.output)
            else:
                rest.append(node)
        if len(rest) == len(pending):
            return ordered, rest
        pending = rest
    return ordered, []


def _in_order(graph: onnx.GraphProto) -> list[onnx.NodeProto]:
    """The graph's nodes in a topological order (ONNX shape inference follows the file's order,
    and some tools append nodes, e.g. the Casts of a float16 conversion, after their readers).
    Nodes whose inputs never become available stay at the end in the file's order (the caller
    reports a broken graph)."""
    ordered, stuck = topological_order(graph.node, {i.name for i in graph.input} | {t.name for t in graph.initializer})
    return ordered + stuck


def _skeleton(model: onnx.ModelProto, input_shapes: dict[str, Shape]) -> tuple[onnx.ModelProto, list[TensorProto]]:
    """The model with its inputs fixed to ``input_shapes`` and without its large weights.

    The graph outputs keep their element types but not their declared shapes: those were written
    at export time (a batch of 1, say) and would override what inference derives from
    ``input_shapes`` (ONNX keeps a declared dimension where it differs from the inferred one).
    Initializers of more than ``_KEEP_ELEMENTS`` elements, and external ones, become typed graph
    inputs (returned, so that a caller can feed them); their bytes are neither copied nor read.
    """
    graph = model.graph
    skeleton = onnx.ModelProto()
    skeleton.ir_version = max(model.ir_version, 4)
    skeleton.opset_import.extend(model.opset_import)
    skeleton.functions.extend(model.functions)
    g = skeleton.graph
    g.node.extend(_in_order(graph))
    g.output.extend(_without_shape(o) for o in graph.output)
    for value in graph_inputs(graph):
        elem = value.type.tensor_type.elem_type
        g.input.append(helper.make_tensor_value_info(value.name, elem, input_shapes[value.name]))
    stripped = []
    for tensor in graph.initializer:
        size = int(np.prod(tensor.dims, dtype=np.int64))
        if size <= _KEEP_ELEMENTS and tensor.data_location != TensorProto.EXTERNAL:
            g.initializer.append(tensor)
        else:
            g.input.append(helper.make_tensor_value_info(tensor.name, tensor.data_type, list(tensor.dims)))
            stripped.append(tensor)
    return skeleton, stripped


def _without_shape(value: onnx.ValueInfoProto) -> onnx.ValueInfoProto:
    """``value`` with its tensor shape removed (other types unchanged)."""
    value = onnx.ValueInfoProto.FromString(value.SerializeToString())
    if value.type.HasField("tensor_type"):
        value.type.tensor_type.ClearField("shape")
    return value


# Element types stored several to a byte (bits per element), which onnxruntime takes only as
# initializers, not as numpy feeds.
_PACKED_BITS = {TensorProto.INT4: 4, TensorProto.UINT4: 4, TensorProto.FLOAT4E2M1: 4,
                TensorProto.INT2: 2, TensorProto.UINT2: 2}


def add_outputs(model: onnx.ModelProto, names) -> None:
    """Make every tensor of ``names`` an output of ``model``'s graph (in place; those that already
    are stay as they are), so that onnxruntime can return it."""
    known = {o.name for o in model.graph.output}
    for name in names:
        if name not in known:
            model.graph.output.append(helper.make_empty_tensor_value_info(name))
            known.add(name)


def ort_model_errors() -> tuple[type[Exception], ...]:
    """What onnxruntime raises for a model it cannot load or run: the model's fault, which the user
    can fix. Anything else (a wrong feed, a Python error) is a bug in mpq and stays one."""
    from onnxruntime.capi import onnxruntime_pybind11_state as ort_errors

    return (ort_errors.Fail, ort_errors.InvalidArgument, ort_errors.InvalidGraph, ort_errors.InvalidProtobuf,
            ort_errors.NotImplemented, ort_errors.RuntimeException, ort_errors.NoSuchFile)


def run_for_shapes(model: onnx.ModelProto, input_shapes: dict[str, Shape], names: list[str], where: str) -> dict[str, Shape]:
    """Shapes of ``names`` found by running the model once in onnxruntime on zero inputs.

    For graphs whose shapes are computed at run time in ways ONNX inference cannot follow. The
    model runs as the skeleton of :func:`infer_shapes`: its large weights are fed as zeros
    (``np.zeros``, pages the kernel maps on demand and shares while they are only read), so
    neither the weights' bytes nor external data are loaded and no second copy of the model is
    made. Shapes are taken not to depend on the values of weights of more than
    ``_KEEP_ELEMENTS`` elements (the smaller ones keep their values). Raises MpqError where
    onnxruntime cannot load or run the model.
    """
    import onnxruntime as ort

    model_errors = ort_model_errors()
    probe, stripped = _skeleton(model, input_shapes)
    add_outputs(probe, names)
    feeds = {}
    for value in graph_inputs(model.graph):
        dtype = helper.tensor_dtype_to_np_dtype(value.type.tensor_type.elem_type)
        feeds[value.name] = np.zeros(input_shapes[value.name], dtype=dtype)
    packed = {t.name: t for t in stripped if t.data_type in _PACKED_BITS}
    for tensor in stripped:
        if tensor.name not in packed:
            feeds[tensor.name] = np.zeros([int(d) for d in tensor.dims], dtype=helper.tensor_dtype_to_np_dtype(tensor.data_type))
    if packed:  # onnxruntime takes no numpy feed of 2- or 4-bit types: such weights become zero initializers
        kept = [v for v in probe.graph.input if v.name not in packed]
        del probe.graph.input[:]
        probe.graph.input.extend(kept)
        for tensor in packed.values():
            count = int(np.prod(tensor.dims, dtype=np.int64))
            per_byte = 8 // _PACKED_BITS[tensor.data_type]
            probe.graph.initializer.append(helper.make_tensor(tensor.name, tensor.data_type, list(tensor.dims),
                                                              bytes(-(-count // per_byte)), raw=True))
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 4
    try:
        session = ort.InferenceSession(probe.SerializeToString(), options, providers=["CPUExecutionProvider"])
        values = session.run(names, feeds)
    except model_errors as e:
        message = str(e).strip().splitlines()[0]
        raise MpqError(f"{where}: the shapes of {len(names)} tensors (e.g. '{names[0]}') could not be "
                       f"inferred, and running the model to measure them failed ({message}); "
                       "pass --input-shape for every input") from None
    return {name: tuple(int(d) for d in np.shape(v)) for name, v in zip(names, values)}
