"""A folder on local disk: atomic create-only writes (temp file, fsync, link, fsync dir)."""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterable, Iterator

from ..errors import NotFound, StorageError
from .base import Backend

TMP_PREFIX = ".tmp."


def storage_error(exc: OSError, what: str) -> StorageError:
    """One clear line for an OS error met while doing `what`."""
    if exc.errno == errno.ENOSPC:
        return StorageError(f"no space left on device while {what}", subject=what)
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return StorageError(f"permission denied while {what}: {exc.filename or ''}".rstrip(": "), subject=what)
    return StorageError(f"I/O error while {what}: {exc.strerror or exc}", subject=what)


def fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class LocalBackend(Backend):
    def __init__(self, root: str, *, uri: str | None = None):
        self.root = root
        self.uri = uri or root

    def _path(self, key: str) -> str:
        return os.path.join(self.root, *key.split("/"))

    def local_root(self) -> str:
        return self.root

    def identity(self) -> str:
        return "file://" + os.path.realpath(self.root)

    def spool_dir(self) -> str:
        path = self._path("tmp")
        try:
            os.makedirs(path, exist_ok=True)
        except OSError as exc:
            raise storage_error(exc, "writing a pack") from exc
        return path

    def get(self, key, start=0, end=None):
        try:
            with open(self._path(key), "rb", buffering=0) as f:
                if end is None:
                    f.seek(start)
                    return f.read()
                return os.pread(f.fileno(), end - start, start)
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):  # a folder is not an object
            raise NotFound(f"object not found: {key}", subject=key) from None
        except OSError as exc:
            raise storage_error(exc, f"reading {key}") from exc

    def put(self, key, data, *, create_only=False):
        final = self._path(key)
        folder = os.path.dirname(final)
        tmp = os.path.join(folder, TMP_PREFIX + os.urandom(8).hex())
        try:
            os.makedirs(folder, exist_ok=True)
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            return self._publish(tmp, final, create_only=create_only)
        except OSError as exc:
            raise storage_error(exc, f"writing {key}") from exc
        finally:
            _unlink_quietly(tmp)

    def put_file(self, key, path, *, create_only=False):
        """Make a spool file durable and link it into place (the spool must be in spool_dir())."""
        final = self._path(key)
        try:
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            os.makedirs(os.path.dirname(final), exist_ok=True)
            return self._publish(path, final, create_only=create_only)
        except OSError as exc:
            raise storage_error(exc, f"writing {key}") from exc
        finally:
            _unlink_quietly(path)

    def _publish(self, tmp: str, final: str, *, create_only: bool) -> bool:
        if create_only:
            try:
                os.link(tmp, final)
            except FileExistsError:
                return False
        else:
            os.replace(tmp, final)
        fsync_dir(os.path.dirname(final))
        return True

    def stat(self, key):
        try:
            st = os.stat(self._path(key))
        except (FileNotFoundError, NotADirectoryError):
            return None
        except OSError as exc:
            raise storage_error(exc, f"reading {key}") from exc
        return st.st_size if stat.S_ISREG(st.st_mode) else None  # a folder is not an object

    def list(self, prefix) -> Iterator[tuple[str, int]]:
        for key, st in self._walk(prefix):
            yield key, st.st_size

    def list_times(self, prefix) -> Iterator[tuple[str, float]]:
        for key, st in self._walk(prefix):
            yield key, st.st_mtime

    def _walk(self, prefix: str):
        base = prefix.rsplit("/", 1)[0] if "/" in prefix else ""
        top = self._path(base) if base else self.root
        for dirpath, dirnames, filenames in os.walk(top):
            dirnames.sort()
            rel = os.path.relpath(dirpath, self.root).replace(os.sep, "/")
            rel = "" if rel == "." else rel + "/"
            for name in sorted(filenames):
                key = rel + name
                if name.startswith(TMP_PREFIX) or key.startswith("tmp/") or not key.startswith(prefix):
                    continue
                try:
                    yield key, os.stat(os.path.join(dirpath, name))
                except FileNotFoundError:
                    continue

    def delete(self, keys: Iterable[str]) -> None:
        folders = set()
        for key in keys:
            path = self._path(key)
            try:
                os.unlink(path)
                folders.add(os.path.dirname(path))
            except (FileNotFoundError, NotADirectoryError):
                pass
            except OSError as exc:
                if os.path.isdir(path):  # a folder is not an object (unlink says EISDIR or EPERM)
                    continue
                raise storage_error(exc, f"deleting {key}") from exc
        try:
            for folder in folders:
                fsync_dir(folder)
        except OSError as exc:
            raise storage_error(exc, "deleting objects") from exc


def _unlink_quietly(path: str) -> None:
    """Remove a temp file; never raises (it runs in cleanup, while the real error is on its way out)."""
    try:
        os.unlink(path)
    except OSError:
        pass
