"""Temp files that killed writers leave on local disk (pack spools, atomic-write temps): finding them and
deciding when one is stale.

A pack spool is named `.tmp.pack-<pid>-<random>` by the process writing it; an atomic-write temp is
`.tmp.<random>` and lives for the milliseconds of one write; a file logged in the background is copied
to `.tmp.stage-<pid>-<random>` (a folder: every file below it) until its put is acknowledged. A temp
file is stale once it is older than the grace period and either names a process that no longer runs
on this machine or is older than twice the writer lease (no writer keeps one temp file that long;
a staged file is kept as long as its process runs, however long its upload takes). Removing the temp file of a
live writer on another machine that shares the folder can only make that put fail; it never loses
acknowledged data, since a pack is referenced only after it has been linked into place.
"""

from __future__ import annotations

import os
import re

from .datatype import datatype

TEMP_PREFIX = ".tmp."
_SPOOL = re.compile(r"^\.tmp\.(pack|stage)-(\d+)-")
STAGE_PREFIX = ".tmp.stage-"


@datatype(frozen=True, slots=True)
class TempFile:
    path: str
    size: int
    mtime: float
    pid: int | None  # the writer's process id, when the name records it
    staged: bool = False  # a background log's copy: kept while its process runs


def find(folders: list[str]) -> list[TempFile]:
    """Every temp file under the folders (walked whole; missing folders are skipped)."""
    found = []
    for top in folders:
        for dirpath, _, filenames in os.walk(top):
            stage = next((p for p in os.path.relpath(dirpath, top).split(os.sep) if p.startswith(STAGE_PREFIX)), None)
            for name in filenames:
                if not name.startswith(TEMP_PREFIX) and stage is None:
                    continue
                path = os.path.join(dirpath, name)
                try:
                    st = os.lstat(path)
                except OSError:
                    continue  # finished or removed while we looked
                m = _SPOOL.match(stage or name)
                found.append(TempFile(path, st.st_size, st.st_mtime, int(m.group(2)) if m else None,
                                      staged=bool(m and m.group(1) == "stage")))
    return found


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True  # someone else's process, or a number we cannot judge: assume it runs
    return True


def is_stale(temp: TempFile, *, now: float, grace: float, lease: float) -> bool:
    age = now - temp.mtime
    if age < grace:
        return False
    if temp.pid is not None and temp.pid != os.getpid() and not _running(temp.pid):
        return True
    if temp.staged and temp.pid is not None:
        return False  # its process runs: the put that reads it may still be on its way
    return age >= max(2 * lease, 3600.0)


def remove(temps: list[TempFile]) -> int:
    """Remove the temp files; returns the bytes freed (files already gone count nothing)."""
    freed = 0
    for temp in temps:
        try:
            os.unlink(temp.path)
            freed += temp.size
        except OSError:
            continue
    return freed
