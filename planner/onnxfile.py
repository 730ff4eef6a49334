"""Reading ONNX files: parse with clear errors, constant tensors, weights through memory maps.

The model is parsed without its external data. Weights stay where they are (inside the
protobuf, or in external data files, read through ``numpy.memmap``) and are fetched one tensor
at a time by :class:`TensorStore`, so that a multi-gigabyte model can be planned in the memory
of its largest tensor.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import onnx
from google.protobuf.message import DecodeError
from onnx import TensorProto, helper, numpy_helper

from .errors import MpqError

_HASH_CHUNK = 1 << 22


def read_model(model: str | os.PathLike | onnx.ModelProto) -> tuple[onnx.ModelProto, Path | None, str]:
    """Parse ``model`` (a path or a ModelProto) without loading external data.

    Returns the ModelProto, the folder that external data paths are relative to (None for a
    ModelProto given in memory) and the sha256 of the serialized model (the ``.onnx`` file's
    bytes; external data files are not hashed). Raises MpqError for a missing, unreadable or
    non-ONNX file.
    """
    if isinstance(model, onnx.ModelProto):
        digest = hashlib.sha256(model.SerializeToString(deterministic=True)).hexdigest()
        _check_is_model(model, "the given ModelProto")
        return model, None, digest
    path = Path(model)
    if not path.exists():
        raise MpqError(f"{path}: no such file; give the path of an .onnx model")
    if path.is_dir():
        raise MpqError(f"{path}: is a folder; give the path of an .onnx model file")
    try:
        data = path.read_bytes()
    except OSError as e:
        raise MpqError(f"{path}: cannot be read ({e.strerror})") from None
    proto = onnx.ModelProto()
    try:
        proto.ParseFromString(data)
    except (DecodeError, ValueError, RuntimeError) as e:
        raise MpqError(
            f"{path}: not a valid ONNX model (protobuf parse failed: {e}); the file is truncated "
            "or not ONNX, export it again") from None
    _check_is_model(proto, str(path))
    digest = hashlib.sha256(data).hexdigest()
    return proto, path.parent, digest


def _check_is_model(proto: onnx.ModelProto, where: str) -> None:
    if proto.ir_version <= 0 or not proto.HasField("graph") or not proto.graph.node:
        raise MpqError(f"{where}: not an ONNX model (no IR version or no graph nodes); "
                       "the file is truncated or not ONNX, export it again")
    if not proto.opset_import:
        raise MpqError(f"{where}: ONNX model without opset_import; the file is damaged, export it again")


class TensorStore:
    """The constant tensors of a model, read on demand: stored ones (initializers and ``Constant``
    node values) and computed ones (outputs of ops whose inputs are all constant, registered with
    :meth:`add_computed`).

    ``array(name)`` returns a numpy array; external data is memory-mapped, inline data is viewed
    without a copy where the type allows, and a computed tensor is evaluated from the stored
    tensors it depends on each time it is asked for (nothing is cached, so a big model is read
    one weight at a time). ``shape``, ``size`` and ``dtype`` need no data for stored tensors and
    for computed ones whose type shape inference resolved; other computed tensors are evaluated
    once to learn them (the values are dropped).
    """

    def __init__(self, graph: onnx.GraphProto, base_dir: Path | None, where: str):
        self.where = where
        self.base_dir = base_dir
        self.tensors: dict[str, TensorProto] = {t.name: t for t in graph.initializer}
        for node in graph.node:
            if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
                value = _constant_value(node, where)
                if value is not None:
                    self.tensors[node.output[0]] = value
        self._computed: dict[str, onnx.NodeProto] = {}
        self._types: dict[str, tuple[tuple[int, ...], np.dtype]] = {}
        self._opsets: list[onnx.OperatorSetIdProto] = []
        self._check_types()
        self._check_external_data()

    def add_computed(self, producers: dict[str, onnx.NodeProto], names: set[str],
                     types: dict[str, tuple[tuple[int, ...], int] | None],
                     opsets: list[onnx.OperatorSetIdProto]) -> None:
        """Register the constant tensors ``names`` that are not stored: each is computed by
        ``producers[name]`` from other constant tensors. ``types[name]`` is its (shape, ONNX
        elem type) where shape inference resolved it; ``opsets`` evaluate the ops."""
        for name, node in producers.items():  # in the producers' (topological) order
            if name in names and name not in self.tensors:
                self._computed[name] = node
                known = types.get(name)
                if known is not None and known[1]:
                    self._types[name] = (tuple(known[0]), np.dtype(helper.tensor_dtype_to_np_dtype(known[1])))
        self._opsets = list(opsets)

    def __contains__(self, name: str) -> bool:
        return name in self.tensors or name in self._computed

    def is_stored(self, name: str) -> bool:
        """True for an initializer or ``Constant`` value, False for a computed tensor."""
        return name in self.tensors

    def shape(self, name: str) -> tuple[int, ...]:
        if name in self.tensors:
            return tuple(int(d) for d in self.tensors[name].dims)
        return self._type(name)[0]

    def size(self, name: str) -> int:
        n = 1
        for d in self.shape(name):
            n *= int(d)
        return n

    def nbytes(self, name: str) -> int:
        return self.size(name) * np.dtype(self.dtype(name)).itemsize

    def dtype(self, name: str):
        if name in self.tensors:
            return helper.tensor_dtype_to_np_dtype(self.tensors[name].data_type)
        return self._type(name)[1]

    def array(self, name: str) -> np.ndarray:
        """The tensor's values (a read-only memory map for external data, a fresh array for a
        computed tensor). Raises MpqError where a computed tensor cannot be evaluated."""
        if name in self._computed:
            return self._evaluate(name)
        tensor = self.tensors[name]
        if tensor.data_location == TensorProto.EXTERNAL:
            return self._memmap(tensor)
        shape = self.shape(name)
        dtype = np.dtype(self.dtype(name))
        try:
            if tensor.HasField("raw_data") and dtype.itemsize * 8 == _bits(tensor.data_type):
                return np.frombuffer(tensor.raw_data, dtype=dtype).reshape(shape)
            return numpy_helper.to_array(tensor)
        except ValueError as e:  # data that does not fit the dims
            raise MpqError(f"{self.where}: tensor '{name}' cannot be read ({_first_line(e)}); "
                           "the model is damaged, export it again") from None

    def _type(self, name: str) -> tuple[tuple[int, ...], np.dtype]:
        if name not in self._types:
            value = self._evaluate(name)
            self._types[name] = (tuple(int(d) for d in value.shape), value.dtype)
        return self._types[name]

    def _evaluate(self, name: str) -> np.ndarray:
        """Evaluate the computed tensor ``name`` with ONNX's reference evaluator on the
        subgraph of computed tensors it depends on, fed with the stored tensors it reads."""
        from onnx.reference import ReferenceEvaluator

        nodes, stack, seen = [], [name], set()
        while stack:
            node = self._computed.get(stack.pop())
            if node is None or id(node) in seen:
                continue
            seen.add(id(node))
            nodes.append(node)
            stack.extend(i for i in node.input if i)
        order = {id(n): k for k, n in enumerate(self._computed.values())}
        nodes.sort(key=lambda n: order[id(n)])
        feeds = sorted({i for n in nodes for i in n.input if i and i in self.tensors})
        graph = helper.make_graph(nodes, "constant", [helper.make_empty_tensor_value_info(i) for i in feeds],
                                  [helper.make_empty_tensor_value_info(name)])
        model = helper.make_model(graph, opset_imports=self._opsets)
        try:
            evaluator = ReferenceEvaluator(model)
        except NotImplementedError as e:  # an op the reference evaluator does not implement
            raise MpqError(f"{self.where}: the weight '{name}' is computed by ops mpq cannot evaluate "
                           f"({_first_line(e)}); fold the constants first (e.g. onnxsim)") from None
        return np.asarray(evaluator.run(None, {i: np.asarray(self.array(i)) for i in feeds})[0])

    def _external(self, tensor: TensorProto) -> tuple[Path, int, int | None]:
        """(file, offset, length or None) of a tensor's external data. Raises MpqError for a
        ModelProto without a folder, an offset or length that is not a whole number >= 0, and a
        location that is absolute or leaves the model's folder (as onnx's own loader refuses)."""
        info = {e.key: e.value for e in tensor.external_data}
        location = info.get("location", "")
        if self.base_dir is None:
            raise MpqError(f"{self.where}: tensor '{tensor.name}' keeps its data in external file "
                           f"'{location}'; pass the model's path instead of a ModelProto")
        numbers = {}
        for key in ("offset", "length"):
            text = info.get(key)
            if text is not None and not (text.isascii() and text.isdigit()):
                raise MpqError(f"{self.where}: tensor '{tensor.name}' has external-data {key} '{text}', which is "
                               "not a whole number of bytes; the model is damaged, export it again")
            numbers[key] = int(text) if text is not None else None
        folder = self.base_dir.resolve()
        path = (folder / location).resolve()
        if not location or Path(location).is_absolute() or not path.is_relative_to(folder):
            raise MpqError(f"{self.where}: tensor '{tensor.name}' points its external data at '{location}', "
                           f"which is not a file inside the model's folder {folder}; refusing to read it "
                           "(keep the data file next to the model)")
        return path, numbers["offset"] or 0, numbers["length"]

    def _check_external_data(self) -> None:
        for tensor in self.tensors.values():
            if tensor.data_location != TensorProto.EXTERNAL:
                continue
            path, offset, length = self._external(tensor)
            if not path.is_file():
                raise MpqError(f"{self.where}: external data file '{path.name}' of tensor '{tensor.name}' "
                               f"not found in {path.parent}; put it next to the model")
            need = offset + (length if length is not None else self.nbytes(tensor.name))
            if path.stat().st_size < need:
                raise MpqError(f"{self.where}: external data file '{path.name}' is shorter than tensor "
                               f"'{tensor.name}' needs ({path.stat().st_size} < {need} bytes); copy it again")

    def _check_types(self) -> None:
        for tensor in self.tensors.values():
            try:
                helper.tensor_dtype_to_np_dtype(tensor.data_type)
            except KeyError:
                raise MpqError(f"{self.where}: tensor '{tensor.name}' has data type {tensor.data_type}, which "
                               "is not an ONNX tensor type; the model is damaged, export it again") from None

    def _memmap(self, tensor: TensorProto) -> np.ndarray:
        path, offset, _ = self._external(tensor)
        dtype = np.dtype(helper.tensor_dtype_to_np_dtype(tensor.data_type))
        shape = tuple(int(d) for d in tensor.dims)
        if dtype.itemsize * 8 != _bits(tensor.data_type):  # packed 4-bit types: read and unpack
            loaded = TensorProto()
            loaded.CopyFrom(tensor)
            onnx.external_data_helper.load_external_data_for_tensor(loaded, str(self.base_dir))
            return numpy_helper.to_array(loaded)
        if not shape or 0 in shape:
            return np.zeros(shape, dtype)
        return np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape)


def _bits(data_type: int) -> int:
    if data_type in (TensorProto.INT4, TensorProto.UINT4, getattr(TensorProto, "FLOAT4E2M1", -1)):
        return 4
    if data_type in (getattr(TensorProto, "INT2", -1), getattr(TensorProto, "UINT2", -1)):
        return 2
    return np.dtype(helper.tensor_dtype_to_np_dtype(data_type)).itemsize * 8


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _constant_value(node: onnx.NodeProto, where: str) -> TensorProto | None:
    """The tensor a ``Constant`` node produces (value, or one of the value_* attributes).
    Raises MpqError for a ``sparse_value``, which mpq does not read."""
    for attr in node.attribute:
        if attr.name == "sparse_value":
            raise MpqError(f"{where}: Constant '{node.output[0]}' holds a sparse_value, which mpq does not "
                           "read; store it as a dense tensor (onnx.numpy_helper.from_array) and export again")
        if attr.name == "value":
            tensor = TensorProto()
            tensor.CopyFrom(attr.t)
            tensor.name = node.output[0]
            return tensor
        if attr.name in ("value_float", "value_floats", "value_int", "value_ints"):
            value = helper.get_attribute_value(attr)
            dtype = np.float32 if "float" in attr.name else np.int64
            return numpy_helper.from_array(np.array(value, dtype=dtype), node.output[0])
    return None
