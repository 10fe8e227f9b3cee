"""Checks an LMDB data file with plain reads, before anything maps it: would LMDB crash on it?

LMDB trusts its file: a page past the end of a truncated file is a SIGBUS, a garbled page an
assertion (SIGABRT) or a wild read. `damage` walks what the newest meta page reaches (the free list,
the main database, every named database, overflow pages) and checks each page's number, type and
bounds, each node's size, each database's counts, and that the free list names no page in use.
It reads each reachable page once; the caller decides when to run it.
"""

from __future__ import annotations

import os
import struct
import threading

_HEAD = struct.Struct("<QHHHH")     # page number, pad, flags, lower, upper (overflow: page count at 12)
_META = struct.Struct("<II")        # magic, version (right after the page header)
# pad (the page size, in the free db), flags, depth, branch, leaf, overflow, entries, root
_DB = struct.Struct("<IHHQQQQQ")
_NODE = struct.Struct("<HHHH")      # lo, hi (data size, or child page with flags), flags, key size
_TAIL = struct.Struct("<QQ")        # last page, txn id
HEAD = _HEAD.size
META_LEN = HEAD + 136
MAGIC, VERSION = 0xBEEFC0DE, 1
BRANCH, LEAF, OVERFLOW, META = 1, 2, 4, 8
BIGDATA, SUBDATA = 1, 2
NO_PAGE = (1 << 64) - 1
INTEGERKEY = 8
MAX_DEPTH = 16


MEMO = "checked"  # beside data.mdb: its stat as cas last checked or wrote it
_trusted: dict[str, tuple] = {}  # folder → the stat this process last knew sound


class Damaged(Exception):
    """The file is not what its own meta pages say."""


def stamp(folder: str) -> tuple | None:
    """Identity and change stamp of the folder's data.mdb (None if absent)."""
    try:
        st = os.stat(os.path.join(folder, "data.mdb"))
    except OSError:
        return None  # absent, or the folder is unusable: opening it will say so
    return st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns


def checked_damage(folder: str) -> str | None:
    """damage() of the folder's data.mdb, skipped while the file is as cas last checked or wrote it.

    Damage made behind cas's back changes the file's ctime, so it is looked for; damage that keeps
    size, mtime and ctime (bit rot under a healthy file system) is not.
    """
    before = stamp(folder)
    if before is None:
        return None
    if before == _trusted.get(folder) or before == _memo(folder):
        _trusted[folder] = before
        return None
    found = damage(os.path.join(folder, "data.mdb"))
    if found is None and stamp(folder) == before:
        _remember(folder, before)
    return found


def note_commit(folder: str, before: tuple | None) -> None:
    """After a commit of ours: a file that was sound right before it is sound after it."""
    if before is not None and (before == _trusted.get(folder) or before == _memo(folder)):
        _remember(folder, stamp(folder))


def note_new(folder: str) -> None:
    """A data file LMDB has just made (there was none): sound, so the next open need not read it."""
    _remember(folder, stamp(folder))


def _memo(folder: str) -> tuple | None:
    try:
        with open(os.path.join(folder, MEMO)) as f:
            return tuple(int(x) for x in f.read().split())
    except (OSError, ValueError):
        return None


def _remember(folder: str, st: tuple | None) -> None:
    if st is None:
        return
    _trusted[folder] = st
    memo = os.path.join(folder, MEMO)
    tmp = f"{memo}.{os.getpid()}-{threading.get_ident()}"
    try:
        with open(tmp, "w") as f:
            f.write(" ".join(map(str, st)))
        os.replace(tmp, memo)
    except OSError:
        try:
            os.unlink(tmp)
        except OSError:
            pass  # only a saved check is lost: the next open checks again


def damage(path: str) -> str | None:
    """Why LMDB must not open the data file at path, or None if it is sound (absent and empty are sound).

    A writer may commit while we read: damage seen while the newest txn id moved is looked at again.
    """
    for _ in range(3):
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            return None
        try:
            walk = _Walk(fd, os.fstat(fd).st_size)
            try:
                walk.run()
                return None
            except Damaged as exc:
                if walk.txn is None or walk.txn == walk.newest_txn():
                    return str(exc)
        finally:
            os.close(fd)
    return None  # writers kept committing while we looked: LMDB itself is using this file


