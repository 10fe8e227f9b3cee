"""The local LMDB index: a per-machine cache of where every chunk and manifest lives in the store's packs."""

from __future__ import annotations

import fcntl
import os
import shutil
import struct
import threading
from contextlib import contextmanager

import lmdb

from . import lmdb_check
from .codec import MAX_DELTA_DEPTH
from .errors import StorageError
from .pack import CHUNK, FILE_MANIFEST, Location
from .resident import Releaser, release

# blob locations name their pack by a small number (packs db), not its 32-byte id: a third less per chunk
CHUNK_VALUE = struct.Struct("<IQIIB")        # pack number, offset, stored len, raw len, codec
DELTA_VALUE = struct.Struct("<IQIIB32s")  # ... plus the base of a delta chunk
MANIFEST_VALUE = struct.Struct("<IQIIB32sBQ")   # ... plus check, kind, logical size
_PACK = struct.Struct("<QII")          # pack size, entry count, pack number
_NUMBER = struct.Struct(">I")          # key of pack_numbers: pack number → pack id
# meta b"counts": what `cas stats` reports of the cache, kept up to date as packs are learned (no scan)
_COUNTS = struct.Struct("<QQQQQ")  # in the order of COUNT_NAMES
COUNT_NAMES = ("unique_bytes", "delta_chunks", "delta_stored_bytes", "logical_bytes", "files")
INITIAL_MAP = 64 << 20
SYNC_BATCH = 16384  # blobs learned per write transaction of a sync (its dirty pages are held until commit)
INLINE = 3  # Location.kind of content kept inline in a run record, not in a pack
INLINE_PACK = bytes(32)  # Location.pack_id of inline content
_envs: dict[str, tuple[int, int, lmdb.Environment]] = {}  # path → (pid, inode of its data.mdb, environment)
_envs_lock = threading.Lock()
_replaced: dict[str, str] = {}  # path → why the cache found there was replaced by an empty one
_made: set[str] = set()  # paths whose data file LMDB made when this process opened it
# errors that mean the cache's files are damaged (a value of the wrong length too); any other is a failure
_DAMAGE = (lmdb.CorruptedError, lmdb.PageNotFoundError, lmdb.InvalidError, lmdb.VersionMismatchError,
           lmdb.IncompatibleError, lmdb.BadTxnError, struct.error)




def _environment(path: str, *, fresh: bool = False) -> lmdb.Environment:
    """One environment per path per process, never reused across fork(); a damaged cache is replaced.

    fresh: replace the cache with an empty one without opening it. A process still using the old
    files (a renamed folder: never the same lock file as ours) keeps them until it lets go.
    """
    with _envs_lock:
        pid, ino, env = _envs.get(path, (None, None, None))
        now = lmdb_check.stamp(path)
        if pid == os.getpid() and not fresh and env is not None:
            if now is not None and now[0] == ino:
                return env
            if now is None:
                env.close()  # data.mdb was deleted under us, maybe not lock.mdb: never two envs on one lock file
        env, ino = _open_sound(path, fresh=fresh)
        _envs[path] = (os.getpid(), ino, env)
        return env


def _open_sound(path: str, *, fresh: bool) -> tuple[lmdb.Environment, int]:
    """Open the cache at path (and the inode of its data.mdb); a damaged one is replaced by an empty one.

    Openers share a lock on the parent folder; replacing takes it alone, so no opener ever pairs the
    lock.mdb of one folder with the data.mdb of another.
    """
    try:
        os.makedirs(path, exist_ok=True)
        if not fresh:
            with _folder_lock(path, fcntl.LOCK_SH):
                opened = _open_if_sound(path)
            if not isinstance(opened, str):
                return opened
        with _folder_lock(path, fcntl.LOCK_EX):
            opened = "" if fresh else _open_if_sound(path)
            if not isinstance(opened, str):
                return opened
            if not fresh:
                _replaced[path] = opened
            _discard(path)
            return _open(path)
    except (OSError, lmdb.Error) as exc:
        raise StorageError(f"cannot use the cache folder {path} (set CAS_CACHE_DIR): "
                           f"{getattr(exc, 'strerror', None) or exc}", subject=path) from None


def _open_if_sound(path: str) -> tuple[lmdb.Environment, int] | str:
    """(environment, inode of data.mdb) if the file passes the check and LMDB accepts it, else why not."""
    new = lmdb_check.stamp(path) is None
    why = lmdb_check.checked_damage(path)
    if why is None:
        try:
            opened = _open(path)
        except _DAMAGE as exc:
            why = str(exc)
        else:
            if new:  # LMDB made the file just now: sound (noted once its databases exist, Index._attach)
                _made.add(path)
            return opened
    return why


