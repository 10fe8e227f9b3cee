"""The write path: files and folders → chunks → packs, in a bounded pipeline of threads, in write order."""

from __future__ import annotations

import os
import stat
from array import array
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from itertools import accumulate, groupby

from . import codec, layout, pack_index
from .backends.local import storage_error
from .chunker import TENSOR_MIN, Chunker, tensor_regions
from .datatype import datatype
from .digest import file_hasher, hash_bytes
from .errors import CasError, ChangedWhileReading, InvalidInput, NotFound, PackMissing, StorageError
from .file_hints import identity as file_identity, open_parent_copy
from .manifest import DIR, FILE, LINK, FileManifest, TreeEntry, TreeManifest
from .pack import CHUNK, FILE_MANIFEST, TREE_MANIFEST, Location, PackWriter, spool_path
from .pack_index import PackRecord
from .tensorfiles import read_layout

DEPTH = 3  # segments in flight per stage
PACKS_PER_INDEX_OBJECT = 256  # a long put writes one index object per this many packs...
INDEX_OBJECT_BYTES = 256 << 20  # ...or per this many bytes of packs: a killed put's retry re-sends at most that
# ...or per this many blobs: an index object stays about pack_index.FULL_OBJECT, however small the chunks
# (a reader decodes one object at a time), and so does what the session holds of the packs it wrote
INDEX_OBJECT_BLOBS = 1 << 17
PACK_BLOBS = 1 << 14  # a pack is finished at this many blobs too, whatever its size: its footer stays small, and
# so do the cache's write transaction that learns it (LMDB holds a dirty page per B-tree leaf it touches)
REHASH_BLOCK = 8 << 20
LOOKUP_BATCH = 4096  # chunk ids looked up in the cache in one read transaction


@datatype(frozen=True, slots=True)
class PutResult:
    path: str
    digest: str
    size: int
    new_bytes: int
    kind: str = "file"


def _hash_chunks(view: memoryview, lengths: list[int]) -> list[bytes]:
    ids, pos = [], 0
    for n in lengths:
        ids.append(hash_bytes(view[pos:pos + n]))
        pos += n
    return ids


def missing_packs(backend, pack_ids: set[bytes]) -> set[bytes]:
    """Which of the packs are absent from the store: one stat each, several at a time."""
    if not pack_ids:
        return set()
    ids = sorted(pack_ids)
    workers = max(1, min(len(ids), backend.read_concurrency))
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="cas-check") as pool:
        sizes = list(pool.map(lambda pid: backend.stat(layout.pack_key(pid)), ids))
    return {pid for pid, size in zip(ids, sizes) if size is None}


def _compress_all(parts: list[tuple[memoryview, int, bytes]], level: int, base_reader=None
                  ) -> list[tuple[int, bytes, bytes]]:
    """(codec, stored, base) of each (chunk, float width, base id or b""): a chunk with a base as a delta
    against it if that pays, the others by byte plane where the width says floats (each run of chunks
    of one width in one numpy pass), else by zstd.

    base_reader(id) gives a function reading the base's raw bytes, its delta depth, and the stored size
    and id of the chunk stored alone at the root of its chain (None: unknown; restore.BaseSource). A
    base as deep as a base may be is replaced by that root before either is read: the chain branches
    there instead of starting again from a chunk stored alone (the same piece of the tensor a few
    versions back is still much closer than nothing). A delta clearly smaller than the root's copy
    (codec.CLEAR_GAIN) is kept as it is; any other is kept only if it beats the chunk stored alone,
    compressed to compare (codec.delta_pays). The base returned may thus be another than the one
    asked for.
    """
    out: list[tuple[int, bytes, bytes] | None] = [None] * len(parts)
    frames: dict[int, tuple[bytes, bytes]] = {}  # deltas (frame, base) waiting for the size of their chunk alone
    for i, (view, width, base_id) in enumerate(parts):
        if not base_id or base_reader is None:
            continue
        try:
            read, depth, alone, root = base_reader(base_id)
            if depth >= codec.MAX_DELTA_DEPTH and root is not None:
                base_id = root
                read, depth, alone, _ = base_reader(root)
            base_raw = read()
        except CasError:  # a base that cannot be read now is no base: the chunk is stored alone
            continue
        frame = codec.encode_delta(view, base_raw, base_id, depth, width, level)
        if frame is not None and alone is not None and len(frame) <= codec.CLEAR_GAIN * alone:
            out[i] = (codec.DELTA, frame, base_id)
        elif frame is not None:
            frames[i] = (frame, base_id)
    for width, run in groupby([i for i, done in enumerate(out) if done is None], key=lambda i: parts[i][1]):
        todo = list(run)
        views = [parts[i][0] for i in todo]
        plain = codec.compress_planes_many(views, width, level) if width else [codec.compress(v, level) for v in views]
        for i, (codec_id, stored) in zip(todo, plain):
            frame, base_id = frames.get(i, (b"", b""))
            pays = bool(frame) and codec.delta_pays(len(frame), len(stored))
            out[i] = (codec.DELTA, frame, base_id) if pays else (codec_id, stored, b"")
    return out  # type: ignore[return-value]


