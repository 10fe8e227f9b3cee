"""fsspec filesystems over a cas store: `cas://<digest>[/path]` (read-only, by content) and
`runs://<run>/<name>` (read-write: writing a file logs a new version of that artifact name).

Registered through the `fsspec.specs` entry points, so `fsspec.open("runs://exp/ckpt.pt", "wb")` works
with no import. The store is `storage_options={"store": ...}` (a URI or a cas Store), else `CAS_STORE`,
else `./.cas`.

runs:// paths: `<run>/<name>` is the latest live version of a name (names may contain '/', and the
folders they imply are listed); `<run>/<name>@<step>` or `@<alias>` one version; a logged folder is a
directory whose files are paths below its name (`<run>/<name>[@<step>]/<path>`). When a name and a
path overlap, the longest logged name wins. `rm` forgets: every live version of a name, or the one
`@<step>` names (`cas gc` then frees what no longer has a root). A version this process read (say,
the checkpoint a training run resumed from) is pinned when it is forgotten, under
`hold/<run>/<name>@<step>/<pid>`, and unpinned when the process exits: gc cannot take it while the
run that read it is alive.
"""

from __future__ import annotations

import atexit
import io
import os
import tempfile
import threading
from dataclasses import dataclass

from fsspec.spec import AbstractFileSystem

from cas import Store, layout
from cas.errors import CasError, InvalidInput, NotFound
from cas.manifest import DIR, FILE, TreeEntry
from cas.pack import TREE_MANIFEST
from cas.records import Version, check_name

from ..run import Run


def _store(store) -> Store:
    return store if isinstance(store, Store) else Store.open(store)


def _not_found(path: str) -> FileNotFoundError:
    return FileNotFoundError(2, "No such file or directory", path)


def _tree(store: Store, digest: str):
    raw_digest, loc = store.resolve(digest)
    return store.load_manifest(raw_digest, loc) if loc.kind == TREE_MANIFEST else None


def _in_tree(entries: tuple[TreeEntry, ...], sub: str) -> TreeEntry | None:
    """The entry at `sub` of a tree (a folder, named or implied by the paths below it, has kind DIR)."""
    prefix = sub + "/"
    for e in entries:
        if e.path == sub:
            return e
        if e.path.startswith(prefix):
            return TreeEntry(sub, DIR)
    return None


def _tree_children(entries: tuple[TreeEntry, ...], sub: str) -> dict[str, TreeEntry]:
    """Direct children of folder `sub` ("" for the top) of a tree, by name."""
    prefix = sub + "/" if sub else ""
    children: dict[str, TreeEntry] = {}
    for e in entries:
        if not e.path.startswith(prefix) or e.path == sub:
            continue
        head, sep, _ = e.path[len(prefix):].partition("/")
        children[head] = TreeEntry(prefix + head, DIR) if sep else e
    return children


def _cat(fs: AbstractFileSystem, path: str, start: int | None, end: int | None) -> bytes:
    """Bytes [start, end) of a file (negative: from its end), fetching only the chunks they lie in."""
    with fs._open(path) as f:
        size = f.size
        start = 0 if start is None else (start if start >= 0 else max(0, size + start))
        end = size if end is None else (end if end >= 0 else size + end)
        f.seek(start)
        return f.read(max(0, end - start))


