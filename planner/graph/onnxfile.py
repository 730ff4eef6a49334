"""Reading ONNX files: parse with clear errors, constant tensors, weights through memory maps.

The model is parsed without its weights: external data stays in its files, and large
initializers stored inside the ``.onnx`` file are left there too (the reader skips their bytes
and records their offsets, see :func:`read_model`). Weights are fetched one tensor at a time by
:class:`TensorStore` through ``numpy.memmap``, so that a multi-gigabyte model can be planned in
the memory of its largest tensor.
"""
from __future__ import annotations

import hashlib
import math
import mmap
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
from google.protobuf.message import DecodeError
from onnx import TensorProto, helper, numpy_helper

from planner.errors import MpqError

_HASH_CHUNK = 1 << 22


def read_model(model: str | os.PathLike | onnx.ModelProto, *,
               lazy_digest: bool = False, digest: bool = True
               ) -> tuple[onnx.ModelProto, Path | None, str | Callable[[], str] | None]:
    """Parse ``model`` (a path or a ModelProto) without loading external data.

    Returns the ModelProto, the folder that external data paths are relative to (None for a
    ModelProto given in memory) and the sha256 of the serialized model (the ``.onnx`` file's
    bytes; external data files are not hashed). With ``lazy_digest`` the file is hashed on a
    background thread while the caller goes on, and the digest comes as a function that waits
    for it (raising MpqError where the file could not be read to the end); without ``digest`` the
    file is not hashed and None comes back (a caller that only reads the graph). Initializers of a
    file whose ``raw_data`` is longer than ``_LEAVE_IN_FILE`` bytes come back as external data pointing into the file itself,
    so parsing costs the memory of the graph, not of the weights. Raises MpqError for a missing, unreadable or
    non-ONNX file.
    """
    if isinstance(model, onnx.ModelProto):
        _check_is_model(model, "the given ModelProto")
        return model, None, hashlib.sha256(model.SerializeToString(deterministic=True)).hexdigest() if digest else None
    path = Path(model)
    if not path.exists():
        raise MpqError(f"{path}: no such file; give the path of an .onnx model")
    if path.is_dir():
        raise MpqError(f"{path}: is a folder; give the path of an .onnx model file")
    if not path.is_file():  # a device or a pipe: /dev/zero would be read until memory runs out
        raise MpqError(f"{path}: is a device, pipe or socket, not a file; give the path of an .onnx model file")
    try:
        sha = (_sha256_in_background(path) if lazy_digest else _sha256(path)) if digest else None
        data = _lean_bytes(path)
        if data is None:
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
    return proto, path.parent, sha


def _sha256(path: Path) -> str:
    """The file's sha256, read in chunks (the page cache holds them, not this process)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _sha256_in_background(path: Path) -> Callable[[], str]:
    """Start hashing ``path`` on a daemon thread (hashlib releases the GIL while it hashes);
    returns a function that waits for the hex digest, whose ``running()`` says whether the thread
    still hashes. Raises OSError where the file cannot be opened; the function raises MpqError
    where reading it failed later."""
    import threading

    handle = open(path, "rb")
    result: dict[str, object] = {}

    def work() -> None:
        digest = hashlib.sha256()
        try:
            with handle:
                while chunk := handle.read(_HASH_CHUNK):
                    digest.update(chunk)
            result["digest"] = digest.hexdigest()
        except OSError as e:
            result["error"] = e

    thread = threading.Thread(target=work, name="mpq-sha256", daemon=True)
    thread.start()

    def wait() -> str:
        thread.join()
        if "error" in result:
            error = result["error"]
            raise MpqError(f"{path}: cannot be read ({getattr(error, 'strerror', None) or error})")
        return str(result["digest"])

    wait.running = thread.is_alive  # whether the hash still takes a CPU (see ModelInfo.hashing)
    return wait


# Initializers whose raw_data is longer than this stay in the file and are parsed as external
# data pointing into the .onnx file itself. Above 8 bytes x 4096 elements, so every such tensor
# has more elements than shape inference keeps (planner.graph.shapes._KEEP_ELEMENTS).
_LEAVE_IN_FILE = 8 * 4096


class _WireError(Exception):
    """The bytes are not the protobuf wire format mpq's lean reader expects."""


