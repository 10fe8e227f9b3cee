"""`cas verify`: check packs, index and manifests end to end; with read_data, every stored byte too."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from . import codec, layout, pack_index, record_objects, records, refs
from .blobset import Blobs
from .datatype import datatype, field
from .digest import hash_bytes
from .errors import CasError, IntegrityError, NotFound
from .gc_lists import decode_list, decode_sessions
from .pack import CHUNK, FILE_MANIFEST, HEADER, read_pack_entries
from .scratch import Scratch
from .walk import REPORT, Walk, bases_of


@datatype
class VerifyReport:
    packs: int = 0
    chunks: int = 0
    manifests: int = 0
    pins: int = 0
    versions: int = 0
    index_objects: int = 0
    record_objects: int = 0
    gc_lists: int = 0
    bytes_read: int = 0
    conditional_writes: bool = True
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict:
        return {"ok": self.ok, "packs": self.packs, "chunks": self.chunks, "manifests": self.manifests,
                "pins": self.pins, "versions": self.versions, "index_objects": self.index_objects,
                "record_objects": self.record_objects, "gc_lists": self.gc_lists, "bytes_read": self.bytes_read,
                "conditional_writes": self.conditional_writes, "problems": list(self.problems)}


def verify_store(store, *, read_data: bool = False, on_progress=None) -> VerifyReport:
    with store.scratch() as scratch:
        return _verify(store, scratch, read_data=read_data, on_progress=on_progress)


def _verify(store, scratch: Scratch, *, read_data: bool, on_progress) -> VerifyReport:
    report = VerifyReport()
    index = store.index
    listed = {pid: size for key, size in store.backend.list(layout.PACKS)
              if (pid := layout.pack_id_from_key(key)) is not None}
    _check_records(store, report)
    walk = Walk(store, policy=REPORT, packs=listed, keep_chunks=False, scratch=scratch)
    reached = walk.reach(store.roots(on_damaged=lambda exc: None))  # damaged pins and records are reported below
    for pid, size in listed.items():
        try:
            _check_pack(store, pid, size, read_data=read_data, report=report, reached=reached)
        except CasError as exc:
            report.problems.append(f"pack {pid.hex()}: {exc}")
        if on_progress:
            on_progress(size if read_data else 1)
        report.packs += 1
    gone: dict[bytes, list[int]] = {}  # missing pack → [chunks, manifests] the local index places in it
    for _chunk_id, loc in index.iter_chunks():
        report.chunks += 1
        if loc.pack_id not in listed:
            gone.setdefault(loc.pack_id, [0, 0])[0] += 1
    _check_manifests(store, listed, walk, gone, report)
    if read_data:
        _check_file_digests(store, report, on_progress)
    _check_index_objects(store, listed, gone, report)
    _check_pins(store, report)
    _report_damage(walk, gone, report)
    _check_gc_lists(store.backend, report)
    report.conditional_writes = bool(store.backend.conditional_writes)
    return report


def _check_pack(store, pid: bytes, size: int, *, read_data: bool, report: VerifyReport, reached: Blobs) -> None:
    """A pack's footer reads back; with read_data, its bytes match its id and every blob its checksum
    (read whole, once, then through the same footer checks and blob reads as any other).

    A delta copy of a chunk may have lost its base: gc keeps a pack for its live blobs and deletes the
    packs only dead copies need (a chunk no root reaches, or one whose home is another copy, a copy
    stored alone most often). Such a copy is garbage, checked as far as it can be (its frame), not a
    problem; the home copy of a reached chunk whose base is gone is."""
    backend = store.backend
    if not read_data:
        read_pack_entries(backend, pid, size)
        return
    data = backend.get(layout.pack_key(pid))
    report.bytes_read += len(data)
    name = pid.hex()
    if len(data) != size or hash_bytes(data) != pid:
        raise IntegrityError(f"pack {name} is damaged: its content does not match its id", subject=name)
    if not data.startswith(HEADER):
        raise IntegrityError(f"pack {name} has a bad header", subject=name)
    entries = read_pack_entries(backend, pid, size, data=data)
    reader = store.chunk_reader()
    for _ in reader.stored_blobs([e for e in entries if not e.base], whole=data):
        pass  # each blob is verified as it is handed out
    for e in (e for e in entries if e.base):  # a delta through its bases, read from their packs
        try:
            next(reader.stored_blobs([e], whole=data))
        except IntegrityError:
            home = store.index.chunk(e.key)
            if ((CHUNK, e.key) in reached and home is not None and home.pack_id == pid) \
                    or _base_readable(reader, e.base):
                raise
            codec.delta_base(memoryview(data)[e.offset:e.offset + e.stored_len], name=f"chunk {e.key.hex()}")


def _base_readable(reader, chunk_id: bytes) -> bool:
    """Whether a delta base (and each base under it) is in the index and its pack in the store."""
    for _ in range(codec.MAX_DELTA_DEPTH + 1):
        try:
            loc = reader.location(chunk_id)
            reader.backend.get(layout.pack_key(loc.pack_id), loc.offset, loc.offset + 1)
        except (IntegrityError, NotFound):
            return False
        if not loc.base:
            return True
        chunk_id = loc.base
    return True


def _check_records(store, report: VerifyReport) -> None:
    """Every run record in the store reads back (not the cached copy); every live version's content is there."""
    def damaged(exc):  # the first open and the sync may both meet it
        _problem(report, exc)
    store.open_records(on_damaged=damaged).sync(on_damaged=damaged)
    listed = [(k, n) for k, n in store.backend.list(layout.RUNS) if layout.is_record_key(k)]
    _check_objects(store.backend, listed, lambda key, _: records.decode(store.backend.get(key), key=key), report)
    held = record_objects.list_objects(store.backend)  # each record in them checked as a loose one is
    report.record_objects += len(held)
    _check_objects(store.backend, held, lambda key, size: record_objects.read(store.backend, key, size), report)
    report.versions += len(store.records.all_versions())  # the walk checks their content