def _open(path: str) -> tuple[lmdb.Environment, int]:
    # the map stays read-only (writes go through the file): cas/resident.py drops its pages during long scans
    env = lmdb.open(path, map_size=INITIAL_MAP, max_dbs=24, subdir=True, metasync=True, sync=True, readahead=False,
                    writemap=False)
    stamp = lmdb_check.stamp(path)
    if stamp is None:  # LMDB made data.mdb just now: only a concurrent deletion takes it away
        env.close()
        raise OSError(f"{path}/data.mdb vanished as it was opened")
    return env, stamp[0]


def _discard(path: str) -> None:
    """Rename the cache folder to a unique name, then delete it: a process still using it keeps its files."""
    if os.path.lexists(path):
        aside = f"{path}.discarded-{os.getpid()}-{os.urandom(4).hex()}"
        os.rename(path, aside)
        shutil.rmtree(aside, ignore_errors=True)
    os.makedirs(path, exist_ok=True)


@contextmanager
def _folder_lock(path: str, how: int):
    fd = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY)
    try:
        fcntl.flock(fd, how)
        yield
    finally:
        os.close(fd)


def _cache_error(path: str, exc: Exception) -> StorageError:
    if isinstance(exc, _DAMAGE):
        return StorageError(f"the local cache at {path} is damaged: run `cas reindex`", subject=path)
    return StorageError(f"the local cache at {path} failed: {exc}", subject=path)


def _by_key(loc: Location) -> bytes:
    return loc.key


