"""The read path: verified chunk reads, coalesced per pack, into files, folders and seekable readers."""

from __future__ import annotations

import functools
import io
import os
import re
import shutil
import stat
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor

from . import codec, layout
from .backends.local import fsync_dir, storage_error
from .digest import file_hasher, hash_bytes
from .errors import IntegrityError, InvalidInput, NotFound, PackMissing, StorageError
from .handoff import quick_handoffs
from .index import INLINE
from .manifest import DIR, FILE, LINK, FileManifest, TreeManifest, check_safe, locate
from .pack import CHUNK, Location

MAX_READ = 8 << 20  # largest coalesced ranged read
FETCH_AHEAD = 4  # runs being fetched and verified ahead of the writer
LOOKUP_BATCH = 512  # chunk locations read from the index in one transaction
MAX_GAP = 256 << 10  # neighbouring chunks closer than this are read in one request
MAX_LINK_HOPS = 64  # more links than the kernel follows in one lookup (40): a longer chain leads nowhere
FLUSH_EVERY = 32 << 20  # a restored file's write-back to disk is started every this many bytes (_EarlyFlush)
TEMP_BASE = 96  # bytes of the destination's name kept in a temp name, so the temp name stays legal
_TEMP = re.compile(r"\..*\.cas-tmp-(\d+)-(\d+)-[0-9a-f]{8}", re.S)  # .<name>.cas-tmp-<pid>-<start>-<token>


def verified_blob(loc: Location, stored, *, what: str, base: Callable[[bytes, int], bytes] | None = None,
                  depth: int = codec.MAX_DELTA_DEPTH) -> bytes:
    """Decompress a stored blob (bounded by its recorded size) and check it against its hash. A delta
    chunk is rebuilt from its base, which base(base id, the depth it may have) reads and verifies;
    `depth` is how many bases this blob may still decode through, counted along the chain as it is
    read (a frame's own depth byte is checked for its range only: the bound holds whatever it says)."""
    name = f"{what} in pack {loc.pack_id.hex()}"
    if len(stored) != loc.stored_len:
        raise IntegrityError(f"{name} is truncated", subject=loc.pack_id.hex())
    if loc.codec == codec.DELTA:
        base_id = codec.delta_base(stored, name=name)[0]
        if base_id != loc.base or base is None:
            raise IntegrityError(f"{name} is damaged: its delta frame does not match its location",
                                 subject=loc.pack_id.hex())
        if depth < 1:
            raise IntegrityError(f"{name} is a delta deeper than its dependants allow", subject=loc.pack_id.hex())
        raw = codec.decode_delta(stored, loc.raw_len, base(base_id, depth - 1), name=name)
    else:
        raw = codec.decompress(loc.codec, stored, loc.raw_len, name=name)
    if hash_bytes(raw) != loc.check:
        raise IntegrityError(f"{name} fails its checksum (pack {loc.pack_id.hex()} is damaged)",
                             subject=loc.pack_id.hex())
    return raw


# what a writer learns of a would-be delta base: a function reading its raw bytes (verified), its delta
# depth, and the stored size and id of the chunk stored alone at the root of its chain (ChunkReader.base_facts)
BaseSource = tuple[Callable[[], bytes], int, int | None, bytes | None]


