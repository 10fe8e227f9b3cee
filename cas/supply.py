"""Which pack supplies each reachable blob: gc's choice, over spill tables of every pack's entries.

gc keeps a pack if it is the chosen home of at least one blob some root needs. Each blob is supplied by
one pack, preferring packs not condemned, then packs mostly alive; a delta copy of a chunk that is
also stored alone never supplies it (its base would be kept for nothing); a supplying delta chunk needs
its base, so the bases of the chosen copies are added and the choice made again until nothing new is
needed.

Memory is bounded, not linear in the store: a Catalog keeps a small record per pack (PackInfo) and
every chunk entry as a row of a spill table (id, pack number, stored length, delta flag: 41 bytes),
with the bases of delta entries in a second table aligned with it (cas/spill.py). Every question about
one chunk id is answered inside one group of partitions: which copies are live, which one is chosen,
whether a delta copy is shadowed by a copy stored alone. A choice keeps one bit per entry.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import numpy as np

from . import spill
from .blobset import EMPTY, ID, Blobs, IdSet, as_bytes, contains
from .datatype import datatype
from .errors import IntegrityError
from .pack import CHUNK, Location
from .pack_index import PackRecord
from .scratch import IN_MEMORY, Scratch
from .spill import Table

ENTRY = np.dtype([("id", ID), ("pack", "<u4"), ("stored", "<u4"), ("delta", "u1")])
BASE = np.dtype([("id", ID), ("base", ID)])  # one row per delta entry, in the order of its entry
CHOSEN = np.dtype([("part", "u1"), ("pack", "<u4"), ("id", ID)])  # a chunk a pack supplies, by batch (`part`)


@datatype(frozen=True, slots=True)
class PackInfo:
    """What gc plans from of one pack besides its chunk entries: id, size, its number in the catalog's
    tables, how many chunks it holds and their stored bytes, and its manifest entries (one per file or
    tree: few)."""

    pack_id: bytes
    size: int
    number: int
    chunks: int
    chunk_bytes: int
    manifests: tuple[Location, ...]

    @property
    def blob_bytes(self) -> int:
        """Stored bytes of its blobs (not its size: a tiny pack is mostly footer)."""
        return self.chunk_bytes + sum(m.stored_len for m in self.manifests)


class Catalog:
    """Every pack gc considers, by id (a read-only mapping of pack id → PackInfo), with its chunk
    entries in spill tables. `only(pids)` is the same catalog narrowed to some packs (the tables are
    shared: a pack read once is never added twice)."""

    def __init__(self, scratch: Scratch = IN_MEMORY):
        self.entries = Table(ENTRY, scratch)
        self.bases = Table(BASE, scratch)
        self.info: dict[bytes, PackInfo] = {}
        self.by_number: list[PackInfo] = []
        self._only: np.ndarray | None = None  # by pack number: in this catalog, when narrowed (only())

    @classmethod
    def of(cls, records: Iterable[PackRecord], scratch: Scratch = IN_MEMORY) -> Catalog:
        out = cls(scratch)
        for rec in records:
            out.add(rec)
        return out

    def add(self, rec: PackRecord) -> PackInfo:
        """Learn a pack (the first record of a pack id wins: a pack's content never changes)."""
        if rec.pack_id in self.info:
            return self.info[rec.pack_id]
        chunks = [e for e in rec.entries if e.kind == CHUNK]
        number = len(self.by_number)
        if chunks:
            rows = np.empty(len(chunks), ENTRY)
            rows["id"] = [e.key for e in chunks]
            rows["pack"] = number
            rows["stored"] = [e.stored_len for e in chunks]
            rows["delta"] = [bool(e.base) for e in chunks]
            self.entries.add(rows)
            deltas = [e for e in chunks if e.base]
            if deltas:
                base_rows = np.empty(len(deltas), BASE)
                base_rows["id"] = [e.key for e in deltas]
                base_rows["base"] = [e.base for e in deltas]
                self.bases.add(base_rows)
        info = PackInfo(rec.pack_id, rec.size, number, len(chunks), sum(e.stored_len for e in chunks),
                        tuple(e for e in rec.entries if e.kind != CHUNK))
        self.info[rec.pack_id] = info
        self.by_number.append(info)
        return info

    def only(self, pids: Iterable[bytes]) -> Catalog:
        narrowed = Catalog.__new__(Catalog)
        narrowed.entries, narrowed.bases, narrowed.by_number = self.entries, self.bases, self.by_number
        narrowed.info = {pid: self.info[pid] for pid in pids}
        narrowed._only = np.zeros(len(self.by_number), bool)
        narrowed._only[[i.number for i in narrowed.info.values()]] = True
        return narrowed

    @property
    def present(self) -> np.ndarray:
        """By pack number: whether the pack is in this catalog (every pack it learned, unless narrowed)."""
        return np.ones(len(self.by_number), bool) if self._only is None else self._only

    def __getitem__(self, pid: bytes) -> PackInfo:
        return self.info[pid]

    def __contains__(self, pid) -> bool:
        return pid in self.info

    def __iter__(self) -> Iterator[bytes]:
        return iter(self.info)

    def __len__(self) -> int:
        return len(self.info)


class Choice:
    """Which entry supplies each reachable chunk: one bit per row of the catalog's entry table, kept
    per partition with the number of rows it covers (the table may grow after the choice)."""

    def __init__(self, catalog: Catalog):
        self.catalog = catalog
        self.bits: dict[int, tuple[int, np.ndarray]] = {}  # partition → (rows, packed bits)

    def keep(self, lo: int, hi: int, rows: np.ndarray, chosen: np.ndarray) -> None:
        mask = np.zeros(len(rows), bool)
        mask[chosen] = True
        bounds = spill.part_bounds(rows, lo, hi)
        for p in range(lo, hi):
            a, b = int(bounds[p - lo]), int(bounds[p - lo + 1])
            if mask[a:b].any():
                self.bits[p] = (b - a, np.packbits(mask[a:b]))

    def keys_by_pack(self, numbers: set[int]) -> dict[int, np.ndarray]:
        """The ids each of those packs (by number) supplies, sorted: one pass over the entry table."""
        return next(self.keys_by_batch([numbers]))

    def keys_by_batch(self, batches: list[set[int]]) -> Iterator[dict[int, np.ndarray]]:
        """For each batch of packs (by number), the ids each pack of it supplies, sorted. One pass over
        the entry table for all batches (a pass per batch grew with the square of the store): the chosen
        rows of those packs go to a table partitioned by batch, read back one batch at a time."""
        numbers = np.array(sorted(n for batch in batches for n in batch), np.int64)
        batch_of = np.zeros(len(numbers), np.int64)
        for i, batch in enumerate(batches):
            batch_of[np.searchsorted(numbers, sorted(batch))] = i
        chosen = Table(CHOSEN, self.catalog.entries.scratch)
        entries = self.catalog.entries
        for lo, hi in spill.groups(entries):
            if not any(p in self.bits for p in range(lo, hi)):
                continue
            rows = entries.load(lo, hi)
            bounds = spill.part_bounds(rows, lo, hi)
            for p in range(lo, hi):
                if p not in self.bits:
                    continue
                n, packed = self.bits[p]
                part = rows[int(bounds[p - lo]):int(bounds[p - lo]) + n]
                part = part[np.unpackbits(packed, count=n).astype(bool)]
                part = part[contains(numbers, part["pack"].astype(np.int64))]
                out = np.empty(len(part), CHOSEN)
                out["part"] = batch_of[np.searchsorted(numbers, part["pack"].astype(np.int64))] % spill.PARTS
                out["pack"], out["id"] = part["pack"], part["id"]
                chosen.add(out)
        for i, batch in enumerate(batches):
            rows = chosen.load(i % spill.PARTS, i % spill.PARTS + 1)
            rows = rows[contains(np.array(sorted(batch), np.int64), rows["pack"].astype(np.int64))]
            rows = rows[np.lexsort((rows["id"], rows["pack"]))]
            starts = spill.run_starts(rows["pack"])
            yield {int(rows["pack"][a]): rows["id"][a:b] for a, b in zip(starts[:-1], starts[1:])}


@datatype
class Supplied:
    """The blobs one kept pack is the chosen home of: how many chunks and their stored bytes, and
    manifests; which chunks exactly is asked of the choice (a pass over the tables)."""

    pack: PackInfo
    chunks: int
    chunk_bytes: int
    manifests: list[Location]
    choice: Choice

    @property
    def stored(self) -> int:
        return self.chunk_bytes + sum(m.stored_len for m in self.manifests)

    def keys(self, chunk_ids: np.ndarray | None = None) -> list[bytes]:
        """Ids of the blobs supplied: manifests first, then chunks (sorted)."""
        if chunk_ids is None:
            chunk_ids = self.choice.keys_by_pack({self.pack.number}).get(self.pack.number, EMPTY)
        return [m.key for m in self.manifests] + [as_bytes(k) for k in chunk_ids]

    def select(self, entries: list[Location], chunk_ids: np.ndarray | None = None) -> list[Location]:
        """Of the pack's entries (its footer, read again), those this pack supplies."""
        wanted = set(self.keys(chunk_ids))
        return [e for e in entries if e.key in wanted]


def needed(packs: Catalog, reachable: Blobs, condemned: set[bytes], *,
           missing_ok: bool = False) -> tuple[set[bytes], dict[bytes, Supplied]]:
    """Packs that must stay so every reachable blob has a home, and which blobs each one supplies.
    missing_ok: blobs in no pack are ignored (gc's confirmation: they were written since it planned),
    else they stop gc."""
    extra = IdSet(scratch=packs.entries.scratch)  # bases of chosen delta copies not reachable otherwise
    while True:
        keep, supplies, bases = _supply(packs, reachable, extra, condemned, missing_ok)
        new = _not_in(bases, reachable.chunks, extra)
        if not len(new):
            return keep, supplies
        extra.add_array(new)


def _not_in(candidates: IdSet, *sets: IdSet) -> np.ndarray:
    """The ids of candidates in none of sets."""
    out = [EMPTY]
    for lo, hi in spill.groups(candidates.table, *(s.table for s in sets)):
        ids = candidates.group(lo, hi)
        for s in sets:
            ids = ids[~contains(s.group(lo, hi), ids)]
        out.append(ids)
    return np.concatenate(out)


def _wanted(reachable: Blobs, extra: IdSet, lo: int, hi: int) -> np.ndarray:
    ids = reachable.chunks.table.load(lo, hi)
    more = extra.table.load(lo, hi)
    return np.unique(np.concatenate([ids, more]) if len(more) else ids)


def _live(packs: Catalog, rows: np.ndarray, wanted: np.ndarray) -> np.ndarray:
    """Which entry rows are live copies: of a pack in the catalog, of a wanted chunk, and not a delta copy
    of a chunk some pack of the catalog also stores alone."""
    present = packs.present[rows["pack"]]
    ids = rows["id"]
    mask = present & contains(wanted, ids)
    delta = rows["delta"].astype(bool)
    if delta.any():
        alone = np.unique(ids[present & ~delta])
        mask &= ~(delta & contains(alone, ids))
    return mask


def _groups(packs: Catalog, reachable: Blobs, extra: IdSet) -> Iterator[tuple[int, int, np.ndarray, np.ndarray]]:
    """(lo, hi, wanted ids, entry rows) of each group of partitions."""
    for lo, hi in spill.groups(packs.entries, reachable.chunks.table, extra.table):
        yield lo, hi, _wanted(reachable, extra, lo, hi), packs.entries.load(lo, hi)


def _supply(packs: Catalog, reach: Blobs, extra: IdSet, condemned: set[bytes],
            missing_ok: bool) -> tuple[set[bytes], dict[bytes, Supplied], IdSet]:
    n = len(packs.by_number)
    live = np.zeros(n, np.float64)
    wanted_total = 0
    single = None  # the one group of a small catalog, read once for both passes
    for lo, hi, wanted, rows in _groups(packs, reach, extra):
        mask = _live(packs, rows, wanted)
        live += np.bincount(rows["pack"][mask], weights=rows["stored"][mask], minlength=n)
        wanted_total += len(wanted)
        single = (lo, hi, wanted, rows, mask) if (lo, hi) == (0, spill.PARTS) else None
    live_manifests = {pid: [m for m in packs[pid].manifests if (m.kind, m.key) in reach.manifests] for pid in packs}
    share = {pid: (live[packs[pid].number] + sum(m.stored_len for m in live_manifests[pid])) / max(1, packs[pid].size)
             for pid in packs}
    order = sorted(packs, key=lambda pid: (pid in condemned, -share[pid], pid))
    rank = np.full(n, len(order), np.int64)
    for r, pid in enumerate(order):
        rank[packs[pid].number] = r

    choice = Choice(packs)
    count = np.zeros(n, np.int64)
    stored = np.zeros(n, np.int64)
    bases = IdSet(scratch=packs.entries.scratch)
    covered, example = 0, None
    for lo, hi, wanted, rows, mask in ([single] if single else _masked(packs, reach, extra)):
        idx = np.flatnonzero(mask)
        pos = np.searchsorted(wanted, rows["id"][idx])
        ranks = rank[rows["pack"][idx]]
        by = np.lexsort((ranks, pos))
        first = by[spill.run_starts(pos[by])[:-1]]
        chosen = idx[first]
        covered += len(chosen)
        if example is None and len(chosen) < len(wanted):
            held = np.zeros(len(wanted), bool)
            held[pos[first]] = True
            example = as_bytes(wanted[~held][0])
        choice.keep(lo, hi, rows, chosen)
        count += np.bincount(rows["pack"][chosen], minlength=n)
        stored += np.bincount(rows["pack"][chosen], weights=rows["stored"][chosen], minlength=n).astype(np.int64)
        delta = rows["delta"].astype(bool)
        if delta[chosen].any():
            base_rows = packs.bases.load(lo, hi)
            if len(base_rows) != int(delta.sum()) or not np.array_equal(base_rows["id"], rows["id"][delta]):
                raise RuntimeError("the delta bases table is out of step with the entries")  # a bug, not damage
            delta_row = np.cumsum(delta) - 1
            bases.add_array(base_rows["base"][delta_row[chosen[delta[chosen]]]])
    covered_manifests: set = set()
    supplies: dict[bytes, Supplied] = {}
    for pid in order:
        need = [m for m in live_manifests[pid] if (m.kind, m.key) not in covered_manifests]
        covered_manifests.update((m.kind, m.key) for m in need)
        number = packs[pid].number
        if need or count[number]:
            supplies[pid] = Supplied(packs[pid], int(count[number]), int(stored[number]), need, choice)
    missing = wanted_total - covered + len(reach.manifests - covered_manifests)
    if missing and not missing_ok:
        key = next(iter(reach.manifests - covered_manifests), (CHUNK, example))[1] or b""
        raise IntegrityError(f"gc stopped: {missing} reachable blobs are in no pack (e.g. {key.hex()}); "
                             f"nothing was changed", subject=key.hex())
    return set(supplies), supplies, bases


def _masked(packs: Catalog, reach: Blobs, extra: IdSet):
    for lo, hi, wanted, rows in _groups(packs, reach, extra):
        yield lo, hi, wanted, rows, _live(packs, rows, wanted)
