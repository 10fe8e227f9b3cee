"""Chunk compression: zstd at the store's level, raw when compression does not pay; float tensors by byte
plane (PLANES); bounded decompression.

A PLANES blob holds a chunk of floats of `width` bytes each, split into its byte planes (byte i of every
element together): the exponent bytes, which compress well, apart from the mantissa bytes, which
mostly do not. Elements are first rotated left by one to three bits, so the sign leaves the exponent's
byte: by one, the exponent fills the top byte; by two or three, its top bits (the same in almost every
weight) go to the bottom byte, which zstd then codes in fewer bits, and the top mantissa bits, whose
odds depend on the exponent, join it in the top byte (a BF16 chunk of weights: 66.3 -> 65.7 % of raw).
The writer picks the rotation that zstd stores smallest on a sample. Each plane is stored raw or as
one zstd frame, whichever is smaller.
The frame, byte by byte (docs/format.md): version (1, or 2 when planes are in context order), width
(2, 4 or 8), transform (1, 2 or 3: rotate left by that many bits), context (0 in version 1; 1: the
delta base's exponent bytes, in a frame inside a delta frame), then per plane its coder (0 raw,
1 zstd) and stored length (u32 LE), then the planes in order. In version 2 the elements are in context
order: sorted, stably, by their base element's exponent byte, so the differences from base elements
of one exponent sit together and zstd, ending a block where the exponent changes, gives each run its
own Huffman table. numpy does the splitting, sorting and joining (imported on first use; a process
that reads a few chunks joins them without it, see _join_planes).
"""

from __future__ import annotations

import functools
import struct
import sys
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
# the chunk alone to compare (the same tensor piece a few steps back compresses about as well): the same
# gain as DELTA_GAIN, measured against that copy (docs/design.md, step-delta invariant 4)
CLEAR_GAIN = 0.9
DELTA_VERSION = 1
SUB, XOR = 1, 2  # delta transforms: integer difference of bit patterns (zigzag), or XOR
_DELTA_HEAD = struct.Struct("<BBBB32sB")  # version, transform, width, depth, base id, inner codec
PLANES_VERSION = 1
CONTEXT_VERSION = 2  # a planes frame with planes in context order
NO_CONTEXT, BASE_CONTEXT = 0, 1  # what orders a frame's planes: nothing, or the delta base's exponent bytes
PLANE_CODERS = {0: "raw", 1: "zstd"}
# a 4-byte float's differences whose sampled mean bit length (zigzag-coded) reaches this are as large as
# its 23-bit mantissa: on full fine-tunes every such chunk's delta took more than 0.93x the chunk alone
# (Adam's exp_avg two steps on: 22.2-24.8 bits), every delta that paid had at most 19.3
LARGE_MOVE_BITS = {4: 22.0}
SMALL_MOVES = 0.97  # share of sampled differences below 2^(8w-9) (zigzag-coded) for the base's exponent order
MIN_BLOCK = 2048  # elements of one context run at least this long get a zstd block (a Huffman table) of their own
MAX_PLANE_ENTROPY = 7.9  # bits per byte; a plane above it is stored raw without trying zstd
ENTROPY_STRIDE = 16  # the entropy is estimated on every 16th byte (a uniform plane then reads ~7.97 bits)
ROTATE = 1  # transform t of a planes frame: elements rotated left by t bits, t in ROTATIONS
ROTATIONS = (1, 2, 3)
ROTATION_SAMPLE = 8192  # elements of a batch of chunks the rotation is picked on (fewer favour rotating by one)
_PLANES_HEAD = struct.Struct("<BBBB")
_PLANE = struct.Struct("<BI")
_UINT = {2: "<u2", 4: "<u4", 8: "<u8"}
_FORMAT = {2: "H", 4: "I", 8: "Q"}  # the same as memoryview formats (native order, little-endian where it matters)
PLAIN_JOIN_BYTES = 16 << 20  # planes a process joins before it imports numpy for them (_join_planes)
_plain_join_left = PLAIN_JOIN_BYTES

_local = threading.local()


def _load_kernels():
    """cas._planes (cas/_planes.c), the compiled kernels that split, join and difference planes in one
    pass each without the GIL, where the install could build them; None: numpy does the same work."""
    if sys.byteorder != "little":  # the kernels load elements in host order
        return None
    try:
        from . import _planes
    except ImportError:
        return None
    return _planes