class ChunkReader:
    """Reads blobs from packs and verifies each against its hash before anyone sees a byte."""

    def __init__(self, backend, index, cache=None):
        self.backend, self.index, self.cache = backend, index, cache  # cache: a ChunkCache, for remote stores

    def location(self, chunk_id: bytes) -> Location:
        return self._placed(chunk_id, self.index.chunk(chunk_id))

    def _placed(self, chunk_id: bytes, loc: Location | None) -> Location:
        """The chunk's location given what the `chunks` table said (None: look for inline content)."""
        if loc is None:
            loc = self.index.object_location(chunk_id)  # small content kept inline in a run record
            if loc is not None and loc.kind != INLINE:
                loc = None
        if loc is None:
            raise IntegrityError(f"chunk {chunk_id.hex()} is missing from the store", subject=chunk_id.hex())
        return loc

    def blob(self, loc: Location, *, what: str, depth: int = codec.MAX_DELTA_DEPTH) -> bytes:
        """One blob's raw bytes, verified (a delta through at most `depth` bases)."""
        return next(self._verified([(loc, 0)], what=what, depth=depth))[2]

    def as_base(self, chunk_id: bytes) -> BaseSource:
        """A chunk to be a delta's base: a function giving its raw bytes (its stored copy read, decoded
        through its own bases and verified when the function is called: not at all when the writer
        takes another base) and its base_facts."""
        loc = self.location(chunk_id)
        return (lambda: self.blob(loc, what=f"chunk {chunk_id.hex()}"), *self.base_facts(chunk_id, loc))

    def base_facts(self, chunk_id: bytes, loc: Location | None = None) -> tuple[int, int | None, bytes | None]:
        """What a delta against this chunk needs to know of the copy that reads use, from the index
        alone: its delta depth (how many bases a read of that copy decodes through; 0: stored alone),
        and the stored size and id of the chunk stored alone at the root of its chain of bases (the
        chunk itself at depth 0). A chain longer than a reader follows gives (MAX_DELTA_DEPTH, None,
        None): no delta against it, nor against its root. No frame is read: a depth byte served by
        the chunk cache is a hint, and the chain a reader will follow is the index's."""
        loc = self.location(chunk_id) if loc is None else loc
        depth, here = 0, chunk_id
        while loc.codec == codec.DELTA:
            if depth == codec.MAX_DELTA_DEPTH:
                return depth, None, None
            depth, here = depth + 1, loc.base
            loc = self.location(here)
        return depth, loc.stored_len, here

    def raw_and_width(self, chunk_id: bytes) -> tuple[bytes, int]:
        """A delta chunk's raw bytes, verified, and the element width its frame records."""
        loc, stored, raw = next(self._verified([(self.location(chunk_id), 0)], what=f"chunk {chunk_id.hex()}"))
        return raw, codec.delta_width(stored, name=f"chunk {chunk_id.hex()}") if loc.codec == codec.DELTA else 0

    def _base(self, chunk_id: bytes, depth: int) -> bytes:
        """The raw bytes of a delta's base, itself a delta through at most `depth` bases."""
        return self.blob(self.location(chunk_id), what=f"chunk {chunk_id.hex()} (a delta base)", depth=depth)

    def chunk(self, chunk_id: bytes) -> bytes:
        return self.blob(self.location(chunk_id), what=f"chunk {chunk_id.hex()}")

    def read_runs(self, manifest: FileManifest) -> Iterator[list[tuple[Location, int]]]:
        """Group a file's chunks into runs that one ranged read of one pack serves."""
        def placed() -> Iterator[tuple[Location, int]]:
            for start in range(0, len(manifest), LOOKUP_BATCH):
                ids = [manifest.chunk_id(i) for i in range(start, min(start + LOOKUP_BATCH, len(manifest)))]
                for i, (chunk_id, known) in enumerate(zip(ids, self.index.chunks_at(ids)), start):
                    yield self._placed(chunk_id, known), i
        return _runs(placed())

    def fetch_run(self, run: list[tuple[Location, int]]) -> list[bytes]:
        """The raw bytes of a run's blobs, each verified."""
        return [raw for _, _, raw in self._verified(run)]

    def stored_blobs(self, locs: list[Location], *, whole=None) -> Iterator[tuple[Location, memoryview]]:
        """The stored (still compressed) bytes of blobs in packs, each verified before it is handed out,
        read in coalesced ranges in pack order: how repack and revive copy blobs as they are stored.
        whole: the bytes of the one pack all locs are in, already read (verify reads it whole)."""
        ordered = sorted(locs, key=lambda loc: (loc.pack_id, loc.offset))
        for run in _runs((loc, 0) for loc in ordered):
            for loc, stored, _ in self._verified(run, whole):
                yield loc, stored

    def _verified(self, run: list[tuple[Location, int]], whole=None, *, what: str | None = None,
                  depth: int = codec.MAX_DELTA_DEPTH) -> Iterator[tuple[Location, memoryview, bytes]]:
        """Each blob of a run with its stored and its raw bytes, verified (what: its name in errors).

        The chunk cache is a hint: bytes it served that fail their check are dropped from it and the
        run is read again from the store, whose bytes alone decide whether a blob is damaged."""
        blobs, cached = self._read_run(run, whole)
        for i, (loc, _) in enumerate(run):
            try:
                raw = verified_blob(loc, blobs[i], what=what or _what(loc), base=self._base, depth=depth)
            except IntegrityError:
                if not cached:
                    raise
                self.cache.drop(loc.pack_id, run[0][0].offset, run[-1][0].offset + run[-1][0].stored_len)
                blobs, cached = self._read_run(run, whole, cached=False)
                raw = verified_blob(loc, blobs[i], what=what or _what(loc), base=self._base, depth=depth)
            yield loc, blobs[i], raw

    def _read_run(self, run: list[tuple[Location, int]], whole=None, *, cached: bool = True) -> tuple[list, bool]:
        """The stored bytes of each blob of a run (one ranged read of one pack, or a slice of `whole`),
        unverified: each is exactly as long as its location says or verified_blob refuses it; and
        whether they came from the chunk cache (cached=False: not looked up there)."""
        first, last = run[0][0], run[-1][0]
        if first.kind == INLINE:
            return [self.index.inline_content(loc.check) or b"" for loc, _ in run], False
        start, end = first.offset, last.offset + last.stored_len
        cache = self.cache if whole is None else None
        data = cache.get(first.pack_id, start, end) if cache is not None and cached else None
        hit = data is not None
        if data is None:
            key = layout.pack_key(first.pack_id)
            try:
                data = self.backend.get(key, start, end) if whole is None else memoryview(whole)[start:end]
            except NotFound:
                raise PackMissing(f"pack {first.pack_id.hex()} holding {_what(first)} is missing",
                                  subject=key) from None
            if cache is not None:
                cache.put(first.pack_id, start, data)
        view = memoryview(data)
        return [view[loc.offset - start: loc.offset - start + loc.stored_len] for loc, _ in run], hit


