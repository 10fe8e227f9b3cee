"""Small stored objects (pins, records, gc lists): msgpack read with limits, sealed by a BLAKE3 check.

A sealed object is its msgpack body followed by the 32-byte BLAKE3 of that body (docs/format.md,
"Sealed objects"). Objects written before the check existed are the bare body; they still read,
and callers tell the two apart by the version the body holds.
"""

from __future__ import annotations

import math
import re
from typing import cast

import msgpack

from .datatype import datatype
from .digest import DIGEST_SIZE, hash_bytes
from .errors import IntegrityError

LEGACY = 1  # the version of every object written before sealing
MAX_INT = (1 << 63) - 1  # sizes and counts fit the cache's u64 fields with room to add
_HEX_DIGEST = re.compile(r"[0-9a-f]{64}")


@datatype(frozen=True, slots=True)
class Limits:
    """msgpack limits for one kind of object: longest bin and str, most array items and map keys."""

    bin: int
    str: int
    array: int
    map: int


def seal(doc) -> bytes:
    """The msgpack body of `doc` followed by its BLAKE3."""
    body = msgpack.packb(doc, use_bin_type=True)
    return body + hash_bytes(body)


def unpack(data, limits: Limits, *, what: str, subject: str):
    """msgpack from storage within `limits`; IntegrityError naming `what` for anything malformed."""
    try:
        return _unpackb(data, limits)
    except _ERRORS as exc:
        raise damaged(what, subject, exc) from None


_ERRORS = (ValueError, TypeError, OverflowError, msgpack.UnpackException)


def _unpackb(data, limits: Limits):
    return msgpack.unpackb(data, raw=False, strict_map_key=True, max_bin_len=limits.bin, max_str_len=limits.str,
                           max_array_len=limits.array, max_map_len=limits.map, max_ext_len=0)


def damaged(what: str, subject: str, reason) -> IntegrityError:
    """The one-line error for a stored object that does not decode: `<what> is damaged: <reason>`."""
    text = " ".join(str(reason).split())[:120] or type(reason).__name__
    return IntegrityError(f"{what} is damaged: {text}", subject=subject)


def is_sealed(data) -> bool:
    """Whether `data` ends in the BLAKE3 of the bytes before it."""
    view = memoryview(data)
    return len(view) > DIGEST_SIZE and hash_bytes(view[:-DIGEST_SIZE]) == bytes(view[-DIGEST_SIZE:])


def open_sealed(data, limits: Limits, *, what: str, subject: str) -> tuple[object, bool]:
    """(document, whether it was sealed): the body of a sealed object, or the whole of a bare one."""
    view = memoryview(data)
    sealed = is_sealed(view)
    try:
        return _unpackb(view[:-DIGEST_SIZE] if sealed else view, limits), sealed
    except msgpack.ExtraData:  # a body followed by a check that does not match it
        raise damaged(what, subject, "checksum mismatch") from None
    except _ERRORS as exc:
        raise damaged(what, subject, exc) from None


def unseal(data, limits: Limits, *, what: str, subject: str, version: int) -> dict:
    """The map a sealed (format `version`) or legacy (format 1) object holds, its version checked.

    A body whose check matches must say `version`; anything else must be a legacy map saying 1.
    """
    doc, sealed = open_sealed(data, limits, what=what, subject=subject)
    v = doc.get("v") if type(doc) is dict else None
    if type(v) is not int or v != (version if sealed else LEGACY):
        raise damaged(what, subject, "checksum mismatch" if v == version else f"unknown format {v!r}")
    return cast(dict, doc)  # a dict: anything else has no "v" and was refused above


# ---- field checks: each raises ValueError (callers turn it into an IntegrityError naming the object) ----
def integer(value, what: str, low: int = 0, high: int = MAX_INT) -> int:
    """An int (not a bool) in [low, high]."""
    if type(value) is not int or not low <= value <= high:
        raise ValueError(f"{what} {value!r:.40} is not an int in [{low}, {high}]")
    return value


def text(value, what: str) -> str:
    if type(value) is not str:
        raise ValueError(f"{what} is not a str")
    return value


def when(value) -> float:
    """A time in seconds: a finite float (or int)."""
    if type(value) is not int and (type(value) is not float or not math.isfinite(value)):
        raise ValueError(f"time {value!r:.40} is not a finite number")
    return float(value)


def hex_digest(value) -> str | None:
    """None, or a digest as 64 lowercase hex characters."""
    if value is not None and (type(value) is not str or not _HEX_DIGEST.fullmatch(value)):
        raise ValueError(f"malformed digest {value!r:.80}")
    return value


def mapping(value, what: str) -> dict:
    if type(value) is not dict:
        raise ValueError(f"{what} is not a map")
    return value
