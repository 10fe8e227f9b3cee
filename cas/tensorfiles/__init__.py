"""Where the tensors are in a checkpoint file: safetensors, torch.save zip archives, .npy and .npz.

Parsing never executes anything and never imports torch or numpy: headers are decoded with size
limits, a torch pickle is walked opcode by opcode (cas/tensorfiles/torchzip.py). A file whose
header lies in any way (offsets past the end, overlapping tensors, sizes that do not match the
shape, an unknown pickle construct) has no layout: it is stored by content-defined chunks, byte
for byte, like any other file. A layout is only a hint for where to cut and how to compress;
every chunk is still named by the BLAKE3 of its bytes.
"""

from __future__ import annotations

from . import npy, safetensors, torchzip, zipdir
from .layout import FLOATS, ITEMSIZE, Layout, NotALayout, Tensor

__all__ = ["FLOATS", "ITEMSIZE", "Layout", "NotALayout", "Tensor", "read_layout"]


def read_layout(read, size: int) -> Layout | None:
    """The layout of a file of `size` bytes whose ranges read(start, end) returns, or None: not a
    tensor format, or a header that does not describe the file (then it is only bytes)."""
    head = bytes(read(0, min(size, 16)))
    try:
        if safetensors.looks_like(head):
            return safetensors.parse(read, size)
        if npy.looks_like(head):
            return npy.parse_npy(read, size)
        if zipdir.looks_like(head):
            try:
                return torchzip.parse(read, size)
            except NotALayout:
                return npy.parse_npz(read, size)
    except NotALayout:
        return None
    return None