def _what(loc: Location) -> str:
    return {INLINE: "inline content", CHUNK: "chunk"}.get(loc.kind, "manifest") + " " + loc.key.hex()


def _runs(placed: Iterable[tuple[Location, int]]) -> Iterator[list[tuple[Location, int]]]:
    """Group blobs, in the order given, into runs that one ranged read of one pack serves (inline
    content: one blob per run)."""
    run: list[tuple[Location, int]] = []
    for loc, i in placed:
        if run:
            first, last = run[0][0], run[-1][0]
            gap = loc.offset - (last.offset + last.stored_len)
            near = (loc.kind != INLINE and loc.pack_id == first.pack_id and 0 <= gap <= MAX_GAP
                    and loc.offset + loc.stored_len - first.offset <= MAX_READ)
            if not near:
                yield run
                run = []
        run.append((loc, i))
    if run:
        yield run


def stream_file(reader: ChunkReader, manifest: FileManifest, write: Callable[[bytes], object], *,
                digest: bytes, on_progress: Callable[[int], None] | None = None) -> None:
    """Write a file's verified chunks in order; the whole file is checked against its digest at the end.

    Two threads fetch, decompress and verify runs of chunks; one more feeds the file digest in order,
    so this thread only writes. (More ranged GETs in flight on S3 measured no faster, 1.08 s either
    way for 125 MB, and held 75 MiB more: benchmarks/bench_s3.py.)
    """
    hasher = file_hasher()
    codec.will_decode(manifest.size)
    with quick_handoffs(), ThreadPoolExecutor(max_workers=2, thread_name_prefix="cas-get") as pool, \
            ThreadPoolExecutor(max_workers=1, thread_name_prefix="cas-digest") as digester:
        fetching: deque = deque()
        digesting: deque = deque()
        try:
            for run in reader.read_runs(manifest):
                fetching.append(pool.submit(reader.fetch_run, run))
                if len(fetching) >= FETCH_AHEAD:
                    _drain(fetching.popleft(), hasher, digester, digesting, write, on_progress)
            while fetching:
                _drain(fetching.popleft(), hasher, digester, digesting, write, on_progress)
            while digesting:
                digesting.popleft().result()
        finally:
            for f in fetching:
                f.cancel()
    if hasher.digest() != digest:
        raise IntegrityError(f"restored content of {digest.hex()} does not match its digest", subject=digest.hex())


