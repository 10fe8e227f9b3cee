"""Chunk compression: zstd at the store's level, raw when compression does not pay; float tensors by byte
plane (PLANES); bounded decompression.

A PLANES blob holds a chunk of floats of `width` bytes each, split into its byte planes (byte i of every
element together): the exponent bytes, which compress well, apart from the mantissa bytes, which
mostly do not. Elements are first rotated left by one bit, so the sign leaves the exponent's byte and
the exponent fills one byte. Each plane is stored raw or as one zstd frame, whichever is smaller.
The frame, byte by byte (docs/format.md): version 1, width (2, 4 or 8), transform (1: rotate left
by one bit), a zero byte, then per plane its coder (0 raw, 1 zstd) and stored length (u32 LE), then
the planes in order. numpy does the splitting and joining (imported on first use).
"""

from __future__ import annotations

import struct
import threading

import zstandard

from .errors import IntegrityError

RAW = 0
ZSTD = 1
PLANES = 2
DELTA = 3
CODECS = (RAW, ZSTD, PLANES, DELTA)
MAX_DELTA_DEPTH = 3  # a chunk decodes through at most this many bases
DELTA_GAIN = 0.9  # a delta is kept only when at most this share of the chunk stored alone
# a delta at most this share of what its base chain's copy stored alone takes is kept without storing
# the chunk alone to compare (the same tensor piece a few steps back compresses about as well)
CLEAR_GAIN = 0.8
DELTA_VERSION = 1
SUB, XOR = 1, 2  # delta transforms: integer difference of bit patterns (zigzag), or XOR
_DELTA_HEAD = struct.Struct("<BBBB32sB")  # version, transform, width, depth, base id, inner codec
PLANES_VERSION = 1
PLANE_CODERS = {0: "raw", 1: "zstd"}
MAX_PLANE_ENTROPY = 7.9  # bits per byte; a plane above it is stored raw without trying zstd
ENTROPY_STRIDE = 16  # the entropy is estimated on every 16th byte (a uniform plane then reads ~7.97 bits)
ROTATE = 1
_PLANES_HEAD = struct.Struct("<BBBB")
_PLANE = struct.Struct("<BI")
_UINT = {2: "<u2", 4: "<u4", 8: "<u8"}

_local = threading.local()


def _compressor(level: int) -> zstandard.ZstdCompressor:
    cache = getattr(_local, "compressors", None)
    if cache is None:
        cache = _local.compressors = {}
    if level not in cache:
        # the frame records its size: decompression then runs in one call into a buffer of that size,
        # about 1.5x faster than streaming into a bounded one (sizes are checked before, see decompress)
        cache[level] = zstandard.ZstdCompressor(level=level, write_content_size=True)
    return cache[level]


def _plane_compressor() -> zstandard.ZstdCompressor:
    """zstd tuned for a byte plane: the plane's statistics are what compress (Huffman-coded literals), not
    repeats, so matches shorter than 7 bytes are not looked for and the match table is tiny. On a
    bf16 exponent plane this stores 13 % less than level 1, at 3.8x its speed (docs/benchmarks.md)."""
    c = getattr(_local, "plane_compressor", None)
    if c is None:
        params = zstandard.ZstdCompressionParameters(strategy=zstandard.STRATEGY_FAST, min_match=7, window_log=17,
                                                     hash_log=6, chain_log=6, search_log=1, target_length=0,
                                                     write_content_size=True)
        c = _local.plane_compressor = zstandard.ZstdCompressor(compression_params=params)
    return c


def _decompressor() -> zstandard.ZstdDecompressor:
    d = getattr(_local, "decompressor", None)
    if d is None:
        d = _local.decompressor = zstandard.ZstdDecompressor()
    return d


def compress(data, level: int) -> tuple[int, bytes]:
    """(codec, stored bytes) for raw `data`; zstd only when it is smaller. Thread-safe."""
    packed = _compressor(level).compress(data)
    if len(packed) < len(data):
        return ZSTD, packed
    return RAW, bytes(data)


def compress_planes(data, width: int, level: int) -> tuple[int, bytes]:
    """(codec, stored bytes) of a chunk of `width`-byte floats: PLANES, or RAW if that is no smaller
    (`level` is for chunks that are not floats after all)."""
    return compress_planes_many([data], width, level)[0]


