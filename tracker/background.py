"""Background logging: `log_artifact(..., wait=False)` copies what is logged to the store's spool (so the
caller may change or delete it at once) and stores it in a thread of the run, in the order logged.

The copy is the cheap part (the disk's speed); what it saves the caller is the chunking, compression
and, on S3, the upload. `Run.wait()` (and leaving the run's `with` block) waits for every pending log
and raises the first error. A staged copy is named `.tmp.stage-<pid>-<random>` and removed once its
put is acknowledged; one a killed process left behind is removed by `cas gc` (cas/temps.py).
"""

from __future__ import annotations

import os
import secrets
import shutil
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

from cas.errors import InvalidInput, NotFound, StorageError
from cas.temps import STAGE_PREFIX


def stage(spool_dir: str, path: str) -> str:
    """Copy a file or folder into the spool; returns the copy's path (under a fresh staging name)."""
    if not os.path.exists(path):
        raise NotFound(f"no such file or folder: {path}", subject=path)
    if not (os.path.isfile(path) or os.path.isdir(path)):
        raise InvalidInput(f"not a file or folder: {path}", subject=path)
    os.makedirs(spool_dir, exist_ok=True)
    staged = os.path.join(spool_dir, f"{STAGE_PREFIX}{os.getpid()}-{secrets.token_hex(6)}")
    try:
        if os.path.isdir(path):
            shutil.copytree(path, staged, symlinks=True)
        else:
            shutil.copyfile(path, staged)
    except OSError as exc:
        unstage(staged)
        raise StorageError(f"cannot stage {path} for background logging: {exc.strerror or exc}", subject=path) \
            from exc
    return staged


def unstage(staged: str) -> None:
    if os.path.isdir(staged) and not os.path.islink(staged):
        shutil.rmtree(staged, ignore_errors=True)
    elif os.path.lexists(staged):
        os.unlink(staged)


class Background:
    """One thread storing what a run logged with wait=False, in order; wait() raises the first failure."""

    def __init__(self) -> None:
        self._pool: ThreadPoolExecutor | None = None
        self._pending: list[Future] = []

    def submit(self, work: Callable[[], object], staged: str) -> Future:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cas-background")

        def run() -> object:
            try:
                return work()
            finally:
                unstage(staged)
        future = self._pool.submit(run)
        self._pending.append(future)
        return future

    def wait(self) -> None:
        """Wait for every pending log; raise the first error among them."""
        pending, self._pending = self._pending, []
        first = None
        for future in pending:
            exc = future.exception()
            if exc is not None and first is None:
                first = exc
        if first is not None:
            raise first
