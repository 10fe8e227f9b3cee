"""The one walk of what a set of roots reaches, with an explicit policy for missing or damaged objects."""

from __future__ import annotations

from collections import defaultdict

import numpy as np

from . import spill
from .blobset import ID, Blobs, as_bytes, ids_array
from .datatype import datatype
from .digest import DIGEST_SIZE
from .errors import CasError, IntegrityError
from .index import INLINE
from .pack import CHUNK, FILE_MANIFEST, TREE_MANIFEST
from .scratch import IN_MEMORY, Scratch
from .spill import Table

RAISE, REPORT, SKIP = "raise", "report", "skip"
CHECK_ROW = np.dtype([("id", ID), ("file", "<u4")])  # a chunk of a walked file, by the file's number
CHECK_BATCH = 4096  # chunk ids looked up per read transaction


@datatype(frozen=True, slots=True)
class Node:
    """A stored object as the walk read it: what it is, its logical size, and what it references."""

    kind: int  # TREE_MANIFEST, FILE_MANIFEST or INLINE
    size: int
    files: tuple[bytes, ...] = ()  # digests of a tree's file entries
    chunks: tuple[bytes, ...] = ()  # chunk ids of a file, in order


@datatype(frozen=True, slots=True)
class Damage:
    """An object some roots reach that is missing or cannot be read: gc must not act on it, du cannot
    measure it, verify reports it. `packs` names missing packs the damage comes from (if any)."""

    roots: tuple[str, ...]
    digest: bytes
    reason: str
    packs: frozenset[bytes] = frozenset()

    def to_dict(self) -> dict:
        return {"roots": list(self.roots), "digest": self.digest.hex(), "reason": self.reason,
                "packs": sorted(p.hex() for p in self.packs)}