def compress_planes_many(chunks: list, width: int, level: int) -> list[tuple[int, bytes]]:
    """compress_planes of each chunk, the numpy work done once for them all: their elements are rotated
    and split into planes in one pass, and each chunk's plane is a slice of the whole plane."""
    import numpy as np
    def floats(c) -> bool:
        return width in _UINT and len(c) % width == 0 and len(c) > 0
    if not all(floats(c) for c in chunks):  # a chunk that is not whole elements (or empty) is stored by zstd
        return [compress_planes_many([c], width, level)[0] if floats(c) else compress(c, level) for c in chunks]
    uint = np.dtype(_UINT[width]).type
    values = np.frombuffer(b"".join(chunks), dtype=uint) if len(chunks) > 1 else np.frombuffer(chunks[0], dtype=uint)
    rotated = np.left_shift(values, uint(1))
    np.bitwise_or(rotated, values >> uint(8 * width - 1), out=rotated)
    as_bytes = rotated.view(np.uint8).reshape(-1, width)  # little-endian: byte i of each element is plane i
    planes = [np.ascontiguousarray(as_bytes[:, i]) for i in range(width)]
    out, start = [], 0
    for chunk in chunks:
        n = len(chunk) // width
        head = [_PLANES_HEAD.pack(PLANES_VERSION, width, ROTATE, 0)]
        bodies: list = []
        for whole_plane in planes:
            plane = whole_plane[start:start + n]
            packed = _plane_compressor().compress(plane.data) if _compressible(plane) else None
            coder, body = (1, packed) if packed is not None and len(packed) < n else (0, plane)
            head.append(_PLANE.pack(coder, len(body)))
            bodies.append(body)
        start += n
        stored = b"".join(head + bodies)
        out.append((PLANES, stored) if len(stored) < len(chunk) else (RAW, bytes(chunk)))
    return out


def _compressible(plane) -> bool:
    """Whether zstd may shrink a plane: no, when its bytes are near uniform (low mantissa bytes), for
    zstd's literal coder cannot go below their order-0 entropy; such a plane is stored raw untried."""
    import numpy as np
    sample = plane[::ENTROPY_STRIDE] if len(plane) >= 256 * ENTROPY_STRIDE else plane  # 8K bytes of a 128 KiB plane
    counts = np.bincount(sample, minlength=256)
    p = counts[counts > 0] / len(sample)
    return float(-(p * np.log2(p)).sum()) < MAX_PLANE_ENTROPY


def _decompress_planes(stored, raw_len: int, *, name: str) -> bytes:
    import numpy as np
    stored = memoryview(stored)
    if len(stored) < _PLANES_HEAD.size:
        raise IntegrityError(f"truncated plane frame in {name}", subject=name)
    version, width, transform, _ = _PLANES_HEAD.unpack_from(stored)
    if version != PLANES_VERSION or width not in _UINT or transform != ROTATE or raw_len % width:
        raise IntegrityError(f"unknown plane frame (version {version}, width {width}) in {name}", subject=name)
    n = raw_len // width
    pos = _PLANES_HEAD.size + width * _PLANE.size
    if len(stored) < pos:
        raise IntegrityError(f"truncated plane frame in {name}", subject=name)
    planes = []
    for i in range(width):
        coder, length = _PLANE.unpack_from(stored, _PLANES_HEAD.size + i * _PLANE.size)
        body = stored[pos:pos + length]
        if len(body) != length:
            raise IntegrityError(f"truncated plane frame in {name}", subject=name)
        if coder not in PLANE_CODERS:
            raise IntegrityError(f"plane {i} of {name} uses coder {coder}, which this cas cannot decode: upgrade cas",
                                 subject=name)
        if coder == RAW and length != n:
            raise IntegrityError(f"size mismatch in plane {i} of {name}: {length} bytes, expected {n}", subject=name)
        plane = body if coder == RAW else decompress(coder, body, n, name=f"plane {i} of {name}")
        planes.append(np.frombuffer(plane, dtype=np.uint8))
        pos += length
    if pos != len(stored):
        raise IntegrityError(f"plane frame of {name} has {len(stored) - pos} extra bytes", subject=name)
    uint = np.dtype(_UINT[width]).type
    rotated = np.stack(planes, axis=1).view(uint).reshape(-1)  # plane i back as byte i of each element
    values = np.right_shift(rotated, uint(1))
    np.bitwise_or(values, rotated << uint(8 * width - 1), out=values)
    return values.tobytes()