class CasFileSystem(AbstractFileSystem):
    """`cas://<digest or prefix>[/path/inside/a/folder]`: stored content, read-only."""

    protocol = "cas"
    root_marker = ""
    cachable = False

    def __init__(self, store=None, **kwargs):
        super().__init__(**kwargs)
        self.store = _store(store)

    def _node(self, path: str):
        path = self._strip_protocol(path)
        digest, _, sub = path.partition("/")
        if not digest:
            raise _not_found(path)
        try:
            raw, loc = self.store.resolve(digest)
            tree = self.store.load_manifest(raw, loc) if loc.kind == TREE_MANIFEST else None
        except CasError:
            raise _not_found(path) from None
        if not sub:
            return (DIR, raw.hex(), tree) if tree is not None else (FILE, raw.hex(), loc.size)
        found = _in_tree(tree.entries, sub) if tree is not None else None
        if found is None or found.kind not in (FILE, DIR):
            raise _not_found(path)
        return (DIR, raw.hex(), tree) if found.kind == DIR else (FILE, found.digest.hex(), found.size)

    def info(self, path, **kwargs):
        path = self._strip_protocol(path)
        kind, digest, extra = self._node(path)
        if kind == DIR:
            return {"name": path, "size": 0, "type": "directory", "digest": digest}
        return {"name": path, "size": extra, "type": "file", "digest": digest}

    def ls(self, path, detail=True, **kwargs):
        path = self._strip_protocol(path)
        kind, digest, extra = self._node(path)
        if kind == FILE:
            out = [self.info(path)]
        else:
            sub = path.partition("/")[2]
            children = _tree_children(extra.entries, sub)
            out = [_entry_info(f"{path}/{name}", child) for name, child in sorted(children.items())]
        return out if detail else [o["name"] for o in out]

    def _open(self, path, mode="rb", **kwargs):
        if mode != "rb":
            raise PermissionError(f"cas:// is read-only (content is named by its hash): {path}")
        kind, digest, _ = self._node(path)
        if kind != FILE:
            raise IsADirectoryError(path)
        return self.store.open_file(digest)  # seekable; each read fetches and verifies only its chunks

    def cat_file(self, path, start=None, end=None, **kwargs):
        return _cat(self, path, start, end)

    def get_file(self, rpath, lpath, callback=None, **kwargs):
        kind, digest, _ = self._node(rpath)
        if kind == DIR:
            os.makedirs(lpath, exist_ok=True)
            return
        self.store.get_file(digest, lpath, force=True)


def _entry_info(name: str, entry: TreeEntry) -> dict:
    if entry.kind == DIR:
        return {"name": name, "size": 0, "type": "directory"}
    return {"name": name, "size": entry.size, "type": "file", "digest": entry.digest.hex()}


@dataclass(frozen=True)
class _Found:
    """What a runs:// path names: a folder of names (version None), a version, or a path inside one."""

    run: str
    name: str  # the artifact name, or the folder of names ("" for the run itself)
    version: Version | None = None
    sub: str = ""  # path inside a logged folder
    entry: TreeEntry | None = None


