"""Pack objects: many compressed blobs in one immutable file, with a footer index of its blobs."""

from __future__ import annotations

import os
import struct
from collections import deque
from concurrent.futures import Executor, Future
from typing import NamedTuple

import msgpack
import zstandard

from . import codec, collector, framing
from .backends.local import storage_error
from .config import MAX_CHUNK_SIZE
from .digest import file_hasher, hash_bytes
from .errors import IntegrityError
from .layout import pack_key

HEADER = b"CASPACK1"
TRAILER_MAGIC = b"CASPEND1"
TRAILER = struct.Struct("<QII32s8s")  # footer offset, stored len, raw len, BLAKE3 of stored footer, magic
PACK_FORMAT = 1
MAX_FOOTER = 256 * 1024 * 1024
# raw/stored of a footer or index object: lists of random hashes, so honest ones stay near 2 (docs/format.md)
MAX_INDEX_RATIO = 64
MAX_MANIFEST = 256 * 1024 * 1024  # the largest manifest blob (a file of ~7 million chunks)
MAX_STORED = (1 << 32) - 1  # a blob's stored length (u32 in the local index)

CHUNK = 0
FILE_MANIFEST = 1
TREE_MANIFEST = 2
MAX_RAW = {CHUNK: MAX_CHUNK_SIZE, FILE_MANIFEST: MAX_MANIFEST, TREE_MANIFEST: MAX_MANIFEST}  # by blob kind


UNNAMED = b""  # the pack id of a blob whose pack is still being written (its id is the hash of its bytes)


class Location(NamedTuple):
    """Where one blob lives and how to check it: the one blob-location type.

    A pack's footer and an index object list a pack's blobs in this form (without the pack id, which
    names the list), the local cache answers with it, and every read takes it. `key` names the blob
    (chunk id or manifest digest); `check` is BLAKE3 of its raw bytes (a chunk's key is its check).
    A named tuple, not a dataclass: a sync or gc of a large store makes millions of them.
    """

    pack_id: bytes
    kind: int
    key: bytes
    offset: int
    stored_len: int
    raw_len: int
    codec: int
    check: bytes
    size: int = 0  # manifests: logical size of the file or tree they describe
    base: bytes = b""  # a delta chunk (codec DELTA): the id of the chunk it is a delta against

    def to_list(self) -> list:
        """The entry as a footer or index object holds it (the pack id is the list's). A chunk's check
        slot is empty (its key is its check), or holds the base of a delta chunk."""
        check = (self.base if self.codec == codec.DELTA else b"") if self.kind == CHUNK else self.check
        return [self.kind, self.key, self.offset, self.stored_len, self.raw_len, self.codec, check, self.size]

    @classmethod
    def from_list(cls, row, pack_id: bytes) -> Location:
        """A blob of pack_id as a footer or index object lists it; ValueError unless every field is in bounds.

        Well-formed entries pass one test (millions are read by a sync); any other goes through
        _checked_from_list, which accepts only what this test does and says why it refuses."""
        if type(row) is list and len(row) == 8:
            kind, key, offset, slen, rlen, cod, check, size = row
            if (type(kind) is int and type(key) is bytes and type(check) is bytes and type(offset) is int
                    and type(slen) is int and type(rlen) is int and type(cod) is int and type(size) is int
                    and len(key) == 32 and kind in MAX_RAW and cod in codec.CODECS and _BLOB_START <= offset
                    <= framing.MAX_INT and 0 <= slen <= MAX_STORED and 0 <= rlen <= MAX_RAW[kind]
                    and 0 <= size <= framing.MAX_INT and (cod != codec.RAW or slen == rlen)):
                if kind == CHUNK and cod != codec.DELTA:
                    return _new(cls, (pack_id, kind, key, offset, slen, rlen, cod, key, size, b""))
                if kind == CHUNK and len(check) == 32:
                    return _new(cls, (pack_id, kind, key, offset, slen, rlen, cod, key, size, check))
                if kind != CHUNK and cod != codec.DELTA and len(check) == 32:
                    return _new(cls, (pack_id, kind, key, offset, slen, rlen, cod, check, size, b""))
        return cls._checked_from_list(row, pack_id)

    @classmethod
    def _checked_from_list(cls, row, pack_id: bytes) -> Location:
        """from_list, field by field, with the reason for a refusal."""
        if type(row) is not list or len(row) != 8:
            raise ValueError("a pack entry is not an array of 8")
        kind, key, offset, slen, rlen, cod, check, size = row
        if type(kind) is not int or kind not in MAX_RAW:
            raise ValueError(f"unknown blob kind {kind!r:.40}")
        if type(key) is not bytes or len(key) != 32 or type(check) is not bytes:
            raise ValueError("bad blob key")
        if kind != CHUNK and len(check) != 32:
            raise ValueError("bad manifest checksum")
        if type(cod) is not int or cod not in codec.CODECS or (cod == codec.DELTA and kind != CHUNK):
            raise ValueError(f"unknown codec {cod!r:.40}")
        delta = cod == codec.DELTA
        if delta and len(check) != 32:
            raise ValueError("bad delta base")
        loc = cls(pack_id, kind, key, framing.integer(offset, "offset", _BLOB_START),
                  framing.integer(slen, "stored length", 0, MAX_STORED),
                  framing.integer(rlen, "raw length", 0, MAX_RAW[kind]), cod, key if kind == CHUNK else check,
                  framing.integer(size, "size"), check if delta else b"")
        if cod == codec.RAW and slen != rlen:
            raise ValueError(f"raw blob of {slen} bytes declares {rlen}")
        return loc


