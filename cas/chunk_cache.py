"""A bounded cache, on local disk, of the pack bytes read from a remote store: a second read of the
same version needs no request for its chunks.

The cache holds ranges of packs as they are stored (compressed), in files of at most one BLOCK of a
pack each: a read of a run of blobs (one ranged GET) is kept as one file per BLOCK it spans, and a
later read of a range is served if the files of its blocks cover it (a file per blob made 563 files
for a 125 MB checkpoint, 0.2-0.4 s of system time on this machine's ext4, against 0.03 s for the
same bytes in 1 MiB files; and a full cache, 16 times as many files to add up). A file is named by
the BLAKE3 of its place (pack, block) and of this layout's version, all in one folder (a 10 GiB
cache is 10,240 files; a folder per first byte of the name made a cold 125 MB read create 60
folders, and on this machine's much-used ext4 each new inode cost about 1 ms), and holds where in
the block its bytes start, then the bytes. Nothing in a file is trusted: every blob served is decoded and checked
against its own hash by the reader, as any blob, and bytes served that the reader finds damaged are
dropped (`drop`) and read from the store; a file cut short serves at most what it still holds. (A
BLAKE3 of each file's bytes, checked before serving it, only repeated that check: dropping it took
a third of a cold S3 `cas get`'s cache writing, 0.05-0.06 s of 0.6 s for 125 MB.) A range that
touches what a block's file holds already is merged with it; one that does not replaces it. Files
are written to a temp name and renamed, so processes can share the folder (a merge that loses a race
with another process only loses bytes from the cache; a process's own threads write one at a time).

Least recently used goes first: a hit touches the file's time; before a process's first write, and
before a write that would take what it added since it last looked past a tenth of the limit, it
takes the folder's lock, adds up the sizes and removes the oldest files until the folder is at 90 %
of the limit at most: a process never takes the folder past its limit.

The size is `CAS_CHUNK_CACHE_SIZE` (`20GiB`, `500MiB`, a number of bytes; `0` turns the cache off;
default 10 GiB); the folder is `<cache dir>/<store id>/chunks`. Local stores are not cached.
"""

from __future__ import annotations

import fcntl
import os
import re
import threading

from .digest import hash_bytes
from .errors import InvalidInput

DEFAULT_SIZE = 10 << 30
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(|b|k|kb|kib|m|mb|mib|g|gb|gib|t|tb|tib)\s*$", re.I)
_UNITS = {"": 1, "b": 1, "k": 1 << 10, "kb": 1000, "kib": 1 << 10, "m": 1 << 20, "mb": 1000 ** 2, "mib": 1 << 20,
          "g": 1 << 30, "gb": 1000 ** 3, "gib": 1 << 30, "t": 1 << 40, "tb": 1000 ** 4, "tib": 1 << 40}


def size_from_env() -> int:
    """CAS_CHUNK_CACHE_SIZE in bytes (default 10 GiB; 0 turns the cache off); InvalidInput if malformed."""
    text = os.environ.get("CAS_CHUNK_CACHE_SIZE")
    if text is None or text == "":
        return DEFAULT_SIZE
    m = _SIZE.match(text)
    if not m:
        raise InvalidInput(f"malformed CAS_CHUNK_CACHE_SIZE {text!r} (use e.g. 20GiB, 500MiB or 0)",
                           subject="CAS_CHUNK_CACHE_SIZE")
    return int(float(m.group(1)) * _UNITS[m.group(2).lower()])


BLOCK = 1 << 20  # bytes of a pack one file covers at most
_LO = 4  # bytes at the start of a file: where in its block its bytes start
_LAYOUT = b"cas chunk cache 2"  # in every file's name: files of another layout are never read, only evicted