def _drain(future, hasher, digester, digesting: deque, write, on_progress) -> None:
    blobs = future.result()
    digesting.append(digester.submit(_update_all, hasher, blobs))
    for raw in blobs:  # one write per chunk: joining them first costs fresh pages for every run
        write(raw)
        if on_progress:
            on_progress(len(raw))
    while len(digesting) > FETCH_AHEAD:  # bound the verified bytes waiting for the digest
        digesting.popleft().result()


def _update_all(hasher, blobs: list[bytes]) -> None:
    for raw in blobs:
        hasher.update(raw)


# ---- temp siblings: named after their writer, so a later get can tell a dead writer's from a live one's ----
def _temp_sibling(dest: str) -> str:
    folder, base = os.path.split(os.path.abspath(dest))
    base = os.fsdecode(os.fsencode(base)[:TEMP_BASE])
    return os.path.join(folder, f".{base}.cas-tmp-{_owner(os.getpid())}-{os.urandom(4).hex()}")


@functools.lru_cache(maxsize=4)
def _owner(pid: int) -> str:
    """<pid>-<start time>: the start time tells this process from a later one given the same pid."""
    return f"{pid}-{_process_start(pid) or 0}"


def _process_start(pid: int) -> int | None:
    """When process pid started (clock ticks since boot; 0 where unknown), or None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rpartition(b")")[2].split()
        return None if fields[0] in (b"Z", b"X") else int(fields[19])  # a zombie writes nothing more
    except FileNotFoundError:
        return None
    except (OSError, IndexError, ValueError):  # no /proc: ask the kernel whether the pid exists
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except OSError:
            pass
        return 0


def remove_stale_temps(folder: str) -> None:
    """Remove restore temps in folder whose writer is gone (a get killed by SIGKILL, a crash, a reboot).

    A temp whose pid is alive with the start time in its name belongs to a running get and is kept;
    names without a pid (older versions) are kept too.
    """
    try:
        names = [n for n in os.listdir(folder) if ".cas-tmp-" in n]
    except OSError:
        return
    for name in names:
        m = _TEMP.fullmatch(name)
        if m:
            now = _process_start(int(m[1]))
            if now is None or (now and int(m[2]) and now != int(m[2])):
                _remove(os.path.join(folder, name))


# ---- restoring ---------------------------------------------------------------------------------
def write_file(reader, manifest, digest: bytes, target: str, *, executable: bool = False, on_progress=None) -> None:
    """Restore one file at `target` (which must not exist), verified before it appears there."""
    tmp = _temp_sibling(target)
    try:
        with open(tmp, "xb") as f, _EarlyFlush(f) as out:
            stream_file(reader, manifest, out.write, digest=digest, on_progress=on_progress)
            out.finish()
        if executable:
            os.chmod(tmp, 0o755)
        os.link(tmp, target)
    except OSError as exc:
        raise storage_error(exc, f"writing {target}") from exc
    finally:
        _remove(tmp)


class _EarlyFlush:
    """Writes a file and, every FLUSH_EVERY bytes, has another thread flush what is written so far to
    disk (fdatasync), so that the fsync a restore ends with (a file is complete on disk before it gets
    its name) waits for the last stretch only: the write-back of the rest overlaps the reading and
    decoding (a 249 MB get spent 0.15 s of its 0.8 s in that one fsync)."""

    def __init__(self, f):
        self.f, self.fd, self.since = f, f.fileno(), 0
        self.pending: Future | None = None
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cas-flush")

    def write(self, data) -> None:
        self.f.write(data)
        self.since += len(data)
        if self.since >= FLUSH_EVERY and (self.pending is None or self.pending.done()):
            if self.pending is not None:
                self.pending.result()  # its error, if any, is this write's
            self.f.flush()
            self.pending, self.since = self.pool.submit(getattr(os, "fdatasync", os.fsync), self.fd), 0  # macOS: fsync

    def finish(self) -> None:
        """Everything written is on disk."""
        self.f.flush()
        if self.pending is not None:
            self.pending.result()
        os.fsync(self.fd)

    def __enter__(self) -> _EarlyFlush:
        return self

    def __exit__(self, *exc) -> None:
        self.pool.shutdown(wait=True)  # before the file is closed: no flush of a closed descriptor


def write_tree(load_file: Callable[[bytes], FileManifest], reader, tree: TreeManifest, target: str, *,
               name: str, on_progress=None) -> None:
    """Restore a folder into `target` (which must not exist): built beside it, then renamed into place."""
    check_safe(tree, name=name)
    check_links(tree, name=name)
    tmp = _temp_sibling(target)
    try:
        os.mkdir(tmp)
        for e in sorted(tree.entries, key=lambda e: e.path):
            path = os.path.join(tmp, *e.path.split("/"))
            os.makedirs(os.path.dirname(path), exist_ok=True)
            if e.kind == DIR:
                os.makedirs(path, exist_ok=True)
            elif e.kind == LINK:
                os.symlink(e.target, path)
            elif e.kind == FILE:
                write_file(reader, load_file(e.digest), e.digest, path, executable=e.executable,
                           on_progress=on_progress)
        os.rename(tmp, target)
        fsync_dir(os.path.dirname(os.path.abspath(target)))
    except OSError as exc:
        raise storage_error(exc, f"writing {target}") from exc
    finally:
        _remove(tmp)


def check_links(tree: TreeManifest, *, name: str) -> None:
    """Refuse a tree holding a link that resolves outside it once the tree's other links are in place.

    Each target is resolved as the kernel will resolve it in the restored tree: from the link's
    folder, component by component, following the tree's links, with `..` going to the parent of
    wherever a link led (so `l1 -> sub`, `sub/l2 -> ..` and `x -> l1/l2/../../etc` is refused
    although each target looks inside). Checking the whole tree covers every order of restoring it.
    """
    links = {e.path: e.target for e in tree.entries if e.kind == LINK}
    for path, target in links.items():
        if not _resolves_inside(links, path, target):
            raise IntegrityError(f"refusing to restore tree {name}: link {path!r} resolves outside ({target!r})",
                                 subject=name)


def _resolves_inside(links: dict[str, str], path: str, target: str) -> bool:
    where = path.split("/")[:-1]
    todo = deque(target.split("/"))
    hops = 0
    while todo:
        part = todo.popleft()
        if part in ("", "."):
            continue
        if part == "..":
            if not where:
                return False
            where.pop()
            continue
        where.append(part)
        followed = links.get("/".join(where))
        if followed is None:
            continue
        hops += 1
        if hops > MAX_LINK_HOPS:
            return True  # a loop, or a chain longer than the kernel follows: it leads nowhere
        if followed.startswith("/"):
            return False
        where.pop()
        todo.extendleft(reversed(followed.split("/")))
    return True


def _remove(path: str) -> None:
    try:
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)
        else:
            os.unlink(path)
    except OSError:
        pass


def replace_destination(dest: str, restore: Callable[[str], None]) -> None:
    """Restore into a fresh sibling and swap it with an existing `dest` only once it is complete.

    Only a regular file, a folder or a link is ever replaced: a FIFO, socket or device is refused
    before anything is written, and again just before the swap.
    """
    _refuse_special(dest)
    new = _temp_sibling(dest)
    restore(new)
    try:
        _swap_in(new, dest)
    except OSError as exc:
        raise StorageError(f"cannot replace {dest}: {exc.strerror}", subject=dest) from exc
    finally:
        _remove(new)


def _swap_in(new: str, dest: str) -> None:
    """Move dest aside and new into its place, then drop the old copy (put back if the second rename fails)."""
    _refuse_special(dest)
    aside = _temp_sibling(dest)
    os.rename(dest, aside)
    try:
        os.rename(new, dest)
    except BaseException:
        os.rename(aside, dest)
        raise
    _remove(aside)


def _refuse_special(dest: str) -> None:
    try:
        mode = os.lstat(dest).st_mode
    except OSError:
        return  # gone or unreadable: the rename reports it
    if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode) or stat.S_ISLNK(mode)):
        raise InvalidInput(f"{dest} is not a regular file, folder or link; refusing to replace it", subject=dest)


class FileReader(io.RawIOBase):
    """A readable, seekable view of a stored file; reads fetch (and verify) only the chunks they touch.

    Each chunk is checked against its id. The manifest listing the chunks can only be checked against
    the file's digest by reading every byte: bytes read in order from the start feed a running hash,
    and the read that reaches the end raises IntegrityError instead of returning if the whole does not
    hash to the digest (so `read()` of the whole file never returns bytes of a forged manifest).
    """

    def __init__(self, reader: ChunkReader, manifest: FileManifest, digest: bytes):
        self._reader, self._manifest, self.digest = reader, manifest, digest
        self._offsets = manifest.offsets()
        self._pos = 0
        self._cached: tuple[int, bytes] | None = None
        self.size = manifest.size
        self._hasher, self._hashed = file_hasher(), 0  # bytes [0, _hashed) went into the running hash

    @property
    def chunks(self) -> list[tuple[int, int, bytes]]:
        """(start, end, chunk id) of each chunk of the file, in order."""
        offsets, m = self._offsets, self._manifest
        return [(offsets[i], offsets[i + 1], m.chunk_id(i)) for i in range(len(m))]

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        self._checkClosed()
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self.size}[whence]
        if base + offset < 0:
            raise ValueError("negative seek position")
        self._pos = base + offset
        return self._pos

    def _chunk(self, i: int) -> bytes:
        if self._cached is None or self._cached[0] != i:
            self._cached = (i, self._reader.chunk(self._manifest.chunk_id(i)))
        return self._cached[1]

    def readinto(self, buffer) -> int:
        self._checkClosed()
        out = memoryview(buffer).cast("B")
        done = 0
        while done < len(out) and self._pos < self.size:
            i = locate(self._offsets, self._pos)
            data = self._chunk(i)
            start = self._pos - self._offsets[i]
            n = min(len(out) - done, len(data) - start)
            out[done:done + n] = data[start:start + n]
            if self._pos <= self._hashed < self._pos + n:  # extends the part read in order from the start
                self._hasher.update(data[start + self._hashed - self._pos:start + n])
                self._hashed = self._pos + n
            done += n
            self._pos += n
        if done and self._hashed == self.size and self._pos == self.size and self._hasher.digest() != self.digest:
            raise IntegrityError(f"file {self.digest.hex()} is damaged: its chunks do not hash to its digest "
                                 f"(its manifest was altered)", subject=self.digest.hex())
        return done
