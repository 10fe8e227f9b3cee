"""The Backend interface: a dumb byte store under string keys (get, put, stat, list, delete)."""

from __future__ import annotations

import abc
from collections.abc import Iterable, Iterator


class Backend(abc.ABC):
    """Moves bytes under string keys; knows nothing of chunks, packs or refs."""

    uri: str
    cached_reads = False  # whether blobs read from it are worth a local cache (cas/chunk_cache.py)
    upload_concurrency = 1  # packs uploaded at once by a put
    read_concurrency = 1    # objects fetched at once by a sync or reindex
    conditional_writes: bool | None = True  # create_only is atomic (S3: If-None-Match honoured)

    @abc.abstractmethod
    def get(self, key: str, start: int = 0, end: int | None = None) -> bytes:
        """Bytes [start, end) of the object (end None: to its end). Raises NotFound."""

    @abc.abstractmethod
    def put(self, key: str, data: bytes, *, create_only: bool = False) -> bool:
        """Store `data` durably and atomically. With create_only, return False if the key exists."""

    @abc.abstractmethod
    def put_file(self, key: str, path: str, *, create_only: bool = False) -> bool:
        """Store the content of a spooled local file (which the backend may consume)."""

    @abc.abstractmethod
    def stat(self, key: str) -> int | None:
        """Size of the object, or None if absent."""

    @abc.abstractmethod
    def list(self, prefix: str) -> Iterator[tuple[str, int]]:
        """(key, size) of every complete object whose key starts with prefix; no temp objects."""

    @abc.abstractmethod
    def list_times(self, prefix: str) -> Iterator[tuple[str, float]]:
        """(key, last-modified time by the backend's own clock, in epoch seconds) under prefix.

        gc and writer leases compare these times with each other only, so machines' clocks never matter.
        """

    @abc.abstractmethod
    def delete(self, keys: Iterable[str]) -> None:
        """Delete the keys; absent keys are ignored."""

    # create_location and close are optional hooks, not abstract: doing nothing is the right default.
    def create_location(self) -> None:  # noqa: B027
        """Make the place a new store lives in (a bucket); folders are made as objects are written."""

    def probe_conditional_writes(self) -> bool:
        """Whether create_only is atomic here; S3 asks the server once, at store creation."""
        return True

    def abort_stale_uploads(self, older_than: float, *, dry_run: bool = False) -> int:
        """Abort unfinished multipart uploads started more than older_than seconds ago; how many."""
        return 0

    def local_root(self) -> str | None:
        """The folder holding the store, if it is on local disk (where killed writers leave temp files)."""
        return None

    def identity(self) -> str:
        """What tells this location apart from a copy of the same store elsewhere (never a secret)."""
        return self.uri

    def spool_dir(self) -> str | None:
        """A folder on the same filesystem for temp files that put_file can move in cheaply."""
        return None

    def close(self) -> None:  # noqa: B027
        pass
