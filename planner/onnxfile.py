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
    """The constant tensors of a model (initializers and ``Constant`` node values), read on demand.

    ``array(name)`` returns a numpy array; external data is memory-mapped, inline data is viewed
    without a copy where the type allows. ``shape(name)`` and ``dtype(name)`` need no data.
    """

    def __init__(self, graph: onnx.GraphProto, base_dir: Path | None, where: str):
        self.where = where
        self.base_dir = base_dir
        self.tensors: dict[str, TensorProto] = {t.name: t for t in graph.initializer}
        for node in graph.node:
            if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
                value = _constant_value(node)
                if value is not None:
                    self.tensors[node.output[0]] = value
        self._check_external_data()

    def __contains__(self, name: str) -> bool:
        return name in self.tensors

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(int(d) for d in self.tensors[name].dims)

    def size(self, name: str) -> int:
        n = 1
        for d in self.tensors[name].dims:
            n *= int(d)
        return n

    def nbytes(self, name: str) -> int:
        return self.size(name) * np.dtype(self.dtype(name)).itemsize

    def dtype(self, name: str):
        return helper.tensor_dtype_to_np_dtype(self.tensors[name].data_type)

    def array(self, name: str) -> np.ndarray:
        """The tensor's values (a read-only memory map for external data)."""
        tensor = self.tensors[name]
        if tensor.data_location == TensorProto.EXTERNAL:
            return self._memmap(tensor)
        shape = self.shape(name)
        dtype = np.dtype(self.dtype(name))
        if tensor.HasField("raw_data") and dtype.itemsize * 8 == _bits(tensor.data_type):
            return np.frombuffer(tensor.raw_data, dtype=dtype).reshape(shape)
        return numpy_helper.to_array(tensor)

    def _external(self, tensor: TensorProto) -> tuple[Path, int, int | None]:
        info = {e.key: e.value for e in tensor.external_data}
        if self.base_dir is None:
            raise MpqError(f"{self.where}: tensor '{tensor.name}' keeps its data in external file "
                           f"'{info.get('location')}'; pass the model's path instead of a ModelProto")
        length = int(info["length"]) if "length" in info else None
        return self.base_dir / info.get("location", ""), int(info.get("offset", 0)), length

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


def _constant_value(node: onnx.NodeProto) -> TensorProto | None:
    """The tensor a ``Constant`` node produces (value, or one of the value_* attributes)."""
    for attr in node.attribute:
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