def _lean_bytes(path: Path) -> bytes | None:
    """The serialized model with the large initializers' raw_data left out of the bytes.

    Scans the protobuf wire format of the file through a memory map, reading only field headers
    (the weights' pages are never touched), and re-encodes ModelProto.graph with every large
    ``raw_data`` initializer turned into external data at its own offset in the ``.onnx`` file.
    Parsing those bytes needs the memory of the graph, not of the weights. Returns None where
    there is nothing to leave out or the bytes are not as expected (then the whole file is parsed,
    and a damaged file gets the parser's error).
    """
    if path.stat().st_size <= _LEAVE_IN_FILE:
        return None
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
        with memoryview(mapped) as view:
            try:
                out, changed = bytearray(), False
                for number, wire, start, begin, end in _fields(view, 0, len(view)):
                    if number == 7 and wire == 2:  # ModelProto.graph
                        graph, stripped = _lean_graph(view, begin, end, path.name)
                        changed |= stripped
                        out += _key(7, 2) + _varint_bytes(len(graph)) + graph
                    else:
                        out += view[start:end]
            except _WireError:
                return None
    return bytes(out) if changed else None


def _lean_graph(view, begin: int, end: int, location: str) -> tuple[bytearray, bool]:
    out, changed = bytearray(), False
    for number, wire, start, value, stop in _fields(view, begin, end):
        if number == 5 and wire == 2:  # GraphProto.initializer
            tensor = _lean_tensor(view, value, stop, location)
            if tensor is not None:
                out += _key(5, 2) + _varint_bytes(len(tensor)) + tensor
                changed = True
                continue
        out += view[start:stop]
    return out, changed


def _lean_tensor(view, begin: int, end: int, location: str) -> bytearray | None:
    """The TensorProto without its raw_data, which becomes external data at its offset in the
    file; None where the tensor keeps its bytes (small, or already external)."""
    fields = list(_fields(view, begin, end))
    raw = [f for f in fields if f[0] == 9 and f[1] == 2]  # raw_data
    if len(raw) != 1 or raw[0][4] - raw[0][3] <= _LEAVE_IN_FILE or any(f[0] in (13, 14) for f in fields):
        return None
    out = bytearray()
    for number, wire, start, value, stop in fields:
        if number != 9:
            out += view[start:stop]
    _, _, _, offset, stop = raw[0]
    for key, text in (("location", location), ("offset", str(offset)), ("length", str(stop - offset))):
        entry = _key(1, 2) + _varint_bytes(len(key.encode())) + key.encode()
        entry += _key(2, 2) + _varint_bytes(len(text.encode())) + text.encode()
        out += _key(13, 2) + _varint_bytes(len(entry)) + entry  # external_data
    out += _key(14, 0) + _varint_bytes(TensorProto.EXTERNAL)  # data_location
    return out


def _fields(view, begin: int, end: int):
    """(field number, wire type, start of the field, start of its value, end) of each field of
    the message in ``view[begin:end]``; raises _WireError for anything malformed."""
    pos = begin
    while pos < end:
        key, value = _varint(view, pos, end)
        number, wire = key >> 3, key & 7
        if wire == 0:
            _, stop = _varint(view, value, end)
        elif wire == 1:
            stop = value + 8
        elif wire == 2:
            length, value = _varint(view, value, end)
            stop = value + length
        elif wire == 5:
            stop = value + 4
        else:
            raise _WireError
        if number == 0 or stop > end:
            raise _WireError
        yield number, wire, pos, value, stop
        pos = stop


def _varint(view, pos: int, end: int) -> tuple[int, int]:
    result, shift = 0, 0
    while pos < end and shift < 64:
        byte = view[pos]
        result |= (byte & 0x7F) << shift
        pos += 1
        if byte < 0x80:
            return result, pos
        shift += 7
    raise _WireError