def _compress_alone(data, width: int, level: int) -> tuple[int, bytes]:
    """(codec, stored) of a chunk stored without a base: by byte plane if its width says floats, else zstd."""
    return codec.compress_planes(data, width, level) if width else codec.compress(data, level)


def delta_bases(layout, regions, parent, step: int, size: int) -> dict[int, bytes]:
    """Offset of each tensor chunk → the parent's chunk at the same place of the same tensor.

    A parent of the same size is taken to have the same layout (versions of one checkpoint usually
    do): the parent's chunk that starts where this one does and has its length, read from the
    parent's manifest alone. Otherwise the parent's layout is read (its header's chunks) and tensors
    are matched by name, dtype and size, each a whole region in both files. Either way it is a hint:
    a base that is not the chunk's counterpart gives a delta that does not pay, and the chunk is
    stored alone.
    """
    starts = {start: (end, chunk_id) for start, end, chunk_id in parent.chunks}
    bases: dict[int, bytes] = {}
    if parent.size == size:
        for start, end, _ in regions:
            for k in range(start, end, step):
                found_end, chunk_id = starts.get(k, (None, b""))
                if found_end == min(k + step, end):
                    bases[k] = chunk_id
        return bases
    if parent.layout is None:
        return {}
    parent_regions = {start: end for start, end, _ in parent.layout.regions}
    ours = {start: end for start, end, _ in regions}
    theirs = {t.name: t for t in parent.layout.tensors if parent_regions.get(t.offset) == t.end}
    for t in layout.tensors:
        p = theirs.get(t.name)
        if p is None or ours.get(t.offset) != t.end or (p.dtype, p.size) != (t.dtype, t.size):
            continue
        for k in range(0, t.size, step):
            length = min(step, t.size - k)
            end, chunk_id = starts.get(p.offset + k, (None, b""))
            if end == p.offset + k + length:
                bases[t.offset + k] = chunk_id
    return bases