def _report_damage(walk: Walk, gone: dict[bytes, list[int]], report: VerifyReport) -> None:
    """One line per missing pack (its chunks and manifests, and the roots that need it); one line per
    other damaged object a root reaches (only those must be complete: gc may have taken the chunks of
    a manifest nothing references any more)."""
    needed_by: dict[bytes, set[str]] = {}
    for d in walk.damaged:
        if d.packs:
            for pid in d.packs:
                needed_by.setdefault(pid, set()).update(d.roots)
                gone.setdefault(pid, [0, 0])
            continue
        told = len(d.roots) == 1 and d.reason.startswith(d.roots[0])  # "<root> names <digest>, which ..."
        _problem(report, d.reason if told or not d.roots else f"{d.reason} (reached from {_names(d.roots)})")
    for pid, (chunks, manifests) in sorted(gone.items()):
        roots = needed_by.get(pid, set())
        need = f"needed by {_names(sorted(roots))}" if roots else "no run version or pin needs it"
        report.problems.append(f"pack {pid.hex()} is missing: the index places {chunks} chunks and "
                               f"{manifests} manifests in it; {need}")


def _names(names, most: int = 5) -> str:
    names = list(names)
    more = f" and {len(names) - most} more" if len(names) > most else ""
    return ", ".join(names[:most]) + more


def _check_file_digests(store, report: VerifyReport, on_progress=None) -> None:
    """Every file manifest whose chunks are all stored rebuilds the file's digest (a manifest can be
    checked against its name only by reading the file it lists)."""
    from .restore import stream_file
    index = store.index
    for digest, loc in index.iter_manifests():
        if loc.kind != FILE_MANIFEST:
            continue
        try:
            manifest = store.load_manifest(digest, loc)
            chunks = [manifest.chunk_id(i) for i in range(len(manifest))]
            if not all(index.chunks_present(chunks + sorted(bases_of(index, chunks)))):
                continue  # reported above when a ref reaches it; else gc took its chunks (or their bases)
            stream_file(store.chunk_reader(), manifest, lambda data: None, digest=digest)
        except CasError as exc:
            problem = f"file {digest.hex()}: {exc}"
            if problem not in report.problems:
                report.problems.append(problem)


