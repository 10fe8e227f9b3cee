"""Sets of blobs held compactly: chunk ids as numpy arrays of 32-byte ids, no Python object per chunk,
spilled to a scratch folder when large (cas/spill.py). What gc and verify keep of every reachable chunk.

Ids are compared whole (all 32 bytes): membership is exact.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import numpy as np

from . import spill
from .pack import CHUNK
from .scratch import IN_MEMORY, Scratch
from .spill import Table

ID = np.dtype("S32")  # numpy compares fixed-width bytes over their whole width, embedded zeros included
EMPTY = np.empty(0, ID)


def ids_array(ids: bytes | bytearray | memoryview) -> np.ndarray:
    """32-byte ids back to back (a file manifest's `ids`) as an array, without copying."""
    return np.frombuffer(ids, dtype=ID)


def as_bytes(item) -> bytes:
    """One id of an ID array as its 32 bytes (numpy drops trailing zero bytes of an S item)."""
    return bytes(item).ljust(32, b"\0")


def contains(sorted_ids: np.ndarray, queries: np.ndarray) -> np.ndarray:
    """Which queries are in sorted_ids (sorted, unique): a boolean mask."""
    if not len(sorted_ids) or not len(queries):
        return np.zeros(len(queries), bool)
    pos = np.searchsorted(sorted_ids, queries)
    pos[pos == len(sorted_ids)] = 0
    return sorted_ids[pos] == queries


class IdSet:
    """A growing set of 32-byte ids in a spill table (cas/spill.py): read back a group of partitions at a
    time, each sorted and unique, so memory is bounded by the group, not by the set."""

    def __init__(self, ids: np.ndarray | None = None, scratch: Scratch = IN_MEMORY):
        self.table = Table(ID, scratch)
        if ids is not None:
            self.table.add(ids)

    def add_array(self, ids: np.ndarray) -> None:
        self.table.add(ids)

    def add(self, chunk_id: bytes) -> None:
        self.add_array(np.array([chunk_id], ID))

    def group(self, lo: int, hi: int) -> np.ndarray:
        """The ids of partitions lo..hi-1, sorted and unique."""
        return np.unique(self.table.load(lo, hi))

    def groups(self) -> Iterator[np.ndarray]:
        for lo, hi in spill.groups(self.table):
            yield self.group(lo, hi)

    @property
    def array(self) -> np.ndarray:
        """Every id, sorted and unique, in one array: for small sets only (tests, a few ids)."""
        return np.concatenate([EMPTY, *self.groups()])

    def contains(self, queries: np.ndarray) -> np.ndarray:
        out = np.zeros(len(queries), bool)
        parts = spill.parts_of(queries)
        for lo, hi in spill.groups(self.table):
            at = np.flatnonzero((parts >= lo) & (parts < hi))
            if len(at):
                out[at] = contains(self.group(lo, hi), queries[at])
        return out

    def __contains__(self, chunk_id: bytes) -> bool:
        return bool(self.contains(np.array([chunk_id], ID))[0])

    def __len__(self) -> int:
        return sum(len(g) for g in self.groups())

    def __iter__(self) -> Iterator[bytes]:
        return (as_bytes(x) for g in self.groups() for x in g)


class Blobs:
    """A set of (kind, key) blobs: chunks in an IdSet, manifests (one per file or tree: few) in a set."""

    def __init__(self, items: Iterable[tuple[int, bytes]] = (), scratch: Scratch = IN_MEMORY):
        self.chunks = IdSet(scratch=scratch)
        self.manifests: set[tuple[int, bytes]] = set()
        self.update(items)

    def add(self, item: tuple[int, bytes]) -> None:
        if item[0] == CHUNK:
            self.chunks.add(item[1])
        else:
            self.manifests.add(item)

    def update(self, items: Iterable[tuple[int, bytes]]) -> None:
        if isinstance(items, Blobs):
            for ids in items.chunks.groups():
                self.chunks.add_array(ids)
            self.manifests |= items.manifests
            return
        chunks = []
        for item in items:
            if item[0] == CHUNK:
                chunks.append(item[1])
            else:
                self.manifests.add(item)
        if chunks:
            self.chunks.add_array(np.array(chunks, ID))

    def __ior__(self, other: Iterable[tuple[int, bytes]]) -> Blobs:
        self.update(other)
        return self

    def __contains__(self, item) -> bool:
        if item[0] == CHUNK:
            return item[1] in self.chunks
        return item in self.manifests

    def __eq__(self, other) -> bool:
        if isinstance(other, Blobs):
            return self.manifests == other.manifests and np.array_equal(self.chunks.array, other.chunks.array)
        return NotImplemented

    def __len__(self) -> int:
        return len(self.chunks) + len(self.manifests)

    def __iter__(self) -> Iterator[tuple[int, bytes]]:
        yield from self.manifests
        for chunk_id in self.chunks:
            yield CHUNK, chunk_id
