"""The members of a zip archive (torch.save files, .npz) and where each one's bytes are, from the
central directory and local headers; zip64 included. Nothing is decompressed."""

from __future__ import annotations

import struct

from ..datatype import datatype
from .layout import MAX_HEADER, MAX_TENSORS, NotALayout

_EOCD = struct.Struct("<4sHHHHIIH")  # signature, disk, cd disk, entries here, entries, cd size, cd offset, comment
_EOCD64_LOCATOR = struct.Struct("<4sIQI")
_EOCD64 = struct.Struct("<4sQHHIIQQQQ")
_CENTRAL = struct.Struct("<4sHHHHHHIIIHHHHHII")
_LOCAL = struct.Struct("<4sHHHHHIIIHH")
STORED = 0


@datatype(frozen=True, slots=True)
class Member:
    name: str
    offset: int  # of its data in the archive
    size: int  # stored bytes
    method: int  # 0: stored (its bytes are the member's bytes)


def looks_like(head: bytes) -> bool:
    return head[:4] == b"PK\x03\x04"


def members(read, size: int) -> list[Member]:
    """Every member of the archive, in central-directory order; NotALayout if anything is off."""
    tail_start = max(0, size - (1 << 16) - _EOCD.size)
    tail = bytes(read(tail_start, size))
    at = tail.rfind(b"PK\x05\x06")
    if at < 0 or at + _EOCD.size > len(tail):
        raise NotALayout("no end of central directory")
    _, _, _, _, count, cd_size, cd_offset, _ = _EOCD.unpack_from(tail, at)
    if 0xFFFFFFFF in (cd_size, cd_offset) or count == 0xFFFF:  # zip64: the real values are in its record
        loc = at - _EOCD64_LOCATOR.size
        if loc < 0:
            raise NotALayout("zip64 locator missing")
        sig, _, eocd64, _ = _EOCD64_LOCATOR.unpack_from(tail, loc)
        if sig != b"PK\x06\x07" or not 0 <= eocd64 <= size - _EOCD64.size:
            raise NotALayout("zip64 locator damaged")
        sig, _, _, _, _, _, _, count, cd_size, cd_offset = _EOCD64.unpack(bytes(read(eocd64, eocd64 + _EOCD64.size)))
        if sig != b"PK\x06\x06":
            raise NotALayout("zip64 record damaged")
    if count > MAX_TENSORS * 2 or cd_size > MAX_HEADER or cd_offset + cd_size > size:
        raise NotALayout("central directory out of bounds")
    cd = bytes(read(cd_offset, cd_offset + cd_size))
    out, pos = [], 0
    for _ in range(count):
        if pos + _CENTRAL.size > len(cd):
            raise NotALayout("central directory truncated")
        sig, _, _, flags, method, _, _, _, csize, usize, nlen, xlen, clen, _, _, _, local = \
            _CENTRAL.unpack_from(cd, pos)
        if sig != b"PK\x01\x02" or flags & 1:  # encrypted members are not tensors
            raise NotALayout("central directory entry damaged")
        name_raw = cd[pos + _CENTRAL.size: pos + _CENTRAL.size + nlen]
        extra = cd[pos + _CENTRAL.size + nlen: pos + _CENTRAL.size + nlen + xlen]
        csize, usize, local = _zip64(extra, usize, csize, local)
        pos += _CENTRAL.size + nlen + xlen + clen
        if local + _LOCAL.size > size:
            raise NotALayout("local header out of bounds")
        lsig, *_, lnlen, lxlen = _LOCAL.unpack(bytes(read(local, local + _LOCAL.size)))
        if lsig != b"PK\x03\x04":
            raise NotALayout("local header damaged")
        start = local + _LOCAL.size + lnlen + lxlen
        if start + csize > size or (method == STORED and csize != usize):
            raise NotALayout("member out of bounds")
        try:
            name = name_raw.decode("utf-8")
        except UnicodeDecodeError:
            raise NotALayout("member name is not UTF-8") from None
        out.append(Member(name, start, csize, method))
    return out


def _zip64(extra: bytes, usize: int, csize: int, local: int) -> tuple[int, int, int]:
    """(compressed size, size, local header offset), the 0xFFFFFFFF ones taken from the zip64 extra field."""
    pos = 0
    while pos + 4 <= len(extra):
        tag, n = struct.unpack_from("<HH", extra, pos)
        body = extra[pos + 4: pos + 4 + n]
        if tag == 1:
            values, k = [], 0
            for field in (usize, csize, local):
                if field == 0xFFFFFFFF:
                    if k + 8 > len(body):
                        raise NotALayout("zip64 extra field truncated")
                    field = struct.unpack_from("<Q", body, k)[0]
                    k += 8
                values.append(field)
            usize, csize, local = values
        pos += 4 + n
    return csize, usize, local