_kernels = _load_kernels()


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
    """compress_planes of each chunk, all split with the one rotation picked on a sample of their
    elements together."""
    def floats(c) -> bool:
        return width in _UINT and len(c) % width == 0 and len(c) > 0
    if not all(floats(c) for c in chunks):  # a chunk that is not whole elements (or empty) is stored by zstd
        return [compress_planes_many([c], width, level)[0] if floats(c) else compress(c, level) for c in chunks]
    rotation = _rotation(_sample(chunks, width), width)
    out = []
    for chunk in chunks:
        stored = _planes_frame(_split(chunk, width, rotation), rotation=rotation)
        out.append((PLANES, stored) if len(stored) < len(chunk) else (RAW, bytes(chunk)))
    return out


def _sample(chunks: list, width: int) -> bytes:
    """About ROTATION_SAMPLE elements of the chunks taken as one array, evenly spaced from its first."""
    total = sum(len(c) for c in chunks) // width
    step, start, parts = max(1, total // ROTATION_SAMPLE), 0, []
    for chunk in chunks:
        if _kernels is not None:
            parts.append(_kernels.gather(chunk, width, (-start) % step, step))
        else:
            elements = memoryview(chunk).cast("B").cast(_FORMAT[width])  # type: ignore[call-overload]
            parts.append(elements[(-start) % step::step].tobytes())
        start += len(chunk) // width
    return b"".join(parts)


def _rotation(sample: bytes, width: int) -> int:
    """The rotation whose planes zstd stores smallest on a sample of the elements (ties: the smallest).
    Only the top and bottom planes are compared: the bits a rotation moves leave one for the other,
    and the planes between hold mantissa bits whichever the rotation."""
    if len(sample) < 1024 * width:
        return ROTATE
    costs = []
    for rotation in ROTATIONS:
        planes = _split(sample, width, rotation)
        costs.append(sum(min(len(_plane_compressor().compress(plane)), len(plane))
                         for plane in (planes[0], planes[-1])))
    return ROTATIONS[costs.index(min(costs))]


def _split(data, width: int, rotation: int = ROTATE) -> list[memoryview]:
    """The byte planes of the elements rotated left by `rotation` bits (by one, plane width-1 is the
    exponent's byte)."""
    if _kernels is not None:
        return _plane_views(_kernels.split(data, width, rotation), width)
    import numpy as np
    return [memoryview(plane) for plane in _rotated_planes(np.frombuffer(data, dtype=_UINT[width]), width, rotation)]


def _plane_views(planes: bytes, width: int) -> list[memoryview]:
    """The `width` planes a kernel returned one after the other, each as a view."""
    n, view = len(planes) // width, memoryview(planes)
    return [view[i * n:(i + 1) * n] for i in range(width)]


def _rotated_planes(values, width: int, rotation: int = ROTATE) -> list:
    """_split in numpy, of the elements as an array."""
    import numpy as np
    uint = np.dtype(_UINT[width]).type
    rotated = np.left_shift(values, uint(rotation))
    np.bitwise_or(rotated, values >> uint(8 * width - rotation), out=rotated)
    # little-endian: byte i of each element is plane i, all planes in one strided copy (for 4-byte floats
    # 2.5x faster than shifting out each byte into a fresh array: 780 -> 1,960 MB/s on 8 MiB batches)
    return list(np.ascontiguousarray(rotated.view(np.uint8).reshape(-1, width).T))


def _planes_frame(planes: list[memoryview], runs: list[int] | None = None, *, rotation: int = ROTATE) -> bytes:
    """A planes frame of these planes (of elements rotated by `rotation` bits): version 1, or, given the
    ends of the runs of a context order the elements are in, version 2 with a zstd block ended at each."""
    n = len(planes[0])
    head: list[bytes] = []
    bodies: list[bytes | memoryview] = []
    for plane in planes:
        packed = None
        if _compressible(plane):
            packed = _plane_compressor().compress(plane) if runs is None else _blocks(plane, runs)
        coder, body = (ZSTD, packed) if packed is not None and len(packed) < n else (RAW, plane)
        head.append(_PLANE.pack(coder, len(body)))
        bodies.append(body)
    version, context = (PLANES_VERSION, NO_CONTEXT) if runs is None else (CONTEXT_VERSION, BASE_CONTEXT)
    return b"".join([_PLANES_HEAD.pack(version, len(planes), rotation, context), *head, *bodies])


def _runs(counts: list[int]) -> list[int]:
    """Where the blocks of a plane in context order end: after each context value's run (counts: the
    elements of each), runs shorter than MIN_BLOCK joined to the next (the last block is at least
    MIN_BLOCK too, when it can be)."""
    ends, start, pos, total = [], 0, 0, sum(counts)
    for count in counts:
        if not count:
            continue
        pos += count
        if pos - start >= MIN_BLOCK and total - pos >= MIN_BLOCK:
            ends.append(pos)
            start = pos
    ends.append(total)
    return ends


def _blocks(plane: memoryview, ends: list[int]) -> bytes:
    """One zstd frame of the plane, declaring its size, a block ended at each of `ends`."""
    packer = _plane_compressor().compressobj(size=len(plane))
    out, start = [], 0
    for end in ends:
        out.append(packer.compress(plane[start:end]))
        out.append(packer.flush(zstandard.COMPRESSOBJ_FLUSH_BLOCK))
        start = end
    out.append(packer.flush())
    return b"".join(out)


def _compressible(plane: memoryview) -> bool:
    """Whether zstd may shrink a plane: no, when its bytes are near uniform (low mantissa bytes), for
    zstd's literal coder cannot go below their order-0 entropy; such a plane is stored raw untried."""
    stride = ENTROPY_STRIDE if len(plane) >= 256 * ENTROPY_STRIDE else 1  # 8K bytes of a 128 KiB plane
    if _kernels is not None:
        return _kernels.entropy(plane, stride) < MAX_PLANE_ENTROPY
    import numpy as np
    counts = np.bincount(np.frombuffer(plane, dtype=np.uint8)[::stride], minlength=256)
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log2(p)).sum()) < MAX_PLANE_ENTROPY


