"""The pin commands: pin, pins, unpin."""

from __future__ import annotations

from ..output import emit
from ..progress import human
from .common import open_store


def cmd_pin(args, uri, as_json) -> int:
    pin = open_store(uri).pin(args.ref, args.label)
    emit({"label": pin.label, "digest": pin.digest}, as_json, f"pinned {pin.digest} as {pin.label}")
    return 0


def cmd_pins(args, uri, as_json) -> int:
    pins = open_store(uri).pins()
    rows = [{"label": p.label, "digest": p.digest, "kind": p.kind, "size": p.size, "time": p.time} for p in pins]
    emit(rows, as_json, "\n".join(f"{p.digest}  {p.kind:4}  {human(p.size):>10}  {p.label}" for p in pins))
    return 0


def cmd_unpin(args, uri, as_json) -> int:
    pin = open_store(uri).unpin(args.label)
    emit({"label": pin.label, "digest": pin.digest}, as_json, f"unpinned {pin.label} ({pin.digest})")
    return 0
