"""Chunking a stream in large segments whose chunks never straddle: content-defined (FastCDC, compiled),
and, inside the tensors of a checkpoint (regions a layout names), at fixed offsets from each tensor's start.

A tensor's chunk k covers bytes [k * max_size, (k + 1) * max_size) of that tensor wherever the tensor
sits in the file, so an unchanged tensor dedups even when everything before it moved, and chunk k of
a tensor lines up across versions. Tensors smaller than TENSOR_MIN, headers and pickles are cut by
content, each stretch between two tensors on its own.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator
from io import BufferedIOBase

from pyfastcdc import FastCDC

from .config import ChunkerParams
from .datatype import datatype

SEGMENT = 2 << 20  # small enough that a 40 MB file fills the pipeline, large enough to amortize its hand-offs
TENSOR_MIN = 64 << 10  # smaller tensors are chunked by content with their neighbours


def tensor_regions(layout, min_size: int = TENSOR_MIN) -> list[tuple[int, int, int]]:
    """(start, end, float width or 0) of each region of a layout cut at fixed offsets: those of at least
    min_size bytes. The width tells the codec to store the chunk by byte plane (floats only)."""
    from .tensorfiles import FLOATS, ITEMSIZE
    return [(start, end, ITEMSIZE[dtype] if dtype in FLOATS else 0)
            for start, end, dtype in layout.regions if end - start >= min_size]


@datatype(slots=True)
class Segment:
    """A run of the input: `data` holds whole chunks of the given lengths; `fresh` bytes were newly read.

    Its memory belongs to the Chunker's buffer pool: hand it back with Chunker.recycle once nothing
    reads `data` or `fresh` any more (until then no later segment reuses it).
    """

    data: memoryview
    lengths: list[int]
    fresh: memoryview
    buffer: bytearray
    widths: list[int] | None = None  # per chunk: the float width of a tensor chunk, or 0 (None: all 0)


class Chunker:
    def __init__(self, params: ChunkerParams):
        self.params = params
        # pyfastcdc's average is avg_size + min_size (cut-point skipping), so subtract the minimum.
        self._cdc = FastCDC(params.avg_size - params.min_size, min_size=params.min_size,
                            max_size=params.max_size, normalized_chunking=1)
        # segment buffers handed back by recycle(): reusing them spares zeroing and faulting in fresh
        # pages for every segment, which cost more time than chunking the bytes
        self._free: list[bytearray] = []

    def cut(self, data) -> list[int]:
        """Chunk lengths of a whole buffer."""
        return [c.length for c in self._cdc.cut_buf(data)] if len(data) else []

    def recycle(self, seg: Segment) -> None:
        """Return a segment's buffer to the pool; `seg` must not be read afterwards."""
        self._free.append(seg.buffer)

    def _buffer(self, size: int) -> bytearray:
        while self._free:
            buf = self._free.pop()
            if len(buf) >= size:
                return buf
        return bytearray(size)

    def segments(self, stream: BufferedIOBase, segment_size: int = SEGMENT, size_hint: int | None = None,
                 regions: list[tuple[int, int, int]] | None = None) -> Iterator[Segment]:
        """Chunk a stream: each Segment holds whole chunks; the cut points equal those of cutting the whole
        input at once. regions: sorted, disjoint (start, end, width) stretches cut at fixed offsets.

        size_hint (the expected length) only sizes the buffers: a small file gets a small one.
        """
        carry = b""
        base = 0  # offset in the stream of the buffer's first byte
        if size_hint is not None:
            segment_size = max(1, min(segment_size, size_hint + 1))  # +1: its end is seen in one read
        while True:
            buf = self._buffer(self.params.max_size + segment_size)
            buf[: len(carry)] = carry
            end = len(carry) + segment_size
            view = memoryview(buf)
            filled = len(carry)
            while filled < end:
                n = stream.readinto(view[filled:end])
                if not n:
                    break
                filled += n
            eof = filled < end
            fresh = view[len(carry):filled]
            if regions:
                lengths, widths = self._cut_regions(view[:filled], base, regions)
            else:
                lengths, widths = self.cut(view[:filled]), None
            if not eof and lengths:
                last = lengths.pop()  # may have been cut short by the segment's end: chunk it again next time
                if widths:
                    widths.pop()
                carry = bytes(view[filled - last: filled])
                filled -= last
            if lengths or len(fresh):
                yield Segment(view[:filled], lengths, fresh, buf, widths)
            else:
                self._free.append(buf)
            if eof:
                return
            base += filled

    def _cut_regions(self, view: memoryview, base: int, regions: list[tuple[int, int, int]]
                     ) -> tuple[list[int], list[int]]:
        """Chunk lengths and widths of a buffer starting at offset `base`: fixed cuts inside regions,
        content-defined cuts in each stretch between them."""
        step = self.params.max_size
        lengths: list[int] = []
        widths: list[int] = []
        pos, n = 0, len(view)
        r = bisect.bisect_right(regions, (base, float("inf"), 0)) - 1  # the last region starting at or before base
        r = max(r, 0)
        while pos < n:
            at = base + pos
            while r < len(regions) and regions[r][1] <= at:
                r += 1
            if r < len(regions) and regions[r][0] <= at:
                start, end, width = regions[r]
                stop = min(end, start + ((at - start) // step + 1) * step, base + n)
                lengths.append(stop - at)
                widths.append(width)
            else:
                stop = min(regions[r][0], base + n) if r < len(regions) else base + n
                cut = self.cut(view[pos:stop - base])
                lengths += cut
                widths += [0] * len(cut)
            pos = stop - base
        return lengths, widths
