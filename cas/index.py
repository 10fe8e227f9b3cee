"""The local LMDB index: a per-machine cache of where every chunk and manifest lives in the store's packs."""

from __future__ import annotations

import os
import struct
import threading
from dataclasses import dataclass

import lmdb

from .errors import StorageError
from .pack import CHUNK, PackEntry

_LOC = struct.Struct("<32sQIIB")        # pack id, offset, stored len, raw len, codec
_MAN = struct.Struct("<32sQIIB32sBQ")   # ... plus check, kind, logical size
_PACK = struct.Struct("<QI")            # pack size, entry count
INITIAL_MAP = 64 << 20
_envs: dict[str, tuple[int, lmdb.Environment]] = {}
_envs_lock = threading.Lock()


@dataclass(frozen=True, slots=True)
class Location:
    pack_id: bytes
    offset: int
    stored_len: int
    raw_len: int
    codec: int
    check: bytes
    kind: int = CHUNK
    size: int = 0  # logical size (manifests: the file or tree size)


def _environment(path: str) -> lmdb.Environment:
    """One environment per path per process; never reused across fork()."""
    with _envs_lock:
        pid, env = _envs.get(path, (None, None))
        if env is not None and pid == os.getpid() and not os.path.exists(os.path.join(path, "data.mdb")):
            env.close()  # the cache was deleted under us: start a new one
            env = None
        if env is None or pid != os.getpid():
            try:
                os.makedirs(path, exist_ok=True)
                env = lmdb.open(path, map_size=INITIAL_MAP, max_dbs=8, subdir=True, metasync=True, sync=True)
            except (OSError, lmdb.Error) as exc:
                raise StorageError(f"cannot use the cache folder {path} (set CAS_CACHE_DIR): "
                                   f"{getattr(exc, 'strerror', None) or exc}", subject=path) from None
            _envs[path] = (os.getpid(), env)
        return env


class Index:
    def __init__(self, path: str):
        self.path = path
        self.env = _environment(path)
        self.chunks = self.env.open_db(b"chunks")
        self.manifests = self.env.open_db(b"manifests")
        self.packs = self.env.open_db(b"packs")
        self.index_objects = self.env.open_db(b"index_objects")  # keys of the store's index objects read

    def _write(self, fn):
        """Run fn(txn) in one write transaction, growing the map when it is full."""
        while True:
            try:
                with self.env.begin(write=True) as txn:
                    return fn(txn)
            except lmdb.MapFullError:
                self.env.set_mapsize(self.env.info()["map_size"] * 2)
            except lmdb.MapResizedError:
                self.env.set_mapsize(0)

    def _read(self, fn):
        while True:
            try:
                with self.env.begin() as txn:
                    return fn(txn)
            except lmdb.MapResizedError:
                self.env.set_mapsize(0)

    # ---- writes -------------------------------------------------------------------------
    def _put_pack(self, txn, pack_id: bytes, size: int, entries) -> None:
        txn.put(pack_id, _PACK.pack(size, len(entries)), db=self.packs)
        for e in entries:
            if e.kind == CHUNK:
                txn.put(e.key, _LOC.pack(pack_id, e.offset, e.stored_len, e.raw_len, e.codec), db=self.chunks)
            else:
                txn.put(e.key, _MAN.pack(pack_id, e.offset, e.stored_len, e.raw_len, e.codec, e.check,
                                         e.kind, e.size), db=self.manifests)

    def add_pack(self, pack_id: bytes, size: int, entries: list[PackEntry]) -> None:
        self._write(lambda txn: self._put_pack(txn, pack_id, size, entries))

    def add_index_object(self, key: str, records) -> int:
        """Learn the packs of one index object (those not yet known) and remember it was read."""
        def fn(txn):
            added = 0
            for rec in records:
                if txn.get(rec.pack_id, db=self.packs) is None:
                    self._put_pack(txn, rec.pack_id, rec.size, rec.entries)
                    added += 1
            txn.put(key.encode(), b"", db=self.index_objects)
            return added
        return self._write(fn)

    def mark_index_objects(self, keys) -> None:
        def fn(txn):
            for key in keys:
                txn.put(key.encode(), b"", db=self.index_objects)
        self._write(fn)

    def clear(self) -> None:
        def fn(txn):
            for db in (self.chunks, self.manifests, self.packs, self.index_objects):
                txn.drop(db, delete=False)
        self._write(fn)

    # ---- reads --------------------------------------------------------------------------
    def chunk(self, chunk_id: bytes) -> Location | None:
        raw = self._read(lambda txn: txn.get(chunk_id, db=self.chunks))
        if raw is None:
            return None
        pack_id, off, slen, rlen, cod = _LOC.unpack(raw)
        return Location(pack_id, off, slen, rlen, cod, chunk_id)

    def chunks_known(self, ids: list[bytes]) -> list[bool]:
        """Which of the ids are in the index, in one read transaction."""
        return self._read(lambda txn: [txn.get(i, db=self.chunks) is not None for i in ids])

    def manifest(self, digest: bytes) -> Location | None:
        raw = self._read(lambda txn: txn.get(digest, db=self.manifests))
        if raw is None:
            return None
        pack_id, off, slen, rlen, cod, check, kind, size = _MAN.unpack(raw)
        return Location(pack_id, off, slen, rlen, cod, check, kind, size)

    def manifests_with_prefix(self, prefix_hex: str, limit: int = 2) -> list[bytes]:
        """Digests of stored manifests whose hex starts with prefix_hex (at most `limit`)."""
        start = bytes.fromhex(prefix_hex[: len(prefix_hex) // 2 * 2])

        def fn(txn):
            found = []
            cur = txn.cursor(db=self.manifests)
            if cur.set_range(start):
                for key in cur.iternext(values=False):
                    h = key.hex()
                    if not h.startswith(prefix_hex[: len(start) * 2]):
                        break
                    if h.startswith(prefix_hex):
                        found.append(bytes(key))
                        if len(found) >= limit:
                            break
            return found
        return self._read(fn)

    def pack_ids(self) -> dict[bytes, int]:
        return self._read(lambda txn: {bytes(k): _PACK.unpack(v)[0]
                                       for k, v in txn.cursor(db=self.packs)})

    def index_objects_read(self) -> set[str]:
        return self._read(lambda txn: {bytes(k).decode() for k in txn.cursor(db=self.index_objects).iternext(values=False)})

    def iter_chunks(self):
        """(chunk id, Location) for every chunk; one read transaction."""
        with self.env.begin() as txn:
            for key, raw in txn.cursor(db=self.chunks):
                pack_id, off, slen, rlen, cod = _LOC.unpack(raw)
                yield bytes(key), Location(pack_id, off, slen, rlen, cod, bytes(key))

    def iter_manifests(self):
        with self.env.begin() as txn:
            for key, raw in txn.cursor(db=self.manifests):
                pack_id, off, slen, rlen, cod, check, kind, size = _MAN.unpack(raw)
                yield bytes(key), Location(pack_id, off, slen, rlen, cod, check, kind, size)

    def counts(self) -> dict[str, int]:
        def fn(txn):
            return {name: txn.stat(db)["entries"]
                    for name, db in (("chunks", self.chunks), ("manifests", self.manifests),
                                     ("packs", self.packs))}
        return self._read(fn)
