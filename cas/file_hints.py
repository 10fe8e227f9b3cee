"""File hints: what names a file on disk as it is now (its identity), and a remembered file read back
as the bases of step deltas.

Hints only. An identity is a file's path with its device, inode, size and times: a file that was
written, replaced or touched since has another one and is not used. And every byte taken from a
parent's local copy is checked against the id of the chunk it stands for before a delta is made
against it; a chunk that does not check out is read from the store instead.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Callable
from typing import TYPE_CHECKING

from .digest import hash_bytes

if TYPE_CHECKING:
    from .restore import BaseSource

REMEMBER_FROM = 1 << 20  # files this large have their digest (and their place) remembered
_STAT = struct.Struct("<QQQqq")  # device, inode, size, mtime ns, ctime ns; then the absolute path


def identity(path: str, st: os.stat_result) -> bytes | None:
    """A key naming this file as it is now (path, inode, size, times); None for files too small to matter."""
    if st.st_size < REMEMBER_FROM:
        return None
    return _STAT.pack(st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns) + \
        os.fsencode(os.path.abspath(path))


def still_there(ident: bytes) -> str | None:
    """The path of the file an identity names if that file is still as it was then, else None."""
    if len(ident) <= _STAT.size:
        return None
    path = os.fsdecode(ident[_STAT.size:])
    try:
        st = os.stat(path)
    except OSError:
        return None
    return path if identity(path, st) == ident else None


class ParentCopy:
    """Delta bases read from a local copy of the parent file where it holds them, else from the store.

    Called like the store's base reader (ChunkReader.as_base): chunk id → a function reading its raw
    bytes, verified, and the facts of its stored copy (ChunkReader.base_facts). Reading 64 KiB from a
    file and hashing it costs a fraction of reading the stored chunk, decompressing it and, for a
    delta, rebuilding it through its own bases.
    """

    def __init__(self, fd: int, spans: dict[bytes, tuple[int, int]], from_store: Callable[[bytes], BaseSource],
                 facts: Callable[[bytes], tuple[int, int | None, bytes | None]]):
        self.fd, self.spans, self.from_store, self.facts = fd, spans, from_store, facts
        self.local = self.stored = 0  # bases read from each source, for tests and benchmarks

    def __call__(self, chunk_id: bytes) -> BaseSource:
        span = self.spans.get(chunk_id)
        if span is None:
            return self._stored(chunk_id)
        return (lambda: self._read(chunk_id, span), *self.facts(chunk_id))

    def _read(self, chunk_id: bytes, span: tuple[int, int]) -> bytes:
        try:
            raw = os.pread(self.fd, span[1] - span[0], span[0])
        except OSError:
            raw = b""
        if hash_bytes(raw) == chunk_id:
            self.local += 1
            return raw
        return self._stored(chunk_id)[0]()

    def _stored(self, chunk_id: bytes) -> BaseSource:
        self.stored += 1
        return self.from_store(chunk_id)


def open_parent_copy(ident: bytes | None, chunks: list[tuple[int, int, bytes]],
                     from_store: Callable[[bytes], BaseSource],
                     facts: Callable[[bytes], tuple[int, int | None, bytes | None]]) -> ParentCopy | None:
    """A ParentCopy over the file `ident` names if it is still there and readable (the caller closes
    its fd); chunks: (start, end, id) of the parent's chunks."""
    path = still_there(ident) if ident is not None else None
    if path is None:
        return None
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    return ParentCopy(fd, {chunk_id: (start, end) for start, end, chunk_id in chunks}, from_store, facts)