def encode_delta(data, base_raw: bytes, base_id: bytes, base_depth: int, width: int, level: int) -> bytes | None:
    """A DELTA frame of `data` against the chunk base_raw, or None if there can be none (the base is
    as deep as a base may be, or another size): the integer difference of each element's bit pattern
    from the base's, zigzag-coded (small moves give small numbers whatever their sign), then stored by
    byte plane. Whether it pays is the caller's call (delta_pays)."""
    import numpy as np
    if base_depth >= MAX_DELTA_DEPTH or len(base_raw) != len(data) or width not in _UINT or len(data) % width:
        return None
    uint = np.dtype(_UINT[width]).type
    signed = np.dtype(_UINT[width].replace("u", "i")).type
    diff = np.frombuffer(data, dtype=uint) - np.frombuffer(base_raw, dtype=uint)  # wraps: exact both ways
    zigzag = (diff << uint(1)) ^ (diff.view(signed) >> signed(8 * width - 1)).view(uint)
    inner_codec, inner = compress_planes(zigzag.view(np.uint8), width, level)
    return _DELTA_HEAD.pack(DELTA_VERSION, SUB, width, base_depth + 1, base_id, inner_codec) + inner


def delta_pays(frame_len: int, plain_len: int) -> bool:
    """Whether a delta frame is worth keeping over the chunk stored alone in plain_len bytes."""
    return frame_len <= DELTA_GAIN * plain_len


def delta_base(stored, *, name: str) -> tuple[bytes, int]:
    """(base id, depth) a DELTA frame names; IntegrityError if its head is not one this cas writes."""
    if len(stored) < _DELTA_HEAD.size:
        raise IntegrityError(f"truncated delta frame in {name}", subject=name)
    version, transform, width, depth, base_id, inner = _DELTA_HEAD.unpack_from(stored)
    if version != DELTA_VERSION or transform != SUB or width not in _UINT or not 1 <= depth <= MAX_DELTA_DEPTH \
            or inner not in (RAW, ZSTD, PLANES):
        raise IntegrityError(f"unknown delta frame (version {version}, transform {transform}, depth {depth}) in "
                             f"{name}: upgrade cas if it is newer", subject=name)
    return base_id, depth


def delta_width(stored, *, name: str) -> int:
    """The element width a DELTA frame records."""
    delta_base(stored, name=name)
    return _DELTA_HEAD.unpack_from(stored)[2]


def decode_delta(stored, raw_len: int, base_raw: bytes, *, name: str) -> bytes:
    """The chunk a DELTA frame rebuilds from its base's raw bytes (the caller checks the result's hash)."""
    import numpy as np
    delta_base(stored, name=name)
    _, _, width, _, _, inner = _DELTA_HEAD.unpack_from(stored)
    if len(base_raw) != raw_len or raw_len % width:
        raise IntegrityError(f"delta of {name} does not fit its base", subject=name)
    zigzag = np.frombuffer(decompress(inner, memoryview(stored)[_DELTA_HEAD.size:], raw_len, name=name),
                           dtype=_UINT[width])
    uint = np.dtype(_UINT[width]).type
    diff = (zigzag >> uint(1)) ^ (uint(0) - (zigzag & uint(1)))
    return (np.frombuffer(base_raw, dtype=uint) + diff).tobytes()


def decompress(codec: int, stored, raw_len: int, *, name: str) -> bytes:
    """The raw bytes, never more than raw_len of output; IntegrityError if the shape is wrong.

    The caller bounds raw_len (a chunk by the largest chunk size, a manifest, footer or index object
    by its own maximum): nothing here allocates more than raw_len, or copies a raw blob of another size.
    """
    if type(raw_len) is not int or raw_len < 0:
        raise IntegrityError(f"bad raw length {raw_len!r} of {name}", subject=name)
    if codec == RAW:
        if len(stored) != raw_len:
            raise IntegrityError(f"size mismatch in {name}: {len(stored)} bytes, expected {raw_len}", subject=name)
        return bytes(stored)
    if codec == PLANES:
        return _decompress_planes(stored, raw_len, name=name)
    if codec == DELTA:  # decoded by the reader, which reads the base (cas/restore.py)
        raise IntegrityError(f"{name} is a delta; read it through a chunk reader", subject=name)
    if codec != ZSTD:
        raise IntegrityError(f"unknown codec {codec!r} in {name}", subject=name)
    try:
        declared = zstandard.frame_content_size(stored)  # -1: not recorded (blobs of earlier versions)
        if declared not in (-1, raw_len):  # refuse before allocating what a damaged header claims
            raise IntegrityError(f"size mismatch in {name}: frame declares {declared} bytes, expected {raw_len}",
                                 subject=name)
        out = _decompressor().decompress(stored, max_output_size=raw_len, allow_extra_data=False)
    except zstandard.ZstdError as exc:
        raise IntegrityError(f"corrupt compressed data in {name}: {exc}", subject=name) from None
    if len(out) != raw_len:
        raise IntegrityError(f"size mismatch in {name}: {len(out)} bytes, expected {raw_len}", subject=name)
    return out