class RunsFileSystem(AbstractFileSystem):
    """`runs://<run>/<name>[@<step>][/<path>]`: a run's artifact names as files and folders."""

    protocol = "runs"
    root_marker = ""
    cachable = False

    def __init__(self, store=None, **kwargs):
        super().__init__(**kwargs)
        self.store = _store(store)
        self._read: set[str] = set()  # digests this process opened for reading
        self._lock = threading.Lock()

    # ---- paths --------------------------------------------------------------------------------
    def _has_store(self) -> bool:
        """Whether the store exists yet (the first write creates it, maybe from another process)."""
        try:
            self.store.require()
        except NotFound:
            return False
        return True

    def _live(self, run: str) -> dict[str, list[Version]]:
        names: dict[str, list[Version]] = {}
        self.store.records.sync(layout.run_prefix(run))  # this run's records only: one listing, not the store's
        for v in self.store.records.versions(run) if self.store.records.exists(run) else []:
            names.setdefault(v.name, []).append(v)
        return names

    def _find(self, path: str) -> _Found:
        path = self._strip_protocol(path)
        run, _, rest = path.partition("/")
        if not run:
            return _Found("", "")
        if not self._has_store():
            raise _not_found(path)
        if not self.store.records.exists(run):
            self.store.records.sync()
        if not self.store.records.exists(run):
            raise _not_found(path)
        live = self._live(run)
        if not rest:
            return _Found(run, "")
        name = max((n for n in live if rest == n or rest.startswith((n + "/", n + "@"))), key=len, default=None)
        if name is None:
            if any(n.startswith(rest + "/") for n in live):
                return _Found(run, rest)
            raise _not_found(path)
        tail = rest[len(name):]
        versions = live[name]
        if tail.startswith("@"):
            at, _, sub = tail[1:].partition("/")
            step = int(at) if at.isdigit() else self.store.records.aliases(run).get((name, at))
            versions = [v for v in versions if v.step == step]
        else:
            sub = tail[1:]
        version = versions[-1] if versions else None
        if version is None or version.digest is None:
            raise _not_found(path)
        if not sub:
            return _Found(run, name, version)
        tree = _tree(self.store, version.digest)
        entry = _in_tree(tree.entries, sub) if tree is not None else None
        if entry is None or entry.kind not in (FILE, DIR):
            raise _not_found(path)
        return _Found(run, name, version, sub, entry)

    def info(self, path, **kwargs):
        path = self._strip_protocol(path)
        found = self._find(path)
        if found.version is None:
            return {"name": path, "size": 0, "type": "directory"}
        v = found.version
        if found.sub:
            return {**_entry_info(path, found.entry), "step": v.step, "created": v.time}
        kind = "directory" if v.object_type == "tree" else "file"
        return {"name": path, "size": v.size if kind == "file" else 0, "type": kind, "digest": v.digest,
                "step": v.step, "created": v.time}

    def ls(self, path, detail=True, **kwargs):
        path = self._strip_protocol(path)
        found = self._find(path)
        if not found.run:
            runs = self.store.records.run_names() if self._has_store() else []
            out = [{"name": run, "size": 0, "type": "directory"} for run in runs]
        elif found.version is None:
            prefix = found.name + "/" if found.name else ""
            children: dict[str, dict] = {}
            for name, versions in sorted(self._live(found.run).items()):
                if not name.startswith(prefix) or versions[-1].digest is None:
                    continue
                head, sep, _ = name[len(prefix):].partition("/")
                full = f"{found.run}/{prefix}{head}"
                if not sep and head not in children:
                    children[head] = self.info(full)
                elif head not in children:
                    children[head] = {"name": full, "size": 0, "type": "directory"}
            out = list(children.values())
        elif found.version.object_type == "tree" and (found.entry is None or found.entry.kind == DIR):
            tree = _tree(self.store, found.version.digest)
            out = [_entry_info(f"{path}/{name}", child) for name, child in
                   sorted(_tree_children(tree.entries, found.sub).items())]
        else:
            out = [self.info(path)]
        return out if detail else [o["name"] for o in out]

    # ---- reading ------------------------------------------------------------------------------
    def _file_digest(self, path: str) -> str:
        found = self._find(path)
        v = found.version
        if v is None or v.digest is None or (found.entry.kind != FILE if found.entry else v.object_type == "tree"):
            raise IsADirectoryError(path)
        with self._lock:
            self._read.add(v.digest)
        return found.entry.digest.hex() if found.entry else v.digest

    def _open(self, path, mode="rb", **kwargs):
        path = self._strip_protocol(path)
        if mode == "rb":
            return self.store.open_file(self._file_digest(path))
        if mode not in ("wb", "xb"):
            raise ValueError(f"runs:// opens files for 'rb', 'wb' or 'xb', not {mode!r}")
        run, name = self._writable(path)
        if mode == "xb" and self.exists(path):
            raise FileExistsError(17, "File exists", path)
        return _VersionWriter(self, run, name, autocommit=kwargs.get("autocommit", True))

    def cat_file(self, path, start=None, end=None, **kwargs):
        return _cat(self, path, start, end)

    def get_file(self, rpath, lpath, callback=None, **kwargs):
        if self.isdir(rpath):
            os.makedirs(lpath, exist_ok=True)
            return
        self.store.get_file(self._file_digest(rpath), lpath, force=True)

    # ---- writing ------------------------------------------------------------------------------
    def _writable(self, path: str) -> tuple[str, str]:
        run, _, name = self._strip_protocol(path).partition("/")
        try:
            check_name(run, "run name")
            check_name(name)
        except InvalidInput as exc:
            raise ValueError(str(exc)) from None
        return run, name

    def _log(self, run: str, name: str, local_path: str) -> Version:
        self.store.init()  # the first write creates the store
        return Run(self.store, run).log_artifact(local_path, name=name)

    def put_file(self, lpath, rpath, callback=None, mode="overwrite", **kwargs):
        if os.path.isdir(lpath):
            return  # folders are implied by the names below them
        run, name = self._writable(rpath)
        if mode == "create" and self.exists(rpath):
            raise FileExistsError(17, "File exists", rpath)
        self._log(run, name, lpath)

    def pipe_file(self, path, value, mode="overwrite", **kwargs):
        if mode == "create" and self.exists(path):
            raise FileExistsError(17, "File exists", path)
        with self._open(path, "wb") as f:
            f.write(value)

    def cp_file(self, path1, path2, **kwargs):
        """A new version of path2 with path1's content: a record, no bytes copied."""
        if self.isdir(path1):
            return
        digest = self._file_digest(path1)
        run, name = self._writable(path2)
        store = self.store
        with store.writing():
            raw, loc = store.resolve(digest)
            store.revive(raw)  # a new root to old data must not point into a pack gc condemned
            store.records.log_version(run, name, kind="artifact", digest=digest, size=loc.size, new_bytes=0,
                                      object_type="tree" if loc.kind == TREE_MANIFEST else "file")

    def mkdir(self, path, create_parents=True, **kwargs):
        pass  # folders exist through the names below them

    def makedirs(self, path, exist_ok=False):
        if not exist_ok and self.exists(path):
            raise FileExistsError(17, "File exists", path)

    def rm_file(self, path):
        found = self._find(path)
        if found.version is None:
            return  # a folder of names goes away with its last name
        if found.sub:
            raise PermissionError(f"cannot remove {path}: a path inside a logged folder")
        step_given = "@" in self._strip_protocol(path)[len(found.run) + 1 + len(found.name):]
        records = self.store.records
        versions = [found.version] if step_given else records.versions(found.run, found.name)
        self._hold([v for v in versions if v.digest in self._read])
        records.forget(versions)

    def _rm(self, path):
        self.rm_file(path)

    def rm(self, path, recursive=False, maxdepth=None):
        """Forget the files that path (a name, a list, a glob, a folder with recursive=True) names;
        the folders go with the last name below them."""
        for p in reversed(self.expand_path(path, recursive=recursive, maxdepth=maxdepth)):
            try:
                self.rm_file(p)
            except FileNotFoundError:
                continue  # a folder whose names were forgotten just before

    def _hold(self, versions: list[Version]) -> None:
        """Pin what this process read before it is forgotten; unpinned when the process exits."""
        for v in versions:
            label = f"hold/{v.run}/{v.name}@{v.step}/{os.getpid()}"
            self.store.pin(v.digest, label)
            atexit.register(_release, self.store, label)

    def created(self, path):
        return self.info(path).get("created")

    def modified(self, path):
        return self.created(path)