class Walk:
    """Every object (and blob) that roots reach, memoized per digest: each manifest is read once.

    The edges, all of them in `_load` and `_bases` (a new kind of reference is added there and nowhere
    else): root → its digest (a run version or a pin); tree → its file entries; file → its chunks;
    delta chunk → its base chunk; content kept inline in a run record → nothing (it lives in the
    record). The walk is iterative, and a tree's file entry that names a tree is damage
    (`refuse_tree_as_file`), never followed.

    policy, for a missing or damaged object: RAISE (the error propagates: gc must stop before it
    deletes anything), REPORT (`damaged` lists it with the roots that reach it, and the walk goes
    on: verify, du, diff), SKIP (ignored). With `packs` (the pack ids the store lists now), a file
    whose chunks the index places in no listed pack, or does not know, is damaged too; gc leaves it
    None, since its catalog decides where every blob lives.
    """

    def __init__(self, store, *, policy: str = RAISE, packs=None, keep_chunks: bool = True,
                 scratch: Scratch = IN_MEMORY):
        if policy not in (RAISE, REPORT, SKIP):
            raise ValueError(f"unknown policy {policy!r}")
        self.store = store
        self.scratch = scratch  # where the chunk ids reach() collects spill when there are many
        self.keep_chunks = keep_chunks  # False: nodes forget their chunks once reach() has them (gc)
        self.policy = policy
        self.packs = None if packs is None else frozenset(packs)
        self.nodes: dict[bytes, Node | None] = {}  # None: missing or damaged
        self.roots: dict[str, bytes] = {}
        self._damage: dict[bytes, tuple[str, frozenset[bytes]]] = {}
        # with packs: (chunk id, file number) of the chunks to look up when reach() ends, in key order
        self._to_check = Table(CHECK_ROW, scratch)
        self._checked_files = bytearray()  # digests of the files numbered in _to_check, back to back

    def reach(self, roots: dict[str, bytes], *, into: Blobs | None = None) -> Blobs:
        """Walk from roots; returns (kind, key) of the blobs (manifests, chunks) of the objects this call
        reached first, so a caller that walks again (gc) reads only the manifests of new roots. With
        `into`, they are added to it (and it is returned): no second copy of a large set."""
        blobs = Blobs(scratch=self.scratch) if into is None else into
        deltas = self.store.index.has_delta_chunks()  # else no chunk has a base to look up
        for name, digest in roots.items():
            self.roots[name] = digest
            todo = [(digest, name)]
            while todo:
                d, via = todo.pop()
                if d in self.nodes:
                    continue
                node, ids = self._load(d, via)
                self.nodes[d] = node
                if node is None:
                    continue
                if node.kind != INLINE:
                    blobs.add((node.kind, d))
                if ids:
                    blobs.chunks.add_array(ids_array(ids))
                    if deltas:
                        blobs.update((CHUNK, b) for b in self._bases(node.chunks or _split(ids)))
                todo.extend((f, f"tree {d.hex()}") for f in node.files)
        self._check_chunks()
        return blobs

    def _bases(self, chunks) -> set[bytes]:
        return bases_of(self.store.index, chunks)

    def node(self, digest: bytes) -> Node | None:
        """The object at digest, walked if not yet (as a root of its own, named by its hex)."""
        if digest not in self.nodes:
            self.reach({digest.hex(): digest})
        return self.nodes[digest]

    @property
    def damaged(self) -> list[Damage]:
        """What REPORT collected, each with the names of every root walked so far that reaches it."""
        if not self._damage:
            return []
        parents: dict[bytes, list[bytes]] = defaultdict(list)
        for d, node in self.nodes.items():
            if node is not None:
                for f in node.files:
                    parents[f].append(d)
        by_digest = defaultdict(set)
        for name, digest in self.roots.items():
            by_digest[digest].add(name)
        out = []
        for digest, (reason, packs) in sorted(self._damage.items()):
            names, seen, todo = set(), {digest}, [digest]
            while todo:
                d = todo.pop()
                names |= by_digest.get(d, set())
                for p in parents.get(d, ()):
                    if p not in seen:
                        seen.add(p)
                        todo.append(p)
            out.append(Damage(tuple(sorted(names)), digest, reason, packs))
        return out

    # ---- the edges --------------------------------------------------------------------------
    def _load(self, digest: bytes, via: str) -> tuple[Node | None, bytes]:
        """The object at digest, and the ids of its chunks back to back (a file's)."""
        store, index = self.store, self.store.index
        loc = index.object_location(digest)
        if loc is None:
            self._fail(digest, IntegrityError(f"{via} names {digest.hex()}, which is not in the store",
                                              subject=digest.hex()))
            return None, b""
        if loc.kind == INLINE:
            return Node(INLINE, loc.size), b""
        try:
            manifest = store.load_manifest(digest, loc)
        except CasError as exc:
            gone = self.packs is not None and loc.pack_id not in self.packs
            self._fail(digest, exc, frozenset([loc.pack_id]) if gone else frozenset())
            return None, b""
        if loc.kind == TREE_MANIFEST:
            files = []
            for entry in manifest.entries:
                if entry.kind != "file":
                    continue
                try:
                    refuse_tree_as_file(index, digest, entry)
                except IntegrityError as exc:
                    self._fail(digest, exc)
                    continue
                files.append(entry.digest)
            return Node(TREE_MANIFEST, manifest.size, files=tuple(files)), b""
        ids = manifest.ids
        if self.packs is not None and ids:  # looked up when reach() ends, all in key order
            rows = np.empty(len(ids) // DIGEST_SIZE, CHECK_ROW)
            rows["id"] = ids_array(ids)
            rows["file"] = len(self._checked_files) // DIGEST_SIZE
            self._to_check.add(rows)
            self._checked_files += digest
        chunks = _split(ids) if self.keep_chunks else []
        return Node(FILE_MANIFEST, manifest.size, chunks=tuple(chunks)), ids

    def _check_chunks(self) -> None:
        """Every chunk of the files walked must be in the index and in a listed pack: looked up a group
        of partitions at a time, in ascending key order (each page of the index read about once, not
        once a chunk), then told file by file."""
        if self.packs is None or not len(self._to_check):
            return
        listed = self.packs
        unknown: dict[int, set[bytes]] = defaultdict(set)  # file number → its chunks the index lacks
        gone: dict[int, dict[bytes, bytes]] = defaultdict(dict)  # file number → chunk → missing pack
        for lo, hi in spill.groups(self._to_check):
            rows = self._to_check.load(lo, hi)
            rows = rows[np.argsort(rows["id"], kind="stable")]
            starts = spill.run_starts(rows["id"])
            ids = rows["id"][starts[:-1]]
            for at in range(0, len(ids), CHECK_BATCH):
                batch = [as_bytes(i) for i in ids[at:at + CHECK_BATCH]]
                for j, (chunk_id, pack) in enumerate(zip(batch, self.store.index.chunk_packs(batch)), at):
                    if pack in listed:
                        continue
                    for f in rows["file"][starts[j]:starts[j + 1]].tolist():
                        if pack is None:
                            unknown[f].add(chunk_id)
                        else:
                            gone[f][chunk_id] = pack
        for f in sorted(unknown.keys() | gone.keys()):
            digest = bytes(self._checked_files[f * DIGEST_SIZE:(f + 1) * DIGEST_SIZE])
            parts = [f"{len(unknown[f])} chunks are missing"] if unknown[f] else []
            if gone[f]:
                packs = sorted(set(gone[f].values()))
                parts.append(f"{len(gone[f])} chunks are in missing pack{'s' if len(packs) > 1 else ''} "
                             + ", ".join(p.hex() for p in packs))
            self._fail(digest, IntegrityError(f"file {digest.hex()}: " + "; ".join(parts), subject=digest.hex()),
                       frozenset(gone[f].values()))
        self._to_check = Table(CHECK_ROW, self.scratch)
        self._checked_files = bytearray()

    def _fail(self, digest: bytes, exc: CasError, packs: frozenset[bytes] = frozenset()) -> None:
        if self.policy == RAISE:
            raise exc
        if self.policy == REPORT and digest not in self._damage:
            self._damage[digest] = (str(exc), packs)
        return None


def _split(ids: bytes) -> list[bytes]:
    """32-byte ids back to back, one by one."""
    return [ids[i:i + DIGEST_SIZE] for i in range(0, len(ids), DIGEST_SIZE)]


def bases_of(index, chunks) -> set[bytes]:
    """The bases of the delta chunks among chunks, and their bases in turn (the chunk → base edge)."""
    found: set[bytes] = set()
    todo = list(chunks)
    while todo:
        locs = index.chunks_at(todo)
        todo = [loc.base for loc in locs if loc is not None and loc.base and loc.base not in found]
        found.update(todo)
    return found


def refuse_tree_as_file(index, tree: bytes, entry) -> None:
    """A tree's file entry must name a file: one naming a tree would nest trees as deep as the input
    wants (walks would recurse with it), and no put writes one."""
    loc = index.object_location(entry.digest)
    if loc is not None and loc.kind == TREE_MANIFEST:
        raise IntegrityError(f"tree {tree.hex()} is damaged: its file {entry.path!r} names a folder",
                             subject=tree.hex())
