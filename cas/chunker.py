"""Content-defined chunking (FastCDC, compiled) of a stream, in large segments whose chunks never straddle."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from io import BufferedIOBase

from pyfastcdc import FastCDC

from .config import ChunkerParams

SEGMENT = 2 << 20  # small enough that a 40 MB file fills the pipeline, large enough to amortize its hand-offs


@dataclass(slots=True)
class Segment:
    """A run of the input: `data` holds whole chunks of the given lengths; `fresh` bytes were newly read.

    Its memory belongs to the Chunker's buffer pool: hand it back with Chunker.recycle once nothing
    reads `data` or `fresh` any more (until then no later segment reuses it).
    """

    data: memoryview
    lengths: list[int]
    fresh: memoryview
    buffer: bytearray


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

    def segments(self, stream: BufferedIOBase, segment_size: int = SEGMENT, size_hint: int | None = None
                 ) -> Iterator[Segment]:
        """Chunk a stream: each Segment holds whole chunks; the cut points equal those of cut(whole input).

        size_hint (the expected length) only sizes the buffers: a small file gets a small one.
        """
        carry = b""
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
            lengths = self.cut(view[:filled])
            if not eof and lengths:
                last = lengths.pop()  # may have been cut short by the segment's end: chunk it again next time
                carry = bytes(view[filled - last: filled])
                filled -= last
            if lengths or len(fresh):
                yield Segment(view[:filled], lengths, fresh, buf)
            else:
                self._free.append(buf)
            if eof:
                return
