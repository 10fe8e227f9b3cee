"""Content-defined chunking (FastCDC, compiled) of a stream, in large segments whose chunks never straddle."""

from __future__ import annotations

from dataclasses import dataclass
from typing import BinaryIO, Iterator

from pyfastcdc import FastCDC

from .config import ChunkerParams

SEGMENT = 8 << 20


@dataclass(slots=True)
class Segment:
    """A run of the input: `data` holds whole chunks of the given lengths; `fresh` bytes were newly read."""

    data: memoryview
    lengths: list[int]
    fresh: memoryview


class Chunker:
    def __init__(self, params: ChunkerParams):
        self.params = params
        # pyfastcdc's average is avg_size + min_size (cut-point skipping), so subtract the minimum.
        self._cdc = FastCDC(params.avg_size - params.min_size, min_size=params.min_size,
                            max_size=params.max_size, normalized_chunking=1)

    def cut(self, data) -> list[int]:
        """Chunk lengths of a whole buffer."""
        return [c.length for c in self._cdc.cut_buf(data)] if len(data) else []

    def segments(self, stream: BinaryIO, segment_size: int = SEGMENT) -> Iterator[Segment]:
        """Chunk a stream: each Segment holds whole chunks; the cut points equal those of cut(whole input)."""
        carry = b""
        while True:
            buf = bytearray(len(carry) + segment_size)
            buf[: len(carry)] = carry
            view = memoryview(buf)
            filled = len(carry)
            while filled < len(buf):
                n = stream.readinto(view[filled:])
                if not n:
                    break
                filled += n
            eof = filled < len(buf)
            fresh = view[len(carry):filled]
            lengths = self.cut(view[:filled])
            if not eof and lengths:
                last = lengths.pop()  # may have been cut short by the segment's end: chunk it again next time
                carry = bytes(view[filled - last: filled])
                filled -= last
            if lengths or len(fresh):
                yield Segment(view[:filled], lengths, fresh)
            if eof:
                return
