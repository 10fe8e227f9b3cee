"""Pins: label → digest, kept as immutable events under unique keys; the latest event of a label wins."""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass

import msgpack

from . import layout
from .errors import InvalidInput, NotFound

PIN_FORMAT = 1


@dataclass(frozen=True, slots=True)
class Pin:
    label: str
    digest: str | None  # None: the label was removed
    time: float
    kind: str = ""
    size: int = 0

    def to_bytes(self) -> bytes:
        return msgpack.packb({"v": PIN_FORMAT, "digest": self.digest, "time": self.time, "kind": self.kind,
                              "size": self.size}, use_bin_type=True)

    @classmethod
    def from_bytes(cls, label: str, data: bytes) -> "Pin":
        doc = msgpack.unpackb(data, raw=False, max_str_len=256, max_map_len=16, max_bin_len=0)
        return cls(label, doc.get("digest"), float(doc["time"]), doc.get("kind", ""), int(doc.get("size", 0)))


def check_label(label: str) -> str:
    if not label or len(label) > 1024 or "\x00" in label:
        raise InvalidInput(f"bad pin label: {label!r}", subject=label)
    return label


def _stamp(now: float) -> str:
    """Sortable and unique by construction: nanosecond time plus a random suffix."""
    return f"{int(now * 1e9):020d}-{secrets.token_hex(6)}"


def write_pin(backend, pin: Pin) -> None:
    backend.put(layout.pin_key(check_label(pin.label), _stamp(pin.time)), pin.to_bytes(), create_only=True)


def _latest_keys(backend, prefix: str) -> dict[str, str]:
    latest: dict[str, tuple[str, str]] = {}
    for key, _ in backend.list(prefix):
        parsed = layout.pin_label_from_key(key)
        if parsed is None:
            continue
        label, stamp = parsed
        if label not in latest or stamp > latest[label][0]:
            latest[label] = (stamp, key)
    return {label: key for label, (_, key) in latest.items()}


def list_pins(backend) -> list[Pin]:
    """Every live pin, sorted by label."""
    pins = []
    for label, key in sorted(_latest_keys(backend, layout.PINS).items()):
        pin = Pin.from_bytes(label, backend.get(key))
        if pin.digest:
            pins.append(pin)
    return pins


def get_pin(backend, label: str) -> Pin:
    keys = _latest_keys(backend, layout.pin_prefix(check_label(label)))
    if label in keys:
        pin = Pin.from_bytes(label, backend.get(keys[label]))
        if pin.digest:
            return pin
    raise NotFound(f"no pin labelled {label!r}", subject=label)


def remove_pin(backend, label: str, *, now: float | None = None) -> Pin:
    pin = get_pin(backend, label)
    write_pin(backend, Pin(label, None, time.time() if now is None else now))
    return pin
