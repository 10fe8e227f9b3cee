"""File manifests (ordered chunk lists, held as packed bytes) and tree manifests (sorted folder entries)."""

from __future__ import annotations

import posixpath
import sys
from array import array
from bisect import bisect_right
from itertools import accumulate

import msgpack

from . import framing
from .config import MAX_CHUNK_SIZE
from .datatype import datatype
from .digest import DIGEST_SIZE, tree_digest
from .errors import IntegrityError, InvalidInput
from .pack import MAX_MANIFEST

MANIFEST_FORMAT = 1
FILE, LINK, DIR = "file", "link", "dir"
MAX_PATH = 4096  # bytes of a path or link target in a tree (PATH_MAX)
MAX_DEPTH = 256  # parts of a path in a tree: far from the recursion limit of anything that walks a restored folder


def _u32(values) -> array:
    a = array("I", values)
    assert a.itemsize == 4
    return a


@datatype(frozen=True, slots=True)
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
        return _bounded(msgpack.packb({"v": MANIFEST_FORMAT, "size": self.size, "ids": self.ids,
                                       "sizes": sizes.tobytes()}, use_bin_type=True), "file")

    @classmethod
    def from_bytes(cls, data: bytes, *, name: str) -> FileManifest:
        """A file manifest read from storage: ids and u32 sizes of 1..MAX_CHUNK_SIZE that add up to its size."""
        what = f"file manifest {name}"
        doc = framing.unpack(data, framing.Limits(bin=len(data), str=16, array=0, map=8), what=what, subject=name)
        try:
            if type(doc) is not dict or doc.get("v") != MANIFEST_FORMAT or type(doc["v"]) is not int:
                raise ValueError("unknown manifest format")
            ids, packed = doc["ids"], doc["sizes"]
            if type(ids) is not bytes or type(packed) is not bytes or len(packed) % 4:
                raise ValueError("ids and sizes must be bin, sizes a multiple of 4 bytes")
            sizes = array("I")
            sizes.frombytes(packed)
            if sys.byteorder == "big":
                sizes.byteswap()
            size = framing.integer(doc["size"], "size")
            if len(ids) != DIGEST_SIZE * len(sizes) or sum(sizes) != size:
                raise ValueError("its ids, sizes and size disagree")
            if sizes and not (min(sizes) >= 1 and max(sizes) <= MAX_CHUNK_SIZE):
                raise ValueError("a chunk size is out of bounds")
        except (ValueError, KeyError) as exc:
            raise framing.damaged(what, name, exc) from None
        return cls(size, ids, sizes)


def _bounded(raw: bytes, what: str) -> bytes:
    """A manifest's bytes, refused (as no reader would read it) if longer than MAX_MANIFEST."""
    if len(raw) > MAX_MANIFEST:
        raise InvalidInput(f"cannot store this {what}: its manifest would take {len(raw)} bytes, more than the "
                           f"{MAX_MANIFEST} a manifest may have", subject=what)
    return raw


def locate(offsets: array, pos: int) -> int:
    """Index of the chunk holding byte `pos` (offsets as returned by FileManifest.offsets())."""
    return bisect_right(offsets, pos) - 1


@datatype(frozen=True, slots=True)
class TreeEntry:
    path: str          # relative POSIX path
    kind: str          # file, link or dir
    executable: bool = False
    digest: bytes = b""  # file digest (files only)
    size: int = 0
    target: str = ""   # link target (links only)

    def to_list(self) -> list:
        return [self.path, self.kind, self.executable, self.digest, self.size, self.target]


