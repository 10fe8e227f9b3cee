"""Keeping long scans of the local cache out of the process's resident memory.

LMDB reads through a read-only shared map of its file: every page a scan touches (and the kernel's
fault-around neighbours) stays mapped, so a scan of a cache of millions of chunks would hold the whole
file resident. `release(folder)` drops this process's mapping of those pages (MADV_DONTNEED): they stay
in the OS page cache, where the kernel reclaims them as it likes, and the next read maps them again,
unchanged (the map is a shared, read-only map of the file: nothing is lost). Long scans and syncs call
it every RELEASE_EVERY items, so what a scan holds resident is set by that budget, not by the cache's
size. A no-op where /proc/self/maps or madvise are unavailable.
"""

from __future__ import annotations

import functools
import os

RELEASE_EVERY = 1024  # items between releases: each fault maps up to 64 KiB (fault-around), so at most 64 MiB
MADV_DONTNEED = 4


@functools.cache
def _madvise():
    """libc's madvise, found on the first release (not at start-up), or None."""
    import ctypes
    try:
        found = ctypes.CDLL(None, use_errno=True).madvise
    except (OSError, AttributeError):  # not a libc we know
        return None
    found.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    return found


def release(folder: str) -> None:
    """Drop this process's resident pages of the read-only maps of folder's data.mdb."""
    madvise = _madvise()
    if madvise is None:
        return
    target = os.path.realpath(os.path.join(folder, "data.mdb"))
    try:
        with open("/proc/self/maps") as maps:
            ranges = [line.split()[0] for line in maps if line.rstrip().endswith(target)]
    except OSError:
        return
    for span in ranges:
        start, end = (int(x, 16) for x in span.split("-"))
        madvise(start, end - start, MADV_DONTNEED)


class Releaser:
    """Counts items of a long scan and releases the map every RELEASE_EVERY of them."""

    def __init__(self, folder: str, every: int = RELEASE_EVERY):
        self.folder, self.every, self.count = folder, every, 0

    def tick(self, n: int = 1) -> None:
        self.count += n
        if self.count >= self.every:
            self.count = 0
            release(self.folder)