def _decompress_planes(stored, raw_len: int, *, name: str) -> bytes:
    """The chunk a planes frame (not inside a delta frame) holds."""
    planes, width, transform, source = _read_planes(stored, raw_len, name=name)
    if source != NO_CONTEXT:
        raise IntegrityError(f"plane frame of {name} is ordered by a delta base it was not given", subject=name)
    return _join_planes(planes, width, transform)


def _read_planes(stored, raw_len: int, *, name: str) -> tuple[list, int, int, int]:
    """(planes, width, transform, context) of a planes frame, each plane decompressed and checked to be
    raw_len / width bytes long."""
    stored = memoryview(stored)
    if len(stored) < _PLANES_HEAD.size:
        raise IntegrityError(f"truncated plane frame in {name}", subject=name)
    version, width, transform, source = _PLANES_HEAD.unpack_from(stored)
    known = (version, source) in ((PLANES_VERSION, NO_CONTEXT), (CONTEXT_VERSION, BASE_CONTEXT))
    if not known or width not in _UINT or transform not in ROTATIONS or raw_len % width:
        raise IntegrityError(f"unknown plane frame (version {version}, width {width}, transform {transform}, "
                             f"context {source}) in {name}: upgrade cas if it is newer", subject=name)
    n = raw_len // width
    pos = _PLANES_HEAD.size + width * _PLANE.size
    if len(stored) < pos:
        raise IntegrityError(f"truncated plane frame in {name}", subject=name)
    bodies = []
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
        bodies.append((coder, body))
        pos += length
    if pos != len(stored):
        raise IntegrityError(f"plane frame of {name} has {len(stored) - pos} extra bytes", subject=name)
    planes = [body if coder == RAW else decompress(ZSTD, body, n, name=f"plane {i} of {name}")
              for i, (coder, body) in enumerate(bodies)]
    return planes, width, transform, source


def _join_planes(planes: list, width: int, transform: int, base=None) -> bytes:
    """The elements whose byte planes these are (plane i: byte i of each), rotated back right by
    `transform` bits; given a base, the planes are in the base's exponent order and are put back in
    their own. Without the kernels, a process that has not imported numpy joins its first
    PLAIN_JOIN_BYTES without it (_join_plain: about what importing numpy costs, 60 ms), so reading one
    tensor does not pay for it; a reader of more than that says so first (will_decode)."""
    global _plain_join_left
    if _kernels is not None and base is None:
        return _kernels.join(planes, width, transform)
    if base is None and "numpy" not in sys.modules and _plain_join_left >= len(planes[0]) * width:
        _plain_join_left -= len(planes[0]) * width
        return _join_plain(planes, width, transform)
    import numpy as np
    uint = np.dtype(_UINT[width]).type
    rotated, part, spare = _scratch(np, uint, len(planes[0]))
    np.copyto(rotated, np.frombuffer(planes[0], dtype=np.uint8))
    for i in range(1, width):  # plane i back as byte i of each element
        np.copyto(part, np.frombuffer(planes[i], dtype=np.uint8))
        np.left_shift(part, uint(8 * i), out=part)
        np.bitwise_or(rotated, part, out=rotated)
    if base is not None:  # the elements back from the base's exponent order to their own
        spare[np.argsort(top_bytes(base, width), kind="stable")] = rotated
        rotated, spare = spare, rotated
    np.right_shift(rotated, uint(transform), out=part)
    np.left_shift(rotated, uint(8 * width - transform), out=rotated)
    np.bitwise_or(part, rotated, out=part)
    return part.tobytes()