class _Walk:
    def __init__(self, fd: int, size: int):
        self.fd, self.size = fd, size
        self.psize = 4096
        self.txn: int | None = None
        self.seen: set[int] = set()
        self.free: list[int] = []

    def run(self) -> None:
        if self.size == 0:
            return  # LMDB starts a new file
        m0 = self._meta(0)
        self.psize = m0[0]
        m1 = self._meta(1)
        if m1[0] != self.psize:
            raise Damaged("the meta pages disagree on the page size")
        _, free_db, main_db, self.last, self.txn = m1 if m1[4] > m0[4] else m0
        self.pages = min(self.size // self.psize, self.last + 1)
        self._tree(free_db, INTEGERKEY, free=True)
        for named in self._tree(main_db, 0):
            self._tree(named, 0)
        if any(not 2 <= pgno <= self.last or pgno in self.seen for pgno in self.free):
            raise Damaged("the free list names a page in use or out of range")

    def newest_txn(self) -> int | None:
        try:
            return max(self._meta(0)[4], self._meta(1)[4])
        except Damaged:
            return None

    def _meta(self, slot: int):
        raw = os.pread(self.fd, META_LEN, slot * self.psize)
        if len(raw) < META_LEN:
            raise Damaged(f"meta page {slot} is cut off")
        pgno, _, flags, _, _ = _HEAD.unpack_from(raw)
        magic, version = _META.unpack_from(raw, HEAD)
        if pgno != slot or not flags & META or magic != MAGIC or version != VERSION:
            raise Damaged(f"meta page {slot} is not an LMDB meta page")
        free_db, main_db = _DB.unpack_from(raw, HEAD + 24), _DB.unpack_from(raw, HEAD + 72)
        last, txn = _TAIL.unpack_from(raw, HEAD + 120)
        psize = free_db[0]
        if not 512 <= psize <= 65536 or psize & (psize - 1) or last < 1 or (txn and txn % 2 != slot):
            raise Damaged(f"meta page {slot} has impossible values")
        return psize, free_db, main_db, last, txn

    def _tree(self, db: tuple, flags: int, *, free: bool = False) -> list[tuple]:
        """Walk one database; returns the database records it holds (the named databases of the main one)."""
        _, db_flags, depth, *expected, root = db
        if db_flags != flags:
            raise Damaged("a database has unexpected flags")
        self.named: list = []
        self.counts, self.is_free = [0, 0, 0, 0], free  # branch, leaf, overflow pages; entries
        if root != NO_PAGE:
            if not 1 <= depth <= MAX_DEPTH:
                raise Damaged("a database has an impossible depth")
            self._subtree(root, depth)
        if self.counts != expected or (root == NO_PAGE and depth):
            raise Damaged("a database's page or entry counts do not match its pages")
        return self.named

    def _subtree(self, pgno: int, depth: int) -> None:
        page = self._page(pgno, LEAF if depth == 1 else BRANCH)
        self.counts[1 if depth == 1 else 0] += 1
        ptrs, room = self._nodes(page)
        used = 0
        for ptr in ptrs:
            lo, hi, flags, ksize = _NODE.unpack_from(page, ptr)
            end = ptr + _NODE.size + ksize
            if depth == 1:
                end += self._leaf_node(page, pgno, end, lo | hi << 16, flags, ksize)
            if end > self.psize:
                raise Damaged(f"page {pgno} has a node past its end")
            used += (end - ptr + 1) & ~1
            if depth > 1:
                self._subtree(lo | hi << 16 | flags << 32, depth - 1)
        if used != room:
            raise Damaged(f"page {pgno}'s nodes do not fill it")  # LMDB keeps them packed: a size is wrong

    def _leaf_node(self, page: bytes, pgno: int, end: int, dsize: int, flags: int, ksize: int) -> int:
        """Check one leaf node whose key ends at end; returns the size of its data within the page."""
        self.counts[3] += 1
        big = flags & BIGDATA
        if not 1 <= ksize <= 511 or flags & ~(BIGDATA | SUBDATA) or (big and flags & SUBDATA):
            raise Damaged(f"page {pgno} has a malformed node")
        if end + (8 if big else dsize) > self.psize:
            raise Damaged(f"page {pgno} has a node past its end")
        if big:
            data = self._overflow(struct.unpack_from("<Q", page, end)[0], dsize)
        else:
            data = page[end:end + dsize]
        if flags & SUBDATA:
            if dsize != _DB.size:
                raise Damaged(f"page {pgno} names a database with a malformed record")
            self.named.append(_DB.unpack(data))
        elif self.is_free:
            count = struct.unpack_from("<Q", data)[0] if dsize >= 8 else -1
            if not 0 <= count < dsize // 8:
                raise Damaged(f"page {pgno} has a malformed free list")
            self.free.extend(struct.unpack_from(f"<{count}Q", data, 8))
        return 8 if big else dsize

    def _overflow(self, pgno: int, dsize: int) -> bytes:
        """Claim a value's overflow pages; returns the value only where the walk needs it (the free list)."""
        head = self._page(pgno, OVERFLOW)
        npages = struct.unpack_from("<I", head, 12)[0]
        if npages < 1 or pgno + npages > self.pages or dsize > npages * self.psize - HEAD:
            raise Damaged(f"overflow page {pgno} runs past the end of the file")
        for more in range(pgno + 1, pgno + npages):
            self._claim(more)
        self.counts[2] += npages
        return os.pread(self.fd, dsize, pgno * self.psize + HEAD) if self.is_free else b""

    def _page(self, pgno: int, kind: int) -> bytes:
        self._claim(pgno)
        page = os.pread(self.fd, self.psize, pgno * self.psize)
        if len(page) < self.psize:
            raise Damaged(f"page {pgno} is cut off")
        number, _, flags, _, _ = _HEAD.unpack_from(page)
        if number != pgno or flags != kind:
            raise Damaged(f"page {pgno} is not the page its parent names")
        return page

    def _claim(self, pgno: int) -> None:
        if not 2 <= pgno < self.pages:
            raise Damaged(f"page {pgno} lies past the end of the file ({self.size} bytes)")
        if pgno in self.seen:
            raise Damaged(f"page {pgno} is reached twice")
        self.seen.add(pgno)

    def _nodes(self, page: bytes) -> tuple[tuple[int, ...], int]:
        """The page's node offsets, and the room its nodes must fill."""
        _, _, _, lower, upper = _HEAD.unpack_from(page)
        if not HEAD < lower <= upper <= self.psize or (lower - HEAD) % 2:
            raise Damaged("a page has impossible bounds")
        ptrs = struct.unpack_from(f"<{(lower - HEAD) // 2}H", page, HEAD)
        if min(ptrs) < upper or max(ptrs) > self.psize - _NODE.size:
            raise Damaged("a page has a node outside it")
        return ptrs, self.psize - upper