@datatype(frozen=True, slots=True)
class TreeManifest:
    entries: tuple[TreeEntry, ...]

    @property
    def size(self) -> int:
        return sum(e.size for e in self.entries if e.kind == FILE)

    def to_bytes(self) -> bytes:
        """Canonical encoding: entries sorted by path, fixed field order; InvalidInput for a tree no reader
        would accept (a path or link target over MAX_PATH bytes or MAX_DEPTH parts, over MAX_MANIFEST in all)."""
        for e in self.entries:
            if max(len(e.path.encode()), len(e.target.encode())) > MAX_PATH or e.path.count("/") >= MAX_DEPTH:
                raise InvalidInput(f"cannot store {e.path[:200]!r}: paths and link targets in a tree are at most "
                                   f"{MAX_PATH} bytes and {MAX_DEPTH} levels deep", subject=e.path[:200])
        rows = [e.to_list() for e in sorted(self.entries, key=lambda e: e.path)]
        return _bounded(msgpack.packb({"v": MANIFEST_FORMAT, "entries": rows}, use_bin_type=True), "tree")

    def digest(self) -> bytes:
        return tree_digest(self.to_bytes())

    @classmethod
    def from_bytes(cls, data: bytes, *, name: str) -> TreeManifest:
        """A tree manifest read from storage: entries of the right types, paths of at most MAX_DEPTH parts."""
        what = f"tree manifest {name}"
        limits = framing.Limits(bin=64, str=MAX_PATH, array=len(data), map=8)
        doc = framing.unpack(data, limits, what=what, subject=name)
        try:
            if type(doc) is not dict or doc.get("v") != MANIFEST_FORMAT or type(doc["v"]) is not int:
                raise ValueError("unknown manifest format")
            if type(doc["entries"]) is not list:
                raise ValueError("entries are not an array")
            return cls(tuple(_tree_entry(row) for row in doc["entries"]))
        except (ValueError, KeyError) as exc:
            raise framing.damaged(what, name, exc) from None


_ENTRY_TYPES = (str, str, bool, bytes, int, str)


def _tree_entry(row) -> TreeEntry:
    if type(row) is not list or len(row) != 6 or any(type(v) is not t for v, t in zip(row, _ENTRY_TYPES)):
        raise ValueError("an entry is not [str, str, bool, bin, int, str]")
    entry = TreeEntry(*row)
    if entry.kind not in (FILE, LINK, DIR) or entry.path.count("/") >= MAX_DEPTH:
        raise ValueError(f"entry {entry.path[:80]!r}: unknown kind or deeper than {MAX_DEPTH} levels")
    framing.integer(entry.size, "size")
    return entry


def check_safe(tree: TreeManifest, *, name: str) -> None:
    """Refuse a tree that would write outside its destination (the rules of tarfile's data filter).

    Every entry's parent folder must have a "dir" entry (cas writes one for each), so nothing lies
    under a link and a restore creates each folder right after its parent, never a chain of them.
    """
    kinds: dict[str, str] = {}
    for e in tree.entries:
        p = e.path
        bad = (not p or p.startswith("/") or "\x00" in p or e.kind not in (FILE, LINK, DIR)
               or any(part in ("", ".", "..") for part in p.split("/")) or p in kinds)
        if bad:
            raise IntegrityError(f"refusing to restore tree {name}: unsafe path {p!r}", subject=name)
        kinds[p] = e.kind
        if e.kind == LINK:
            t = e.target
            inside = posixpath.normpath(posixpath.join(posixpath.dirname(p), t))
            if not t or t.startswith("/") or "\x00" in t or inside == ".." or inside.startswith("../"):
                raise IntegrityError(f"refusing to restore tree {name}: link {p!r} points outside ({t!r})",
                                     subject=name)
        if e.kind == FILE and len(e.digest) != DIGEST_SIZE:
            raise IntegrityError(f"tree {name}: file {p!r} has no digest", subject=name)
    for e in tree.entries:
        parent = posixpath.dirname(e.path)
        if parent and kinds.get(parent) == LINK:
            raise IntegrityError(f"refusing to restore tree {name}: {e.path!r} lies under a link", subject=name)
        if parent and kinds.get(parent) != DIR:
            raise IntegrityError(f"refusing to restore tree {name}: {e.path!r} has no entry for its folder",
                                 subject=name)
