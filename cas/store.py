"""The Store façade: opens a backend and its local index, and owns the write order pack → index → manifest → ref."""

from __future__ import annotations

import io
import os
import shutil
import stat
import threading
import time
from array import array
from collections.abc import Callable
from contextlib import contextmanager
from typing import TYPE_CHECKING, TypeVar

from . import chunk_cache, collector, layout, pack_index, refs, temps
from .backends import Backend, open_backend
from .backends.local import storage_error
from .chunk_cache import ChunkCache
from .config import StoreConfig, create_or_load_config, load_config
from .datatype import replace
from .digest import hash_bytes, looks_like_digest, parse_ref, split_inside
from .errors import (
    AlreadyExists,
    AmbiguousReference,
    CasError,
    IntegrityError,
    InvalidInput,
    NotFound,
    PackMissing,
    StorageError,
)
from .handoff import quick_handoffs
from .index import INLINE, Index
from .leases import WriterLease
from .manifest import DIR, FILE, FileManifest, TreeEntry, TreeManifest
from .pack import CHUNK, FILE_MANIFEST, TREE_MANIFEST, Location, read_pack_entries
from .parallel import ordered_map
from .record_objects import RecordObjects
from .records import RecordBook, RunRoots, check_name
from .restore import (
    ChunkReader,
    FileReader,
    remove_stale_temps,
    replace_destination,
    stream_file,
    write_file,
    write_tree,
)
from .roots import PinRoots, RootProvider, registered as registered_providers
from .scratch import Scratch

if TYPE_CHECKING:
    from .bulk_load import BulkLoad
    from .ingest import PutResult, PutSession

Progress = Callable[[int], None]
T = TypeVar("T")
SYNC_PASSES = 50  # listings of index objects before giving up on a store that keeps merging them
# index objects not read yet (about 25,000 blobs) from which a sync loads in bulk, into an empty cache too:
# below it, learning them object by object is quicker than importing numpy (a new machine's first `cas get`
# of a four-version 39 MB fine-tune: 0.23-0.26 s in bulk, 0.16-0.20 s object by object; stats of a
# 60,000-chunk store, 2 MB of index objects: 0.26-0.29 s in bulk, 0.29-0.34 s object by object)
BULK_SYNC_BYTES = 1 << 20
# 2: index objects remembered with the packs they name; missing packs. 3: a delta chunk's entry holds its base
# 4: blob locations name packs by number; counters for stats
CACHE_FORMAT = 4


