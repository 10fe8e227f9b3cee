"""A bounded cache, on local disk, of the blobs read from a remote store: a second read of the same
version needs no request for its chunks.

One file per blob as it is stored in its pack (compressed), named by the BLAKE3 of its place (pack,
offset, length) and holding the BLAKE3 of its bytes before them: a file that does not match is a
miss (and is removed), and every blob served is still decoded and checked against its own hash by
the reader, as any blob. Files are written to a temp name and renamed, so processes can share the
folder. Least recently used goes first: a hit touches the file's time; once a process has added a
tenth of the limit since it last looked (and on its first write), it takes the folder's lock, adds
up the sizes and removes the oldest files until the folder is at 90 % of the limit.

The size is `CAS_CHUNK_CACHE_SIZE` (`20GiB`, `500MiB`, a number of bytes; `0` turns the cache off;
default 10 GiB); the folder is `<cache dir>/<store id>/chunks`. Local stores are not cached.
"""

from __future__ import annotations

import fcntl
import os
import re

from .digest import hash_bytes
from .errors import InvalidInput

DEFAULT_SIZE = 10 << 30
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(|b|k|kb|kib|m|mb|mib|g|gb|gib|t|tb|tib)\s*$", re.I)
_UNITS = {"": 1, "b": 1, "k": 1 << 10, "kb": 1000, "kib": 1 << 10, "m": 1 << 20, "mb": 1000 ** 2, "mib": 1 << 20,
          "g": 1 << 30, "gb": 1000 ** 3, "gib": 1 << 30, "t": 1 << 40, "tb": 1000 ** 4, "tib": 1 << 40}
_CHECK = 32  # bytes of BLAKE3 before a blob's stored bytes


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


class ChunkCache:
    def __init__(self, folder: str, limit: int):
        self.folder, self.limit = folder, limit
        self._added = 0
        self._looked = False  # whether this process has added up the folder yet

    def _path(self, pack_id: bytes, offset: int, length: int) -> str:
        name = hash_bytes(pack_id + offset.to_bytes(8, "little") + length.to_bytes(8, "little")).hex()
        return os.path.join(self.folder, name[:2], name)

    def get(self, pack_id: bytes, offset: int, length: int) -> bytes | None:
        path = self._path(pack_id, offset, length)
        try:
            with open(path, "rb") as f:
                data = f.read()
        except OSError:
            return None
        body = data[_CHECK:]
        if len(body) != length or hash_bytes(body) != data[:_CHECK]:
            self._drop(path)  # damaged or cut short: a miss
            return None
        try:
            os.utime(path)  # recently used
        except OSError:
            pass
        return body

    def put(self, pack_id: bytes, offset: int, stored) -> None:
        """Keep a blob's stored bytes (read from the store: the reader verifies them whenever served)."""
        if len(stored) + _CHECK > self.limit // 10:
            return  # one blob never pushes out a tenth of the cache
        path = self._path(pack_id, offset, len(stored))
        temp = f"{path}.tmp-{os.getpid()}-{os.urandom(4).hex()}"
        try:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(temp, "wb") as f:
                f.write(hash_bytes(stored))
                f.write(stored)
            os.replace(temp, path)
        except OSError:
            self._drop(temp)  # a full disk only means no cache
            return
        self._added += len(stored) + _CHECK
        if not self._looked or self._added >= self.limit // 10:
            self.evict()

    def evict(self) -> int:
        """Remove the least recently used files until the folder is at 90 % of the limit (when it is over
        the limit); returns the bytes removed. Under the folder's lock: one process evicts at a time."""
        self._looked, self._added = True, 0
        os.makedirs(self.folder, exist_ok=True)
        with open(os.path.join(self.folder, ".lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            files = self._files()
            total = sum(size for _, size, _ in files)
            if total <= self.limit:
                return 0
            freed = 0
            for _, size, path in sorted(files):
                if total - freed <= self.limit * 9 // 10:
                    break
                if self._drop(path):
                    freed += size
            return freed

    def _files(self) -> list[tuple[float, int, str]]:
        """(time last used, size, path) of every cached blob."""
        out = []
        for top in os.scandir(self.folder) if os.path.isdir(self.folder) else ():
            if not top.is_dir():
                continue
            for entry in os.scandir(top.path):
                try:
                    st = entry.stat()
                except OSError:
                    continue
                out.append((st.st_mtime, st.st_size, entry.path))
        return out

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
