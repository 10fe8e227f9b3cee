"""The one place that turns ids into backend keys (and back)."""

from __future__ import annotations

import functools
import os
import re

from .digest import hash_bytes

CONFIG = "config"
PACKS = "packs/"
PINS = "pins/"
INDEXES = "index/"
TMP = "tmp/"

_PACK_KEY = re.compile(r"^packs/([0-9a-f]{2})/([0-9a-f]{64})$")
_INDEX_KEY = re.compile(r"^index/([0-9a-f]{64})$")
_PIN_KEY = re.compile(r"^pins/([0-9a-f]{32})/([0-9]{20}-[0-9a-f]{12})$")


def new_stamp(now: float) -> str:
    """The last part of a pin's or a record's key: sortable and unique by construction, nanosecond time
    plus a random suffix (`_PIN_KEY`'s `[0-9]{20}-[0-9a-f]{12}`)."""
    return f"{int(now * 1e9):020d}-{os.urandom(6).hex()}"


def pack_key(pack_id: bytes) -> str:
    h = pack_id.hex()
    return f"{PACKS}{h[:2]}/{h}"


def pack_id_from_key(key: str) -> bytes | None:
    """The pack id of a pack key, or None for anything else under packs/ (temp or stray names)."""
    m = _PACK_KEY.match(key)
    if not m or m.group(2)[:2] != m.group(1):
        return None
    return bytes.fromhex(m.group(2))


def index_key(object_hash: bytes) -> str:
    """An index object's key: named by the BLAKE3 of its own bytes."""
    return f"{INDEXES}{object_hash.hex()}"


def index_name_from_key(key: str) -> str | None:
    m = _INDEX_KEY.match(key)
    return m.group(1) if m else None


def pin_prefix(label: str) -> str:
    """The folder of one label's pin events: a hash of the label, so any label fits in a key."""
    return f"{PINS}{hash_bytes(label.encode()).hex()[:32]}/"


def pin_key(label: str, stamp: str) -> str:
    """A pin event's key: unique by construction (time stamp plus random suffix from the caller)."""
    return pin_prefix(label) + stamp


def pin_from_key(key: str) -> tuple[str, str] | None:
    """(label id, stamp) of a pin event key, or None for anything else under pins/."""
    m = _PIN_KEY.match(key)
    return (m.group(1), m.group(2)) if m else None


# ---- run records: runs/<run id>/{v/<name id>/<step>/<stamp>, e/<stamp>} ----------------------------------
RUNS = "runs/"
_RECORD_KEY = re.compile(r"^runs/[0-9a-f]{32}/(v/[0-9a-f]{32}/[0-9]{20}|e)/[0-9]{20}-[0-9a-f]{12}$")


@functools.lru_cache(maxsize=4096)  # a few names, in many keys
def _name_id(name: str) -> str:
    """Names of any length become fixed-size key parts; the record itself holds the name."""
    return hash_bytes(name.encode()).hex()[:32]


def run_prefix(run: str) -> str:
    return f"{RUNS}{_name_id(run)}/"


def run_versions_prefix(run: str) -> str:
    return f"{run_prefix(run)}v/"


def run_events_prefix(run: str) -> str:
    return f"{run_prefix(run)}e/"


def version_prefix(run: str, name: str) -> str:
    return f"{run_versions_prefix(run)}{_name_id(name)}/"


def version_key(run: str, name: str, step: int, stamp: str) -> str:
    return f"{version_prefix(run, name)}{step:020d}/{stamp}"


def event_key(run: str, stamp: str) -> str:
    return f"{run_events_prefix(run)}{stamp}"


def is_record_key(key: str) -> bool:
    return _RECORD_KEY.match(key) is not None


# ---- record objects: many run records in one object, records/<64 hex> ---------------------------------
RECORD_OBJECTS = "records/"
_RECORD_OBJECT_KEY = re.compile(r"^records/([0-9a-f]{64})$")


def record_object_key(seal: bytes) -> str:
    """A record object's key: named by its seal, the BLAKE3 of its body (cas/record_objects.py)."""
    return f"{RECORD_OBJECTS}{seal.hex()}"


def record_object_seal(key: str) -> bytes | None:
    """The seal a record object's key names, or None for anything else under records/."""
    m = _RECORD_OBJECT_KEY.match(key)
    return bytes.fromhex(m.group(1)) if m else None


# ---- writer leases and gc state ----------------------------------------------------------------------
SESSIONS = "sessions/"
GC = "gc/"
GC_CONDEMNED = "gc/condemned/"
GC_SESSIONS = "gc/sessions/"
GC_DELETED = "gc/deleted/"
GC_CLOCK = "gc/clock"


def session_key(session_id: str) -> str:
    return f"{SESSIONS}{session_id}"


def condemned_key(stamp: str) -> str:
    """A list of condemned packs; gc/sessions/<stamp> lists the writer sessions live once it was durable."""
    return f"{GC_CONDEMNED}{stamp}"


def gc_sessions_key(stamp: str) -> str:
    return f"{GC_SESSIONS}{stamp}"


def deleted_key(stamp: str) -> str:
    return f"{GC_DELETED}{stamp}"