class ChunkCache:
    def __init__(self, folder: str, limit: int):
        self.folder, self.limit = folder, limit
        self._added = 0
        self._looked = False  # whether this process has added up the folder yet
        # a restore's fetching threads write neighbouring runs, which share the block between them: one
        # thread at a time reads, merges and replaces a block's file, so neither loses the other's bytes
        self._writing = threading.Lock()

    def _path(self, pack_id: bytes, block: int) -> str:
        name = hash_bytes(_LAYOUT + pack_id + block.to_bytes(8, "little")).hex()
        return os.path.join(self.folder, name)

    def _piece(self, path: str) -> tuple[int, memoryview] | None:
        """(where in its block the bytes start, the bytes) of a block's file; None if there is none or it
        cannot be one (then it is removed)."""
        try:
            with open(path, "rb") as f:
                data = memoryview(f.read())
        except OSError:
            return None
        if len(data) < _LO:
            self._drop(path)  # cut short: a miss
            return None
        lo = int.from_bytes(data[:_LO], "little")
        body = data[_LO:]
        if lo + len(body) > BLOCK:
            self._drop(path)
            return None
        return lo, body

    def get(self, pack_id: bytes, start: int, end: int) -> bytes | None:
        """Bytes start..end of a pack if the cache holds all of them, else None."""
        parts, paths = [], []
        for block in range(start // BLOCK, (end - 1) // BLOCK + 1):
            base = block * BLOCK
            path = self._path(pack_id, block)
            piece = self._piece(path)
            if piece is None:
                return None
            lo, body = piece
            a, b = max(start, base) - base, min(end, base + BLOCK) - base
            if a < lo or b > lo + len(body):
                return None
            parts.append(body[a - lo:b - lo])
            paths.append(path)
        for path in paths:
            try:
                os.utime(path)  # recently used
            except OSError:
                pass
        return parts[0].tobytes() if len(parts) == 1 else b"".join(parts)

    def drop(self, pack_id: bytes, start: int, end: int) -> None:
        """Forget what the cache holds of the blocks of bytes start..end of a pack (bytes it served that
        failed their check: the reader reads them from the store again)."""
        for block in range(start // BLOCK, (end - 1) // BLOCK + 1):
            self._drop(self._path(pack_id, block))

    def put(self, pack_id: bytes, start: int, data) -> None:
        """Keep bytes of a pack read from the store, starting at `start` (the reader verifies every blob
        in them whenever served)."""
        view = memoryview(data)
        end = start + len(view)
        if not len(view) or len(view) > self.limit // 10:
            return  # one read never pushes out a tenth of the cache
        with self._writing:
            for block in range(start // BLOCK, (end - 1) // BLOCK + 1):
                base = block * BLOCK
                a, b = max(start, base), min(end, base + BLOCK)
                self._write(self._path(pack_id, block), a - base, view[a - start:b - start])

    def _write(self, path: str, lo: int, body) -> None:
        """Keep body at lo of a block, merged with what its file holds when the two touch."""
        held = None if len(body) == BLOCK else self._piece(path)  # a whole block: nothing to merge
        if held is not None and held[0] <= lo + len(body) and lo <= held[0] + len(held[1]):
            first = min(lo, held[0])
            merged = bytearray(max(lo + len(body), held[0] + len(held[1])) - first)
            merged[held[0] - first:held[0] - first + len(held[1])] = held[1]
            merged[lo - first:lo - first + len(body)] = body
            lo, body = first, merged
        size = _LO + len(body)
        if not self._looked or self._added + size > self.limit // 10:
            self.evict()  # the folder is at 90 % of the limit at most now: room for what comes before the next look
        head = lo.to_bytes(_LO, "little")
        temp = f"{path}.tmp-{os.getpid()}-{os.urandom(4).hex()}"
        try:
            with open(temp, "wb") as f:
                f.write(head)
                f.write(body)
            os.replace(temp, path)
        except OSError:
            self._drop(temp)  # a full disk only means no cache
            return
        self._added += size

    def evict(self) -> int:
        """Remove the least recently used files until the folder is at 90 % of the limit at most; returns
        the bytes removed. Under the folder's lock: one process evicts at a time."""
        self._looked, self._added = True, 0
        os.makedirs(self.folder, exist_ok=True)
        with open(os.path.join(self.folder, ".lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            files = self._files()
            total = sum(size for _, size, _ in files)
            if total <= self.limit * 9 // 10:
                return 0
            freed = 0
            for _, size, path in sorted(files):
                if total - freed <= self.limit * 9 // 10:
                    break
                if self._drop(path):
                    freed += size
            return freed

    def _files(self) -> list[tuple[float, int, str]]:
        """(time last used, size, path) of every file in the folder: blocks, temp files a killed process
        left, and files of the earlier layout, one folder down."""
        out = []
        for entry in self._entries(self.folder):
            if entry.is_dir(follow_symlinks=False):
                entries = self._entries(entry.path)
            elif entry.name != ".lock":
                entries = [entry]
            else:
                continue
            for file in entries:
                try:
                    st = file.stat(follow_symlinks=False)
                except OSError:
                    continue
                out.append((st.st_mtime, st.st_size, file.path))
        return out

    @staticmethod
    def _entries(folder: str) -> list[os.DirEntry]:
        try:
            with os.scandir(folder) as entries:
                return list(entries)
        except OSError:
            return []

    def stats(self) -> dict:
        files = self._files()
        return {"folder": self.folder, "limit_bytes": self.limit, "files": len(files),
                "bytes": sum(size for _, size, _ in files)}

    def clear(self) -> int:
        removed = 0
        for _, size, path in self._files():
            if self._drop(path):
                removed += size
        return removed

    @staticmethod
    def _drop(path: str) -> bool:
        try:
            os.unlink(path)
            return True
        except OSError:
            return False