_new = tuple.__new__
_BLOB_START = len(HEADER)  # the first byte a blob may start at


def spool_path(spool_dir: str) -> str:
    """A new spool file's path (the file is made by PackWriter)."""
    return os.path.join(spool_dir, f".tmp.pack-{os.getpid()}-{os.urandom(6).hex()}")


class PackWriter:
    """Spools one pack to a temp file, hashing it as it goes; finish() names it.

    Blobs are written and hashed in batches on `writer` (a one-thread executor, so in order),
    keeping the caller's thread free for the rest of the pipeline.
    """

    BATCH = 4 << 20  # bytes per write on the writer thread
    IN_FLIGHT = 2  # batches queued before add() waits

    def __init__(self, spool_dir: str, writer: Executor, path: str | None = None):
        self.path = path or spool_path(spool_dir)
        try:
            os.makedirs(spool_dir, exist_ok=True)
            self._file = open(self.path, "xb")
        except OSError as exc:
            raise storage_error(exc, "writing a pack") from exc
        self._hasher = file_hasher()
        self._writer = writer
        self._batch: list = []
        self._batched = 0
        self._writes: deque[Future] = deque()
        self.entries: list[Location] = []  # pack id UNNAMED until finish() names the pack
        self.size = 0
        self._write(HEADER)

    def _write(self, data) -> None:
        self._batch.append(data)
        self._batched += len(data)
        self.size += len(data)
        if self._batched >= self.BATCH:
            self._submit()

    def _submit(self) -> None:
        batch, self._batch, self._batched = self._batch, [], 0
        if not batch:
            return
        self._writes.append(self._writer.submit(self._write_now, batch))
        while len(self._writes) > self.IN_FLIGHT:
            self._writes.popleft().result()

    def _write_now(self, batch: list) -> None:
        for data in batch:
            self._file.write(data)
            self._hasher.update(data)

    def _settle(self) -> None:
        """Wait for every queued write (raising the first error)."""
        self._submit()
        while self._writes:
            self._writes.popleft().result()

    def add(self, kind: int, key: bytes, stored, raw_len: int, codec_id: int, check: bytes,
            size: int = 0, base: bytes = b"") -> Location:
        entry = Location(UNNAMED, kind, key, self.size, len(stored), raw_len, codec_id, check, size, base)
        self._write(stored)
        self.entries.append(entry)
        return entry

    def finish(self) -> tuple[bytes, str, int]:
        """Write footer and trailer, close, and name the entries' pack. Returns (pack id, spool path, size).

        Durability is the backend's job in put_file, on the uploading thread, off the write path.
        """
        # a random nonce makes every pack's bytes, hence its id, unique: a pack gc deleted (or is deleting) can
        # never be "written again" by a later put of the same blobs, whose create-only write would then succeed
        # on the doomed object, and whose id every cache would refuse to learn again
        raw = msgpack.packb({"v": PACK_FORMAT, "nonce": os.urandom(16),
                             "entries": [e.to_list() for e in self.entries]}, use_bin_type=True)
        footer = zstandard.ZstdCompressor(level=3).compress(raw)
        offset = self.size
        self._write(footer)
        self._write(TRAILER.pack(offset, len(footer), len(raw), hash_bytes(footer), TRAILER_MAGIC))
        self._settle()
        self._file.close()
        pack_id = self._hasher.digest()
        self.entries = [e._replace(pack_id=pack_id) for e in self.entries]
        return pack_id, self.path, self.size

    def abort(self) -> None:
        """Drop the spool file. Never raises: it runs while an error (a full disk, often) is on its way out."""
        for write in self._writes:  # let queued writes end before the file goes
            write.cancel()
        for write in self._writes:
            if not write.cancelled():
                try:
                    write.result()
                except Exception:
                    pass
        self._writes.clear()
        try:
            self._file.close()  # flushes what is buffered: a full disk refuses it, and the file goes anyway
        except OSError:
            pass
        try:
            os.unlink(self.path)
        except OSError:
            pass  # already consumed by the backend, or the disk failed: nothing better to do here