def _release(store: Store, label: str) -> None:
    try:
        store.unpin(label)
    except (CasError, NotFound):
        pass


class _VersionWriter(io.RawIOBase):
    """A file being written to runs://: spooled to a local temp file and logged as a version when it is
    closed, or, inside an fsspec transaction (autocommit=False), when the transaction commits. A with
    block that raises logs nothing."""

    def __init__(self, fs: RunsFileSystem, run: str, name: str, *, autocommit: bool = True):
        self.fs, self.run, self.name, self.autocommit = fs, run, name, autocommit
        fd, self.spool = tempfile.mkstemp(prefix=".cas-runs-")
        self._file = os.fdopen(fd, "wb")
        self.version: Version | None = None

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        return self._file.write(data)

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.discard()
        super().__exit__(exc_type, exc, tb)

    def close(self) -> None:
        if self.closed:
            return
        self._file.close()
        super().close()
        if self.autocommit:
            self.commit()

    def commit(self) -> None:
        """Log what was written as a version (once)."""
        if os.path.exists(self.spool):
            try:
                self.version = self.fs._log(self.run, self.name, self.spool)
            finally:
                os.unlink(self.spool)

    def discard(self) -> None:
        self._file.close()
        if os.path.exists(self.spool):
            os.unlink(self.spool)