class PutSession:
    """One put: owns the open pack, the chunks it added, and the order pack → index → manifest → ref."""

    def __init__(self, *, backend, index, config, spool_dir: str, on_progress: Callable[[int], None] | None = None,
                 warn: Callable[[str], None] | None = None,
                 read_manifest: Callable[[bytes], FileManifest] | None = None, chunk_reader=None, learn: bool = True):
        self.backend, self.index, self.config = backend, index, config
        # False (gc's repack): the packs written are left to the next sync, which reads their index objects
        # (in bulk when it relearns every pack); learning millions of blobs one by one into a large
        # cache rewrites a page of it per blob. A blob handed to this session twice may then be stored twice.
        self.learn = learn
        self.chunk_reader = chunk_reader  # reads the bases of delta chunks (as_base, base_facts)
        self.base_reader = chunk_reader.as_base if chunk_reader is not None else None
        self.spool_dir = spool_dir
        self.chunker = Chunker(config.chunker)
        self.pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="cas-put")
        self.digester = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cas-digest")  # in order
        self.packer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cas-pack")  # pack writes, in order
        self.uploader = ThreadPoolExecutor(max_workers=backend.upload_concurrency, thread_name_prefix="cas-upload")
        self.uploads: deque[tuple[PackWriter, Future]] = deque()  # packs being made durable, oldest first
        self.unconsumed: set[PackWriter] = set()  # finished packs whose upload has not completed
        self.spools: set[str] = set()  # every spool path this session chose, removed by close() if still there
        self.written: list[PackRecord] = []  # durable packs no index object names yet
        self.index_keys: list[tuple[str, list[bytes]]] = []  # index objects this session wrote, with their packs
        self.pack: PackWriter | None = None
        # what this session will store but the index does not know yet: (kind, key), since a one-chunk
        # file's digest equals its chunk's id
        self.pending: set[tuple[int, bytes]] = set()
        self.new_bytes = 0
        self.seen: dict[bytes, bytes] = {}  # file identity → digest, remembered once the put is acknowledged
        # packs of the store this session deduplicated against: each must still exist when it commits
        self.relied: set[bytes] = set()
        self.own_packs: set[bytes] = set()
        self.read_manifest = read_manifest
        self.distrusted: set[bytes] = set()  # manifests found unreadable: stored again, never deduplicated
        self.on_progress = on_progress or (lambda n: None)
        self._tree_parents: Callable[[str], object] | None = None  # put_tree's parent of each file
        self.warn = warn or (lambda msg: None)

    # ---- packs ------------------------------------------------------------------------------
    def _add(self, kind, key, stored, raw_len, codec_id, check, size=0, base=b"") -> None:
        if self.pack is None:
            path = spool_path(self.spool_dir)
            self.spools.add(path)  # before the file exists: an interrupt at any point leaves close() its name
            self.pack = PackWriter(self.spool_dir, self.packer, path)
        try:
            self.pack.add(kind, key, stored, raw_len, codec_id, check, size, base)
        except OSError as exc:
            raise storage_error(exc, "writing a pack") from exc
        self.pending.add((kind, key))
        if self.pack.size >= self.config.pack_target or len(self.pack.entries) >= PACK_BLOBS:
            self.flush(wait=False)

    def flush(self, *, wait: bool = True) -> None:
        """Finish the open pack and hand it to the uploader (write order step 1).

        Packs upload in parallel, but a pack holding a manifest waits until every earlier pack is
        durable, so no manifest is ever in the store before the chunks it lists. With wait, return
        only when every pack of this session is durable.
        """
        pack, self.pack = self.pack, None
        if pack is not None and not pack.entries:
            pack.abort()
            pack = None
        if pack is not None:
            try:
                try:
                    finished = pack.finish()
                except OSError as exc:
                    raise storage_error(exc, "writing a pack") from exc
            except BaseException:
                pack.abort()
                raise
            self.unconsumed.add(pack)  # close() removes its spool if an interrupt strikes before the upload
            if any(e.kind != CHUNK for e in pack.entries):
                self._drain()
            self.uploads.append((pack, self.uploader.submit(self._upload, pack, *finished)))
            # wait for the oldest upload when too many are queued, and take every finished one as it
            # finishes: a long put names its durable packs (_complete_oldest) without waiting for the
            # queue to fill, or a put whose uploads kept pace left up to 512 MiB durable but unnamed
            while self.uploads and (len(self.uploads) > 2 * self.backend.upload_concurrency
                                    or self.uploads[0][1].done()):
                self._complete_oldest()
        if wait:
            self._drain()

    def _upload(self, pack: PackWriter, pack_id: bytes, path: str, size: int) -> PackRecord:
        try:
            self.backend.put_file(layout.pack_key(pack_id), path, create_only=True)
        finally:
            pack.abort()  # removes the spool file if the backend did not consume it
        return PackRecord(pack_id, size, tuple(pack.entries))

    def _complete_oldest(self) -> None:
        pack, future = self.uploads.popleft()
        record = future.result()
        self.unconsumed.discard(pack)
        self.own_packs.add(record.pack_id)
        self.written.append(record)
        # a long put names what is durable as it goes: other machines see progress, and a retry after a
        # crash deduplicates against it instead of sending it again
        if (len(self.written) >= PACKS_PER_INDEX_OBJECT or sum(r.size for r in self.written) >= INDEX_OBJECT_BYTES
                or sum(len(r.entries) for r in self.written) >= INDEX_OBJECT_BLOBS):
            self._write_index_object()

    def _write_index_object(self) -> None:
        """Name the durable packs in an index object; only then does the local index learn them.

        Were a pack in the local index before an index object named it, a put that failed in between
        would leave this machine deduplicating against chunks no other machine can find.
        """
        records, self.written = self.written, []
        if records:
            self.index_keys.append((pack_index.write(self.backend, records), [r.pack_id for r in records]))
        for record in records:
            if self.learn:
                self.index.add_pack(record.pack_id, record.size, record.entries)
            self.pending.difference_update((e.kind, e.key) for e in record.entries)  # the index answers now

    def _drain(self) -> None:
        while self.uploads:
            self._complete_oldest()

    def commit(self) -> dict[str, list[bytes]]:
        """Make everything durable: the packs, then index objects naming them (step 2).

        Refuses with PackMissing if a pack this session deduplicated against is gone from the store: the
        local index is a hint, so the packs it named are checked before anything can refer to them.
        Returns the keys of the index objects written, each with the packs it names.
        """
        self.flush(wait=True)
        missing = missing_packs(self.backend, self.relied - self.own_packs)
        if missing:
            self.index.mark_missing(missing)
            raise PackMissing(f"pack {min(missing).hex()} named by the local cache is missing from the store "
                              f"({len(missing)} missing)", subject=min(missing).hex())
        self._write_index_object()
        return dict(self.index_keys)

    def close(self) -> None:
        """Abandon anything not committed (after an error): stop the threads, remove spool files."""
        self.pool.shutdown(wait=True, cancel_futures=True)
        self.digester.shutdown(wait=True, cancel_futures=True)
        self.packer.shutdown(wait=True, cancel_futures=True)
        self.uploader.shutdown(wait=True, cancel_futures=True)
        for pack in self.unconsumed:
            pack.abort()
        self.unconsumed.clear()
        self.uploads.clear()
        if self.pack is not None:
            self.pack.abort()
            self.pack = None
        for path in self.spools:  # a spool an interrupt orphaned between its creation and its writer's
            try:  # registration (a consumed one was renamed into the store or removed after its upload)
                os.unlink(path)
            except OSError:
                pass
        self.spools.clear()

    # ---- manifests --------------------------------------------------------------------------
    def _known(self, key: bytes, kind: int) -> bool:
        """Whether this session may rely on the blob being stored (by itself, or in a live pack)."""
        return (kind, key) in self.pending or self.rely_on(kind, key)

    def add_manifest(self, kind: int, key: bytes, raw: bytes, size: int) -> None:
        if (kind, key) in self.pending or (key not in self.distrusted and self._known(key, kind)):
            return
        codec_id, stored = codec.compress(raw, self.config.level)
        self._add(kind, key, stored, len(raw), codec_id, hash_bytes(raw), size)

    def copy_blob(self, loc: Location, stored, *, force: bool = False) -> None:
        """Store a blob again as it was stored at `loc` (gc's repack, reviving condemned data), from the
        stored bytes ChunkReader.stored_blobs handed out (verified there: no unchecked blob is copied).
        With force, copy it even if the index knows it (repack moves blobs out of packs still indexed).
        """
        if (loc.kind, loc.key) in self.pending or (not force and self.rely_on(loc.kind, loc.key)):
            return
        if loc.kind == CHUNK:
            self.new_bytes += loc.raw_len
        self._add(loc.kind, loc.key, bytes(stored), loc.raw_len, loc.codec, loc.check, loc.size, loc.base)

    def _rely_on_roots(self, new: list, compressed: list) -> None:
        """Deltas made against another base than the one planned (a chain's root, _compress_all) rely on
        that base's pack as on any base's; one whose pack the cache does not offer (condemned, or no
        longer known) is stored alone instead."""
        moved = [i for i, ((_, _, _, planned), (_, _, base)) in enumerate(zip(new, compressed))
                 if base and base != planned]
        if not moved:
            return
        for i, homes in zip(moved, self.index.chunk_homes([compressed[i][2] for i in moved])):
            if homes is not None:
                self.relied.update(homes)
                continue
            _, view, width, _ = new[i]
            compressed[i] = (*_compress_alone(view, width, self.config.level), b"")

    def rely_on(self, kind: int, key: bytes) -> bool:
        """Whether the store holds this blob in a pack a writer may use; if so that pack is checked to
        exist before this session commits (the index saying so is only a hint)."""
        homes = self.index.usable(kind, key)
        if homes is not None:
            self.relied.update(homes)
        return homes is not None

    def rely_on_chunks(self, ids: list[bytes]) -> list[bool]:
        """rely_on for each of many chunks, LOOKUP_BATCH of them looked up in one read of the cache."""
        out = []
        for homes in self._chunk_homes(ids):
            if homes is not None:
                self.relied.update(homes)
            out.append(homes is not None)
        return out

    def _chunk_homes(self, ids: list[bytes]) -> Iterator[tuple[bytes, ...] | None]:
        """Index.chunk_homes of each id, LOOKUP_BATCH of them in one read transaction."""
        for start in range(0, len(ids), LOOKUP_BATCH):
            yield from self.index.chunk_homes(ids[start:start + LOOKUP_BATCH])

    def store_alone(self, chunk_id: bytes, raw: bytes, width: int) -> None:
        """Store a chunk again without a base (gc: a delta whose base only it needs), even though the
        index knows it; `raw` was read and verified against chunk_id by the caller."""
        if (CHUNK, chunk_id) in self.pending:
            return
        codec_id, stored = _compress_alone(raw, width, self.config.level)
        self._add(CHUNK, chunk_id, stored, len(raw), codec_id, chunk_id)

    # ---- files ------------------------------------------------------------------------------
    def put_stream(self, stream, size_hint: int | None = None, regions=None,
                   bases: dict[int, bytes] | None = None) -> tuple[bytes, int]:
        """Chunk, hash, dedup, compress and pack a stream. Returns (file digest, size).
        regions: the tensors to cut at fixed offsets (cas/chunker.py), from the file's layout.
        bases: offset in the file → the parent's chunk a chunk starting there may be a delta against.

        A segment flows through: the file digest (one thread, in order) and chunk ids (the pool),
        then dedup here, compression (the pool), packing here, and back to the chunker's buffer pool.
        """
        hasher = file_hasher()
        self._bases, self._offset = bases or {}, 0
        ids_out, sizes_out = bytearray(), array("I")
        hashing: deque = deque()
        packing: deque = deque()
        size = 0
        for seg in self.chunker.segments(stream, size_hint=size_hint, regions=regions):
            size += len(seg.fresh)
            digesting = self.digester.submit(hasher.update, seg.fresh)
            hashing.append((seg, digesting, self.pool.submit(_hash_chunks, seg.data, seg.lengths)))
            while len(hashing) >= DEPTH:
                packing.append(self._dedup(hashing.popleft(), ids_out, sizes_out))
            while len(packing) >= DEPTH:
                self._pack_segment(*packing.popleft())
            self.on_progress(len(seg.fresh))
        while hashing:
            packing.append(self._dedup(hashing.popleft(), ids_out, sizes_out))
        while packing:
            self._pack_segment(*packing.popleft())
        digest = hasher.digest()
        manifest = FileManifest(size, bytes(ids_out), sizes_out)
        self.add_manifest(FILE_MANIFEST, digest, manifest.to_bytes(), size)
        return digest, size

    def _dedup(self, hashed: tuple, ids_out: bytearray, sizes_out: array):
        """Pick the chunks of a segment that the store lacks; start compressing them.

        `hashed` is (segment, its file-digest future, its chunk-ids future)."""
        seg, digesting, future = hashed
        ids = future.result()
        homes = self.index.chunk_homes(ids)  # a delta's: its pack and its bases' (Index._homes)
        self.relied.update(p for h in homes if h is not None for p in h)
        new, pos = [], 0
        widths = seg.widths or [0] * len(ids)
        candidates = [self._bases.get(self._offset + start) for start in accumulate(seg.lengths, initial=0)]
        base_homes = self.index.chunk_homes([c for c in candidates if c]) if any(candidates) else []
        usable = {c: h for c, h in zip([c for c in candidates if c], base_homes) if h is not None}
        for chunk_id, n, home, width, base in zip(ids, seg.lengths, homes, widths, candidates):
            ids_out += chunk_id
            sizes_out.append(n)
            if home is None and (CHUNK, chunk_id) not in self.pending:
                self.pending.add((CHUNK, chunk_id))
                base = base if base in usable and base != chunk_id and width else b""
                if base:
                    self.relied.update(usable[base])  # its packs must still be there when this put commits
                new.append((chunk_id, seg.data[pos:pos + n], width, base))
            pos += n
        self._offset += pos
        half = (len(new) + 1) // 2
        futures = [self.pool.submit(_compress_all, [(v, w, b) for _, v, w, b in part], self.config.level,
                                    self.base_reader) for part in (new[:half], new[half:]) if part]
        return seg, digesting, new, futures

    def _pack_segment(self, seg, digesting, new, futures) -> None:
        compressed = [c for f in futures for c in f.result()]
        self._rely_on_roots(new, compressed)
        for (chunk_id, view, _, _), (codec_id, stored, base) in zip(new, compressed):
            self.new_bytes += len(view)
            self._add(CHUNK, chunk_id, stored, len(view), codec_id, chunk_id, base=base)
        digesting.result()
        self.chunker.recycle(seg)  # nothing reads its bytes any more: compressed or raw copies are in the pack

    def put_file(self, path: str, parent=None) -> tuple[bytes, int]:
        """Store one regular file; fails with ChangedWhileReading if it changes under us. parent: a
        stored version of it (its `layout` and `chunks`, cas/tensorfiles/stored.py) whose tensor chunks
        may be the bases of this one's."""
        try:
            f = open(path, "rb", buffering=0)
        except FileNotFoundError:
            raise NotFound(f"no such file: {path}", subject=path) from None
        except IsADirectoryError:
            raise InvalidInput(f"not a file: {path}", subject=path) from None
        except OSError as exc:
            raise StorageError(f"cannot read {path}: {exc.strerror}", subject=path) from exc
        with f:
            before = os.fstat(f.fileno())
            identity = file_identity(path, before)
            try:
                digest, size = self._put_unchanged(f, identity) or self._put_against(f, before.st_size, parent)
            except OSError as exc:
                raise storage_error(exc, f"reading {path}") from exc
            after = os.fstat(f.fileno())
            try:
                now = os.stat(path)
            except OSError:
                now = None
        if (size != before.st_size or after.st_size != before.st_size or after.st_mtime_ns != before.st_mtime_ns
                or now is None or now.st_ino != before.st_ino):
            raise ChangedWhileReading(f"{path} changed while reading; nothing was stored", subject=path)
        if identity is not None:
            self.seen[identity] = digest
        return digest, size

    def _put_against(self, f, size: int, parent) -> tuple[bytes, int]:
        """put_stream of a file, its tensor chunks as deltas against the parent's where that pays; the
        bases read from the parent's local copy when it is still on disk as it was stored (a hint:
        each base read from it is checked against its chunk id), else from the store."""
        regions, bases = self._tensor_plan(f, size, parent)
        copy = None
        if bases and self.chunk_reader is not None:
            copy = open_parent_copy(self.index.remembered_file(parent.digest), parent.chunks,
                                    self.chunk_reader.as_base, self.chunk_reader.base_facts)
        if copy is None:
            return self.put_stream(f, size, regions, bases)
        self.base_reader, store_reader = copy, self.base_reader
        try:
            return self.put_stream(f, size, regions, bases)
        finally:
            self.base_reader = store_reader
            os.close(copy.fd)

    def _tensor_plan(self, f, size: int, parent=None) -> tuple[list | None, dict[int, bytes] | None]:
        """Where the file's tensors are (the regions cut at fixed offsets), if the store cuts tensors
        (format 3) and the file is a checkpoint whose header describes it, and which parent chunk each
        tensor chunk may be a delta against. Read with pread: the stream's position is untouched."""
        if not self.config.tensors or size < TENSOR_MIN:
            return None, None
        fd = f.fileno()
        layout = read_layout(lambda start, end: os.pread(fd, end - start, start), size)
        if layout is None:
            return None, None
        regions = tensor_regions(layout)
        return regions, (delta_bases(layout, regions, parent, self.config.chunker.max_size, size) if parent else None)

    def _put_unchanged(self, f, identity: bytes | None) -> tuple[bytes, int] | None:
        """The fast path for a file stored before: hash all its bytes (on every core) and, if they still
        give the digest it had and the store holds that file, store nothing more.

        The hint only picks the path: the digest is always computed from the bytes read now, and the
        stored file counts only if its manifest and every chunk it lists are in live packs (gc may keep
        a manifest in a pack it keeps while it deletes the chunks the manifest lists). A miss rewinds
        the file for the full put.
        """
        hint = self.index.remembered_digest(identity) if identity is not None else None
        homes = self._homes_of(hint) if hint is not None and self.read_manifest is not None else None
        if homes is None:
            return None
        hasher, size = file_hasher(threads=True), 0
        buffers = [bytearray(REHASH_BLOCK), bytearray(REHASH_BLOCK)]  # read one while the other is hashed
        hashing = None
        while n := f.readinto(buffers[0]):
            if hashing is not None:
                hashing.result()
            hashing = self.digester.submit(hasher.update, memoryview(buffers[0])[:n])
            buffers.reverse()
            size += n
            self.on_progress(n)
        if hashing is not None:
            hashing.result()
        if hasher.digest() == hint:  # the index does not change during a put: the check above still holds
            self.relied |= homes
            return hint, size
        f.seek(0)
        self.on_progress(-size)
        return None

    def _homes_of(self, digest: bytes) -> set[bytes] | None:
        """The packs holding a stored file's manifest and every chunk it lists, if a writer may rely on
        all of them; None if any is unknown, condemned or found missing."""
        home = self.index.usable(FILE_MANIFEST, digest)
        if home is None or self.read_manifest is None:
            return None
        homes = set(home)
        try:
            manifest = self.read_manifest(digest)
        except CasError:  # gone or damaged: the full put stores the file, and its manifest, again
            self.distrusted.add(digest)
            return None
        for packs in self._chunk_homes([manifest.chunk_id(i) for i in range(len(manifest))]):
            if packs is None:
                return None
            homes.update(packs)
        return homes

    def put_tree(self, root: str, parents: Callable[[str], object] | None = None) -> tuple[bytes, int]:
        """Store a folder: its files one by one, links as links, then its tree manifest. parents(path in
        the tree): the stored parent of the file there (put_file's parent), or None."""
        self._tree_parents = parents
        try:
            return self._put_manifest_of(list(self._walk(root, "")))
        finally:
            self._tree_parents = None

    def put_selection(self, items: list[tuple[str, str]]) -> tuple[bytes, int]:
        """Store chosen paths as one tree: (relative POSIX path in the tree, path on disk) pairs.

        Folders among them are stored whole; the parent folders of every path become entries too.
        """
        entries: dict[str, TreeEntry] = {}
        for rel, full in items:
            parts = rel.split("/")
            if rel.startswith("/") or any(p in ("", ".", "..") for p in parts):
                raise InvalidInput(f"cannot store {full!r} as {rel!r}: a path inside a tree must be relative "
                                   f"and without empty, '.' or '..' parts", subject=rel)
            for i in range(1, len(parts)):
                entries.setdefault("/".join(parts[:i]), TreeEntry("/".join(parts[:i]), DIR))
            entry = self._tree_entry(full, rel)
            if entry is None:
                continue
            entries[rel] = entry
            if entry.kind == DIR:
                entries.update((e.path, e) for e in self._walk(full, rel + "/"))
        return self._put_manifest_of(list(entries.values()))

    def _walk(self, root: str, prefix: str):
        for dirpath, dirnames, filenames in os.walk(root, onerror=_raise_walk_error):
            rel = os.path.relpath(dirpath, root)
            rel = prefix + ("" if rel == "." else rel.replace(os.sep, "/") + "/")
            dirnames.sort()
            for name in sorted(dirnames + filenames):
                entry = self._tree_entry(os.path.join(dirpath, name), rel + name)
                if entry is not None:
                    yield entry
            dirnames[:] = [d for d in dirnames if not os.path.islink(os.path.join(dirpath, d))]

    def _put_manifest_of(self, entries: list[TreeEntry]) -> tuple[bytes, int]:
        tree = TreeManifest(tuple(entries))
        digest = tree.digest()
        self.add_manifest(TREE_MANIFEST, digest, tree.to_bytes(), tree.size)
        return digest, tree.size

    def _tree_entry(self, full: str, rel: str) -> TreeEntry | None:
        _require_utf8(rel, full, "its name")
        try:
            st = os.lstat(full)
        except OSError as exc:
            raise storage_error(exc, f"reading {full}") from exc
        if stat.S_ISLNK(st.st_mode):
            target = os.readlink(full)
            _require_utf8(target, full, "its link target")
            return TreeEntry(rel, LINK, target=target)
        if stat.S_ISDIR(st.st_mode):
            return TreeEntry(rel, DIR)
        if stat.S_ISREG(st.st_mode):
            parents = self._tree_parents
            digest, size = self.put_file(full, parents(rel) if parents is not None else None)
            return TreeEntry(rel, FILE, bool(st.st_mode & 0o111), digest, size)
        self.warn(f"skipping {full}: not a regular file, folder or link")
        return None


def _require_utf8(text: str, full: str, what: str) -> None:
    """Tree manifests hold UTF-8 paths: refuse names the file system gave us as undecodable bytes."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidInput(f"cannot store {full!r}: {what} is not valid UTF-8", subject=full) from None


def _raise_walk_error(exc: OSError):
    raise StorageError(f"cannot read folder {exc.filename}: {exc.strerror}", subject=exc.filename)
