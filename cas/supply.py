"""Which pack supplies each reachable blob: gc's choice, over compact arrays of every pack's entries.

gc keeps a pack if it is the chosen home of at least one blob some root needs. Each blob is supplied by
one pack, preferring packs not condemned, then packs mostly alive; a delta copy of a chunk that is
also stored alone never supplies it (its base would be kept for nothing); a supplying delta chunk needs
its base, so the bases of the chosen copies are added and the choice made again until nothing new is
needed. What is held per pack entry is its chunk id and stored size (PackSummary): about 36 bytes, no
Python object per chunk.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .blobset import EMPTY, ID, Blobs, IdSet, as_bytes, contains
from .errors import IntegrityError
from .pack import CHUNK, Location
from .pack_index import PackRecord


@dataclass(frozen=True, slots=True)
class PackSummary:
    """What gc plans from of one pack: its chunks' ids and stored sizes as arrays, which of them are
    deltas (with their bases), and its manifest entries as they are (one per file or tree: few)."""

    pack_id: bytes
    size: int
    chunk_ids: np.ndarray  # ID
    chunk_stored: np.ndarray  # uint32
    bases: dict[int, bytes]  # index in chunk_ids of a delta chunk → its base
    manifests: tuple[Location, ...]

    @property
    def blob_bytes(self) -> int:
        """Stored bytes of its blobs (not its size: a tiny pack is mostly footer)."""
        return int(self.chunk_stored.sum()) + sum(m.stored_len for m in self.manifests)


def summarize(rec: PackRecord) -> PackSummary:
    chunks = [e for e in rec.entries if e.kind == CHUNK]
    return PackSummary(rec.pack_id, rec.size, np.array([e.key for e in chunks], ID) if chunks else EMPTY,
                       np.array([e.stored_len for e in chunks], np.uint32),
                       {i: e.base for i, e in enumerate(chunks) if e.base},
                       tuple(e for e in rec.entries if e.kind != CHUNK))


@dataclass
class Supplied:
    """The blobs one kept pack is the chosen home of: chunks by index into its summary, and manifests."""

    pack: PackSummary
    chunks: np.ndarray  # indices into pack.chunk_ids
    manifests: list[Location]

    @property
    def stored(self) -> int:
        return int(self.pack.chunk_stored[self.chunks].sum()) + sum(m.stored_len for m in self.manifests)

    def keys(self) -> list[bytes]:
        """Ids of the blobs supplied: manifests first, then chunks in pack order."""
        return [m.key for m in self.manifests] + [as_bytes(k) for k in self.pack.chunk_ids[np.sort(self.chunks)]]

    def select(self, entries: list[Location]) -> list[Location]:
        """Of the pack's entries (its footer, read again), those this pack supplies."""
        wanted = set(self.keys())
        return [e for e in entries if e.key in wanted]


def needed(packs: dict[bytes, PackSummary], reachable: Blobs, condemned: set[bytes], *,
           missing_ok: bool = False) -> tuple[set[bytes], dict[bytes, Supplied]]:
    """Packs that must stay so every reachable blob has a home, and which blobs each one supplies.
    missing_ok: blobs in no pack are ignored (gc's confirmation: they were written since it planned),
    else they stop gc."""
    reach = reachable.copy()
    while True:
        keep, supplies = _supply(packs, reach, condemned, missing_ok)
        bases = {s.pack.bases[i] for s in supplies.values() if s.pack.bases for i in s.chunks.tolist()
                 if i in s.pack.bases}
        new = np.array(sorted(bases), ID) if bases else EMPTY
        new = new[~reach.chunks.contains(new)]
        if not len(new):
            return keep, supplies
        reach.chunks.add_array(new)


def _delta_mask(pack: PackSummary) -> np.ndarray:
    mask = np.zeros(len(pack.chunk_ids), bool)
    if pack.bases:
        mask[list(pack.bases)] = True
    return mask


