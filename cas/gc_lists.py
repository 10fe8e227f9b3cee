"""gc's objects in the store (lists of condemned and deleted packs, lists of writer sessions) and the
durations gc and retention take: what readers of the store need of gc without gc itself."""

from __future__ import annotations

import re

from . import framing
from .errors import InvalidInput

GC_LIST_FORMAT = 2  # 1: bare msgpack; 2: sealed with its BLAKE3 (cas/framing.py)
_DURATION = re.compile(r"^(\d+)([smhd]?)$")


def parse_duration(text: str) -> float:
    """Seconds of '0', '30s', '15m', '24h', '7d' (a bare number is seconds); at most 100 years."""
    m = _DURATION.match(str(text).strip())
    if not m:
        raise InvalidInput(f"invalid duration {text!r} (use e.g. 0, 30s, 15m, 24h, 7d)", subject=str(text))
    digits = m.group(1).lstrip("0") or "0"
    unit = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)]
    if len(digits) > 12 or int(digits) * unit > 36500 * 86400:  # length first: 5000 digits are not even an int
        raise InvalidInput("duration too long: at most 100 years (36500d)", subject=str(text)[:40])
    return float(int(digits) * unit)


def encode_list(packs, now: float) -> bytes:
    return framing.seal({"v": GC_LIST_FORMAT, "time": now, "packs": sorted(packs)})


def decode_list(raw: bytes, *, key: str) -> tuple[float, list[bytes]]:
    """(backend time, pack ids) of a gc/condemned/ or gc/deleted/ list; IntegrityError naming the key."""
    doc = framing.unseal(raw, _limits(raw), what=f"gc list {key}", subject=key, version=GC_LIST_FORMAT)
    try:
        packs = doc["packs"]
        if type(packs) is not list or any(type(p) is not bytes or len(p) != 32 for p in packs):
            raise ValueError("malformed pack ids")
        return framing.when(doc["time"]), packs
    except (ValueError, KeyError) as exc:
        raise framing.damaged(f"gc list {key}", key, exc) from None


def encode_sessions(sessions) -> bytes:
    """A gc/sessions/ list: the keys of the writer sessions live once its condemnation was durable."""
    return framing.seal({"v": GC_LIST_FORMAT, "sessions": sorted(sessions)})


def decode_sessions(raw: bytes, *, key: str) -> list[str]:
    """The session keys of a gc/sessions/ list (format 1: a bare msgpack array of str)."""
    what = f"gc list {key}"
    sessions, sealed = framing.open_sealed(raw, _limits(raw), what=what, subject=key)
    if sealed:  # format 2 holds {"v": 2, "sessions": [...]}
        sessions = sessions.get("sessions") if type(sessions) is dict and sessions.get("v") == GC_LIST_FORMAT else None
    if type(sessions) is not list or any(type(s) is not str for s in sessions):
        raise framing.damaged(what, key, "malformed session keys")
    return sessions


def _limits(raw: bytes) -> framing.Limits:
    return framing.Limits(bin=64, str=256, array=len(raw), map=8)