def _check_manifests(store, listed: dict, walk: Walk, gone: dict[bytes, list[int]], report: VerifyReport) -> None:
    """Every manifest in the local index reads back and decodes; those the walk read are not read again."""
    for digest, loc in store.index.iter_manifests():
        report.manifests += 1
        if loc.pack_id not in listed:
            gone.setdefault(loc.pack_id, [0, 0])[1] += 1
            continue
        if digest in walk.nodes:
            continue  # read by the walk: a failure is in walk.damaged
        try:
            store.load_manifest(digest, loc)
        except CasError as exc:
            report.problems.append(f"manifest {digest.hex()}: {exc}")


def _check_index_objects(store, listed: dict, gone: dict[bytes, list[int]], report: VerifyReport) -> None:
    """Every index object reads back against its name and describes packs that exist, as they are.

    A pack gc deleted may still be named by an index object written after gc read them (by a writer
    whose lease had expired, which then committed nothing): a stale name, not damage.
    """
    deleted = store.index.deleted_packs()
    for key in pack_index.list_keys(store.backend):
        report.index_objects += 1
        try:
            records = pack_index.read(store.backend, key)
        except NotFound:
            continue  # merged away by a writer since we listed
        except CasError as exc:
            report.problems.append(f"{key}: {exc}")
            continue
        for rec in records:
            if rec.pack_id not in listed:
                if rec.pack_id not in deleted:  # reported once per pack, with what needs it
                    gone.setdefault(rec.pack_id, [0, 0])
            elif listed[rec.pack_id] != rec.size:
                report.problems.append(f"{key}: pack {rec.pack_id.hex()} has {listed[rec.pack_id]} bytes, "
                                       f"the index object says {rec.size}")


def _check_pins(store, report: VerifyReport) -> None:
    """Every pin event reads back (superseded ones too); the walk checks every live pin's content."""
    report.pins += len(refs.list_pins(store.backend, on_damaged=lambda exc: _problem(report, exc)))
    _check_objects(store.backend, refs.events(store.backend), lambda key, size: refs.load(store.backend, key, size),
                   report)


def _check_gc_lists(backend, report: VerifyReport) -> None:
    """Every gc list (condemned, sessions, deleted) reads back against its checksum."""
    decoders = {layout.GC_CONDEMNED: decode_list, layout.GC_DELETED: decode_list, layout.GC_SESSIONS: decode_sessions}

    def load(key: str, _size: int) -> None:
        decode = next(d for prefix, d in decoders.items() if key.startswith(prefix))
        decode(backend.get(key), key=key)
    listed = [(k, n) for k, n in backend.list(layout.GC) if k.startswith(tuple(decoders))]
    report.gc_lists += len(listed)
    _check_objects(backend, listed, load, report)


def _check_objects(backend, listed: list[tuple[str, int]], load, report: VerifyReport) -> None:
    """load(key, size) every listed object, in parallel where the backend benefits; damage is a problem,
    an object gone since it was listed is not."""
    def one(item) -> IntegrityError | None:
        try:
            load(*item)
        except NotFound:
            pass
        except IntegrityError as exc:
            return exc
        return None
    if len(listed) > 1 and backend.read_concurrency > 1:
        with ThreadPoolExecutor(backend.read_concurrency, thread_name_prefix="cas-verify") as pool:
            errors = list(pool.map(one, listed))
    else:
        errors = [one(item) for item in listed]
    for exc in errors:
        if exc is not None:
            _problem(report, exc)


def _problem(report: VerifyReport, exc: Exception | str) -> None:
    if str(exc) not in report.problems:  # the same object may be met twice (a live pin is also an event)
        report.problems.append(str(exc))
