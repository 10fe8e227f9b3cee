"""Reachability: which chunks a file or tree references, and what each root costs alone or shares with others.

Reads manifests only (metadata), never chunk data, through the one walk (cas/walk.py) with the
REPORT policy. Used by `cas du`, `cas diff` and `cas runs`.
"""

from __future__ import annotations

from collections import Counter

from . import layout
from .datatype import datatype
from .errors import IntegrityError
from .index import INLINE
from .pack import TREE_MANIFEST
from .walk import REPORT, Damage, Walk, refuse_tree_as_file  # noqa: F401 (refuse_tree_as_file: its old home)


@datatype(frozen=True)
class Footprint:
    """The distinct chunks an object references, with their raw and stored sizes."""

    chunks: frozenset[bytes]
    logical: int


class Reach:
    """Memoized chunk sets of stored objects (files, trees, inline content) of one store.

    A missing or damaged object counts as no chunks, and is listed in `damaged`; `packs` are the
    pack ids the store holds (listed once here when not given), so chunks in a deleted pack are damage.
    """

    def __init__(self, store, *, packs=None):
        if packs is None:
            packs = {pid for key, _ in store.backend.list(layout.PACKS)
                     if (pid := layout.pack_id_from_key(key)) is not None}
        self.store = store
        self.walk = Walk(store, policy=REPORT, packs=packs)
        self._memo: dict[bytes, Footprint] = {}
        self._sizes: dict[bytes, tuple[int, int]] = {}  # chunk id → (raw, stored)

    @property
    def damaged(self) -> list[Damage]:
        return self.walk.damaged

    def footprint(self, digest: bytes) -> Footprint:
        if digest in self._memo:
            return self._memo[digest]
        node = self.walk.node(digest)
        if node is None:
            fp = Footprint(frozenset(), 0)
        elif node.kind == INLINE:
            self._sizes[digest] = (node.size, node.size)
            fp = Footprint(frozenset([digest]) if node.size else frozenset(), node.size)
        elif node.kind == TREE_MANIFEST:
            chunks: set[bytes] = set()
            for f in node.files:  # files only: the walk never lists a tree as a tree's file
                chunks |= self.footprint(f).chunks
            fp = Footprint(frozenset(chunks), node.size)
        else:
            ids = frozenset(node.chunks)
            new = [c for c in ids if c not in self._sizes]
            for chunk_id, c in zip(new, self.store.index.chunks_at(new)):
                self._sizes[chunk_id] = (c.raw_len, c.stored_len) if c is not None else (0, 0)
            fp = Footprint(ids, node.size)
        self._memo[digest] = fp
        return fp

    def raw(self, chunks) -> int:
        return sum(self._sizes[c][0] for c in chunks)

    def stored(self, chunks) -> int:
        return sum(self._sizes[c][1] for c in chunks)

    def refuse_damage(self, names) -> None:
        """Raise one IntegrityError line if any damage the walk met is reached from one of names."""
        names = set(names)
        hit = [d for d in self.damaged if names & set(d.roots)]
        if hit:
            first = hit[0]
            more = f" ({len(hit) - 1} more damaged objects)" if len(hit) > 1 else ""
            raise IntegrityError(f"{', '.join(sorted(names & set(first.roots))[:3])} cannot be measured: "
                                 f"{first.reason}{more} (run cas verify)", subject=first.digest.hex())


def usage(reach: Reach, roots: dict[str, bytes], focus: list[str], *, strict: bool = True) -> dict:
    """For each root in focus: logical bytes, bytes of chunks no other root references, bytes it shares.

    `roots` maps every root of the store (records and pins) to its digest; the exclusive bytes of a
    root are what deleting it alone would free. Sizes are stored (compressed) bytes. Damage a root in
    focus reaches raises one IntegrityError (unless not strict); damage only other roots reach is
    listed in `damaged` (their exclusive figures may then be too high).
    """
    reach.walk.reach(roots)  # named, so damage is told by the roots that reach it
    if strict:
        reach.refuse_damage(focus)
    owners: Counter = Counter()
    for digest in set(roots.values()):
        owners.update(reach.footprint(digest).chunks)
    # two roots naming the same digest share everything: count roots, not digests
    per_digest = Counter(roots.values())
    rows: list[dict] = []
    union: set[bytes] = set()
    for name in focus:
        fp = reach.footprint(roots[name])
        alone = [c for c in fp.chunks if owners[c] == 1 and per_digest[roots[name]] == 1]
        union |= fp.chunks
        rows.append({"ref": name, "logical_bytes": fp.logical, "stored_bytes": reach.stored(fp.chunks),
                     "exclusive_bytes": reach.stored(alone),
                     "shared_bytes": reach.stored(fp.chunks) - reach.stored(alone)})
    total = reach.stored(union)
    exclusive = sum(r["exclusive_bytes"] for r in rows)
    return {"versions": rows, "total_bytes": total, "exclusive_bytes": exclusive, "shared_bytes": total - exclusive,
            "damaged": [d.to_dict() for d in reach.damaged]}


def stored_together(reach: Reach, digests) -> int:
    """Stored bytes of the distinct chunks the given objects reference between them (a run's versions);
    a missing or damaged object counts as none (the walk lists it)."""
    union: set[bytes] = set()
    for digest in set(digests):
        union |= reach.footprint(digest).chunks
    return reach.stored(union)


def diff(reach: Reach, a: bytes, b: bytes) -> dict:
    reach.walk.reach({a.hex(): a, b.hex(): b})
    reach.refuse_damage([a.hex(), b.hex()])
    fa, fb = reach.footprint(a), reach.footprint(b)
    both = fa.chunks & fb.chunks
    return {"a": {"digest": a.hex(), "size": fa.logical}, "b": {"digest": b.hex(), "size": fb.logical},
            "shared_bytes": reach.raw(both), "only_a_bytes": reach.raw(fa.chunks - both),
            "only_b_bytes": reach.raw(fb.chunks - both), "shared_chunks": len(both),
            "only_a_chunks": len(fa.chunks - both), "only_b_chunks": len(fb.chunks - both)}
