"""Registered artifacts (ClearML's `register_artifact`): live objects a run watches and logs again,
as the next step of their name, whenever their serialized bytes change.

A thread of the run looks at each object every `interval` seconds (default 30), and the run looks at
all of them once more when it ends; `run.sync_registered()` looks now. A pandas DataFrame is written
as parquet when pyarrow is installed (row groups of about 1 MiB, so rows appended at the end leave
the earlier row groups, and their chunks, as they were), else as CSV; a dict as JSON (sorted keys);
a numpy array as .npy. The version's metadata says which (`format`). The object is read from the
watching thread: change it between syncs, not while one runs. An error in the thread is raised by
the run's next call, or when it ends.
"""

from __future__ import annotations

import io
import json
import threading
import time
from dataclasses import dataclass

from cas.digest import hash_bytes
from cas.errors import InvalidInput

DEFAULT_INTERVAL = 30.0
ROW_GROUP_BYTES = 1 << 20


def parquet_available() -> bool:
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        return False
    return True


def _kind(obj) -> str:
    """table, dict or numpy: what a registered object is; InvalidInput for anything else."""
    if hasattr(obj, "to_csv") and hasattr(obj, "columns"):  # a pandas DataFrame
        return "table"
    if isinstance(obj, dict):
        return "dict"
    if hasattr(obj, "dtype") and hasattr(obj, "shape"):
        return "numpy"
    raise InvalidInput(f"register_artifact takes a pandas DataFrame, a dict or a numpy array, not "
                       f"{type(obj).__name__}", subject="register_artifact")


def serialize(obj) -> tuple[bytes, str, str]:
    """(bytes, format, kind) of a registered object."""
    kind = _kind(obj)
    if kind == "table":
        buf = io.BytesIO()
        if not parquet_available():
            obj.to_csv(buf)
            return buf.getvalue(), "csv", "table"
        per_row = max(1, int(obj.memory_usage(deep=True).sum()) // max(1, len(obj)))
        obj.to_parquet(buf, row_group_size=max(1024, ROW_GROUP_BYTES // per_row))
        return buf.getvalue(), "parquet", "table"
    if kind == "dict":
        try:
            return json.dumps(obj, sort_keys=True, default=str).encode(), "json", "dict"
        except (TypeError, ValueError) as exc:
            raise InvalidInput(f"cannot register this dict: {exc}", subject="register_artifact") from None
    import numpy as np
    buf = io.BytesIO()
    np.save(buf, obj, allow_pickle=False)
    return buf.getvalue(), "npy", "numpy"


@dataclass
class _Watched:
    obj: object
    metadata: dict
    interval: float
    due: float
    digest: bytes = b""


class Watcher:
    """The registered objects of one run, and the thread that logs them when they change."""

    def __init__(self, log):
        self._log = log  # log(name, data, kind, metadata): stores one version
        self._items: dict[str, _Watched] = {}
        self._lock = threading.RLock()  # one sync at a time: the thread's or the run's
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def register(self, name: str, obj, metadata: dict, interval: float) -> None:
        if _kind(obj) == "dict":  # refuse what cannot be written now; a table or array is not written
            serialize(obj)        # twice for it (the first sync does)
        if isinstance(interval, bool) or not isinstance(interval, (int, float)) or interval <= 0:
            raise InvalidInput(f"invalid interval {interval!r}: seconds, more than 0", subject=name)
        with self._lock:
            self._items[name] = _Watched(obj, metadata, float(interval), time.monotonic() + interval)
        if self._thread is None:
            self._thread = threading.Thread(target=self._watch, name="cas-registered", daemon=True)
            self._thread.start()
        self._wake.set()

    def unregister(self, name: str) -> None:
        with self._lock:
            if self._items.pop(name, None) is None:
                raise InvalidInput(f"no registered artifact {name!r}", subject=name)

    def objects(self) -> dict:
        with self._lock:
            return {name: item.obj for name, item in self._items.items()}

    def sync(self, *, only_due: bool = False) -> None:
        """Log every object (or every one whose interval has passed) whose bytes changed."""
        with self._lock:
            now = time.monotonic()
            for name, item in list(self._items.items()):
                if only_due and item.due > now:
                    continue
                item.due = now + item.interval
                data, fmt, kind = serialize(item.obj)
                digest = hash_bytes(data)
                if digest != item.digest:
                    self._log(name, data, kind, {**item.metadata, "format": fmt})
                    item.digest = digest

    def _watch(self) -> None:
        while True:
            with self._lock:
                waits = [item.due - time.monotonic() for item in self._items.values()]
            self._wake.wait(timeout=max(0.05, min(waits, default=DEFAULT_INTERVAL)))
            self._wake.clear()
            if self._error is not None:
                continue  # stopped by a failure until the run raises it
            try:
                self.sync(only_due=True)
            except BaseException as exc:  # raised by the run's next call
                self._error = exc

    def raise_error(self) -> None:
        """Raise (once) what the watching thread failed with."""
        error, self._error = self._error, None
        if error is not None:
            raise error

    def close(self) -> None:
        """The run ends: one last look at every object, then none is watched any more; raises any failure."""
        self.raise_error()
        with self._lock:
            self.sync()
            self._items.clear()
