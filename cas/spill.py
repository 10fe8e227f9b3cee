"""Tables of fixed-size rows keyed by a 32-byte id, larger than memory should hold: what gc and verify
keep of every reachable chunk and every pack entry.

Rows are partitioned by the first byte of their id (ids are BLAKE3 hashes, so the 256 partitions are
even). A table holds its rows in memory until it has SPILL_ROWS of them, then appends each partition
to a file of its own in a scratch folder on local disk, and is read back a range of partitions at a
time (`groups`): every row of one id lies in one partition, so whatever is decided about an id (is it
reachable, which copy supplies it) is decided inside one group, holding about GROUP_ROWS rows, however
large the store. Within a partition, rows come back in the order they were added; two tables whose
rows were added in step (a row of one for each row of the other that matches a filter) stay aligned.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import numpy as np

from .errors import StorageError
from .scratch import IN_MEMORY, Scratch, group_rows, spill_rows  # the folder and budgets are scratch's

PARTS = 256


def parts_of(rows: np.ndarray) -> np.ndarray:
    """The partition of each row: its id's first byte, or its field `part` where it has one (a table
    bucketed by something else than id)."""
    if not len(rows):
        return np.empty(0, np.uint8)
    rows = np.ascontiguousarray(rows)
    fields = rows.dtype.fields
    offset = (fields["part"][1] if "part" in fields else fields["id"][1]) if fields else 0
    return rows.view(np.uint8).reshape(len(rows), rows.dtype.itemsize)[:, offset]


class Table:
    """Rows of `dtype` (an id field named "id", or bare 32-byte ids), partitioned by id (or by a
    one-byte field named "part")."""

    def __init__(self, dtype, scratch: Scratch = IN_MEMORY):
        self.dtype = np.dtype(dtype)
        self.scratch = scratch
        self.counts = np.zeros(PARTS, np.int64)  # rows per partition, spilled or not
        self.spilled = np.zeros(PARTS, np.int64)  # rows per partition in its file
        self._pending: list[np.ndarray] = []
        self._pending_rows = 0
        self._files: str | None = None  # folder of this table's partition files, once it spilled

    def __len__(self) -> int:
        return int(self.counts.sum())

    def add(self, rows: np.ndarray) -> None:
        if not len(rows):
            return
        rows = np.ascontiguousarray(rows, self.dtype)
        self.counts += np.bincount(parts_of(rows), minlength=PARTS)
        self._pending.append(rows)
        self._pending_rows += len(rows)
        if self._pending_rows >= spill_rows() and self.scratch.root is not None:
            self._spill()

    def _spill(self) -> None:
        rows = np.concatenate(self._pending)
        self._pending, self._pending_rows = [], 0
        parts = parts_of(rows)
        order = np.argsort(parts, kind="stable")
        rows, parts = rows[order], parts[order]
        bounds = np.searchsorted(parts, np.arange(PARTS + 1))
        if self._files is None:
            self._files = os.path.join(self.scratch.folder(), os.urandom(4).hex())
            os.mkdir(self._files)
        try:
            for p in np.flatnonzero(bounds[1:] > bounds[:-1]).tolist():
                with open(os.path.join(self._files, f"{p:03d}"), "ab") as f:
                    f.write(rows[bounds[p]:bounds[p + 1]].tobytes())
                self.spilled[p] += bounds[p + 1] - bounds[p]
        except OSError as exc:
            raise StorageError(f"cannot write to the scratch folder: {exc.strerror or exc}",
                               subject=self._files) from None

    def _read(self, p: int) -> np.ndarray:
        """Partition p's file, which must hold exactly the rows written to it: a file gone or cut short
        (something removed the scratch folder) stops the command, never reads as fewer rows."""
        path = os.path.join(self._files or "", f"{p:03d}")
        try:
            rows = np.fromfile(path, self.dtype)
        except (OSError, ValueError) as exc:
            raise StorageError(f"a scratch file is gone or damaged ({path}: {exc}); nothing was changed",
                               subject=path) from None
        if len(rows) != self.spilled[p]:
            raise StorageError(f"a scratch file is damaged ({path}: {len(rows)} rows, {self.spilled[p]} written); "
                               f"nothing was changed", subject=path)
        return rows

    def load(self, lo: int = 0, hi: int = PARTS) -> np.ndarray:
        """The rows of partitions lo..hi-1, partition by partition, each in the order they were added."""
        got = []
        if self._files is not None:
            for p in range(lo, hi):
                if self.spilled[p]:
                    got.append(self._read(p))
        for rows in self._pending:
            if lo == 0 and hi == PARTS:
                got.append(rows)
            else:
                parts = parts_of(rows)
                got.append(rows[(parts >= lo) & (parts < hi)])
        if not got:
            return np.empty(0, self.dtype)
        rows = np.concatenate(got) if len(got) > 1 else got[0]
        if len(got) > 1 or self._files is None:
            rows = rows[np.argsort(parts_of(rows), kind="stable")]
        return rows


def groups(*tables: Table) -> list[tuple[int, int]]:
    """Ranges of partitions to read together: each holds about GROUP_ROWS rows of all tables (one
    partition at least)."""
    counts = sum((t.counts for t in tables), np.zeros(PARTS, np.int64))
    budget = group_rows()
    out, lo, total = [], 0, 0
    for p in range(PARTS):
        if p > lo and total + counts[p] > budget:
            out.append((lo, p))
            lo, total = p, 0
        total += int(counts[p])
    out.append((lo, PARTS))
    return out


def run_starts(keys: np.ndarray) -> np.ndarray:
    """Where each run of equal values of sorted keys starts, and (last) where the last run ends."""
    if not len(keys):
        return np.zeros(1, np.int64)
    return np.append(np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]]), len(keys))


def part_bounds(rows: np.ndarray, lo: int, hi: int) -> np.ndarray:
    """Where each partition lo..hi-1 starts in rows as load() returns them (and where the last ends)."""
    return np.searchsorted(parts_of(rows), np.arange(lo, hi + 1))


def iter_groups(*tables: Table) -> Iterator[tuple[int, int, list[np.ndarray]]]:
    """(lo, hi, the rows of each table in partitions lo..hi-1) for each group."""
    for lo, hi in groups(*tables):
        yield lo, hi, [t.load(lo, hi) for t in tables]
