"""Index objects: the footers of many packs combined in one object, so a machine learns a store in a few reads.

Every put that wrote packs writes one index object (more for very long puts) after its packs are
durable and before any ref; writers merge many small index objects into one. An index object is
immutable and named by the BLAKE3 of its bytes, so a reader verifies it against its own key.
"""

from __future__ import annotations

import struct

import msgpack

from . import codec, collector, framing, layout
from .datatype import datatype
from .digest import hash_bytes
from .errors import IntegrityError, NotFound
from .pack import HEADER as PACK_HEADER, MAX_INDEX_RATIO, TRAILER, Location, entries_of, entry_limits
from .parallel import ordered_map

MAGIC = b"CASIDX01"
HEADER = struct.Struct("<8sQB")  # magic, raw (uncompressed msgpack) length, codec
INDEX_FORMAT = 1
MAX_RAW = 1 << 30
MERGE_AT = 32  # a writer that sees more small index objects than this merges them
# stored bytes of an index object never merged again (about 200,000 blobs): a reader decodes one object
# at a time, so this bounds the memory a sync needs, however large the store
FULL_OBJECT = 8 << 20


@datatype(frozen=True, slots=True)
class PackRecord:
    """What an index object says of one pack: its id, size and the entries of its footer."""

    pack_id: bytes
    size: int
    entries: tuple[Location, ...]


def encode(packs: list[PackRecord]) -> bytes:
    raw = msgpack.packb({"v": INDEX_FORMAT, "packs": [[p.pack_id, p.size, [e.to_list() for e in p.entries]]
                                                      for p in packs]}, use_bin_type=True)
    codec_id, stored = codec.compress(raw, 3)
    if len(raw) > MAX_INDEX_RATIO * len(stored):  # readers refuse such a ratio: store it as it is
        codec_id, stored = codec.RAW, raw
    return HEADER.pack(MAGIC, len(raw), codec_id) + stored


def decode(data: bytes, *, name: str) -> list[PackRecord]:
    """The packs of an index object whose key is `name` (its BLAKE3 hex), verified against it.

    Its raw length is checked before anything is decompressed: at most MAX_RAW, and at most
    MAX_INDEX_RATIO times its stored body (exactly its body when stored raw).
    """
    what = f"index object {name}"
    if hash_bytes(data).hex() != name:
        raise IntegrityError(f"{what} is damaged (checksum mismatch)", subject=name)
    if len(data) < HEADER.size:
        raise IntegrityError(f"{what} is truncated", subject=name)
    magic, raw_len, codec_id = HEADER.unpack_from(data)
    stored = memoryview(data)[HEADER.size:]
    if magic != MAGIC or raw_len > min(MAX_RAW, MAX_INDEX_RATIO * len(stored)):
        raise IntegrityError(f"{what} has a bad header", subject=name)
    raw = codec.decompress(codec_id, stored, raw_len, name=what)
    with collector.many_objects():
        doc = framing.unpack(raw, entry_limits(raw_len), what=what, subject=name)
        try:
            if type(doc) is not dict or doc.get("v") != INDEX_FORMAT or type(doc["v"]) is not int:
                raise ValueError("unknown index format")
            if type(doc["packs"]) is not list:
                raise ValueError("packs are not an array")
            return [_pack_record(row) for row in doc["packs"]]
        except (ValueError, KeyError) as exc:
            raise framing.damaged(what, name, exc) from None


def _pack_record(row) -> PackRecord:
    """One pack of an index object: [id, size, entries], each entry inside the pack's blob area."""
    if type(row) is not list or len(row) != 3:
        raise ValueError("a pack is not an array of 3")
    pack_id, size, rows = row
    if type(pack_id) is not bytes or len(pack_id) != 32:
        raise ValueError("bad pack id")
    framing.integer(size, "pack size", len(PACK_HEADER) + TRAILER.size)
    entries = tuple(entries_of(rows, pack_id))
    if any(e.offset + e.stored_len > size - TRAILER.size for e in entries):
        raise ValueError(f"pack {pack_id.hex()} has an entry outside it")
    return PackRecord(pack_id, size, entries)


def write(backend, packs: list[PackRecord]) -> str:
    """Make an index object durable; returns its key. Content-named, so a second write is a no-op."""
    data = encode(packs)
    key = layout.index_key(hash_bytes(data))
    backend.put(key, data, create_only=True)
    return key


def _name(key: str) -> str:
    name = layout.index_name_from_key(key)
    if name is None:
        raise IntegrityError(f"not an index object key: {key}", subject=key)
    return name


def read(backend, key: str) -> list[PackRecord]:
    return decode(backend.get(key), name=_name(key))


def list_keys(backend) -> list[str]:
    return list(list_sizes(backend))


def list_sizes(backend) -> dict[str, int]:
    """The keys of the store's index objects, each with its size, in listing order."""
    return {key: size for key, size in backend.list(layout.INDEXES) if layout.index_name_from_key(key) is not None}


def read_many(backend, keys: list[str]) -> list[tuple[str, list[PackRecord]]]:
    """Read several index objects, in parallel where the backend benefits. NotFound if one vanished."""
    return list(zip(keys, ordered_map(lambda k: read(backend, k), keys, workers=backend.read_concurrency,
                                      name="cas-sync")))


def iter_present(backend, keys: list[str]):
    """(key, its packs) of each index object still there, one decoded at a time (the next few are fetched
    meanwhile, as bytes), or (key, None) for one that vanished since it was listed (a writer merged it,
    or gc replaced it: list again to read what names its packs now)."""
    def fetch(key):
        try:
            return backend.get(key)
        except NotFound:
            return None
    for key, data in zip(keys, ordered_map(fetch, keys, workers=backend.read_concurrency, name="cas-sync")):
        yield key, None if data is None else decode(data, name=_name(key))


def read_present(backend, keys: list[str]) -> tuple[list[tuple[str, list[PackRecord]]], bool]:
    """Every index object of `keys` still there, decoded; True as well if any vanished (see iter_present)."""
    present = [(key, packs) for key, packs in iter_present(backend, keys) if packs is not None]
    return present, len(present) < len(keys)


def merge_groups(backend) -> list[list[str]]:
    """The small index objects to merge, in groups of at most FULL_OBJECT stored bytes each, when there are
    more than MERGE_AT of them; objects of FULL_OBJECT or more are never merged again."""
    small = [(key, size) for key, size in backend.list(layout.INDEXES)
             if layout.index_name_from_key(key) is not None and size < FULL_OBJECT]
    return size_groups(small, bound=FULL_OBJECT) if len(small) > MERGE_AT else []


def size_groups(sized: list[tuple[str, int]], *, bound: int) -> list[list[str]]:
    """Keys, in order, cut into runs whose sizes add up to at most `bound` (a key alone may be larger);
    runs of one key are left out: merging one object changes nothing. (Record objects merge alike.)"""
    groups: list[list[str]] = [[]]
    total = 0
    for key, size in sized:
        if groups[-1] and total + size > bound:
            groups.append([])
            total = 0
        groups[-1].append(key)
        total += size
    return [g for g in groups if len(g) > 1]


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
