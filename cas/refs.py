"""Pins: label → digest, kept as immutable events under unique keys; the latest event of a label wins."""

from __future__ import annotations

import time

from . import framing, layout
from .datatype import datatype
from .errors import IntegrityError, InvalidInput, NotFound

PIN_FORMAT = 2  # 1: the bare msgpack map; 2: sealed with its BLAKE3 (cas/framing.py)
MAX_PIN = 16 * 1024  # bytes of a pin object: a label of at most 1024 characters and a few fields
_LIMITS = framing.Limits(bin=0, str=4096, array=0, map=16)


@datatype(frozen=True, slots=True)
class Pin:
    label: str
    digest: str | None  # None: the label was removed
    time: float
    kind: str = ""
    size: int = 0

    def to_bytes(self) -> bytes:
        return framing.seal({"v": PIN_FORMAT, "label": self.label, "digest": self.digest, "time": self.time,
                             "kind": self.kind, "size": self.size})

    @classmethod
    def from_bytes(cls, data: bytes, *, key: str) -> Pin:
        """A pin event read from storage, checked for shape (IntegrityError names the key otherwise).

        Its label must be the one its key's folder is named after.
        """
        what = f"pin object {key}"
        if len(data) > MAX_PIN:
            raise IntegrityError(f"{what} is damaged: {len(data)} bytes", subject=key)
        doc = framing.unseal(data, _LIMITS, what=what, subject=key, version=PIN_FORMAT)
        try:
            pin = cls(check_label(doc["label"]), framing.hex_digest(doc["digest"]), framing.when(doc["time"]),
                      framing.text(doc.get("kind", ""), "kind"), framing.integer(doc.get("size", 0), "size"))
            if pin.kind not in (("", "file", "tree") if pin.digest else ("",)):  # "": early pins had no kind
                raise ValueError(f"kind {pin.kind!r:.40}")
            parsed = layout.pin_from_key(key)
            if parsed is not None and layout.pin_prefix(pin.label) != f"{layout.PINS}{parsed[0]}/":
                raise ValueError("its label does not match its key")
        except (ValueError, KeyError, InvalidInput) as exc:
            raise framing.damaged(what, key, exc) from None
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



def write_pin(backend, pin: Pin) -> None:
    backend.put(layout.pin_key(check_label(pin.label), layout.new_stamp(pin.time)), pin.to_bytes(), create_only=True)


def events(backend, prefix: str = layout.PINS) -> list[tuple[str, int]]:
    """(key, size) of every pin event under prefix, superseded ones too."""
    return [(key, size) for key, size in backend.list(prefix) if layout.pin_from_key(key) is not None]


def _latest(found: list[tuple[str, int]]) -> list[tuple[str, int]]:
    """The newest event of each label (its key ends in the greatest stamp of its folder)."""
    latest: dict[str, tuple[str, int]] = {}
    for key, size in found:
        parsed = layout.pin_from_key(key)
        if parsed is None:
            continue  # not a pin event's key
        label_id, stamp = parsed
        if label_id not in latest or stamp > latest[label_id][0].rsplit("/", 1)[1]:
            latest[label_id] = (key, size)
    return list(latest.values())


def load(backend, key: str, size: int | None = None) -> Pin:
    """One pin event; an object larger than MAX_PIN (as listed) is damaged and never fetched."""
    if size is not None and size > MAX_PIN:
        raise IntegrityError(f"pin object {key} is damaged: {size} bytes", subject=key)
    return Pin.from_bytes(backend.get(key), key=key)


def list_pins(backend, *, on_damaged=None) -> list[Pin]:
    """Every live pin, sorted by label. A damaged pin object raises, or goes to on_damaged(error) if given."""
    pins = []
    for key, size in _latest(events(backend)):
        try:
            pins.append(load(backend, key, size))
        except IntegrityError as exc:
            if on_damaged is None:
                raise
            on_damaged(exc)
    return sorted((p for p in pins if p.digest), key=lambda p: p.label)


def get_pin(backend, label: str) -> Pin:
    for key, size in _latest(events(backend, layout.pin_prefix(check_label(label)))):
        pin = load(backend, key, size)
        if pin.digest and pin.label == label:
            return pin
    raise NotFound(f"no pin labelled {label!r}", subject=label)


def remove_pin(backend, label: str, *, now: float | None = None) -> Pin:
    pin = get_pin(backend, label)
    write_pin(backend, Pin(label, None, time.time() if now is None else now))
    return pin