def _shadowed(packs: dict[bytes, PackSummary]) -> np.ndarray:
    """Ids of delta chunks also stored alone in some pack (sorted)."""
    delta_ids = [p.chunk_ids[list(p.bases)] for p in packs.values() if p.bases]
    if not delta_ids:
        return EMPTY
    deltas = np.unique(np.concatenate(delta_ids))
    found = IdSet()
    for p in packs.values():
        alone = p.chunk_ids[~_delta_mask(p)]
        found.add_array(alone[contains(deltas, alone)])
    return found.array


def _supply(packs: dict[bytes, PackSummary], reach: Blobs, condemned: set[bytes],
            missing_ok: bool) -> tuple[set[bytes], dict[bytes, Supplied]]:
    wanted = reach.chunks.array
    shadowed = _shadowed(packs)
    pids = sorted(packs)
    live_chunks: dict[bytes, np.ndarray] = {}  # pid → indices of its live chunk entries
    live_manifests: dict[bytes, list[Location]] = {}
    share: dict[bytes, float] = {}
    for pid in pids:
        p = packs[pid]
        mask = contains(wanted, p.chunk_ids)
        if len(shadowed) and p.bases:
            mask &= ~(_delta_mask(p) & contains(shadowed, p.chunk_ids))
        live_chunks[pid] = np.flatnonzero(mask)
        live_manifests[pid] = [m for m in p.manifests if (m.kind, m.key) in reach.manifests]
        live = int(p.chunk_stored[mask].sum()) + sum(m.stored_len for m in live_manifests[pid])
        share[pid] = live / max(1, p.size)
    order = sorted(pids, key=lambda pid: (pid in condemned, -share[pid], pid))
    rank = {pid: r for r, pid in enumerate(order)}
    # chunks: the first copy of each id in pack order supplies it
    parts = [(packs[pid].chunk_ids[live_chunks[pid]], rank[pid], live_chunks[pid]) for pid in pids
             if len(live_chunks[pid])]
    chosen: dict[bytes, np.ndarray] = {}
    covered = 0
    if parts:
        ids = np.concatenate([ids for ids, _, _ in parts])
        ranks = np.concatenate([np.full(len(ids), r, np.int32) for ids, r, _ in parts])
        local = np.concatenate([idx for _, _, idx in parts])
        pos = np.searchsorted(wanted, ids)
        by = np.lexsort((ranks, pos))
        first = by[np.r_[True, pos[by][1:] != pos[by][:-1]]]
        covered = len(first)
        chosen_rank = ranks[first]
        by_rank = np.argsort(chosen_rank, kind="stable")
        chosen_rank, chosen_local = chosen_rank[by_rank], local[first][by_rank]
        bounds = np.flatnonzero(np.r_[True, chosen_rank[1:] != chosen_rank[:-1], True])
        for a, b in zip(bounds[:-1].tolist(), bounds[1:].tolist()):
            chosen[order[chosen_rank[a]]] = chosen_local[a:b]
    covered_manifests: set = set()
    supplies: dict[bytes, Supplied] = {}
    for pid in order:
        need = [m for m in live_manifests[pid] if (m.kind, m.key) not in covered_manifests]
        covered_manifests.update((m.kind, m.key) for m in need)
        if need or pid in chosen:
            supplies[pid] = Supplied(packs[pid], chosen.get(pid, np.empty(0, np.int64)), need)
    missing = len(wanted) - covered + len(reach.manifests - covered_manifests)
    if missing and not missing_ok:
        key = next(iter(reach.manifests - covered_manifests), (CHUNK, None))[1]
        if key is None:
            held = np.zeros(len(wanted), bool)
            for ids, _, _ in parts:
                held[np.searchsorted(wanted, ids)] = True
            key = as_bytes(wanted[~held][0])
        raise IntegrityError(f"gc stopped: {missing} reachable blobs are in no pack (e.g. {key.hex()}); "
                             f"nothing was changed", subject=key.hex())
    return set(supplies), supplies
