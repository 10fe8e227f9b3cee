"""safetensors: an 8-byte little-endian header length, a JSON header, then the tensors' bytes."""

from __future__ import annotations

import json
import struct

from .layout import ITEMSIZE, MAX_HEADER, MAX_TENSORS, Layout, NotALayout, Tensor, check_regions, numel


def looks_like(head: bytes) -> bool:
    return len(head) >= 10 and head[8:9] == b"{"


def parse(read, size: int) -> Layout:
    """The layout of a safetensors file of `size` bytes; read(start, end) returns a range of it."""
    if size < 10:
        raise NotALayout("too short")
    (n,) = struct.unpack("<Q", read(0, 8))
    if not 2 <= n <= min(MAX_HEADER, size - 8):
        raise NotALayout("header length out of bounds")
    try:
        header = json.loads(bytes(read(8, 8 + n)))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise NotALayout("header is not JSON") from None
    if not isinstance(header, dict) or len(header) > MAX_TENSORS:
        raise NotALayout("header is not an object")
    base = 8 + n
    tensors = []
    for name, info in header.items():
        if name == "__metadata__":
            continue
        if not isinstance(info, dict):
            raise NotALayout(f"tensor {name!r:.60} is not an object")
        dtype, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
        if (dtype not in ITEMSIZE or not isinstance(shape, list) or len(shape) > 64
                or any(type(d) is not int or d < 0 for d in shape)
                or not isinstance(offsets, list) or len(offsets) != 2 or any(type(o) is not int for o in offsets)):
            raise NotALayout(f"tensor {name!r:.60} is malformed")
        begin, end = offsets
        if not 0 <= begin <= end or end - begin != numel(shape) * ITEMSIZE[dtype]:
            raise NotALayout(f"tensor {name!r:.60}: its offsets do not match its shape")
        tensors.append(Tensor(name, dtype, tuple(shape), base + begin, end - begin))
    tensors.sort(key=lambda t: (t.offset, t.name))
    regions = check_regions([(t.offset, t.end, t.dtype) for t in tensors if t.size], size)
    return Layout("safetensors", tuple(tensors), regions)


def metadata(read, size: int) -> dict[str, str]:
    """The header's __metadata__ (str → str), or {}."""
    (n,) = struct.unpack("<Q", read(0, 8))
    header = json.loads(bytes(read(8, 8 + n)))
    meta = header.get("__metadata__") if isinstance(header, dict) else None
    return {str(k): str(v) for k, v in meta.items()} if isinstance(meta, dict) else {}