def _varint_bytes(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _key(number: int, wire: int) -> bytes:
    return _varint_bytes(number << 3 | wire)


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
        """The dimensions of the stored or computed tensor ``name`` (a computed one whose shape
        inference left open is evaluated: MpqError where it cannot be)."""
        if name in self.tensors:
            return tuple(int(d) for d in self.tensors[name].dims)
        return self._type(name)[0]

    def size(self, name: str) -> int:
        """The number of elements of the tensor ``name`` (see :meth:`shape`)."""
        n = 1
        for d in self.shape(name):
            n *= int(d)
        return n

    def nbytes(self, name: str) -> int:
        """The bytes of the tensor ``name`` unpacked in its numpy dtype (see :meth:`shape`)."""
        return self.size(name) * np.dtype(self.dtype(name)).itemsize

    def dtype(self, name: str):
        """The numpy dtype of the tensor ``name`` (see :meth:`shape`)."""
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

    def stream(self, name: str) -> "FileTensor | None":
        """The stored tensor ``name`` as a :class:`FileTensor` (read in chunks from its file, never
        memory-mapped) where it is external data of one element per item; None otherwise (use
        :meth:`array`). A front-to-back pass over a streamed tensor costs a copy of each chunk
        into a buffer that stays in the cache; over a fresh memory map, a page fault per few pages."""
        tensor = self.tensors.get(name)
        if tensor is None or tensor.data_location != TensorProto.EXTERNAL:
            return None
        dtype = np.dtype(helper.tensor_dtype_to_np_dtype(tensor.data_type))
        shape = tuple(int(d) for d in tensor.dims)
        if dtype.itemsize * 8 != _bits(tensor.data_type) or not shape or 0 in shape:
            return None
        path, offset, _ = self._external(tensor)
        return FileTensor(path, offset, dtype, shape)

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
        values = {i: np.asarray(self.array(i)) for i in feeds}
        try:
            return np.asarray(evaluator.run(None, values)[0])
        except (ValueError, IndexError) as e:  # the model's ops fail on its constants (shapes that do not fit)
            raise MpqError(f"{self.where}: the weight '{name}' is computed by ops that fail on the model's "
                           f"constants ({_first_line(e)}); the model is broken, export it again") from None

    def _external(self, tensor: TensorProto) -> tuple[Path, int, int | None]:
        """(file, offset, length or None) of a tensor's external data. Raises MpqError for a
        ModelProto without a folder, an offset or length that is not a whole number >= 0, and a
        location that is absolute or leaves the model's folder by '..' (as onnx's own loader
        refuses). The check is on the path as written: the model and its data may be symbolic
        links (as in the Hugging Face cache)."""
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
        relative = os.path.normpath(location) if location else ""
        if not relative or os.path.isabs(relative) or relative == ".." or relative.startswith(".." + os.sep):
            raise MpqError(f"{self.where}: tensor '{tensor.name}' points its external data at '{location}', "
                           f"which is not a file inside the model's folder {self.base_dir}; refusing to read it "
                           "(keep the data file next to the model)")
        return self.base_dir / relative, numbers["offset"] or 0, numbers["length"]

    def _check_external_data(self) -> None:
        for tensor in self.tensors.values():
            if tensor.data_location != TensorProto.EXTERNAL:
                continue
            path, offset, length = self._external(tensor)
            if not path.is_file():
                raise MpqError(f"{self.where}: external data file '{path.name}' of tensor '{tensor.name}' "
                               f"not found in {path.parent}; put it next to the model")
            data_bytes = (self.size(tensor.name) * _bits(tensor.data_type) + 7) // 8
            if length is not None and length < data_bytes:
                raise MpqError(f"{self.where}: tensor '{tensor.name}' holds {length} bytes of data but its "
                               f"shape {list(self.shape(tensor.name))} needs {data_bytes}; the model is damaged, "
                               "export it again")
            need = offset + data_bytes
            if path.stat().st_size < need:
                raise MpqError(f"{self.where}: external data file '{path.name}' is shorter than tensor "
                               f"'{tensor.name}' needs ({path.stat().st_size} < {need} bytes); copy it again")

    def _check_types(self) -> None:
        """MpqError for a tensor whose data type is not an ONNX type, whose dimensions are negative,
        or whose inline data (``raw_data`` bytes, or the values of a typed field such as
        ``float_data``) is not exactly what its dimensions need (a shape of 2^31 x 2^31 over a few
        bytes would be taken at its word, e.g. allocated as zeros)."""
        for tensor in self.tensors.values():
            try:
                helper.tensor_dtype_to_np_dtype(tensor.data_type)
            except KeyError:
                raise MpqError(f"{self.where}: tensor '{tensor.name}' has data type {tensor.data_type}, which "
                               "is not an ONNX tensor type; the model is damaged, export it again") from None
            dims = [int(d) for d in tensor.dims]
            if any(d < 0 for d in dims):
                raise MpqError(f"{self.where}: tensor '{tensor.name}' has negative dimensions {dims}; the model is "
                               "damaged, export it again")
            if tensor.data_location == TensorProto.EXTERNAL:
                continue
            if tensor.HasField("raw_data") and tensor.data_type != TensorProto.STRING:
                held, need, unit = len(tensor.raw_data), (math.prod(dims) * _bits(tensor.data_type) + 7) // 8, "bytes"
            else:  # one typed field holds the values, several elements to an entry for complex and packed types
                held = sum(len(getattr(tensor, f)) for f in _TYPED_FIELDS)
                per_entry = 8 // _bits(tensor.data_type) if _bits(tensor.data_type) < 8 else 1
                need, unit = -(-math.prod(dims) * _COMPLEX.get(tensor.data_type, 1) // per_entry), "values"
            if held != need:
                raise MpqError(f"{self.where}: tensor '{tensor.name}' holds {held} {unit} of data but its shape "
                               f"{dims} needs {need}; the model is damaged, export it again")

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


class FileTensor:
    """A tensor stored in a file (``shape`` items of ``dtype`` from byte ``offset``), read in
    chunks by :meth:`chunks` or whole by ``numpy.asarray``. Holds no data and no open file."""

    def __init__(self, path: Path, offset: int, dtype: np.dtype, shape: tuple[int, ...]):
        self.path, self.offset, self.dtype, self.shape = Path(path), int(offset), np.dtype(dtype), tuple(shape)
        self.size = int(np.prod(shape, dtype=np.int64))
        self.ndim = len(shape)

    def chunks(self, size: int):
        """Flat float32 chunks of at most ``size`` elements, in order. Each chunk is a view of one
        reused buffer: it is valid until the next one is produced (copy it to keep it).
        Raises MpqError where the file ends early."""
        items = max(1, min(size, self.size))
        raw = np.empty(items, self.dtype)
        converted = raw if self.dtype == np.float32 else np.empty(items, np.float32)
        with open(self.path, "rb", buffering=0) as f:
            f.seek(self.offset)
            for start in range(0, self.size, items):
                n = min(items, self.size - start)
                view = memoryview(raw[:n]).cast("B")
                got = f.readinto(view)
                while got and got < len(view):  # a short read: read the rest
                    more = f.readinto(view[got:])
                    got += more or 0
                    if not more:
                        break
                if got != len(view):
                    raise MpqError(f"{self.path}: ends inside a tensor's data; copy the file again")
                if converted is not raw:
                    np.copyto(converted[:n], raw[:n], casting="unsafe")
                yield converted[:n]

    def read_into(self, buffer: np.ndarray) -> np.ndarray:
        """The whole tensor read into ``buffer`` (a flat array of ``self.dtype`` with at least
        ``self.size`` items, e.g. one reused across tensors so that no fresh memory is touched);
        returns the view ``buffer[:size]`` in the tensor's shape. Raises MpqError where the file
        ends early."""
        values = buffer[:self.size]
        view = memoryview(values).cast("B")
        with open(self.path, "rb", buffering=0) as f:
            f.seek(self.offset)
            got = 0
            while got < len(view) and (more := f.readinto(view[got:])):
                got += more
        if got != len(view):
            raise MpqError(f"{self.path}: ends inside a tensor's data; copy the file again")
        return values.reshape(self.shape)

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        values = np.fromfile(self.path, dtype=self.dtype, count=self.size, offset=self.offset).reshape(self.shape)
        return values if dtype is None else values.astype(dtype, copy=False)


# The TensorProto fields that hold values in their own type, and the entries per complex element.
_TYPED_FIELDS = ("float_data", "int32_data", "string_data", "int64_data", "double_data", "uint64_data")
_COMPLEX = {TensorProto.COMPLEX64: 2, TensorProto.COMPLEX128: 2}


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


def model_inputs(model: str | Path) -> dict[str, tuple]:
    """The ONNX ``model``'s graph inputs that are not initializers: name -> (numpy dtype or None
    where the model leaves it open, dims), each dim an int (fixed) or None (symbolic, or <= 0 as
    some exporters write unknown ones). MpqError for a missing or non-ONNX file."""
    graph = read_model(model, digest=False)[0].graph  # the graph only: no hash of the file
    stored = {t.name for t in graph.initializer}
    out = {}
    for value in graph.input:
        if value.name in stored:
            continue
        tensor = value.type.tensor_type
        dims = tuple(d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None for d in tensor.shape.dim)
        out[value.name] = (helper.tensor_dtype_to_np_dtype(tensor.elem_type) if tensor.elem_type else None, dims)
    return out
