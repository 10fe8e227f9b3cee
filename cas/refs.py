"""Pins: label → digest, kept as immutable events under unique keys; the latest event of a label wins."""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass

import msgpack

from . import layout
from .digest import parse_ref
from .errors import IntegrityError, InvalidInput, NotFound

PIN_FORMAT = 1


@dataclass(frozen=True, slots=True)
class Pin:
    label: str
    digest: str | None  # None: the label was removed
    time: float
    kind: str = ""
    size: int = 0

    def to_bytes(self) -> bytes:
        return msgpack.packb({"v": PIN_FORMAT, "label": self.label, "digest": self.digest, "time": self.time,
                              "kind": self.kind, "size": self.size}, use_bin_type=True)

    @classmethod
    def from_bytes(cls, data: bytes, *, key: str) -> "Pin":
        """A pin event read from storage, checked for shape (IntegrityError names the key otherwise)."""
        try:
            doc = msgpack.unpackb(data, raw=False, max_str_len=4096, max_map_len=16, max_bin_len=0,
                                  max_array_len=0)
            pin = cls(check_label(doc["label"]), doc["digest"], float(doc["time"]), str(doc.get("kind", "")),
                      int(doc.get("size", 0)))
            if pin.digest is not None:
                parse_ref(pin.digest)
        except (ValueError, KeyError, TypeError, InvalidInput, msgpack.UnpackException):
            raise IntegrityError(f"pin object {key} is damaged", subject=key) from None
        return pin


def check_label(label: str) -> str:
    """A label is 1..1024 characters of valid UTF-8 without NUL."""
    if not isinstance(label, str) or not label or len(label) > 1024 or "\x00" in label:
        raise InvalidInput(f"bad pin label: {label!r}", subject=str(label))
    try:
        label.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidInput(f"pin labels must be valid UTF-8: {label!r} (use --label)", subject=label) from None
    return label


def _stamp(now: float) -> str:
    """Sortable and unique by construction: nanosecond time plus a random suffix."""
    return f"{int(now * 1e9):020d}-{secrets.token_hex(6)}"


def write_pin(backend, pin: Pin) -> None:
    backend.put(layout.pin_key(check_label(pin.label), _stamp(pin.time)), pin.to_bytes(), create_only=True)


def _latest_keys(backend, prefix: str) -> list[str]:
    """The newest event key of each label under prefix."""
    latest: dict[str, str] = {}
    for key, _ in backend.list(prefix):
        parsed = layout.pin_from_key(key)
        if parsed is None:
            continue
        label_id, stamp = parsed
        if label_id not in latest or stamp > latest[label_id].rsplit("/", 1)[1]:
            latest[label_id] = key
    return list(latest.values())


def list_pins(backend, *, on_damaged=None) -> list[Pin]:
    """Every live pin, sorted by label. A damaged pin object raises, or goes to on_damaged(error) if given."""
    pins = []
    for key in _latest_keys(backend, layout.PINS):
        try:
            pins.append(Pin.from_bytes(backend.get(key), key=key))
        except IntegrityError as exc:
            if on_damaged is None:
                raise
            on_damaged(exc)
    return sorted((p for p in pins if p.digest), key=lambda p: p.label)


def get_pin(backend, label: str) -> Pin:
    for key in _latest_keys(backend, layout.pin_prefix(check_label(label))):
        pin = Pin.from_bytes(backend.get(key), key=key)
        if pin.digest and pin.label == label:
            return pin
    raise NotFound(f"no pin labelled {label!r}", subject=label)


def remove_pin(backend, label: str, *, now: float | None = None) -> Pin:
    pin = get_pin(backend, label)
    write_pin(backend, Pin(label, None, time.time() if now is None else now))
    return pin