def _scratch(np, uint, n: int) -> list:
    """Three arrays of n elements of `uint`, this thread's own, reused from call to call (their contents
    are garbage): fresh temporaries for every chunk cost a page fault a page (the allocator maps and
    unmaps blocks this large), more than the arithmetic on them (planes decoded 435 -> 1,100 MB/s)."""
    cache = getattr(_local, "scratch", None)
    if cache is None:
        cache = _local.scratch = {}
    arrays = cache.get((uint, n))
    if arrays is None:
        if len(cache) >= 8:  # chunk sizes vary (tensor ends, small files): keep the last few only
            cache.clear()
        arrays = cache[(uint, n)] = [np.empty(n, uint) for _ in range(3)]
    return arrays


def will_decode(nbytes: int) -> None:
    """A reader about to decode nbytes (a whole file) says so: when that is more than the joins without
    numpy have left, numpy does them all (joining the first ones without it would only be slower)."""
    global _plain_join_left
    if nbytes > _plain_join_left:
        _plain_join_left = 0


def _join_plain(planes: list, width: int, transform: int) -> bytes:
    """_join_planes without numpy: the planes interleaved by slice assignment, then every element rotated
    at once as one big integer (shifts and masks over the whole chunk, in C: about 500 MB/s)."""
    count = len(planes[0])
    joined = bytearray(count * width)
    for i, plane in enumerate(planes):
        joined[i::width] = plane
    low, high = _rotation_masks(width, transform, count)
    x = int.from_bytes(joined, "little")
    return (((x >> transform) & low) | ((x << (8 * width - transform)) & high)).to_bytes(count * width, "little")


@functools.lru_cache(maxsize=16)
def _rotation_masks(width: int, transform: int, count: int) -> tuple[int, int]:
    """For `count` elements of `width` bytes: the bits of each that a right rotation by `transform` fills
    from above (low) and from below (high), as big integers."""
    bits = 8 * width
    low = (1 << (bits - transform)) - 1
    high = ((1 << bits) - 1) ^ low
    return (int.from_bytes(low.to_bytes(width, "little") * count, "little"),
            int.from_bytes(high.to_bytes(width, "little") * count, "little"))


def top_bytes(raw, width: int):
    """The top byte of each element rotated left by one bit (a float's exponent byte), as numpy uint8."""
    import numpy as np
    uint = np.dtype(_UINT[width]).type
    return (np.frombuffer(raw, dtype=uint) >> uint(8 * width - 9)).astype(np.uint8)


def encode_delta(data, base_raw: bytes, base_id: bytes, base_depth: int, width: int, level: int) -> bytes | None:
    """A DELTA frame of `data` against the chunk base_raw, or None if there can be none (the base is
    as deep as a base may be, or another size) or a sample of the differences shows that none would
    pay (LARGE_MOVE_BITS): the integer difference of each element's bit pattern
    from the base's, zigzag-coded (small moves give small numbers whatever their sign), then stored by
    byte plane. Whether it pays is the caller's call (delta_pays)."""
    if base_depth >= MAX_DELTA_DEPTH or len(base_raw) != len(data) or width not in _UINT or len(data) % width:
        return None
    # every 16th difference is enough to judge the chunk by
    sampled = len(data) // width >= 2 * MIN_BLOCK
    mean_bits, small = _delta_sample(data, base_raw, width) if sampled else (0.0, 0.0)
    if sampled and width in LARGE_MOVE_BITS and mean_bits >= LARGE_MOVE_BITS[width]:
        return None  # moves as large as the mantissa (optimizer moments a few steps on): no delta can pay
    # small moves (weights between two steps) go in the order of the base's exponents: how far a
    # weight moves, in units of its last place, depends on its exponent, so each exponent's differences
    # get their own statistics (bf16 weights moved by noise: 30.6 -> 25.2 % of raw). Large moves
    # (optimizer moments) gain too little to pay for the sorting; 8-byte floats are left as they were.
    ordered = sampled and width in (2, 4) and small >= SMALL_MOVES
    planes, counts = _delta_planes(data, base_raw, width, ordered)
    inner = _planes_frame(planes, _runs(counts) if counts is not None else None)
    inner_codec = PLANES if len(inner) < len(data) else RAW
    if inner_codec == RAW:  # the differences in the elements' own order
        inner = _zigzag_of(data, base_raw, width).tobytes()
    return _DELTA_HEAD.pack(DELTA_VERSION, SUB, width, base_depth + 1, base_id, inner_codec) + inner


