"""The store config object: id, format version, hash, chunker parameters and codec defaults."""

from __future__ import annotations

import json
import os
import re

from . import layout
from .datatype import asdict, datatype, field
from .errors import FormatError, NotFound

# 2: pins, records and gc lists carry a BLAKE3 seal (format 1 stores still read)
# 3: new writes cut tensors at fixed offsets and store float chunks by byte plane (codec 2); a format 2
#    store keeps writing as before, so the cas versions that share it can all read what it holds
FORMAT_VERSION = 3
TENSORS_FROM = 3  # the first format whose writers cut tensors and use the plane codec
KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB
MAX_CHUNK_SIZE = 16 * MiB  # the largest max_size a config may declare (FastCDC's own bound): readers refuse
# any chunk declaring more, whatever the config says, so a reader needs no config to bound a chunk
MAX_CONFIG = 64 * KiB
_STORE_ID = re.compile(r"[0-9a-f]{32}")


@datatype(frozen=True, slots=True)
class ChunkerParams:
    min_size: int = 16 * KiB
    avg_size: int = 64 * KiB
    max_size: int = 256 * KiB

    def check(self) -> ChunkerParams:
        """The bounds FastCDC accepts (it is given avg_size - min_size as its average); ValueError otherwise."""
        if not all(type(v) is int for v in (self.min_size, self.avg_size, self.max_size)):
            raise ValueError("chunker sizes must be ints")
        avg = self.avg_size - self.min_size
        if not (64 <= self.min_size <= MiB and 1024 <= self.max_size <= MAX_CHUNK_SIZE
                and 256 <= avg <= 4 * MiB and self.min_size <= avg <= self.max_size):
            raise ValueError(f"chunker sizes {self.min_size}/{self.avg_size}/{self.max_size} out of bounds")
        return self


@datatype(frozen=True, slots=True)
class StoreConfig:
    store_id: str
    format_version: int = FORMAT_VERSION
    hash: str = "blake3"
    chunker: ChunkerParams = field(default_factory=ChunkerParams)
    codec: str = "zstd"
    level: int = 1  # per 64 KiB chunk, zstd 1 stores no more than 3 and runs faster (docs/format.md)
    pack_target: int = 32 * MiB
    conditional_writes: bool = True  # the backend honours create-only writes atomically (probed at creation)

    @classmethod
    def new(cls, *, level: int = 1, chunker: ChunkerParams | None = None,
            conditional_writes: bool = True) -> StoreConfig:
        return cls(store_id=os.urandom(16).hex(), level=level, chunker=chunker or ChunkerParams(),
                   conditional_writes=conditional_writes)

    @property
    def tensors(self) -> bool:
        """New writes cut checkpoint tensors at fixed offsets and store floats by byte plane."""
        return self.format_version >= TENSORS_FROM

    def to_bytes(self) -> bytes:
        return json.dumps(asdict(self), indent=2, sort_keys=True).encode() + b"\n"

    @classmethod
    def from_bytes(cls, data: bytes) -> StoreConfig:
        """The config read from storage; FormatError with one line if it is newer, unknown or damaged."""
        try:
            if len(data) > MAX_CONFIG:
                raise ValueError(f"{len(data)} bytes")
            raw = json.loads(data)
            version = _field(raw, "format_version")
        except (ValueError, KeyError, TypeError, RecursionError) as exc:
            raise _damaged(exc) from None
        if version > FORMAT_VERSION:
            raise FormatError(
                f"store uses format version {version}; this cas reads up to {FORMAT_VERSION}: upgrade cas"
            )
        if raw.get("hash") != "blake3" or raw.get("codec") != "zstd":
            raise FormatError(f"store uses an unknown hash or codec: {str(raw.get('hash'))[:40]!r}/"
                              f"{str(raw.get('codec'))[:40]!r}")
        try:
            return cls(store_id=_field(raw, "store_id"), format_version=version,
                       chunker=ChunkerParams(**_field(raw, "chunker")).check(), level=_field(raw, "level"),
                       pack_target=_field(raw, "pack_target"),
                       conditional_writes=_field({"conditional_writes": True, **raw}, "conditional_writes"))
        except (ValueError, KeyError, TypeError) as exc:
            raise _damaged(exc) from None


_FIELDS = {  # field → (test, what it must be); a store written by any cas passes them
    "format_version": (lambda v: type(v) is int and v >= 1, "a positive int"),
    "store_id": (lambda v: type(v) is str and _STORE_ID.fullmatch(v) is not None, "32 lowercase hex characters"),
    "chunker": (lambda v: type(v) is dict, "a map"),
    "level": (lambda v: type(v) is int and -(1 << 17) <= v <= 22, "a zstd level"),
    "pack_target": (lambda v: type(v) is int and KiB <= v <= 4 * GiB, "an int from 1 KiB to 4 GiB"),
    "conditional_writes": (lambda v: type(v) is bool, "true or false"),
}


def _field(raw: dict, name: str):
    """raw[name], checked; KeyError if missing, ValueError if it is not what cas writes."""
    value = raw[name]
    test, what = _FIELDS[name]
    if not test(value):
        raise ValueError(f"{name} must be {what}")
    return value


def _damaged(exc: Exception) -> FormatError:
    reason = f"missing field {exc}" if isinstance(exc, KeyError) else " ".join(str(exc).split())[:120]
    return FormatError(f"store config is damaged: {reason or type(exc).__name__}")


def load_config(backend) -> StoreConfig:
    """The config of an existing store; NotFound if the location holds no store."""
    try:
        data = backend.get(layout.CONFIG)
    except NotFound:
        raise NotFound(f"no cas store at {backend.uri} (run `cas init` or put something first)",
                       subject=backend.uri) from None
    config = StoreConfig.from_bytes(data)
    backend.conditional_writes = config.conditional_writes
    return config


def create_or_load_config(backend, *, level: int = 1, on_create=None) -> StoreConfig:
    """Create the config create-only (then call on_create()); a racing initializer adopts the winner's."""
    try:
        return load_config(backend)
    except NotFound:
        pass
    backend.create_location()
    config = StoreConfig.new(level=level, conditional_writes=backend.probe_conditional_writes())
    if backend.put(layout.CONFIG, config.to_bytes(), create_only=True):
        if on_create is not None:
            on_create()
        return config
    return load_config(backend)
