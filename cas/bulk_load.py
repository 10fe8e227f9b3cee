"""Learning many packs at once in time linear in the store: a sync that reads many index objects
(store.BULK_SYNC_BYTES): filling an empty cache (a new machine's first sync, `cas reindex`), gc's
repack, a machine that was away.

Learning packs one at a time inserts chunk ids into the cache's B-tree in random order, in durable
transactions, and the time per chunk grows with the tree (each blob rewrites a page). A bulk load
instead collects every blob of every pack into spill tables (cas/spill.py: partitioned by the id's
first byte, on local disk past a budget), then writes them partition by partition in ascending key
order, in transactions of BATCH blobs: appended to the end of each database where every key is past
the last one there (an empty cache: LMDB's append mode, no search, full pages), else learned one by
one in key order (each page rewritten about once a batch, not once a blob).

Order of writes, so that a reader on this machine always resolves what it finds and a crash loses
nothing that a later sync does not relearn:

1. `Index.reserve_packs`: the packs are numbered and their numbers written, with a marker that a
   load has begun;
2. `Index.append_blobs`, batch after batch: chunk and manifest locations, with their counters;
3. `Index.finish_load`: the pack records and the index objects read, and the marker removed.

Until 3 the cache knows none of the load's packs as learned, so after a load that dies the next sync
forgets every pack and relearns (`Index.drop_partial_load`, under `Index.sync_lock`, which also
keeps two loads from running at once). Where one id has several copies the load keeps the one a
sync would: a copy stored alone over a delta copy, else the copy learned last.
"""

from __future__ import annotations

import struct

import numpy as np

from .index import CHUNK_VALUE, DELTA_VALUE, MANIFEST_VALUE, Index
from .pack import CHUNK, FILE_MANIFEST, Location
from .scratch import Scratch
from .spill import Table, groups, run_starts

BATCH = 1 << 17  # blobs learned per write transaction

_LOCATION = [("pack", "<u4"), ("offset", "<u8"), ("stored", "<u4"), ("raw", "<u4"), ("codec", "u1")]
CHUNK_ROW = np.dtype([("id", "S32")] + _LOCATION)
DELTA_ROW = np.dtype([("id", "S32")] + _LOCATION + [("base", "S32")])
MANIFEST_ROW = np.dtype([("id", "S32")] + _LOCATION + [("check", "S32"), ("kind", "u1"), ("size", "<u8")])
_CHUNK = struct.Struct("<32s" + CHUNK_VALUE.format[1:])
_DELTA = struct.Struct("<32s" + DELTA_VALUE.format[1:])
_MANIFEST = struct.Struct("<32s" + MANIFEST_VALUE.format[1:])
assert (_CHUNK.size, _DELTA.size, _MANIFEST.size) == (CHUNK_ROW.itemsize, DELTA_ROW.itemsize, MANIFEST_ROW.itemsize)


