"""Sets of blobs held compactly: chunk ids as sorted numpy arrays of 32-byte ids, no Python object per
chunk. What gc and verify keep of every reachable chunk and every pack entry, so their memory is about
32 bytes per chunk instead of a few hundred.

Ids are compared whole (all 32 bytes): membership is exact.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import numpy as np

from .pack import CHUNK

ID = np.dtype("S32")  # numpy compares fixed-width bytes over their whole width, embedded zeros included
EMPTY = np.empty(0, ID)
FLUSH_AT = 1 << 20  # pending ids merged into the sorted array at this many


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
    """A growing set of 32-byte ids: a sorted unique array plus pending arrays merged on demand."""

    def __init__(self, ids: np.ndarray | None = None):
        self._sorted = EMPTY if ids is None else np.unique(ids)
        self._pending: list[np.ndarray] = []
        self._pending_len = 0

    def add_array(self, ids: np.ndarray) -> None:
        if len(ids):
            self._pending.append(ids)
            self._pending_len += len(ids)
            if self._pending_len >= FLUSH_AT:
                self._flush()

    def add(self, chunk_id: bytes) -> None:
        self.add_array(np.array([chunk_id], ID))

    def _flush(self) -> None:
        if self._pending:
            self._sorted = np.unique(np.concatenate([self._sorted, *self._pending]))
            self._pending, self._pending_len = [], 0

    @property
    def array(self) -> np.ndarray:
        """The ids, sorted and unique."""
        self._flush()
        return self._sorted

    def contains(self, queries: np.ndarray) -> np.ndarray:
        return contains(self.array, queries)

    def __contains__(self, chunk_id: bytes) -> bool:
        return bool(self.contains(np.array([chunk_id], ID))[0])

    def __len__(self) -> int:
        return len(self.array)

    def __iter__(self) -> Iterator[bytes]:
        return (as_bytes(x) for x in self.array)


class Blobs:
    """A set of (kind, key) blobs: chunks in an IdSet, manifests (one per file or tree: few) in a set."""

    def __init__(self, items: Iterable[tuple[int, bytes]] = ()):
        self.chunks = IdSet()
        self.manifests: set[tuple[int, bytes]] = set()
        self.update(items)

    def add(self, item: tuple[int, bytes]) -> None:
        if item[0] == CHUNK:
            self.chunks.add(item[1])
        else:
            self.manifests.add(item)

    def update(self, items: Iterable[tuple[int, bytes]]) -> None:
        if isinstance(items, Blobs):
            self.chunks.add_array(items.chunks.array)
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

    def copy(self) -> Blobs:
        out = Blobs()
        out.update(self)
        return out

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
