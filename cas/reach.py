"""Reachability: which chunks a file or tree references, and what each root costs alone or shares with others.

Reads manifests only (metadata), never chunk data. Used by `cas du`, `cas diff` and `cas runs`.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from .errors import IntegrityError
from .index import INLINE
from .pack import TREE_MANIFEST


def refuse_tree_as_file(index, tree: bytes, entry) -> None:
    """A tree's file entry must name a file: one naming a tree would nest trees as deep as the input
    wants (walks would recurse with it), and no put writes one."""
    loc = index.object_location(entry.digest)
    if loc is not None and loc.kind == TREE_MANIFEST:
        raise IntegrityError(f"tree {tree.hex()} is damaged: its file {entry.path!r} names a folder",
                             subject=tree.hex())


@dataclass(frozen=True)
class Footprint:
    """The distinct chunks an object references, with their raw and stored sizes."""

    chunks: frozenset[bytes]
    logical: int


class Reach:
    """Memoized chunk sets of stored objects (files, trees, inline content) of one store."""

    def __init__(self, store):
        self.store = store
        self._memo: dict[bytes, Footprint] = {}
        self._sizes: dict[bytes, tuple[int, int]] = {}  # chunk id → (raw, stored)

    def footprint(self, digest: bytes) -> Footprint:
        if digest in self._memo:
            return self._memo[digest]
        loc = self.store.index.object_location(digest)
        if loc is None:
            fp = Footprint(frozenset(), 0)
        elif loc.kind == INLINE:
            self._sizes[digest] = (loc.size, loc.size)
            fp = Footprint(frozenset([digest]) if loc.size else frozenset(), loc.size)
        elif loc.kind == TREE_MANIFEST:
            tree = self.store._manifest(digest, loc)
            chunks: set[bytes] = set()
            for entry in tree.entries:
                if entry.kind == "file":
                    refuse_tree_as_file(self.store.index, digest, entry)
                    chunks |= self.footprint(entry.digest).chunks
            fp = Footprint(frozenset(chunks), tree.size)
        else:
            manifest = self.store._manifest(digest, loc)
            ids = frozenset(manifest.chunk_id(i) for i in range(len(manifest)))
            for chunk_id in ids:
                if chunk_id not in self._sizes:
                    c = self.store.index.chunk(chunk_id)
                    self._sizes[chunk_id] = (c.raw_len, c.stored_len) if c is not None else (0, 0)
            fp = Footprint(ids, manifest.size)
        self._memo[digest] = fp
        return fp

    def raw(self, chunks) -> int:
        return sum(self._sizes[c][0] for c in chunks)

    def stored(self, chunks) -> int:
        return sum(self._sizes[c][1] for c in chunks)


def usage(reach: Reach, roots: dict[str, bytes], focus: list[str]) -> dict:
    """For each root in focus: logical bytes, bytes of chunks no other root references, bytes it shares.

    `roots` maps every root of the store (records and pins) to its digest; the exclusive bytes of a
    root are what deleting it alone would free. Sizes are stored (compressed) bytes.
    """
    owners: Counter = Counter()
    for digest in set(roots.values()):
        owners.update(reach.footprint(digest).chunks)
    # two roots naming the same digest share everything: count roots, not digests
    per_digest = Counter(roots.values())
    rows, union = [], set()
    for name in focus:
        fp = reach.footprint(roots[name])
        alone = [c for c in fp.chunks if owners[c] == 1 and per_digest[roots[name]] == 1]
        union |= fp.chunks
        rows.append({"ref": name, "logical_bytes": fp.logical, "stored_bytes": reach.stored(fp.chunks),
                     "exclusive_bytes": reach.stored(alone),
                     "shared_bytes": reach.stored(fp.chunks) - reach.stored(alone)})
    total = reach.stored(union)
    exclusive = sum(r["exclusive_bytes"] for r in rows)
    return {"versions": rows, "total_bytes": total, "exclusive_bytes": exclusive, "shared_bytes": total - exclusive}


def diff(reach: Reach, a: bytes, b: bytes) -> dict:
    fa, fb = reach.footprint(a), reach.footprint(b)
    both = fa.chunks & fb.chunks
    return {"a": {"digest": a.hex(), "size": fa.logical}, "b": {"digest": b.hex(), "size": fb.logical},
            "shared_bytes": reach.raw(both), "only_a_bytes": reach.raw(fa.chunks - both),
            "only_b_bytes": reach.raw(fb.chunks - both), "shared_chunks": len(both),
            "only_a_chunks": len(fa.chunks - both), "only_b_chunks": len(fb.chunks - both)}
