"""Reads a GGUF file's container: its metadata as Python values and its tensors as arrays mapped
from the file, untouched until used.

gguf's own GGUFReader builds a numpy view for every element of every metadata array: for a
262,144-token vocabulary that is about 700 MB in passing and, through heap fragmentation, some 200
MB that stays with the process. This reads the same layout (the GGUF v2/v3 specification) with one
pass over the metadata; the gguf package still supplies the type tables and the dequantization,
and tests/model/test_gguf_loader.py checks the result against GGUFReader's.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gguf
import numpy as np

from rillet.model.errors import ModelLoadError

_MAGIC = b"GGUF"
_DEFAULT_ALIGNMENT = 32
_V = gguf.GGUFValueType
_SCALARS = {_V.UINT8: "<B", _V.INT8: "<b", _V.UINT16: "<H", _V.INT16: "<h", _V.UINT32: "<I", _V.INT32: "<i",
            _V.FLOAT32: "<f", _V.BOOL: "<?", _V.UINT64: "<Q", _V.INT64: "<q", _V.FLOAT64: "<d"}
# The tensor types whose data is typed elements; the others are rows of blocks, as uint8.
_ELEMENT_TYPES = {gguf.GGMLQuantizationType.F32: np.float32, gguf.GGMLQuantizationType.F16: np.float16,
                  gguf.GGMLQuantizationType.F64: np.float64, gguf.GGMLQuantizationType.I8: np.int8,
                  gguf.GGMLQuantizationType.I16: np.int16, gguf.GGMLQuantizationType.I32: np.int32,
                  gguf.GGMLQuantizationType.I64: np.int64}


@dataclass(slots=True)
class GGUFTensor:
    name: str
    tensor_type: gguf.GGMLQuantizationType
    shape: tuple[int, ...]  # torch order: GGUF lists dimensions innermost first
    data: np.ndarray  # as stored: typed for F32/F16, else rows of quantized blocks as uint8


@dataclass(slots=True)
class GGUFFile:
    path: Path
    metadata: dict[str, Any]
    tensors: list[GGUFTensor]

    def get(self, key: str, default: Any = None) -> Any:
        return self.metadata.get(key, default)


class _Truncated(Exception):
    pass


class _Cursor:
    """Reads little-endian values from a buffer, front to back."""

    def __init__(self, buffer) -> None:
        self.buffer = buffer
        self.offset = 0

    def scalar(self, fmt: str) -> Any:
        size = struct.calcsize(fmt)
        if self.offset + size > len(self.buffer):
            raise _Truncated
        (value,) = struct.unpack_from(fmt, self.buffer, self.offset)
        self.offset += size
        return value

    def string(self) -> str:
        length = self.scalar("<Q")
        end = self.offset + length
        if end > len(self.buffer):
            raise _Truncated
        text = str(self.buffer[self.offset:end], "utf-8")
        self.offset = end
        return text

    def strings(self, count: int) -> list[str]:
        buffer, offset, unpack, items = self.buffer, self.offset, struct.Struct("<Q").unpack_from, []
        try:
            for _ in range(count):
                (length,) = unpack(buffer, offset)
                offset += 8
                if offset + length > len(buffer):
                    raise _Truncated
                items.append(str(buffer[offset:offset + length], "utf-8"))
                offset += length
        except struct.error:
            raise _Truncated from None
        self.offset = offset
        return items

    def value(self, kind: int) -> Any:
        kind = _V(kind)
        if kind == _V.STRING:
            return self.string()
        if kind == _V.ARRAY:
            item_kind, count = _V(self.scalar("<I")), self.scalar("<Q")
            if item_kind in _SCALARS:  # numbers: one read for the whole array
                dtype = np.dtype(_SCALARS[item_kind])
                end = self.offset + count * dtype.itemsize
                if end > len(self.buffer):
                    raise _Truncated
                items = np.frombuffer(self.buffer, dtype, count, self.offset).tolist()
                self.offset = end
                return items
            if item_kind == _V.STRING:
                return self.strings(count)
            return [self.value(item_kind) for _ in range(count)]
        return self.scalar(_SCALARS[kind])


def open_gguf(path: str | Path) -> GGUFFile:
    path = Path(path)
    if not path.is_file():
        raise ModelLoadError(f"model file not found: {path}")
    try:
        mapped = np.memmap(path, dtype=np.uint8, mode="r")
        return GGUFFile(path, *_read(memoryview(mapped), mapped))
    except ModelLoadError:
        raise
    except _Truncated:
        raise ModelLoadError(f"{path} is not a readable GGUF file (truncated)") from None
    except (ValueError, OverflowError, struct.error) as error:
        raise ModelLoadError(f"{path} is not a readable GGUF file ({' '.join(str(error).split())})") from None


def _read(buffer: memoryview, mapped: np.ndarray) -> tuple[dict[str, Any], list[GGUFTensor]]:
    cursor = _Cursor(buffer)
    if bytes(buffer[:4]) != _MAGIC:
        raise ValueError("no GGUF magic number")
    cursor.offset = 4
    version = cursor.scalar("<I")
    if version not in (2, 3):
        raise ValueError(f"GGUF version {version} is not supported (2 and 3 are; big-endian files are not)")
    num_tensors, num_fields = cursor.scalar("<Q"), cursor.scalar("<Q")
    metadata = {}
    for _ in range(num_fields):
        key = cursor.string()
        metadata[key] = cursor.value(cursor.scalar("<I"))
    infos = []
    for _ in range(num_tensors):
        name = cursor.string()
        dims = [cursor.scalar("<Q") for _ in range(cursor.scalar("<I"))]
        type_id = cursor.scalar("<I")
        try:
            kind = gguf.GGMLQuantizationType(type_id)
        except ValueError:
            raise ModelLoadError(f"tensor {name} has unknown GGML type id {type_id}") from None
        infos.append((name, kind, dims, cursor.scalar("<Q")))
    alignment = int(metadata.get("general.alignment", _DEFAULT_ALIGNMENT))
    start = -(-cursor.offset // alignment) * alignment
    tensors, names = [], set()
    for name, kind, dims, offset in infos:
        if name in names:
            raise ValueError(f"tensor {name} appears twice")
        names.add(name)
        shape = tuple(reversed(dims))
        block_size, type_size = gguf.GGML_QUANT_SIZES[kind]
        count = int(np.prod(dims, dtype=np.int64))
        if kind in _ELEMENT_TYPES:
            dtype, stored = np.dtype(_ELEMENT_TYPES[kind]), shape
        else:
            dtype, stored = np.dtype(np.uint8), gguf.quants.quant_shape_to_byte_shape(shape, kind)
        size = count * type_size // block_size
        begin = start + offset
        if begin + size > len(mapped):
            raise _Truncated
        data = mapped[begin:begin + size].view(dtype).reshape(stored)
        tensors.append(GGUFTensor(name, kind, shape, data))
    return metadata, tensors
