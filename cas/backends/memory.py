"""An in-process backend for tests: a dict of bytes."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Iterator

from ..errors import NotFound
from ..layout import TMP
from .base import Backend

_NAMED: dict[str, MemoryBackend] = {}


class MemoryBackend(Backend):
    def __init__(self, uri: str = "memory://"):
        self.uri = uri
        self._objects: dict[str, bytes] = {}
        self._times: dict[str, float] = {}
        self._lock = threading.Lock()

    @classmethod
    def named(cls, name: str) -> MemoryBackend:
        """The same instance for the same name within a process, so reopening sees the data."""
        if name not in _NAMED:
            _NAMED[name] = cls(f"memory://{name}")
        return _NAMED[name]

    def get(self, key, start=0, end=None):
        try:
            data = self._objects[key]
        except KeyError:
            raise NotFound(f"object not found: {key}", subject=key) from None
        return data[start:end]

    def put(self, key, data, *, create_only=False):
        with self._lock:
            if create_only and key in self._objects:
                return False
            self._objects[key] = bytes(data)
            self._times[key] = time.time()
            return True

    def put_file(self, key, path, *, create_only=False):
        with open(path, "rb") as f:
            return self.put(key, f.read(), create_only=create_only)

    def stat(self, key):
        data = self._objects.get(key)
        return None if data is None else len(data)

    def list(self, prefix) -> Iterator[tuple[str, int]]:
        with self._lock:
            items = [(k, len(v)) for k, v in self._objects.items()
                     if k.startswith(prefix) and not k.startswith(TMP)]  # temp objects are never listed
        yield from sorted(items)

    def list_times(self, prefix) -> Iterator[tuple[str, float]]:
        with self._lock:
            items = [(k, self._times[k]) for k in self._objects if k.startswith(prefix) and not k.startswith(TMP)]
        yield from sorted(items)

    def delete(self, keys: Iterable[str]) -> None:
        with self._lock:
            for key in keys:
                self._objects.pop(key, None)
                self._times.pop(key, None)
