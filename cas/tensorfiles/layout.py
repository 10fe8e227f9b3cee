"""Tensors and layouts: what a checkpoint file holds where (the parsers' shared vocabulary)."""

from __future__ import annotations

from ..datatype import datatype

# element sizes, by the dtype names safetensors uses (the names `cas show` prints)
ITEMSIZE = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1, "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
            "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8, "C64": 8, "C128": 16}
FLOATS = {"F16", "BF16", "F32", "F64"}  # what the float codec groups by byte plane
MAX_HEADER = 100 << 20  # the largest header or pickle parsed; a larger one is not a layout
MAX_TENSORS = 1 << 20


class NotALayout(ValueError):
    """The file is not one of the formats, or its header does not describe its bytes."""


@datatype(frozen=True, slots=True)
class Tensor:
    name: str
    dtype: str  # as safetensors spells it
    shape: tuple[int, ...]
    offset: int  # of its first byte in the file
    size: int  # bytes
    contiguous: bool = True  # False: a strided view (torch); its bytes are not one range

    @property
    def end(self) -> int:
        return self.offset + self.size

    def to_dict(self) -> dict:
        out = {"name": self.name, "dtype": self.dtype, "shape": list(self.shape), "offset": self.offset,
               "size": self.size}
        if not self.contiguous:
            out["contiguous"] = False
        return out


@datatype(frozen=True, slots=True)
class Layout:
    """A file's format and its tensors. `regions` are the byte ranges holding tensor data, sorted
    and disjoint (views of one storage share one region), each with the element size of its dtype."""

    format: str
    tensors: tuple[Tensor, ...]
    regions: tuple[tuple[int, int, str], ...]  # (start, end, dtype)


def numel(shape) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def check_regions(regions: list[tuple[int, int, str]], file_size: int) -> tuple[tuple[int, int, str], ...]:
    """Sorted, disjoint regions inside the file, or NotALayout."""
    out = sorted(regions)
    previous_end = 0
    for start, end, dtype in out:
        if not 0 <= start <= end <= file_size or start < previous_end:
            raise NotALayout("tensor data overlaps or lies outside the file")
        if dtype not in ITEMSIZE or (end - start) % ITEMSIZE[dtype]:
            raise NotALayout("tensor data is not a whole number of elements")
        previous_end = end
    return tuple(out)
