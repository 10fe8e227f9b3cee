"""File manifests (ordered chunk lists, held as packed bytes) and tree manifests (sorted folder entries)."""

from __future__ import annotations

import posixpath
import sys
from array import array
from bisect import bisect_right
from dataclasses import dataclass
from itertools import accumulate

import msgpack

from .digest import DIGEST_SIZE, tree_digest
from .errors import IntegrityError

MANIFEST_FORMAT = 1
FILE, LINK, DIR = "file", "link", "dir"


def _u32(values) -> array:
    a = array("I", values)
    assert a.itemsize == 4
    return a


@dataclass(frozen=True, slots=True)
class FileManifest:
    """A file: its size and its chunks, as 32-byte ids back to back and u32 sizes (no object per chunk)."""

    size: int
    ids: bytes
    sizes: array

    def __len__(self) -> int:
        return len(self.sizes)

    def chunk_id(self, i: int) -> bytes:
        return self.ids[i * DIGEST_SIZE:(i + 1) * DIGEST_SIZE]

    def offsets(self) -> array:
        """Start offset of each chunk, plus the file size at the end (for bisect)."""
        return array("Q", accumulate(self.sizes, initial=0))

    def to_bytes(self) -> bytes:
        sizes = _u32(self.sizes)  # a copy: the stored form is little-endian whatever the machine
        if sys.byteorder == "big":
            sizes.byteswap()
        return msgpack.packb({"v": MANIFEST_FORMAT, "size": self.size, "ids": self.ids,
                              "sizes": sizes.tobytes()}, use_bin_type=True)

    @classmethod
    def from_bytes(cls, data: bytes, *, name: str) -> "FileManifest":
        try:
            doc = msgpack.unpackb(data, raw=False, max_map_len=8, max_str_len=16, max_bin_len=len(data))
            if doc["v"] != MANIFEST_FORMAT:
                raise ValueError(f"unknown manifest format {doc['v']}")
            sizes = array("I")
            sizes.frombytes(doc["sizes"])
            if sys.byteorder == "big":
                sizes.byteswap()
            manifest = cls(int(doc["size"]), doc["ids"], sizes)
        except (ValueError, KeyError, TypeError, msgpack.UnpackException) as exc:
            raise IntegrityError(f"unreadable file manifest {name}: {exc}", subject=name) from None
        if len(manifest.ids) != DIGEST_SIZE * len(sizes) or sum(sizes) != manifest.size:
            raise IntegrityError(f"inconsistent file manifest {name}", subject=name)
        return manifest


def locate(offsets: array, pos: int) -> int:
    """Index of the chunk holding byte `pos` (offsets as returned by FileManifest.offsets())."""
    return bisect_right(offsets, pos) - 1


@dataclass(frozen=True, slots=True)
class TreeEntry:
    path: str          # relative POSIX path
    kind: str          # file, link or dir
    executable: bool = False
    digest: bytes = b""  # file digest (files only)
    size: int = 0
    target: str = ""   # link target (links only)

    def to_list(self) -> list:
        return [self.path, self.kind, self.executable, self.digest, self.size, self.target]


@dataclass(frozen=True, slots=True)
class TreeManifest:
    entries: tuple[TreeEntry, ...]

    @property
    def size(self) -> int:
        return sum(e.size for e in self.entries if e.kind == FILE)

    def to_bytes(self) -> bytes:
        """Canonical encoding: entries sorted by path, fixed field order."""
        rows = [e.to_list() for e in sorted(self.entries, key=lambda e: e.path)]
        return msgpack.packb({"v": MANIFEST_FORMAT, "entries": rows}, use_bin_type=True)

    def digest(self) -> bytes:
        return tree_digest(self.to_bytes())

    @classmethod
    def from_bytes(cls, data: bytes, *, name: str) -> "TreeManifest":
        try:
            doc = msgpack.unpackb(data, raw=False, max_map_len=8, max_str_len=65536, max_bin_len=64,
                                  max_array_len=len(data))
            if doc["v"] != MANIFEST_FORMAT:
                raise ValueError(f"unknown manifest format {doc['v']}")
            entries = tuple(TreeEntry(str(p), str(k), bool(x), bytes(d), int(s), str(t))
                            for p, k, x, d, s, t in doc["entries"])
        except (ValueError, KeyError, TypeError, msgpack.UnpackException) as exc:
            raise IntegrityError(f"unreadable tree manifest {name}: {exc}", subject=name) from None
        return cls(entries)


def check_safe(tree: TreeManifest, *, name: str) -> None:
    """Refuse a tree that would write outside its destination (the rules of tarfile's data filter)."""
    seen: set[str] = set()
    links = {e.path for e in tree.entries if e.kind == LINK}
    for e in tree.entries:
        p = e.path
        bad = (not p or p.startswith("/") or "\x00" in p or e.kind not in (FILE, LINK, DIR)
               or any(part in ("", ".", "..") for part in p.split("/")) or p in seen)
        if bad:
            raise IntegrityError(f"refusing to restore tree {name}: unsafe path {p!r}", subject=name)
        seen.add(p)
        parent = posixpath.dirname(p)
        while parent:
            if parent in links:
                raise IntegrityError(f"refusing to restore tree {name}: {p!r} lies under a link", subject=name)
            parent = posixpath.dirname(parent)
        if e.kind == LINK:
            t = e.target
            inside = posixpath.normpath(posixpath.join(posixpath.dirname(p), t))
            if not t or t.startswith("/") or "\x00" in t or inside == ".." or inside.startswith("../"):
                raise IntegrityError(f"refusing to restore tree {name}: link {p!r} points outside ({t!r})",
                                     subject=name)
        if e.kind == FILE and len(e.digest) != DIGEST_SIZE:
            raise IntegrityError(f"tree {name}: file {p!r} has no digest", subject=name)
