"""Writer leases: every put holds one from before it deduplicates until after its ref is written.

A lease is the object sessions/<id>, rewritten every LEASE/4 seconds by a background thread; its
age is judged by the backend's clock (the object's last-modified time), so machines' clocks never
matter. gc treats a session as over when its object is gone or older than LEASE (the longer of its
own and the one the session declares). A writer commits a ref only while less than LEASE - MARGIN
has passed (by its own clock, which counts time stopped or asleep) since the start of its last
successful refresh, which leaves MARGIN for the commit itself, and only if no two successive
refreshes were further apart than that: a lease that lapsed stays lapsed, even once renewed.
"""

from __future__ import annotations

import os
import sys
import threading
import time

import msgpack

from . import layout
from .errors import CasError, LeaseExpired, NotFound


def lease_seconds() -> float:
    return float(os.environ.get("CAS_LEASE_SECONDS", "600"))


def _clock() -> float:
    """Seconds that keep counting while the process is stopped or the machine sleeps (time.monotonic
    does not count a suspend on Linux or macOS; the backend's clock, which gc reads, does)."""
    if hasattr(time, "CLOCK_BOOTTIME"):  # Linux
        return time.clock_gettime(time.CLOCK_BOOTTIME)
    if sys.platform == "darwin":  # macOS: CLOCK_MONOTONIC keeps counting while asleep
        return time.clock_gettime(time.CLOCK_MONOTONIC)
    return time.monotonic()


class WriterLease:
    """Held by `Store.writing()`; reentrant within one Store."""

    def __init__(self, backend) -> None:
        self.backend = backend
        self.id = f"{int(time.time() * 1e3):015d}-{os.urandom(8).hex()}"
        self.key = layout.session_key(self.id)
        self.duration = lease_seconds()
        self.margin = self.duration / 2
        self._refreshed_at: float | None = None  # _clock() when the last successful refresh began
        self.lapsed = False  # two successful refreshes were too far apart: gc may have judged the lease over
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.error: BaseException | None = None

    def _write(self) -> None:
        began = _clock()
        body = msgpack.packb({"host": os.uname().nodename, "pid": os.getpid(), "lease": self.duration})
        self.backend.put(self.key, body)
        if self._refreshed_at is not None and began - self._refreshed_at > self.duration - self.margin:
            # stopped (SIGSTOP, a suspended machine) or cut off: gc may have deleted what this session
            # deduplicated against meanwhile, and renewing the lease now cannot undo that
            self.lapsed = True  # set before the time below, which check() reads first
        self._refreshed_at = began

    def acquire(self) -> WriterLease:
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
        if self._refreshed_at is None:
            raise LeaseExpired("the writer lease was never acquired: nothing was committed")
        age = _clock() - self._refreshed_at
        if self.lapsed or age > self.duration - self.margin:
            why = "it was not renewed in time" if self.lapsed else f"{age:.0f} s since it was last renewed"
            raise LeaseExpired(f"writer lease expired ({why}, limit {self.duration - self.margin:.0f} s): nothing "
                               f"was recorded; run the command again", subject=self.key)

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        try:
            self.backend.delete([self.key])
        except CasError:
            pass  # an orphaned lease only delays gc until it expires


def live_sessions(backend, now: float, duration: float | None = None) -> dict[str, float]:
    """Session keys whose lease has not expired at backend time `now`, with their last renewal time.

    A session older than our lease is still live if its writer declared a longer one (CAS_LEASE_SECONDS
    may differ between machines: a writer renews every quarter of its own lease).
    """
    limit = lease_seconds() if duration is None else duration
    return {key: t for key, t in backend.list_times(layout.SESSIONS)
            if now - t <= limit or now - t <= _declared_lease(backend, key)}


def expired_sessions(backend, now: float) -> list[str]:
    """Sessions not renewed for twice their lease (ours or the declared one, the longer) by backend time.

    Their writers can never commit: any renewal after such a gap finds the lease lapsed for good, so
    gc may remove these objects (which it would otherwise read on every run).
    """
    ours = lease_seconds()
    return [key for key, t in backend.list_times(layout.SESSIONS)
            if now - t > 2 * ours and now - t > 2 * _declared_lease(backend, key)]


def _declared_lease(backend, key: str) -> float:
    """The lease a session's writer runs with; 0 when the session is gone or its object unreadable."""
    try:
        doc = msgpack.unpackb(backend.get(key), raw=False, max_str_len=1024, max_bin_len=0, max_array_len=0,
                              max_map_len=8)
        return float(doc["lease"])
    except NotFound:
        return 0.0  # released since it was listed
    except (ValueError, KeyError, TypeError, msgpack.UnpackException):
        return 0.0


def backend_now(backend) -> float:
    """The backend's clock: write a small object and read back its last-modified time."""
    backend.put(layout.GC_CLOCK, b"")
    for key, t in backend.list_times(layout.GC_CLOCK):
        if key == layout.GC_CLOCK:
            return t
    return time.time()