class Index:
    def __init__(self, path: str, *, fresh: bool = False):
        self.path = path
        self._releaser = Releaser(path)  # long scans and syncs keep the map's resident pages bounded
        self._attach(fresh=fresh)

    def _attach(self, *, fresh: bool) -> None:
        self.env = _environment(self.path, fresh=fresh)
        self.replaced = _replaced.pop(self.path, None)  # why a damaged cache found here was replaced, or None
        try:
            self._open_dbs()
        except lmdb.Error as exc:
            raise _cache_error(self.path, exc) from None
        if self.path in _made:  # sound as made: the next process need not read it (each commit keeps that)
            _made.discard(self.path)
            lmdb_check.note_new(self.path)

    def reset(self) -> None:
        """Replace the cache with an empty one without reading the old files (cas reindex)."""
        self._attach(fresh=True)

    def _open_dbs(self) -> None:
        self.chunks = self.env.open_db(b"chunks")
        self.manifests = self.env.open_db(b"manifests")
        self.packs = self.env.open_db(b"packs")  # pack id → size, entry count, number
        self.pack_numbers = self.env.open_db(b"pack_numbers")  # pack number (big-endian u32) → pack id
        self.index_objects = self.env.open_db(b"index_objects")  # keys of the store's index objects read
        self.records = self.env.open_db(b"records")  # run record key → its raw bytes
        self.record_objects = self.env.open_db(b"record_objects")  # keys of the store's record objects read
        self.covered = self.env.open_db(b"covered")  # run record key → seal of a record object read holding it
        self.inline = self.env.open_db(b"inline")  # digest → content kept inline in a record
        self.condemned = self.env.open_db(b"condemned")  # pack id → b"": gc condemned it; never dedup against it
        self.deleted = self.env.open_db(b"deleted")  # pack id → b"": gc deleted it; never learn it again
        self.gc_lists = self.env.open_db(b"gc_lists")  # gc list key → its packs (32-byte ids back to back)
        self.seen = self.env.open_db(b"seen")  # file identity (path and stat) → digest it last had: a hint only
        self.where = self.env.open_db(b"where")  # digest → identity of the file last stored with it: a hint only
        self.missing = self.env.open_db(b"missing")  # pack id → b"": found absent from the store; never trust it
        self.meta = self.env.open_db(b"meta")  # b"format" → the cache's own format (an older one is emptied)

    def _write(self, fn):
        """Run fn(txn) in one write transaction, growing the map when it is full; LMDB errors are one line."""
        while True:
            before = lmdb_check.stamp(self.path)
            try:
                with self.env.begin(write=True) as txn:
                    result = fn(txn)
            except lmdb.MapFullError:
                self.env.set_mapsize(self.env.info()["map_size"] * 2)
            except lmdb.MapResizedError:
                self.env.set_mapsize(0)
            except (lmdb.Error, struct.error) as exc:
                raise _cache_error(self.path, exc) from None
            else:
                lmdb_check.note_commit(self.path, before)  # so the next process need not check the file again
                return result

    def _read(self, fn):
        while True:
            try:
                with self.env.begin() as txn:
                    return fn(txn)
            except lmdb.MapResizedError:
                self.env.set_mapsize(0)
            except (lmdb.Error, struct.error) as exc:
                raise _cache_error(self.path, exc) from None

    @contextmanager
    def _reading(self):
        """One read transaction for a generator; LMDB errors are one line."""
        try:
            try:
                txn = self.env.begin()
            except lmdb.MapResizedError:
                self.env.set_mapsize(0)
                txn = self.env.begin()
            with txn:
                yield txn
        except (lmdb.Error, struct.error) as exc:
            raise _cache_error(self.path, exc) from None

    # ---- locations: a pack named by its number ---------------------------------------------
    def _pack_id(self, txn, number: int) -> bytes:
        pid = txn.get(_NUMBER.pack(number), db=self.pack_numbers)
        if pid is None:
            raise struct.error(f"pack number {number} is not in the cache")  # damage: the cache is replaced
        return bytes(pid)

    def _chunk_location(self, txn, chunk_id: bytes, raw) -> Location:
        if len(raw) == DELTA_VALUE.size:
            number, offset, stored_len, raw_len, codec, base = DELTA_VALUE.unpack(raw)
            return Location(self._pack_id(txn, number), CHUNK, chunk_id, offset, stored_len, raw_len, codec,
                            chunk_id, 0, base)
        number, offset, stored_len, raw_len, codec = CHUNK_VALUE.unpack(raw)
        return Location(self._pack_id(txn, number), CHUNK, chunk_id, offset, stored_len, raw_len, codec, chunk_id)

    def _manifest_location(self, txn, digest: bytes, raw) -> Location:
        number, offset, stored_len, raw_len, codec, check, kind, size = MANIFEST_VALUE.unpack(raw)
        return Location(self._pack_id(txn, number), kind, digest, offset, stored_len, raw_len, codec, check, size)

    # ---- writes -------------------------------------------------------------------------
    def _put_pack(self, txn, pack_id: bytes, size: int, entries) -> None:
        """Learn one pack and its blobs, numbering it and keeping the counters of `counts` up to date."""
        known = txn.get(pack_id, db=self.packs)
        number = _PACK.unpack(known)[2] if known is not None else self._number_packs(txn, [pack_id])
        txn.put(pack_id, _PACK.pack(size, len(entries), number), db=self.packs)
        tally = list(self._counts(txn))
        tick = self._releaser.tick
        for e in sorted(entries, key=_by_key):  # in key order: each B-tree leaf is visited once, not again and again
            tick()
            if e.kind == CHUNK:
                value = (DELTA_VALUE.pack(number, e.offset, e.stored_len, e.raw_len, e.codec, e.base) if e.base
                         else CHUNK_VALUE.pack(number, e.offset, e.stored_len, e.raw_len, e.codec))
                self._learn_chunk(txn, e.key, value, tally)
            else:
                self._learn_manifest(txn, e.key, MANIFEST_VALUE.pack(number, e.offset, e.stored_len, e.raw_len, e.codec,
                                                           e.check, e.kind, e.size), tally)
        txn.put(b"counts", _COUNTS.pack(*tally), db=self.meta)

    def _learn_chunk(self, txn, key: bytes, value: bytes, tally: list[int]) -> None:
        """Learn where a chunk lives (value: its CHUNK_VALUE or DELTA_VALUE), counting it in tally (COUNT_NAMES).
        A copy stored alone wins over a delta copy; otherwise the copy learned last wins."""
        before = txn.get(key, db=self.chunks)
        delta = len(value) == DELTA_VALUE.size
        if delta and before is not None and len(before) == CHUNK_VALUE.size:
            return  # a copy stored alone is known: it wins (it needs no base, and gc prefers it)
        if before is None:
            tally[0] += CHUNK_VALUE.unpack_from(value)[3]
        elif len(before) == DELTA_VALUE.size:  # the delta copy known until now is replaced
            tally[1] -= 1
            tally[2] -= DELTA_VALUE.unpack(before)[2]
        if delta:
            tally[1] += 1
            tally[2] += CHUNK_VALUE.unpack_from(value)[2]
        txn.put(key, value, db=self.chunks)

    def _learn_manifest(self, txn, key: bytes, value: bytes, tally: list[int]) -> None:
        """Learn where a manifest lives (value: its MANIFEST_VALUE), counting a file's first copy in tally."""
        if txn.get(key, db=self.manifests) is None:
            _, _, _, _, _, _, kind, size = MANIFEST_VALUE.unpack(value)
            if kind == FILE_MANIFEST:
                tally[3] += size
                tally[4] += 1
        txn.put(key, value, db=self.manifests)

    def _counts(self, txn) -> tuple[int, int, int, int, int]:
        raw = txn.get(b"counts", db=self.meta)
        return (0, 0, 0, 0, 0) if raw is None else _COUNTS.unpack(raw)

    def add_pack(self, pack_id: bytes, size: int, entries: list[Location]) -> None:
        self._write(lambda txn: self._put_pack(txn, pack_id, size, entries))
        release(self.path)  # what the commit read of the map, too

    def add_index_object(self, key: str, records) -> int:
        """Learn the packs of one index object (those not yet known, deleted or missing) and remember
        it was read, with the packs it names: a few write transactions of at most SYNC_BATCH blobs, each
        pack whole in one of them, the object marked read in the last (a crash between them leaves it
        unread, and the next sync learns the packs still unknown)."""
        def learn(batch):
            def fn(txn):
                added = 0
                for rec in batch:
                    if (txn.get(rec.pack_id, db=self.packs) is None and txn.get(rec.pack_id, db=self.deleted) is None
                            and txn.get(rec.pack_id, db=self.missing) is None):
                        self._put_pack(txn, rec.pack_id, rec.size, rec.entries)
                        added += 1
                if batch is last:
                    txn.put(key.encode(), b"".join(rec.pack_id for rec in records), db=self.index_objects)
                return added
            added = self._write(fn)
            release(self.path)  # what the commit read of the map, too
            return added
        batches: list[list] = [[]]
        size = 0
        for rec in records:
            if batches[-1] and size + len(rec.entries) > SYNC_BATCH:
                batches.append([])
                size = 0
            batches[-1].append(rec)
            size += len(rec.entries)
        last = batches[-1]
        return sum(learn(batch) for batch in batches)

    # ---- bulk load (cas/bulk_load.py): an empty cache filled in key order ----------------------
    @contextmanager
    def sync_lock(self):
        """Held by whoever learns packs from the store on this machine (a sync, a reindex), so that one
        bulk load runs at a time and a marker left behind can only be a crashed one's."""
        try:
            fd = os.open(self.path + ".sync-lock", os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise _cache_error(self.path, exc) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def packs_not_to_learn(self) -> set[bytes]:
        """Packs a sync does not learn: known already, deleted by gc, or found missing from the store."""
        return self._read(lambda txn: {bytes(k) for db in (self.packs, self.deleted, self.missing)
                                       for k in txn.cursor(db=db).iternext(values=False)})

    def drop_partial_load(self) -> bool:
        """Forget what a bulk load that died before its last transaction wrote (call under sync_lock):
        every pack, as forget_packs(). Reads only, unless a load died (every sync calls it)."""
        if self._read(lambda txn: txn.get(b"bulk", db=self.meta)) is None:
            return False
        self.forget_packs()
        return True

    def reserve_packs(self, pack_ids: list[bytes]) -> int:
        """Number the packs of a bulk load (the first gets the number returned, the next one more, ...) and
        mark the load begun: rows written from now name packs readers can resolve, and a load that dies
        before finish_load() is forgotten by the next sync (drop_partial_load)."""
        def fn(txn):
            txn.put(b"bulk", b"", db=self.meta)
            return self._number_packs(txn, pack_ids)
        return self._write(fn)

    def _number_packs(self, txn, pack_ids: list[bytes]) -> int:
        """Give new packs the next numbers (returns the first) and write number → id for each."""
        raw_next = txn.get(b"next_pack", db=self.meta)
        first = 0 if raw_next is None else int(raw_next)
        txn.put(b"next_pack", str(first + len(pack_ids)).encode(), db=self.meta)
        for i, pid in enumerate(pack_ids):
            txn.put(_NUMBER.pack(first + i), pid, db=self.pack_numbers)
        return first

    def append_blobs(self, manifests: bool, pairs: list[tuple[bytes, bytes]], tally: list[int]) -> None:
        """Learn blobs of a bulk load, (key, value) in ascending key order, one transaction. They are
        appended to the end of their database, with tally added to the counters, when every key is past
        the last one there; otherwise (a writer on this machine learned a pack meanwhile) each is learned
        as a sync learns it."""
        if not pairs:
            return
        db = self.manifests if manifests else self.chunks
        learn = self._learn_manifest if manifests else self._learn_chunk

        def fn(txn):
            cur = txn.cursor(db=db)
            counts = list(self._counts(txn))
            if not cur.last() or cur.key() < pairs[0][0]:
                if cur.putmulti(pairs, append=True)[1] != len(pairs):
                    raise struct.error("a bulk load's keys are not in ascending order")
                counts = [a + b for a, b in zip(counts, tally)]
            else:
                for key, value in pairs:
                    learn(txn, key, value, counts)
            txn.put(b"counts", _COUNTS.pack(*counts), db=self.meta)
        self._write(fn)
        release(self.path)

    def finish_load(self, packs: list[tuple[bytes, int, int, int]], named: dict[str, list[bytes]]) -> None:
        """The last transaction of a bulk load: its packs (id, size, entry count, number) and the index
        objects read (with the packs each names) are learned, and the load is marked done."""
        def fn(txn):
            for pid, size, count, number in packs:
                txn.put(pid, _PACK.pack(size, count, number), db=self.packs)
            for key, pack_ids in named.items():
                txn.put(key.encode(), b"".join(pack_ids), db=self.index_objects)
            txn.delete(b"bulk", db=self.meta)
        self._write(fn)

    def mark_index_objects(self, named: dict[str, list[bytes]]) -> None:
        """Remember index objects as read, each with the ids of the packs it names."""
        def fn(txn):
            for key, pack_ids in named.items():
                txn.put(key.encode(), b"".join(pack_ids), db=self.index_objects)
        self._write(fn)

    def forget_index_objects(self, keys) -> None:
        def fn(txn):
            for key in keys:
                txn.delete(key.encode(), db=self.index_objects)
        self._write(fn)

    def packs_named_by(self, keys) -> set[bytes]:
        """The pack ids that the given index objects (read by this cache) name."""
        def fn(txn):
            out = set()
            for key in keys:
                raw = txn.get(key.encode(), db=self.index_objects) or b""
                out.update(bytes(raw[i:i + 32]) for i in range(0, len(raw), 32))
            return out
        return self._read(fn)

    def mark_missing(self, pack_ids) -> None:
        """Packs found absent from the store: never deduplicate against them nor learn them again."""
        self._write(lambda txn: [txn.put(pid, b"", db=self.missing) for pid in pack_ids])

    def ensure_format(self, version: int) -> bool:
        """Empty a cache written in another format (everything in it can be relearned); True if emptied."""
        def fn(txn):
            raw = txn.get(b"format", db=self.meta)
            if raw is not None and int(raw) == version:
                return False
            for db in self._all_dbs():
                txn.drop(db, delete=False)
            txn.put(b"format", str(version).encode(), db=self.meta)
            return True
        return self._write(fn)

    def _all_dbs(self):
        return (self.chunks, self.manifests, self.packs, self.pack_numbers, self.index_objects, self.records,
                self.record_objects, self.covered, self.inline, self.condemned, self.deleted, self.gc_lists,
                self.seen, self.where, self.missing, self.meta)

    def forget_records(self, keys) -> None:
        """Drop cached records the store no longer holds (it was restored from a copy or replaced)."""
        def fn(txn):
            for key in keys:
                txn.delete(key.encode(), db=self.records)
                txn.delete(key.encode(), db=self.covered)
        self._write(fn)

    def record_keys(self, prefix: str) -> set[str]:
        start = prefix.encode()

        def fn(txn):
            out, cur = set(), txn.cursor(db=self.records)
            if cur.set_range(start):
                for key in cur.iternext(values=False):
                    if not key.startswith(start):
                        break
                    out.add(bytes(key).decode())
            return out
        return self._read(fn)

    def add_records(self, items) -> None:
        """Cache records: (key, raw bytes, (digest, inline content) or None), in one transaction."""
        if not items:
            return

        def fn(txn):
            for key, raw, inline in items:
                txn.put(key.encode(), raw, db=self.records)
                if inline is not None:
                    txn.put(inline[0], inline[1], db=self.inline)
        self._write(fn)

    # ---- record objects (cas/record_objects.py) ----------------------------------------------
    def learn_record_object(self, key: str, seal: bytes, items) -> int:
        """Learn the records of one record object (key, raw bytes, inline or None; each checked by the
        caller), note that it holds them, and remember it was read: one transaction. A record cached
        already keeps its bytes. Returns how many records were new."""
        def fn(txn):
            added = 0
            for rkey, raw, inline in items:
                k = rkey.encode()
                if txn.put(k, raw, db=self.records, overwrite=False):
                    added += 1
                    if inline is not None:
                        txn.put(inline[0], inline[1], db=self.inline)
                txn.put(k, seal, db=self.covered)
            txn.put(key.encode(), b"", db=self.record_objects)
            return added
        return self._write(fn)

    def record_objects_read(self) -> set[str]:
        return self._read(lambda txn: {bytes(k).decode()
                                       for k in txn.cursor(db=self.record_objects).iternext(values=False)})

    def drop_record_objects(self, keys: set[str], seals: set[bytes]) -> None:
        """Record objects the store no longer lists: not read any more, and the records only they held
        are not covered any more (a merge names them again; a restored store may not)."""
        def fn(txn):
            for key in keys:
                txn.delete(key.encode(), db=self.record_objects)
            if not seals:
                return
            stale = [bytes(k) for k, seal in txn.cursor(db=self.covered) if bytes(seal) in seals]
            for k in stale:
                txn.delete(k, db=self.covered)
        self._write(fn)

    def cover_records(self, keys, seal: bytes, *, object_key: str | None = None) -> None:
        """Note the cached ones of these records as held by the record object `seal` (its key `object_key`,
        then remembered as read), or by a marker the caller chooses (no object_key)."""
        def fn(txn):
            for key in keys:
                if txn.get(key.encode(), db=self.records) is not None:  # forgotten meanwhile: stays so
                    txn.put(key.encode(), seal, db=self.covered)
            if object_key is not None:
                txn.put(object_key.encode(), b"", db=self.record_objects)
        self._write(fn)

    def uncovered_count(self) -> int:
        """About how many cached records no record object read holds: a count, no scan."""
        def fn(txn):
            return max(0, txn.stat(self.records)["entries"] - txn.stat(self.covered)["entries"])
        return self._read(fn)

    def uncovered_records(self, after: str, budget: int) -> list[tuple[str, bytes]]:
        """(key, raw bytes) of cached records no record object read holds, in key order after `after`,
        until their bytes reach `budget`."""
        def fn(txn):
            out, total, cur = [], 0, txn.cursor(db=self.records)
            found = cur.set_range(after.encode()) if after else cur.first()
            while found and total < budget:
                key = cur.key()
                if key != after.encode() and txn.get(key, db=self.covered) is None:
                    out.append((bytes(key).decode(), bytes(cur.value())))
                    total += len(key) + len(cur.value())
                found = cur.next()
            return out
        return self._read(fn)

    # ---- gc state ---------------------------------------------------------------------
    def remember_files(self, hints: dict[bytes, bytes]) -> None:
        """Remember the digest each file (by identity key) had when it was stored."""
        if hints:
            self._write(lambda txn: [(txn.put(k, v, db=self.seen), txn.put(v, k, db=self.where))
                                     for k, v in hints.items()])

    def remembered_digest(self, identity: bytes) -> bytes | None:
        raw = self._read(lambda txn: txn.get(identity, db=self.seen))
        return bytes(raw) if raw is not None else None

    def remembered_file(self, digest: bytes) -> bytes | None:
        """The identity of the file most recently stored with this digest (cas/file_hints.py)."""
        raw = self._read(lambda txn: txn.get(digest, db=self.where))
        return bytes(raw) if raw is not None else None

    def gc_list(self, key: str) -> list[bytes] | None:
        raw = self._read(lambda txn: txn.get(key.encode(), db=self.gc_lists))
        return None if raw is None else [bytes(raw[i:i + 32]) for i in range(0, len(raw), 32)]

    def set_gc_state(self, lists: dict[str, list[bytes]], condemned: set[bytes], deleted: set[bytes], *,
                     unreadable: bool = False) -> bool:
        """Take the store's gc state as it is now: the condemned and the deleted packs (both replaced, so
        a store restored from a copy is seen as it is), and whether some gc list could not be read (then
        no pack is usable for deduplication). Returns True if the deleted set changed."""
        def fn(txn):
            if unreadable:
                txn.put(b"gc_unreadable", b"1", db=self.meta)
            else:
                txn.delete(b"gc_unreadable", db=self.meta)
            for key, packs in lists.items():
                txn.put(key.encode(), b"".join(packs), db=self.gc_lists)
            txn.drop(self.condemned, delete=False)
            for pid in condemned:
                txn.put(pid, b"", db=self.condemned)
            before = {bytes(k) for k in txn.cursor(db=self.deleted).iternext(values=False)}
            if before == deleted:
                return False
            txn.drop(self.deleted, delete=False)
            for pid in deleted:
                txn.put(pid, b"", db=self.deleted)
            return True
        return self._write(fn)

    def forget_packs(self) -> None:
        """Drop what the cache knows of packs (not records): the next sync relearns them from index objects."""
        def fn(txn):
            self._drop_packs(txn)
            txn.drop(self.index_objects, delete=False)
        self._write(fn)

    def _drop_packs(self, txn) -> None:
        """Forget every pack and blob location, with their numbers and counters."""
        for db in (self.chunks, self.manifests, self.packs, self.pack_numbers):
            txn.drop(db, delete=False)
        for key in (b"next_pack", b"counts", b"bulk"):
            txn.delete(key, db=self.meta)

    def condemned_packs(self) -> set[bytes]:
        return self._read(lambda txn: {bytes(k) for k in txn.cursor(db=self.condemned).iternext(values=False)})

    def deleted_packs(self) -> set[bytes]:
        return self._read(lambda txn: {bytes(k) for k in txn.cursor(db=self.deleted).iternext(values=False)})

    def gc_state_unreadable(self) -> bool:
        return self._read(lambda txn: txn.get(b"gc_unreadable", db=self.meta) is not None)

    def _usable_pack(self, txn, number: int) -> bytes | None:
        """The pack of this number if a writer may rely on it (not condemned, not found missing, and
        every gc list readable)."""
        if txn.get(b"gc_unreadable", db=self.meta) is not None:
            return None
        pid = self._pack_id(txn, number)
        if txn.get(pid, db=self.condemned) is not None or txn.get(pid, db=self.missing) is not None:
            return None
        return pid

    def _homes(self, txn, chunk_id: bytes, packs: dict[int, bytes | None]) -> tuple[bytes, ...] | None:
        """The packs a reader of this chunk decodes from, if a writer may rely on every one: its own and,
        for a delta copy, each base's down the chain (the copy stored alone last); None if an entry on
        the way is unknown or its pack not usable, or the chain is longer than a reader follows. gc
        deletes what only dead blobs need, so a dead delta can outlive its base (docs/design.md).
        packs: pack number -> _usable_pack, remembered for the rest of this transaction."""
        found = []
        for _ in range(MAX_DELTA_DEPTH + 1):
            raw = txn.get(chunk_id, db=self.chunks)
            if raw is None:
                return None
            number = CHUNK_VALUE.unpack_from(raw)[0]
            if number not in packs:
                packs[number] = self._usable_pack(txn, number)
            home = packs[number]
            if home is None:
                return None
            found.append(home)
            if len(raw) != DELTA_VALUE.size:
                return tuple(found)
            chunk_id = DELTA_VALUE.unpack(raw)[5]
        return None

    def usable(self, kind: int, key: bytes) -> tuple[bytes, ...] | None:
        """The packs a writer relies on to deduplicate this blob against (known, in packs gc has not
        condemned: a manifest's, a chunk's and its bases'), or None: store it."""
        if kind == CHUNK:
            return self._read(lambda txn: self._homes(txn, key, {}))

        def manifest_home(txn) -> bytes | None:
            raw = txn.get(key, db=self.manifests)
            return None if raw is None else self._usable_pack(txn, MANIFEST_VALUE.unpack_from(raw)[0])
        home = self._read(manifest_home)
        return None if home is None else (home,)

    def clear(self) -> None:
        def fn(txn):
            self._drop_packs(txn)
            for db in (self.index_objects, self.records, self.record_objects, self.covered, self.inline, self.seen,
                       self.where, self.missing):
                txn.drop(db, delete=False)
        self._write(fn)

    # ---- reads --------------------------------------------------------------------------
    def chunk(self, chunk_id: bytes) -> Location | None:
        return self.chunks_at([chunk_id])[0]

    def chunks_at(self, ids: list[bytes]) -> list[Location | None]:
        """Where each chunk is (None: unknown), in one transaction."""
        def fn(txn):
            out = []
            for chunk_id in ids:
                raw = txn.get(chunk_id, db=self.chunks)
                out.append(None if raw is None else self._chunk_location(txn, chunk_id, raw))
            self._releaser.tick(len(ids))
            return out
        return self._read(fn)

    def chunk_packs(self, ids: list[bytes]) -> list[bytes | None]:
        """The pack each chunk is in (None: unknown), in one transaction."""
        def fn(txn):
            out = []
            for chunk_id in ids:
                raw = txn.get(chunk_id, db=self.chunks)
                out.append(None if raw is None else self._pack_id(txn, CHUNK_VALUE.unpack_from(raw)[0]))
            self._releaser.tick(len(ids))
            return out
        return self._read(fn)

    def chunk_homes(self, ids: list[bytes]) -> list[tuple[bytes, ...] | None]:
        """For each id, the packs a writer relies on to deduplicate it against (its own and, for a delta,
        its bases'; None: store it), in one transaction."""
        def fn(txn):
            packs: dict[int, bytes | None] = {}
            return [self._homes(txn, i, packs) for i in ids]
        return self._read(fn)

    def has_delta_chunks(self) -> bool:
        """Whether any chunk this cache knows is stored as a delta (its home is a delta copy): a counter."""
        return self.counts()["delta_chunks"] > 0

    def chunks_present(self, ids: list[bytes]) -> list[bool]:
        """Which of the ids the index has a location for, condemned or not."""
        return self._read(lambda txn: [txn.get(i, db=self.chunks) is not None for i in ids])

    def manifest(self, digest: bytes) -> Location | None:
        def fn(txn):
            raw = txn.get(digest, db=self.manifests)
            return None if raw is None else self._manifest_location(txn, digest, raw)
        return self._read(fn)

    def manifests_with_prefix(self, prefix_hex: str, limit: int = 2) -> list[bytes]:
        """Digests of stored files and trees (manifests or inline) whose hex starts with prefix_hex."""
        start = bytes.fromhex(prefix_hex[: len(prefix_hex) // 2 * 2])

        def fn(txn):
            found = set()
            for db in (self.manifests, self.inline):
                cur = txn.cursor(db=db)
                if cur.set_range(start):
                    for key in cur.iternext(values=False):
                        h = key.hex()
                        if not h.startswith(prefix_hex[: len(start) * 2]):
                            break
                        if h.startswith(prefix_hex):
                            found.add(bytes(key))
                            if len(found) >= limit:
                                break
            return sorted(found)[:limit]
        return self._read(fn)

    def object_location(self, digest: bytes) -> Location | None:
        """Where a file or tree lives: its manifest, or inline content in a run record."""
        loc = self.manifest(digest)
        if loc is None:
            content = self.inline_content(digest)
            if content is not None:
                loc = Location(INLINE_PACK, INLINE, digest, 0, len(content), len(content), 0, digest, len(content))
        return loc

    def pack_ids(self) -> dict[bytes, int]:
        return self._read(lambda txn: {bytes(k): _PACK.unpack(v)[0]
                                       for k, v in txn.cursor(db=self.packs)})

    def unknown_records(self, keys: list[str]) -> list[str]:
        return self._read(lambda txn: [k for k in keys if txn.get(k.encode(), db=self.records) is None])

    def iter_records(self, prefix: str):
        """(key, raw bytes) of every cached record whose key starts with prefix, in key order."""
        start = prefix.encode()
        with self._reading() as txn:
            cur = txn.cursor(db=self.records)
            if cur.set_range(start):
                for key, raw in cur:
                    if not key.startswith(start):
                        break
                    yield bytes(key).decode(), bytes(raw)

    def iter_inline_sizes(self):
        """(digest, size) of content kept inline in records and not also stored in a pack."""
        with self._reading() as txn:
            for key, raw in txn.cursor(db=self.inline):
                if txn.get(key, db=self.manifests) is None:
                    yield bytes(key), len(raw)

    def inline_content(self, digest: bytes) -> bytes | None:
        raw = self._read(lambda txn: txn.get(digest, db=self.inline))
        return None if raw is None else bytes(raw)

    def index_objects_read(self) -> set[str]:
        return self._read(lambda txn: {bytes(k).decode()
                                       for k in txn.cursor(db=self.index_objects).iternext(values=False)})

    def iter_chunks(self):
        """(chunk id, Location) for every chunk; one read transaction."""
        with self._reading() as txn:
            for key, raw in txn.cursor(db=self.chunks):
                chunk_id = bytes(key)
                yield chunk_id, self._chunk_location(txn, chunk_id, raw)
                self._releaser.tick()

    def iter_manifests(self):
        with self._reading() as txn:
            for key, raw in txn.cursor(db=self.manifests):
                digest = bytes(key)
                yield digest, self._manifest_location(txn, digest, raw)
                self._releaser.tick()

    def counts(self) -> dict[str, int]:
        """How many chunks, manifests and packs the cache knows, and the counters kept as they are learned
        (COUNT_NAMES): no scan."""
        def fn(txn):
            out = {name: txn.stat(db)["entries"]
                   for name, db in (("chunks", self.chunks), ("manifests", self.manifests), ("packs", self.packs))}
            out.update(zip(COUNT_NAMES, self._counts(txn)))
            return out
        return self._read(fn)
