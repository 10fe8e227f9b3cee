"""Writer leases: every put holds one from before it deduplicates until after its ref is written.

A lease is the object sessions/<id>, rewritten every LEASE/4 seconds by a background thread; its
age is judged by the backend's clock (the object's last-modified time), so machines' clocks never
matter. gc treats a session as over when its object is gone or older than LEASE. A writer commits
a ref only while less than LEASE - MARGIN has passed (by its own monotonic clock) since the start of
its last successful refresh, which leaves MARGIN for the commit itself.
"""

from __future__ import annotations

import os
import secrets
import socket
import threading
import time

import msgpack

from . import layout
from .errors import CasError, LeaseExpired


def lease_seconds() -> float:
    return float(os.environ.get("CAS_LEASE_SECONDS", "600"))


class WriterLease:
    """Held by `Store.writing()`; reentrant within one Store."""

    def __init__(self, backend):
        self.backend = backend
        self.id = f"{int(time.time() * 1e3):015d}-{secrets.token_hex(8)}"
        self.key = layout.session_key(self.id)
        self.duration = lease_seconds()
        self.margin = self.duration / 2
        self._refreshed_at = 0.0  # monotonic time at which the last successful refresh began
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.error: BaseException | None = None

    def _write(self) -> None:
        began = time.monotonic()
        body = msgpack.packb({"host": socket.gethostname(), "pid": os.getpid(), "lease": self.duration})
        self.backend.put(self.key, body)
        self._refreshed_at = began

    def acquire(self) -> "WriterLease":
        self._write()
        self._thread = threading.Thread(target=self._refresh_loop, name="cas-lease", daemon=True)
        self._thread.start()
        return self

    def _refresh_loop(self) -> None:
        while not self._stop.wait(self.duration / 4):
            try:
                self._write()
            except Exception as exc:  # noqa: BLE001 - remembered; check() refuses to commit once it is stale
                self.error = exc

    def check(self) -> None:
        """Raise LeaseExpired unless a ref may still be committed safely."""
        age = time.monotonic() - self._refreshed_at
        if age > self.duration - self.margin:
            raise LeaseExpired(f"writer lease expired ({age:.0f} s since it was last renewed, limit "
                               f"{self.duration - self.margin:.0f} s): nothing was recorded; run the command again",
                               subject=self.key)

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        try:
            self.backend.delete([self.key])
        except CasError:
            pass  # an orphaned lease only delays gc until it expires


def live_sessions(backend, now: float, duration: float | None = None) -> dict[str, float]:
    """Session keys whose lease has not expired at backend time `now`, with their last renewal time."""
    limit = lease_seconds() if duration is None else duration
    return {key: t for key, t in backend.list_times(layout.SESSIONS) if now - t <= limit}


def backend_now(backend) -> float:
    """The backend's clock: write a small object and read back its last-modified time."""
    backend.put(layout.GC_CLOCK, b"")
    for key, t in backend.list_times(layout.GC_CLOCK):
        if key == layout.GC_CLOCK:
            return t
    return time.time()