def default_cache_dir() -> str:
    return os.environ.get("CAS_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "cas")


class Store:
    @property
    def _lease(self) -> WriterLease | None:
        return getattr(self._writer, "lease", None)

    @_lease.setter
    def _lease(self, lease: WriterLease | None) -> None:
        self._writer.lease = lease

    @property
    def _hints(self) -> dict[bytes, bytes]:
        """Re-put hints of this thread's lease's puts, remembered once acknowledged."""
        if not hasattr(self._writer, "hints"):
            self._writer.hints = {}
        return self._writer.hints

    @_hints.setter
    def _hints(self, hints: dict[bytes, bytes]) -> None:
        self._writer.hints = hints

    def __init__(self, backend: Backend, config: StoreConfig | None, *, cache_dir: str | None = None):
        self.backend = backend
        self.config = config
        self.cache_dir = cache_dir or default_cache_dir()
        self._index: Index | None = None
        self._records: RecordBook | None = None
        self._pins = PinRoots(backend)
        self._providers: list[RootProvider] | None = None
        self._cache: ChunkCache | None = None
        # each thread writes under its own lease (a run's background logging beside its foreground calls)
        self._writer = threading.local()
        self.warnings: list[str] = []
        self.on_warning: Callable[[str], None] = self.warnings.append
        self._warned: set[str] = set()
        self.on_created: Callable[[str], None] = lambda where: None  # told when init() made the store

    # ---- opening ----------------------------------------------------------------------------
    @classmethod
    def open(cls, uri: str | None = None, *, cache_dir: str | None = None) -> Store:
        """Open the store at uri (None: $CAS_STORE, else ./.cas). A missing store is created on first write."""
        if uri is None:  # an explicit empty URI is malformed, not the default
            uri = os.environ.get("CAS_STORE") or find_default_store()
        backend = open_backend(uri)
        try:
            config = load_config(backend)
        except NotFound:
            config = None
        return cls(backend, config, cache_dir=cache_dir)

    @property
    def exists(self) -> bool:
        return self.config is not None

    def init(self) -> StoreConfig:
        """Create the store if it does not exist (create-only: a racing initializer adopts the winner's)."""
        if self.config is None:
            self.config = create_or_load_config(self.backend, on_create=lambda: self.on_created(self.location()))
        return self.config

    def require(self) -> StoreConfig:
        """The store's config; NotFound (one line) if there is no store here. Creates nothing."""
        if self.config is None:
            self.config = load_config(self.backend)  # raises NotFound with one clear line
        return self.config

    @property
    def index(self) -> Index:
        """The local index, opened and synced with the store on first use."""
        index = self._index
        if index is None:
            index = self._open_index()
            self.sync()
        return index

    def _open_index(self) -> Index:
        if self._index is None:
            config = self.require()
            self._index = Index(os.path.join(self.cache_dir, config.store_id, self._location_id(), "index"))
            if self._index.replaced:
                self.on_warning(f"the local cache was damaged and is rebuilt from the store ({self._index.replaced})")
            self._index.ensure_format(CACHE_FORMAT)
        return self._index

    def _location_id(self) -> str:
        """Which copy of the store this is: two copies of one store (same id) never share a cache."""
        return hash_bytes(self.backend.identity().encode("utf-8", "surrogateescape")).hex()[:16]

    def relearn(self) -> None:
        """The cache named a pack the store does not have: find every such pack, never trust them again,
        and relearn where each blob lives from the index objects (another pack may hold a copy)."""
        index = self._open_index()
        known = set(index.pack_ids())  # before listing: a pack cached by now is durable, so listed below
        listed = {pid for key, _ in self.backend.list(layout.PACKS) if (pid := layout.pack_id_from_key(key))}
        index.mark_missing(known - listed)
        self.sync(forget=True)

    def sync(self, *, forget: bool = False, unlearned: frozenset[str] = frozenset()) -> int:
        """Learn packs written elsewhere from the store's index objects; returns how many packs were added.
        forget: relearn every pack (the cache named one the store lacks). unlearned: index objects left
        for a later sync (gc's own repack, which its last sync relearns anyway).

        Reads only index objects this cache has not read yet, never pack data. An index object that
        vanishes while we read was merged by a writer: list again and read the merged one. From index
        objects of BULK_SYNC_BYTES or more, the packs are loaded in bulk (cas/bulk_load.py).
        """
        index = self._open_index()
        with index.sync_lock(), self.scratch() as scratch, collector.many_objects():
            index.drop_partial_load()  # a bulk load died: what it wrote is relearned below
            if self._sync_gc_state(index) or forget:
                index.forget_packs()  # gc deleted packs: relearn every location from the index objects
            load: BulkLoad | None = None  # imported once a pass has that much to learn (it needs numpy)
            added = 0
            for _ in range(SYNC_PASSES):
                read = index.index_objects_read()  # before listing: an object read by now is durable, so listed
                sizes = pack_index.list_sizes(self.backend)
                listed = list(sizes)
                if self._drop_vanished(index, read - sizes.keys(), listed, load.named if load else {}):
                    load, added = None, 0  # the cache was emptied of packs: read every index object again
                    continue
                if load is not None:
                    for key in load.named.keys() - sizes.keys():
                        del load.named[key]  # merged as we read: its packs are named by the merged one
                seen = read | (load.named.keys() if load else set())
                unread = [k for k in listed if k not in seen and k not in unlearned]
                if load is None and unread and sum(sizes[k] for k in unread) >= BULK_SYNC_BYTES:
                    from .bulk_load import BulkLoad  # numpy: not for a store with nothing to learn
                    load = BulkLoad(index, scratch)
                learner = load or index
                vanished = False
                for key, records in pack_index.iter_present(self.backend, unread):
                    if records is None:
                        vanished = True
                    else:
                        added += learner.add_index_object(key, records)
                if not vanished:  # else a writer merged one as we read: list again for the merged object
                    if load is not None:
                        load.commit()
                    return added
        raise StorageError("the store's index objects kept changing while they were read: try again",
                           subject=layout.INDEXES)

    def _drop_vanished(self, index: Index, vanished: set[str], listed: list[str],
                       loading: dict[str, list[bytes]]) -> bool:
        """Index objects this cache read that the store no longer lists were merged (their packs are named
        again elsewhere), or the store was restored from a copy or replaced. In that case the cache knows
        packs the store may lack: forget every pack and relearn. Returns True if it did.
        loading: index objects this sync read for a bulk load not yet written, with the packs each names."""
        if not vanished:
            return False
        lost = index.packs_named_by(vanished) - index.packs_named_by(listed)
        lost -= {pid for key in listed for pid in loading.get(key, ())}
        index.forget_index_objects(vanished)
        if not lost:
            return False
        index.forget_packs()
        return True

    def _sync_gc_state(self, index: Index) -> bool:
        """Learn gc's condemned and deleted packs; True if the deleted set changed since the last look.

        A gc list that does not decode may name any pack, and gc may delete what it names: until every
        list reads again, this cache lets writers deduplicate against nothing (reads are unaffected).
        """
        from .gc_lists import decode_list
        lists: dict[str, list[bytes]] = {}
        condemned: set[bytes] = set()
        deleted: set[bytes] = set()
        unreadable: list[str] = []
        for key, _ in self.backend.list(layout.GC):
            if not key.startswith((layout.GC_CONDEMNED, layout.GC_DELETED)):
                continue
            packs = index.gc_list(key)
            if packs is None:
                try:
                    packs = lists[key] = decode_list(self.backend.get(key), key=key)[1]
                except NotFound:
                    continue  # gc finished with it while we listed
                except IntegrityError as exc:
                    unreadable.append(str(exc))
                    continue
            (condemned if key.startswith(layout.GC_CONDEMNED) else deleted).update(packs)
        if unreadable and unreadable[0] not in self._warned:
            self._warned.add(unreadable[0])  # once per store opened
            self.on_warning(f"{unreadable[0]}: storing everything again rather than deduplicating until it is "
                            f"repaired (cas verify lists it)")
        return index.set_gc_state(lists, condemned, deleted, unreadable=bool(unreadable))

    @contextmanager
    def writing(self):
        """Hold a writer lease from before deduplication until after the refs are written (reentrant).

        gc never deletes what a live writer may use; a writer whose lease expired commits nothing.
        """
        if self._lease is not None:
            yield self._lease
            return
        self.init()
        lease = self._lease = WriterLease(self.backend).acquire()
        try:
            self._open_index()
            self.sync()  # after the lease is durable: every condemnation made before it is seen now
            yield lease
            # the refs are written: only now may the next put trust what these puts remembered (as a hint)
            self._index.remember_files(self._hints)
        finally:
            self._hints = {}
            self._lease = None
            lease.release()

    @property
    def lease(self) -> WriterLease | None:
        """The writer lease held by the current writing() block, if any."""
        return self._lease

    def _before_commit(self) -> None:
        """Called right before a ref is written: refuse if our lease may have expired."""
        if self._lease is not None:
            self._lease.check()

    def reindex(self, *, on_progress: Progress | None = None) -> dict[str, int]:
        """Rebuild the local index from the packs themselves (their footers), the source of truth.
        on_progress(1) is called as each pack's footer is read."""
        index = self._open_index()
        with index.sync_lock(), self.scratch() as scratch, collector.many_objects():
            index.reset()  # new files, without reading the old ones: reindex must work on a damaged cache
            index.ensure_format(CACHE_FORMAT)
            index_keys = pack_index.list_keys(self.backend)  # listed first: what they name is listed below
            listed = [(pid, size) for key, size in self.backend.list(layout.PACKS)
                      if (pid := layout.pack_id_from_key(key)) is not None]

            def footer(item):
                pid, size = item
                return pid, size, read_pack_entries(self.backend, pid, size)
            from .bulk_load import BulkLoad
            load = BulkLoad(index, scratch)
            for pid, size, entries in ordered_map(footer, listed, workers=self.backend.read_concurrency,
                                                  name="cas-reindex"):
                load.add_pack(pid, size, entries)
                if on_progress is not None:
                    on_progress(1)
            # what each index object names (packs are learned above, from the footers): so that later syncs
            # read only new ones and can tell when packs this cache knows stop being named
            # (one merged by a writer while we read is skipped: the next sync reads the merged object)
            for key, records in pack_index.iter_present(self.backend, index_keys):
                if records is not None:
                    load.named[key] = [r.pack_id for r in records]
            load.commit()
        counts = index.counts()
        return {k: counts[k] for k in ("chunks", "manifests", "packs")}

    # ---- references -------------------------------------------------------------------------
    def resolve(self, ref: str) -> tuple[bytes, Location]:
        """The digest and location named by a reference: a digest, a prefix of at least 8 hex characters,
        cas://<digest>, a reference a root provider's scheme claims (runs:/<run>/<name>[@<step>]), or a
        pin label (a label that looks like a digest is read as a digest)."""
        if not isinstance(ref, str):
            raise InvalidInput(f"not a reference: {ref!r}", subject=str(ref))
        digest, loc, inside = self._locate(ref)
        if not inside:
            return digest, loc
        entry = self.tree_entry(digest, loc, inside, ref=ref)
        if entry.kind != FILE:
            raise InvalidInput(f"{ref} is a folder inside {digest.hex()}: `cas ls` lists it, `cas get` restores it",
                               subject=ref)
        return self._file_in_tree(entry, ref)

    def lookup(self, ref: str) -> tuple[bytes, Location, FileManifest | TreeManifest]:
        """resolve(ref) and the manifest. A folder inside a stored folder (`<ref>/<path>`) comes back
        as a tree of its own: its entries below that path, their paths relative to it, and the digest
        that tree has (computed: it is not stored as such)."""
        digest, loc, inside = self._locate(ref)
        if inside:
            entry = self.tree_entry(digest, loc, inside, ref=ref)
            if entry.kind == DIR:
                prefix = inside + "/"
                sub = TreeManifest(tuple(replace(e, path=e.path[len(prefix):])
                                         for e in self._tree(digest, loc).entries if e.path.startswith(prefix)))
                return sub.digest(), loc, sub
            digest, loc = self._file_in_tree(entry, ref)
        return digest, loc, self.load_manifest(digest, loc)

    def _locate(self, ref: str) -> tuple[bytes, Location, str]:
        """The stored object a reference starts from, and the path inside it that follows ("" for none)."""
        provider = next((p for p in self.root_providers if p.scheme and ref.startswith(p.scheme)), None)
        if provider is not None:
            ref = provider.resolve(ref)
        elif not looks_like_digest(ref):
            try:
                ref = self._pins.resolve(ref)
            except NotFound:
                if not looks_like_digest(ref.partition("/")[0]):  # not <digest>/<path inside> either
                    raise
        head, inside = split_inside(ref)
        digest, loc = self._resolve_digest(head)
        return digest, loc, inside

    def _tree(self, digest: bytes, loc: Location) -> TreeManifest:
        tree = self.load_manifest(digest, loc)
        if not isinstance(tree, TreeManifest):
            raise IntegrityError(f"{digest.hex()} is indexed as a folder but its manifest is a file's",
                                 subject=digest.hex())
        return tree

    def _file_in_tree(self, entry: TreeEntry, ref: str) -> tuple[bytes, Location]:
        found = self.index.object_location(entry.digest)
        if found is None:
            raise NotFound(f"{ref}: file {entry.digest.hex()} is missing from the store", subject=ref)
        return entry.digest, found

    def tree_entry(self, digest: bytes, loc: Location, inside: str, *, ref: str) -> TreeEntry:
        """The entry at path `inside` of the stored folder (digest, loc); a folder that only the paths
        below it imply has kind DIR. NotFound if there is none."""
        if loc.kind != TREE_MANIFEST:
            raise NotFound(f"unknown reference: {ref} ({digest.hex()[:16]} is a file, not a folder)", subject=ref)
        tree = self._tree(digest, loc)
        for e in tree.entries:
            if e.path == inside:
                return e
        if any(e.path.startswith(inside + "/") for e in tree.entries):
            return TreeEntry(inside, DIR)
        raise NotFound(f"unknown reference: {ref} (no {inside!r} in folder {digest.hex()[:16]})", subject=ref)

    def _resolve_digest(self, ref: str) -> tuple[bytes, Location]:
        text = parse_ref(ref)
        if self._records is None and not self._knows(text):
            self.open_records()  # small content lives inline in run records: learn them, then look again
        if len(text) == 64:
            digest = bytes.fromhex(text)
            loc = self.index.object_location(digest)
            if loc is None:
                raise NotFound(f"unknown reference: {ref} (`cas pins` and `cas runs` list what is stored)",
                               subject=ref)
            return digest, loc
        found = self.index.manifests_with_prefix(text, limit=2)
        if not found:
            raise NotFound(f"unknown reference: {ref} (`cas pins` and `cas runs` list what is stored)", subject=ref)
        if len(found) > 1:
            raise AmbiguousReference(f"ambiguous reference {ref}: matches several objects", subject=ref)
        loc = self.index.object_location(found[0])
        if loc is None:  # gone between the two lookups (a sync in another thread)
            raise NotFound(f"unknown reference: {ref}", subject=ref)
        return found[0], loc

    def _knows(self, hex_text: str) -> bool:
        if len(hex_text) == 64:
            return self.index.object_location(bytes.fromhex(hex_text)) is not None
        return bool(self.index.manifests_with_prefix(hex_text, limit=1))

    @property
    def records(self) -> RecordBook:
        """Run records (the tracker's versions and events), synced with the store on first use."""
        return self.open_records()

    def open_records(self, *, on_damaged=None, prefix: str = layout.RUNS) -> RecordBook:
        """The run records, synced under prefix (every run by default) on first use; a damaged record raises
        unless on_damaged takes it (verify)."""
        if self._records is None:
            self._records = RecordBook(self.backend, self.index, before_commit=self._before_commit,
                                       objects=RecordObjects(self.backend, self.index))
        return self._records.ensure(prefix, on_damaged=on_damaged)

    def records_of(self, run: str) -> RecordBook:
        """The run records, with one run's synced: enough for questions about that run alone (cas log),
        without listing every run's records."""
        return self.open_records(prefix=layout.run_prefix(check_name(run, "run name")))

    def scratch(self) -> Scratch:
        """A scratch folder on this machine's disk for the tables gc and verify spill (removed on close)."""
        return Scratch(os.path.join(self.cache_dir, "scratch"))

    def chunk_reader(self) -> ChunkReader:
        """Reads verified blobs and ranges of packs (the one way to read stored bytes)."""
        return ChunkReader(self.backend, self.index, self.chunk_cache())

    def chunk_cache(self) -> ChunkCache | None:
        """The local cache of blobs read from a remote store (None for a local one, or with
        CAS_CHUNK_CACHE_SIZE=0): cas/chunk_cache.py."""
        if self._cache is None and self.backend.cached_reads:
            limit = chunk_cache.size_from_env()
            if limit > 0:
                self._cache = ChunkCache(os.path.join(self.cache_dir, self.require().store_id, "chunks"), limit)
        return self._cache

    def load_manifest(self, digest: bytes, loc: Location):
        """The file or tree manifest stored at loc, checked against its name (a tree's digest is recomputed)."""
        if loc.kind == INLINE:  # small content: one chunk whose id is the file's digest
            return FileManifest(loc.size, digest if loc.size else b"", array("I", [loc.size] if loc.size else []))
        raw = self.chunk_reader().blob(loc, what=f"manifest {digest.hex()}")
        if loc.kind == TREE_MANIFEST:
            tree = TreeManifest.from_bytes(raw, name=digest.hex())
            if tree.digest() != digest:  # a tree is named by its entries: anyone can check it
                raise IntegrityError(f"tree {digest.hex()} is damaged: its manifest does not hash to its name",
                                     subject=digest.hex())
            return tree
        return FileManifest.from_bytes(raw, name=digest.hex())

    def file_manifest(self, digest: bytes) -> FileManifest:
        """The manifest of a stored file: NotFound if absent, IntegrityError if the digest names a tree."""
        loc = self.index.manifest(digest)
        if loc is not None and loc.kind == TREE_MANIFEST:  # a tree's file entry naming a folder
            raise IntegrityError(f"file {digest.hex()} names a folder, not a file: the tree listing it is damaged",
                                 subject=digest.hex())
        if loc is None or loc.kind != FILE_MANIFEST:
            raise NotFound(f"file {digest.hex()} is missing from the store", subject=digest.hex())
        return self.load_manifest(digest, loc)

    # ---- writing ----------------------------------------------------------------------------
    @contextmanager
    def write_session(self, on_progress: Progress | None = None, *, learn: bool = True):
        """A put session: blobs added to it are durable and indexed when the block ends (call under
        writing(), which holds the lease a ref needs). learn=False: the cache learns the packs written
        at its next sync, not now (gc's repack: see PutSession.learn)."""
        from .ingest import PutSession  # here, as in _put: a command that only reads never imports the write path
        self.init()
        spool = self.spool_dir()
        session = PutSession(backend=self.backend, index=self.index, config=self.config, spool_dir=spool,
                             on_progress=on_progress, warn=self.on_warning, read_manifest=self.file_manifest,
                             chunk_reader=self.chunk_reader(), learn=learn)
        try:
            with quick_handoffs():
                yield session
                _announce_finishing(on_progress, session)
                written = session.commit()  # packs durable, then the index object naming them
        finally:
            session.close()
        self._hints.update(session.seen)
        if written and learn:  # else they are read by the next sync, which learns their packs
            self.index.mark_index_objects(written)
            self._merge_index_objects()

    def spool_dir(self) -> str:
        """Where this machine stages bytes on their way into the store: pack spools, and files logged in the
        background (creates the store if it does not exist)."""
        return self.backend.spool_dir() or os.path.join(self.cache_dir, self.init().store_id, "spool")

    def _put(self, store: Callable[[PutSession], tuple[bytes, int]], on_progress: Progress | None, *,
             path: str = "", kind: str = "file") -> PutResult:
        """Run one put (store(session) gives the digest and size) in a session, as _in_session runs it."""
        from .ingest import PutResult  # here: a command that only reads never imports the write path

        def work(session: PutSession) -> PutResult:
            digest, size = store(session)
            return PutResult(path, digest.hex(), size, session.new_bytes, kind)
        return self._in_session(work, on_progress)

    def _in_session(self, work: Callable[[PutSession], T], on_progress: Progress | None = None) -> T:
        """Run work in a put session; if a pack it relied on turns out missing (the cache was stale: the
        store was restored, copied or changed behind it), relearn and run it once more without those packs."""
        def once() -> T:
            with self.write_session(on_progress) as session:
                return work(session)
        try:
            return once()
        except PackMissing:
            self.relearn()
        return once()

    def _merge_index_objects(self) -> None:
        """Keep a new machine's sync to a few reads: fold many small index objects into a few, each of at
        most pack_index.FULL_OBJECT bytes (a reader decodes one at a time)."""
        for group in pack_index.merge_groups(self.backend):
            merged = pack_index.merge(self.backend, group)
            if merged is not None:
                self.index.mark_index_objects({merged[0]: merged[1]})

    def put_file(self, path: str | os.PathLike, *, pin: str | None = None, parent: str | None = None,
                 on_progress: Progress | None = None) -> PutResult:
        """Store a file or folder; pin it under `pin` when given. Acknowledged once this returns.
        parent: a reference to an earlier version of the file (a checkpoint): chunks of its tensors may
        be stored as deltas against the parent's (docs/design.md, step deltas). For a folder, an earlier
        version of the folder: each file's parent is the parent folder's file at the same path."""
        path = os.fspath(path)
        kind = source_kind(path)
        if pin is not None:
            refs.check_label(pin)
        with self.writing():
            base = self._parent(parent) if parent is not None and kind == "file" else None
            parents = self._tree_parents(parent) if parent is not None and kind == "tree" else None
            result = self._put(lambda s: s.put_tree(path, parents) if kind == "tree" else s.put_file(path, base),
                               on_progress, path=path, kind=kind)
            if pin is not None:
                self._pin_put(result, pin)
        return result

    def _parent(self, ref: str):
        """The stored parent checkpoint (layout and chunks, read from its header's chunks), or None when
        it cannot be read: a parent is only a hint (gc may have taken it, or it is not a file), and the
        put then stores the file without deltas."""
        from .tensorfiles.stored import open_checkpoint
        try:
            digest, loc = self.resolve(ref)
            return open_checkpoint(self, digest.hex()) if loc.kind == FILE_MANIFEST else None
        except CasError:
            return None

    def _tree_parents(self, ref: str) -> Callable[[str], object] | None:
        """For a folder put with a parent folder: path in the tree → the parent's file at that path
        (opened as _parent opens one), or None; None if the parent is not a readable folder."""
        try:
            digest, loc = self.resolve(ref)
            if loc.kind != TREE_MANIFEST:
                return None
            files = {e.path: e.digest for e in self.load_manifest(digest, loc).entries if e.kind == FILE}
        except CasError:
            return None
        return lambda path: self._parent(files[path].hex()) if path in files else None

    def put_selection(self, items: list[tuple[str, str]], *, on_progress: Progress | None = None) -> PutResult:
        """Store chosen paths as one tree: (relative path in the tree, path on disk) pairs (globs, file lists)."""
        if not items:
            raise InvalidInput("nothing to store: no paths given", subject="")
        for _, full in items:
            source_kind(full)
        with self.writing():
            return self._put(lambda s: s.put_selection(items), on_progress, kind="tree")

    def put_bytes(self, data: bytes, *, pin: str | None = None, on_progress: Progress | None = None) -> PutResult:
        with self.writing():
            result = self._put(lambda s: s.put_stream(io.BytesIO(data)), on_progress)
            if pin is not None:
                self._pin_put(result, pin)
        return result

    # ---- reading ----------------------------------------------------------------------------
    def open_file(self, ref: str) -> FileReader:
        """A readable, seekable file object; it keeps one verified chunk cached, so it needs no buffer."""
        digest, loc = self.resolve(ref)
        if loc.kind == TREE_MANIFEST:
            raise InvalidInput(f"{ref} is a folder, not a file", subject=ref)
        return FileReader(self.chunk_reader(), self.load_manifest(digest, loc), digest)

    def _resyncing(self, attempt: Callable[[], object]):
        """Run attempt(); if a pack the cache names is gone (gc ran elsewhere), sync and try once more."""
        try:
            return attempt()
        except PackMissing:
            self.relearn()  # learns gc's deletions and where every blob lives now
            return attempt()

    def read_bytes(self, ref: str) -> bytes:
        def attempt() -> bytes:
            out = bytearray()
            self._stream(ref, out.extend)
            return bytes(out)
        return self._resyncing(attempt)

    def stream(self, ref: str, write: Callable[[bytes], None], *, on_progress: Progress | None = None) -> int:
        """Write a stored file's verified bytes to `write`; returns its size."""
        written = 0

        def counting(data) -> None:
            nonlocal written
            written += len(data)
            write(data)
        try:
            return self._stream(ref, counting, on_progress=on_progress)
        except PackMissing:
            if written:
                raise  # bytes already went out: the caller must start over
            self.relearn()
            return self._stream(ref, write, on_progress=on_progress)

    def _stream(self, ref: str, write: Callable[[bytes], None], *, on_progress: Progress | None = None) -> int:
        digest, loc = self.resolve(ref)
        if loc.kind == TREE_MANIFEST:
            raise InvalidInput(f"{ref} is a folder, not a file", subject=ref)
        manifest = self.load_manifest(digest, loc)
        stream_file(self.chunk_reader(), manifest, write, digest=digest, on_progress=on_progress)
        return manifest.size

    def get_file(self, ref: str, dest: str | os.PathLike, *, force: bool = False,
                 on_progress: Progress | None = None) -> str:
        """Restore a file or folder at dest (rules in docs/cli.md); nothing is left at dest on error."""
        return self._resyncing(lambda: self._get_file(ref, dest, force=force, on_progress=on_progress))

    def _get_file(self, ref: str, dest: str | os.PathLike, *, force: bool, on_progress: Progress | None) -> str:
        dest = os.fspath(dest)
        digest, loc, manifest = self.lookup(ref)  # a folder inside a stored folder too
        reader = self.chunk_reader()
        emptied = None  # the mode of an empty destination folder we removed, to put back on error
        if isinstance(manifest, TreeManifest):
            tree = manifest
            target = dest.rstrip("/") or dest
            if os.path.isdir(target) and not os.path.islink(target) and not os.listdir(target):
                emptied = stat.S_IMODE(os.stat(target).st_mode)
                os.rmdir(target)  # an empty folder is simply filled

            def restore(to: str) -> None:
                write_tree(self.file_manifest, reader, tree, to, name=digest.hex(), on_progress=on_progress)
        else:
            target = dest
            if dest.endswith("/") or os.path.isdir(dest):
                target = os.path.join(dest, self._basename(digest))

            def restore(to: str) -> None:
                write_file(reader, manifest, digest, to, on_progress=on_progress)
        folder = os.path.dirname(os.path.abspath(target))
        made = _make_parents(folder)
        if made is None:
            remove_stale_temps(folder)  # left by a get that was killed (SIGKILL, power loss)
        try:
            if os.path.lexists(target):
                if not force:
                    raise AlreadyExists(f"{target} exists (use --force, or force=True in Python, to replace it)",
                                        subject=target)
                replace_destination(target, restore)
            else:
                restore(target)
        except BaseException:
            if made:
                shutil.rmtree(made, ignore_errors=True)
            if emptied is not None and not os.path.lexists(target):
                try:
                    os.mkdir(target, emptied)
                except OSError:
                    pass  # cleanup must not hide the error on its way out
            raise
        return target

    def _basename(self, digest: bytes) -> str:
        """A file name for a digest: the base name of a pin label naming it, else the digest itself."""
        for pin in refs.list_pins(self.backend, on_damaged=lambda exc: None):  # a name is only a nicety
            if pin.digest == digest.hex():
                name = os.path.basename(pin.label.rstrip("/"))
                if name not in ("", ".", ".."):
                    return name
        return digest.hex()

    # ---- pins -------------------------------------------------------------------------------
    def pin(self, ref: str, label: str) -> refs.Pin:
        refs.check_label(label)
        self.require()  # pinning never creates a store
        with self.writing():
            digest, loc = self.resolve(ref)
            self.revive(digest)
            return self._write_pin(digest, loc, label)

    def _pin_put(self, result: PutResult, label: str) -> refs.Pin:
        """The pin a put writes for what it has just stored, under the same writing(): no revive (the put
        relied only on packs it checked at commit, none condemned)."""
        refs.check_label(label)
        return self._write_pin(*self.resolve(result.digest), label)

    def _write_pin(self, digest: bytes, loc: Location, label: str) -> refs.Pin:
        kind = "tree" if loc.kind == TREE_MANIFEST else "file"
        pin = refs.Pin(label, digest.hex(), time.time(), kind, loc.size)
        self._before_commit()
        refs.write_pin(self.backend, pin)
        return pin

    def revive(self, digest: bytes) -> int:
        """Make a new ref to stored data safe: a put with nothing new to send; call under writing(). Each
        blob of the object is relied on as a put relies on it (its pack, and a delta's bases' packs,
        checked at commit), or, where the cache does not offer it (a pack gc condemned, or any pack while
        gc's lists are unreadable), stored again from where it is. A blob the cache cannot place at all
        (gc took it, while a dead file's manifest outlived it) is NotFound, one line. Returns the blobs
        copied."""
        from .walk import RAISE, Walk
        reached = list(Walk(self, policy=RAISE).reach({digest.hex(): digest}))

        def work(session: PutSession) -> int:
            chunks = [key for kind, key in reached if kind == CHUNK]
            relied = dict(zip(chunks, session.rely_on_chunks(chunks)))
            copies = []
            for kind, key in reached:
                if relied[key] if kind == CHUNK else session.rely_on(kind, key):
                    continue
                loc = self.index.chunk(key) if kind == CHUNK else self.index.manifest(key)
                if loc is None:
                    raise NotFound(f"{digest.hex()} is not all in the store any more (gc took part of its "
                                   "content): put it again to keep it", subject=digest.hex())
                copies.append(loc)
            for loc, stored in self.chunk_reader().stored_blobs(copies):
                session.copy_blob(loc, stored, force=True)  # rely_on refused it above
            return len(copies)
        return self._in_session(work)

    def unpin(self, label: str) -> refs.Pin:
        self.require()
        return refs.remove_pin(self.backend, label)

    def pins(self) -> list[refs.Pin]:
        self.require()
        return refs.list_pins(self.backend)

    @property
    def root_providers(self) -> list[RootProvider]:
        """Who names the roots (cas/roots.py): pins, run records, then any registered provider."""
        if self._providers is None:
            self._providers = [self._pins, RunRoots(self.open_records), *registered_providers(self)]
        return self._providers

    def roots(self, *, fresh: bool = False, on_damaged=None) -> dict[str, bytes]:
        """Everything that keeps data alive, by name: live run versions (runs:/ URIs), pins (pin:<label>)
        and what registered providers name. fresh: read them from the store again first (gc);
        on_damaged takes each damaged root object instead of raising (verify)."""
        self.require()
        roots: dict[str, bytes] = {}
        for provider in self.root_providers:
            if fresh:
                provider.refresh()
            roots.update(provider.roots(on_damaged=on_damaged))
        return roots

    # ---- reports ----------------------------------------------------------------------------
    def stats(self) -> dict[str, int | bool | str]:
        index = self.index
        self.open_records()  # learn content kept inline in run records
        counts = index.counts()  # kept up to date as packs are learned: no scan of the chunks
        logical, files = counts["logical_bytes"], counts["files"]
        for _, size in index.iter_inline_sizes():
            logical += size
            files += 1
        stored = sum(size for _, size in self.backend.list(""))
        leftovers = temps.find(self.temp_folders())
        return {"logical_bytes": logical, "unique_bytes": counts["unique_bytes"], "stored_bytes": stored,
                "files": files, "chunks": counts["chunks"], "delta_chunks": counts["delta_chunks"],
                "delta_stored_bytes": counts["delta_stored_bytes"], "packs": counts["packs"],
                "conditional_writes": bool(self.backend.conditional_writes),
                "temp_files": len(leftovers), "temp_bytes": sum(t.size for t in leftovers),
                "store": self.location(), "cache": index.path}

    def location(self) -> str:
        """Where the store is, as a user would name it: the absolute folder, or the URI."""
        return self.backend.uri if "://" in self.backend.uri else os.path.abspath(self.backend.uri)

    def temp_folders(self) -> list[str]:
        """Where this machine's writers keep temp files for this store: its folder if local, and the spool."""
        folders = [os.path.join(self.cache_dir, self.require().store_id, "spool")]
        root = self.backend.local_root()
        if root is not None:
            folders.append(root)
        return folders

    def verify(self, *, read_data: bool = False, on_progress: Progress | None = None):
        from .verify import verify_store
        return verify_store(self, read_data=read_data, on_progress=on_progress)

    def close(self) -> None:
        self.backend.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def find_default_store(start: str | None = None) -> str:
    """The default store, found as git finds its folder: `.cas` in the current folder or the nearest
    parent that has one; `.cas` in the current folder (created on first write) when none has."""
    folder = os.path.abspath(start or os.getcwd())
    while True:
        candidate = os.path.join(folder, ".cas")
        if os.path.isfile(os.path.join(candidate, "config")):
            return candidate if folder != os.path.abspath(start or os.getcwd()) else ".cas"
        parent = os.path.dirname(folder)
        if parent == folder:
            return ".cas"
        folder = parent


def _announce_finishing(on_progress, session: PutSession) -> None:
    """Every source byte is read: tell a progress bar that shows phases what the put still waits for."""
    phase = getattr(on_progress, "phase", None)
    if phase is not None:
        packs = len(session.uploads) + (session.pack is not None)
        phase(f"finishing: storing {packs} pack{'' if packs == 1 else 's'} and the index" if packs else "finishing")


def source_kind(path: str) -> str:
    """"file" or "tree" for a path `put` can store; NotFound or InvalidInput (one line) otherwise."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise NotFound(f"no such file or folder: {path}", subject=path) from None
    except OSError as exc:
        raise InvalidInput(f"cannot read {path}: {exc.strerror}", subject=path) from None
    if not (stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode)):
        raise InvalidInput(f"not a regular file or folder: {path}", subject=path)
    return "tree" if stat.S_ISDIR(st.st_mode) else "file"


def _make_parents(folder: str) -> str | None:
    """Create a missing destination folder; return the topmost one made (to remove again on error)."""
    top, probe = None, folder
    while not os.path.lexists(probe):
        top, probe = probe, os.path.dirname(probe)
    if not os.path.isdir(probe):
        raise InvalidInput(f"cannot restore into {folder}: {probe} is not a folder", subject=folder)
    if top is not None:
        try:
            os.makedirs(folder)
        except OSError as exc:  # no permission, a full disk, or a racing writer
            shutil.rmtree(top, ignore_errors=True)
            raise storage_error(exc, f"creating folder {folder}") from None
    return top
