"""What every command needs: the store opened for the command line, and a progress bar."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable

from ..progress import Progress


def open_store(uri):
    from ..store import Store
    store = Store.open(uri)
    store.on_warning = lambda msg: sys.stderr.write(f"cas: warning: {msg}\n")
    if uri is None and not os.environ.get("CAS_STORE"):  # the default store: say where it was made
        store.on_created = lambda where: sys.stderr.write(f"cas: created a new store at {where}\n")
    return store


def progress_bar(label: str, as_json: bool, total: Callable[[], int | None] | None = None, *,
                 unit: str = "B") -> Progress:
    """A progress bar on stderr when it is a terminal, never with --json; total() is asked only when it draws."""
    bar = Progress(label, None, enabled=False if as_json else None, unit=unit)
    if bar.enabled and total is not None:
        bar.total = total()
    return bar


def pack_sizes(store) -> list[int]:
    """The size of each pack in the store (none if there is no store: the command says so itself)."""
    from .. import layout
    if not store.exists:
        return []
    return [size for key, size in store.backend.list(layout.PACKS) if layout.pack_id_from_key(key) is not None]
