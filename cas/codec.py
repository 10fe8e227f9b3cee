"""Chunk compression: zstd at the store's level, raw when compression does not pay; bounded decompression."""

from __future__ import annotations

import threading

import zstandard

from .errors import IntegrityError

RAW = 0
ZSTD = 1

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