def _delta_sample(data, base_raw, width: int) -> tuple[float, float]:
    """Over every ENTROPY_STRIDE-th element's zigzag-coded difference from its base: the mean bit length
    (log2(z + 1)), and the share small enough to leave the top byte of the difference zero."""
    if _kernels is not None:
        return _kernels.delta_sample(data, base_raw, width, ENTROPY_STRIDE)
    import numpy as np
    uint = np.dtype(_UINT[width]).type
    new, base = np.frombuffer(data, dtype=uint), np.frombuffer(base_raw, dtype=uint)
    sample = _zigzag(new[::ENTROPY_STRIDE] - base[::ENTROPY_STRIDE], uint)
    return _mean_bits(sample), float(np.mean(sample >> uint(8 * width - 9) == 0))


def _delta_planes(data, base_raw, width: int, ordered: bool) -> tuple[list[memoryview], list[int] | None]:
    """The byte planes (rotated by ROTATE) of the zigzag-coded differences of data from base_raw; ordered:
    in the stable order of the base's exponent bytes, whose 256 counts come with them."""
    if _kernels is not None:
        planes, counts = _kernels.delta_split(data, base_raw, width, ROTATE, ordered)
        return _plane_views(planes, width), counts
    import numpy as np
    zigzag, counts = _zigzag_of(data, base_raw, width), None
    if ordered:
        context = top_bytes(base_raw, width)
        zigzag = zigzag[np.argsort(context, kind="stable")]  # the decoder sorts the base's bytes alike
        counts = np.bincount(context, minlength=256).tolist()
    return [memoryview(plane) for plane in _rotated_planes(zigzag, width)], counts


def _zigzag_of(data, base_raw, width: int):
    """The zigzag-coded differences of data's elements from base_raw's, as numpy (they wrap: exact both ways)."""
    import numpy as np
    uint = np.dtype(_UINT[width]).type
    return _zigzag(np.frombuffer(data, dtype=uint) - np.frombuffer(base_raw, dtype=uint), uint)


def _zigzag(diff, uint):
    """Differences as unsigned numbers, small whatever their sign: (d << 1) ^ -(d >> (8w - 1))."""
    return (diff << uint(1)) ^ (uint(0) - (diff >> uint(8 * diff.itemsize - 1)))


def _mean_bits(values) -> float:
    """The mean bit length of unsigned numbers (0 for 0)."""
    import numpy as np
    return float(np.mean(np.log2(values + 1.0))) if len(values) else 0.0


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
    delta_base(stored, name=name)
    _, _, width, _, _, inner = _DELTA_HEAD.unpack_from(stored)
    if len(base_raw) != raw_len or raw_len % width:
        raise IntegrityError(f"delta of {name} does not fit its base", subject=name)
    body = memoryview(stored)[_DELTA_HEAD.size:]
    if inner == PLANES:
        planes, plane_width, transform, source = _read_planes(body, raw_len, name=name)
        if plane_width != width:
            raise IntegrityError(f"delta of {name} holds planes of {plane_width}-byte elements, not {width}",
                                 subject=name)
        if _kernels is not None:
            return _kernels.delta_join(planes, base_raw, width, transform, source == BASE_CONTEXT)
        plain = _join_planes(planes, width, transform, base_raw if source == BASE_CONTEXT else None)
    else:
        plain = decompress(inner, body, raw_len, name=name)
    import numpy as np
    uint = np.dtype(_UINT[width]).type
    zigzag = np.frombuffer(plain, dtype=uint)
    diff, half, _ = _scratch(np, uint, len(zigzag))
    np.bitwise_and(zigzag, uint(1), out=diff)
    np.subtract(uint(0), diff, out=diff)  # all ones where the difference is negative
    np.right_shift(zigzag, uint(1), out=half)
    np.bitwise_xor(diff, half, out=diff)
    np.add(np.frombuffer(base_raw, dtype=uint), diff, out=diff)  # modulo 2^(8 width), as the writer's subtraction
    return diff.tobytes()


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
