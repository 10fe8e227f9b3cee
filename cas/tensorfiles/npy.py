"""NumPy's .npy (a magic, a small dict literal, then the array) and .npz (a zip of .npy members)."""

from __future__ import annotations

import ast
import struct

from . import zipdir
from .layout import ITEMSIZE, Layout, NotALayout, Tensor, check_regions, numel

MAGIC = b"\x93NUMPY"
MAX_NPY_HEADER = 1 << 16
# numpy's type strings (little-endian or byte-sized) → safetensors' dtype names
DESCR = {"<f2": "F16", "<f4": "F32", "<f8": "F64", "<i2": "I16", "<i4": "I32", "<i8": "I64", "<u2": "U16",
         "<u4": "U32", "<u8": "U64", "|i1": "I8", "|u1": "U8", "|b1": "BOOL", "<c8": "C64", "<c16": "C128"}


def looks_like(head: bytes) -> bool:
    return head[:6] == MAGIC


def _array(read, start: int, size: int, name: str) -> Tensor:
    """The array of the .npy bytes at [start, start + size) of the file."""
    head = bytes(read(start, min(start + 12, start + size)))
    if len(head) < 10 or head[:6] != MAGIC or head[6] not in (1, 2, 3):
        raise NotALayout("not a .npy array")
    if head[6] == 1:
        (n,) = struct.unpack_from("<H", head, 8)
        body = 10
    else:
        if len(head) < 12:
            raise NotALayout("truncated .npy header")
        (n,) = struct.unpack_from("<I", head, 8)
        body = 12
    if n > MAX_NPY_HEADER or body + n > size:
        raise NotALayout(".npy header out of bounds")
    try:
        text = bytes(read(start + body, start + body + n)).decode("latin-1" if head[6] < 3 else "utf-8")
        info = ast.literal_eval(text)  # literals only: nothing is called
    except (ValueError, SyntaxError, MemoryError, RecursionError, UnicodeDecodeError):
        raise NotALayout(".npy header is not a literal") from None
    if not isinstance(info, dict):
        raise NotALayout(".npy header is not a dict")
    descr, shape, fortran = info.get("descr"), info.get("shape"), info.get("fortran_order")
    if (descr not in DESCR or not isinstance(shape, tuple) or len(shape) > 64
            or any(type(d) is not int or d < 0 for d in shape) or type(fortran) is not bool):
        raise NotALayout("not a plain numeric array")
    dtype = DESCR[descr]
    data = start + body + n
    nbytes = numel(shape) * ITEMSIZE[dtype]
    if data + nbytes != start + size:
        raise NotALayout(".npy data size does not match its shape")
    if fortran:
        shape = tuple(reversed(shape))  # its bytes are the transpose's, in C order
    return Tensor(name, dtype, shape, data, nbytes)


def parse_npy(read, size: int) -> Layout:
    tensor = _array(read, 0, size, "array")
    return Layout("npy", (tensor,), check_regions([(tensor.offset, tensor.end, tensor.dtype)], size))


def parse_npz(read, size: int) -> Layout:
    tensors = []
    for m in zipdir.members(read, size):
        if m.method != zipdir.STORED or not m.name.endswith(".npy"):
            raise NotALayout("a compressed or non-array member")  # savez_compressed: left to CDC
        tensors.append(_array(read, m.offset, m.size, m.name[:-4]))
    regions = check_regions([(t.offset, t.end, t.dtype) for t in tensors if t.size], size)
    return Layout("npz", tuple(sorted(tensors, key=lambda t: t.offset)), regions)
