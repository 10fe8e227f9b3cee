"""Pack objects: many compressed blobs in one immutable file, with a footer index of its blobs."""

from __future__ import annotations

import os
import secrets
import struct
from collections import deque
from concurrent.futures import Executor, Future
from dataclasses import dataclass

import msgpack
import zstandard

from . import codec
from .digest import file_hasher, hash_bytes
from .errors import IntegrityError

HEADER = b"CASPACK1"
TRAILER_MAGIC = b"CASPEND1"
TRAILER = struct.Struct("<QII32s8s")  # footer offset, stored len, raw len, BLAKE3 of stored footer, magic
PACK_FORMAT = 1
MAX_FOOTER = 256 * 1024 * 1024

CHUNK = 0
FILE_MANIFEST = 1
TREE_MANIFEST = 2


@dataclass(frozen=True, slots=True)
class PackEntry:
    """One blob in a pack. `key` names it (chunk id or manifest digest); `check` is BLAKE3 of its raw bytes."""

    kind: int
    key: bytes
    offset: int
    stored_len: int
    raw_len: int
    codec: int
    check: bytes
    size: int = 0  # manifests: logical size of the file or tree they describe

    def to_list(self) -> list:
        check = b"" if self.kind == CHUNK else self.check  # a chunk's key is its check
        return [self.kind, self.key, self.offset, self.stored_len, self.raw_len, self.codec, check, self.size]

    @classmethod
    def from_list(cls, row: list) -> "PackEntry":
        kind, key, offset, slen, rlen, cod, check, size = row
        if not (isinstance(key, bytes) and len(key) == 32 and kind in (CHUNK, FILE_MANIFEST, TREE_MANIFEST)):
            raise ValueError("bad pack entry")
        if kind != CHUNK and not (isinstance(check, bytes) and len(check) == 32):
            raise ValueError("bad manifest checksum")
        return cls(kind, key, int(offset), int(slen), int(rlen), int(cod), key if kind == CHUNK else check,
                   int(size))


class PackWriter:
    """Spools one pack to a temp file, hashing it as it goes; finish() names it.

    Blobs are written and hashed in batches on `writer` (a one-thread executor, so in order),
    keeping the caller's thread free for the rest of the pipeline.
    """

    BATCH = 4 << 20  # bytes per write on the writer thread
    IN_FLIGHT = 2  # batches queued before add() waits

    def __init__(self, spool_dir: str, writer: Executor):
        os.makedirs(spool_dir, exist_ok=True)
        self.path = os.path.join(spool_dir, f".tmp.pack-{os.getpid()}-{secrets.token_hex(6)}")
        self._file = open(self.path, "xb")
        self._hasher = file_hasher()
        self._writer = writer
        self._batch: list = []
        self._batched = 0
        self._writes: deque[Future] = deque()
        self.entries: list[PackEntry] = []
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
            size: int = 0) -> PackEntry:
        entry = PackEntry(kind, key, self.size, len(stored), raw_len, codec_id, check, size)
        self._write(stored)
        self.entries.append(entry)
        return entry

    def finish(self) -> tuple[bytes, str, int]:
        """Write footer and trailer, close. Returns (pack id, spool path, size).

        Durability is the backend's job in put_file, on the uploading thread, off the write path.
        """
        # a random nonce makes every pack's bytes, hence its id, unique: a pack gc deleted (or is deleting) can
        # never be "written again" by a later put of the same blobs, whose create-only write would then succeed
        # on the doomed object, and whose id every cache would refuse to learn again
        raw = msgpack.packb({"v": PACK_FORMAT, "nonce": secrets.token_bytes(16),
                             "entries": [e.to_list() for e in self.entries]}, use_bin_type=True)
        footer = zstandard.ZstdCompressor(level=3).compress(raw)
        offset = self.size
        self._write(footer)
        self._write(TRAILER.pack(offset, len(footer), len(raw), hash_bytes(footer), TRAILER_MAGIC))
        self._settle()
        self._file.close()
        return self._hasher.digest(), self.path, self.size

    def abort(self) -> None:
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
            self._file.close()
        finally:
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass


def parse_trailer(tail: bytes, pack_size: int, *, name: str) -> tuple[int, int, int, bytes]:
    """(footer offset, stored len, raw len, footer hash) from the last bytes of a pack."""
    if len(tail) < TRAILER.size:
        raise IntegrityError(f"pack {name} is truncated", subject=name)
    offset, slen, rlen, check, magic = TRAILER.unpack(tail[-TRAILER.size:])
    if magic != TRAILER_MAGIC or offset + slen + TRAILER.size != pack_size or rlen > MAX_FOOTER:
        raise IntegrityError(f"pack {name} has a damaged trailer", subject=name)
    return offset, slen, rlen, check


def parse_footer(footer: bytes, rlen: int, check: bytes, *, name: str) -> list[PackEntry]:
    """The entries of a pack footer, verified against its checksum and read with size limits."""
    if hash_bytes(footer) != check:
        raise IntegrityError(f"pack {name} has a damaged index footer (checksum mismatch)", subject=name)
    raw = codec.decompress(codec.ZSTD, footer, rlen, name=f"pack {name} footer")
    try:
        doc = msgpack.unpackb(raw, raw=False, max_bin_len=64, max_str_len=64, max_array_len=rlen,
                              max_map_len=8)
        if doc["v"] != PACK_FORMAT:
            raise ValueError(f"unknown pack format {doc['v']}")
        return [PackEntry.from_list(row) for row in doc["entries"]]
    except (ValueError, KeyError, TypeError, msgpack.UnpackException) as exc:
        raise IntegrityError(f"pack {name} has an unreadable index footer: {exc}", subject=name) from None


def read_pack_entries(backend, key: str, size: int, *, name: str) -> list[PackEntry]:
    """Read a pack's own index from its tail (one ranged read in the common case)."""
    start = max(0, size - 65536)
    tail = backend.get(key, start, size)
    offset, slen, rlen, check = parse_trailer(tail, size, name=name)
    if offset >= start:
        footer = tail[offset - start: offset - start + slen]
    else:
        footer = backend.get(key, offset, offset + slen)
    entries = parse_footer(footer, rlen, check, name=name)
    for e in entries:
        if e.offset < len(HEADER) or e.offset + e.stored_len > offset:
            raise IntegrityError(f"pack {name} index points outside the pack", subject=name)
    return entries