def parse_trailer(tail: bytes, pack_size: int, *, name: str) -> tuple[int, int, int, bytes]:
    """(footer offset, stored len, raw len, footer hash) from the last bytes of a pack."""
    if len(tail) < TRAILER.size:
        raise IntegrityError(f"pack {name} is truncated", subject=name)
    offset, slen, rlen, check, magic = TRAILER.unpack(tail[-TRAILER.size:])
    if (magic != TRAILER_MAGIC or offset < len(HEADER) or offset + slen + TRAILER.size != pack_size
            or not 0 < rlen <= MAX_FOOTER or slen > rlen + (rlen >> 8) + 64 or rlen > MAX_INDEX_RATIO * slen):
        raise IntegrityError(f"pack {name} has a damaged trailer", subject=name)
    return offset, slen, rlen, check


def parse_footer(footer: bytes, rlen: int, check: bytes, pack_id: bytes, *, name: str) -> list[Location]:
    """The blobs a pack footer lists, verified against its checksum and read with size limits."""
    if hash_bytes(footer) != check:
        raise IntegrityError(f"pack {name} has a damaged index footer (checksum mismatch)", subject=name)
    raw = codec.decompress(codec.ZSTD, footer, rlen, name=f"pack {name} footer")
    what = f"the index footer of pack {name}"
    with collector.many_objects():
        doc = framing.unpack(raw, entry_limits(rlen), what=what, subject=name)
        try:
            if type(doc) is not dict or doc.get("v") != PACK_FORMAT or type(doc["v"]) is not int:
                raise ValueError("unknown footer format")
            return entries_of(doc["entries"], pack_id)
        except (ValueError, KeyError) as exc:
            raise framing.damaged(what, name, exc) from None


def entry_limits(raw_len: int) -> framing.Limits:
    """msgpack limits of a footer or index object of raw_len bytes: ids and checks, no long strings."""
    return framing.Limits(bin=64, str=64, array=raw_len, map=8)


def entries_of(rows, pack_id: bytes) -> list[Location]:
    """The blobs of pack_id a footer or index object lists; ValueError if any is malformed."""
    if type(rows) is not list:
        raise ValueError("entries are not an array")
    return [Location.from_list(row, pack_id) for row in rows]


def read_pack_entries(backend, pack_id: bytes, size: int, *, data=None) -> list[Location]:
    """The blobs a pack lists in its footer, each checked to lie inside the pack's blob area: one
    ranged read of its tail in the common case, none with `data` (the whole pack, already read).
    """
    key = pack_key(pack_id)
    name = pack_id.hex()

    def read(start: int, end: int):
        return backend.get(key, start, end) if data is None else memoryview(data)[start:end]
    start = max(0, size - 65536)
    tail = read(start, size)
    offset, slen, rlen, check = parse_trailer(tail, size, name=name)
    if offset >= start:
        footer = tail[offset - start: offset - start + slen]
    else:
        footer = read(offset, offset + slen)
    entries = parse_footer(footer, rlen, check, pack_id, name=name)
    for e in entries:
        if e.offset < len(HEADER) or e.offset + e.stored_len > offset:
            raise IntegrityError(f"pack {name} index points outside the pack", subject=name)
    return entries
