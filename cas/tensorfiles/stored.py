"""Tensors of stored files: a layout read from the chunks holding a file's header, one tensor's bytes,
and which tensors differ between two stored checkpoints.

Each reads only the chunks it needs, each verified against its id (cas.restore.FileReader). A
layout read this way comes from the file's header bytes only: it says where tensors are, and the
bytes handed out are checked chunk by chunk, never trusted from the header.
"""

from __future__ import annotations

from ..datatype import datatype
from ..errors import InvalidInput, NotFound
from ..restore import FileReader
from . import Layout, Tensor, read_layout

_UNREAD = object()


@datatype
class StoredCheckpoint:
    """A stored file opened for its tensors: its reader (seekable, verified) and layout (None: bytes),
    read from the header's chunks when first asked for."""

    ref: str
    reader: FileReader
    _layout: object = _UNREAD
    _chunks: list[tuple[int, int, bytes]] | None = None

    @property
    def layout(self) -> Layout | None:
        if self._layout is _UNREAD:
            self._layout = read_layout(self.read, self.reader.size)
        return self._layout  # type: ignore[return-value]

    @property
    def digest(self) -> bytes:
        return self.reader.digest

    @property
    def size(self) -> int:
        return self.reader.size

    def read(self, start: int, end: int) -> bytes:
        self.reader.seek(start)
        return self.reader.read(end - start)

    @property
    def chunks(self) -> list[tuple[int, int, bytes]]:
        if self._chunks is None:
            self._chunks = self.reader.chunks
        return self._chunks

    @property
    def tensors(self) -> tuple[Tensor, ...]:
        return self.layout.tensors if self.layout is not None else ()

    def tensor(self, name: str) -> Tensor:
        found = next((t for t in self.tensors if t.name == name), None)
        if found is None:
            what = "is not a checkpoint cas can read tensors of" if self.layout is None else f"has no tensor {name!r}"
            raise NotFound(f"{self.ref} {what} (`cas show {self.ref}` lists its tensors)", subject=name)
        return found

    def tensor_bytes(self, name: str) -> bytes:
        t = self.tensor(name)
        if not t.contiguous:
            raise InvalidInput(f"tensor {name!r} of {self.ref} is a strided view: its bytes are not one range",
                               subject=name)
        return self.read(t.offset, t.end)


def open_checkpoint(store, ref: str) -> StoredCheckpoint:
    """The stored file at ref, its layout read when first asked for (reading it costs the chunks that
    hold the header, which for a zip archive are spread over the file)."""
    return StoredCheckpoint(ref, store.open_file(ref))


def tensor_diff(a: StoredCheckpoint, b: StoredCheckpoint) -> list[dict]:
    """Tensors added, removed or changed from a to b (unchanged ones are left out), in b's order then
    a's removed ones. A changed tensor's changed_bytes counts the bytes that differ; pieces whose
    chunks have the same id in both files are equal without being read."""
    before = {t.name: t for t in a.tensors}
    after = {t.name: t for t in b.tensors}
    out = []
    for name, t in after.items():
        old = before.get(name)
        if old is None:
            out.append({"name": name, "status": "added", "size": t.size, "changed_bytes": t.size})
            continue
        if (old.dtype, old.shape, old.contiguous, t.contiguous) != (t.dtype, t.shape, True, True):
            out.append({"name": name, "status": "changed", "size": t.size, "changed_bytes": t.size})
            continue
        changed = _changed_bytes(a, old, b, t)
        if changed:
            out.append({"name": name, "status": "changed", "size": t.size, "changed_bytes": changed})
    out += [{"name": name, "status": "removed", "size": t.size, "changed_bytes": t.size}
            for name, t in before.items() if name not in after]
    return out


def _pieces(ckpt: StoredCheckpoint, t: Tensor) -> list[tuple[int, int, bytes | None]]:
    """(start, end) relative to the tensor of the stretches its chunks cut it into, with the chunk id
    when the chunk lies wholly inside the tensor (else None: it also holds other bytes)."""
    out = []
    for start, end, chunk_id in ckpt.chunks:
        if end <= t.offset or start >= t.end:
            continue
        inside = start >= t.offset and end <= t.end
        out.append((max(start, t.offset) - t.offset, min(end, t.end) - t.offset, chunk_id if inside else None))
    return out


def _changed_bytes(a: StoredCheckpoint, ta: Tensor, b: StoredCheckpoint, tb: Tensor) -> int:
    import numpy as np
    same = {(s, e, cid) for s, e, cid in _pieces(a, ta) if cid is not None}
    changed = 0
    for start, end, cid in _pieces(b, tb):
        if cid is not None and (start, end, cid) in same:
            continue
        x = np.frombuffer(a.read(ta.offset + start, ta.offset + end), dtype=np.uint8)
        y = np.frombuffer(b.read(tb.offset + start, tb.offset + end), dtype=np.uint8)
        changed += int(np.count_nonzero(x != y))
    return changed
