"""Index objects: the footers of many packs combined in one object, so a machine learns a store in a few reads.

Every put that wrote packs writes one index object (more for very long puts) after its packs are
durable and before any ref; writers merge many small index objects into one. An index object is
immutable and named by the BLAKE3 of its bytes, so a reader verifies it against its own key.
"""

from __future__ import annotations

import struct
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import msgpack

from . import codec, layout
from .digest import hash_bytes
from .errors import IntegrityError, NotFound
from .pack import PackEntry

MAGIC = b"CASIDX01"
HEADER = struct.Struct("<8sQB")  # magic, raw (uncompressed msgpack) length, codec
INDEX_FORMAT = 1
MAX_RAW = 1 << 30
MERGE_AT = 32  # a writer that sees more index objects than this merges them


@dataclass(frozen=True, slots=True)
class PackRecord:
    """What an index object says of one pack: its id, size and the entries of its footer."""

    pack_id: bytes
    size: int
    entries: tuple[PackEntry, ...]


def encode(packs: list[PackRecord]) -> bytes:
    raw = msgpack.packb({"v": INDEX_FORMAT, "packs": [[p.pack_id, p.size, [e.to_list() for e in p.entries]]
                                                      for p in packs]}, use_bin_type=True)
    codec_id, stored = codec.compress(raw, 3)
    return HEADER.pack(MAGIC, len(raw), codec_id) + stored


def decode(data: bytes, *, name: str) -> list[PackRecord]:
    """The packs of an index object whose key is `name` (its BLAKE3 hex), verified against it."""
    if hash_bytes(data).hex() != name:
        raise IntegrityError(f"index object {name} is damaged (checksum mismatch)", subject=name)
    if len(data) < HEADER.size:
        raise IntegrityError(f"index object {name} is truncated", subject=name)
    magic, raw_len, codec_id = HEADER.unpack_from(data)
    if magic != MAGIC or raw_len > MAX_RAW:
        raise IntegrityError(f"index object {name} has a bad header", subject=name)
    raw = codec.decompress(codec_id, data[HEADER.size:], raw_len, name=f"index object {name}")
    try:
        doc = msgpack.unpackb(raw, raw=False, max_bin_len=64, max_str_len=64, max_array_len=raw_len, max_map_len=8)
        if doc["v"] != INDEX_FORMAT:
            raise ValueError(f"unknown index format {doc['v']}")
        out = []
        for pack_id, size, rows in doc["packs"]:
            if not (isinstance(pack_id, bytes) and len(pack_id) == 32):
                raise ValueError("bad pack id")
            out.append(PackRecord(pack_id, int(size), tuple(PackEntry.from_list(r) for r in rows)))
        return out
    except (ValueError, KeyError, TypeError, msgpack.UnpackException) as exc:
        raise IntegrityError(f"index object {name} is unreadable: {exc}", subject=name) from None


def write(backend, packs: list[PackRecord]) -> str:
    """Make an index object durable; returns its key. Content-named, so a second write is a no-op."""
    data = encode(packs)
    key = layout.index_key(hash_bytes(data))
    backend.put(key, data, create_only=True)
    return key


def read(backend, key: str) -> list[PackRecord]:
    name = layout.index_name_from_key(key)
    if name is None:
        raise IntegrityError(f"not an index object key: {key}", subject=key)
    return decode(backend.get(key), name=name)


def list_keys(backend) -> list[str]:
    return [key for key, _ in backend.list(layout.INDEXES) if layout.index_name_from_key(key) is not None]


def read_many(backend, keys: list[str]) -> list[tuple[str, list[PackRecord]]]:
    """Read several index objects, in parallel where the backend benefits. NotFound if one vanished."""
    if len(keys) <= 1 or backend.read_concurrency <= 1:
        return [(k, read(backend, k)) for k in keys]
    with ThreadPoolExecutor(max_workers=backend.read_concurrency, thread_name_prefix="cas-sync") as pool:
        return list(zip(keys, pool.map(lambda k: read(backend, k), keys)))


def merge(backend, keys: list[str]) -> tuple[str, list[bytes]] | None:
    """Combine the index objects `keys` into one; the parts are deleted only after the whole is durable.
    Returns the merged object's key and the packs it names.

    A concurrent reader that listed a part we delete gets NotFound and lists again (Store.sync).
    """
    try:
        parts = read_many(backend, keys)
    except NotFound:
        return None  # another writer is merging the same parts
    packs: dict[bytes, PackRecord] = {}
    for _, records in parts:
        for rec in records:
            packs.setdefault(rec.pack_id, rec)
    combined = write(backend, sorted(packs.values(), key=lambda r: r.pack_id))
    backend.delete([k for k in keys if k != combined])
    return combined, sorted(packs)