class BulkLoad:
    """Packs collected for one load into an empty cache, written by commit()."""

    def __init__(self, index: Index, scratch: Scratch):
        self.index = index
        self.plain = Table(CHUNK_ROW, scratch)
        self.deltas = Table(DELTA_ROW, scratch)
        self.manifests = Table(MANIFEST_ROW, scratch)
        self.packs: list[tuple[bytes, int, int]] = []  # (id, size, entry count); its place is its number
        self._collected: set[bytes] = set()
        self._never = index.packs_not_to_learn()
        self.named: dict[str, list[bytes]] = {}  # index objects read → the packs each names

    def add_pack(self, pack_id: bytes, size: int, entries: list[Location] | tuple[Location, ...]) -> bool:
        """Collect one pack's blobs; False for a pack collected or known already, deleted by gc or found
        missing."""
        if pack_id in self._collected or pack_id in self._never:
            return False
        n = len(self.packs)
        self._collected.add(pack_id)
        self.packs.append((pack_id, size, len(entries)))
        plain, deltas, manifests = bytearray(), bytearray(), bytearray()
        for e in entries:
            if e.kind != CHUNK:
                manifests += _MANIFEST.pack(e.key, n, e.offset, e.stored_len, e.raw_len, e.codec, e.check, e.kind,
                                            e.size)
            elif e.base:
                deltas += _DELTA.pack(e.key, n, e.offset, e.stored_len, e.raw_len, e.codec, e.base)
            else:
                plain += _CHUNK.pack(e.key, n, e.offset, e.stored_len, e.raw_len, e.codec)
        for table, rows in ((self.plain, plain), (self.deltas, deltas), (self.manifests, manifests)):
            table.add(np.frombuffer(rows, table.dtype))
        return True

    def add_index_object(self, key: str, records) -> int:
        """Collect the packs of one index object and remember it was read; how many packs were new."""
        self.named[key] = [rec.pack_id for rec in records]
        return sum(self.add_pack(rec.pack_id, rec.size, rec.entries) for rec in records)

    def commit(self) -> None:
        """Write everything collected into the cache (see the module's docstring for the order)."""
        if not self.packs:
            self.index.finish_load([], self.named)
            return
        base = self.index.reserve_packs([pid for pid, _, _ in self.packs])
        for lo, hi in groups(self.plain, self.deltas, self.manifests):
            self._append(False, *_chunks(self.plain.load(lo, hi), self.deltas.load(lo, hi), base))
            self._append(True, *_manifests(self.manifests.load(lo, hi), base))
        self.index.finish_load([(pid, size, count, base + n) for n, (pid, size, count) in enumerate(self.packs)],
                               self.named)

    def _append(self, manifests: bool, pairs: list[tuple[bytes, bytes]] | np.ndarray, tallies: np.ndarray) -> None:
        """Learn blobs in batches: pairs (key, value) or rows (made pairs a batch at a time), in key
        order; tallies: each blob's share of the counters (a row per blob, index.COUNT_NAMES)."""
        for start in range(0, len(pairs), BATCH):
            batch = pairs[start:start + BATCH]
            tally = [int(x) for x in tallies[start:start + BATCH].sum(axis=0)]
            self.index.append_blobs(manifests, _pairs(batch) if isinstance(batch, np.ndarray) else batch, tally)


def _last_copies(rows: np.ndarray) -> np.ndarray:
    """Rows sorted by id, only the last added of each id kept."""
    rows = rows[np.argsort(rows["id"], kind="stable")]
    return rows[run_starts(rows["id"])[1:] - 1]


def _pairs(rows: np.ndarray) -> list[tuple[bytes, bytes]]:
    """(key, LMDB value) of each row."""
    data, width = rows.tobytes(), rows.dtype.itemsize
    return [(data[i:i + 32], data[i + 32:i + width]) for i in range(0, len(data), width)]


def _chunks(plain: np.ndarray, deltas: np.ndarray, base: int) -> tuple[list | np.ndarray, np.ndarray]:
    """The chunk locations of one group in key order (rows, or pairs where there are delta copies),
    their pack numbers moved past base, and each one's share of the counters."""
    plain = _last_copies(plain)
    deltas = _last_copies(deltas)
    if len(deltas) and len(plain):  # a copy stored alone wins over a delta copy
        at = np.minimum(np.searchsorted(plain["id"], deltas["id"]), len(plain) - 1)
        deltas = deltas[plain["id"][at] != deltas["id"]]
    plain["pack"] += base
    deltas["pack"] += base
    tallies = np.zeros((len(plain) + len(deltas), 5), np.int64)  # in the order of index.COUNT_NAMES
    tallies[:len(plain), 0] = plain["raw"]
    tallies[len(plain):, 0] = deltas["raw"]
    tallies[len(plain):, 1] = 1
    tallies[len(plain):, 2] = deltas["stored"]
    if not len(deltas):
        return plain, tallies
    pairs = _pairs(plain) + _pairs(deltas)
    order = sorted(range(len(pairs)), key=lambda i: pairs[i][0])
    return [pairs[i] for i in order], tallies[order]


def _manifests(rows: np.ndarray, base: int) -> tuple[np.ndarray, np.ndarray]:
    """The manifest locations of one group in key order, their pack numbers moved past base, and each
    one's share of the counters."""
    rows = _last_copies(rows)
    rows["pack"] += base
    tallies = np.zeros((len(rows), 5), np.int64)
    files = rows["kind"] == FILE_MANIFEST
    tallies[:, 3] = np.where(files, rows["size"], 0)
    tallies[:, 4] = files
    return rows, tallies
