"""The store config object: id, format version, hash, chunker parameters and codec defaults."""

from __future__ import annotations

import json
import secrets
from dataclasses import asdict, dataclass, field

from . import layout
from .errors import FormatError, NotFound

FORMAT_VERSION = 1
KiB = 1024
MiB = 1024 * KiB


@dataclass(frozen=True, slots=True)
class ChunkerParams:
    min_size: int = 16 * KiB
    avg_size: int = 64 * KiB
    max_size: int = 256 * KiB


@dataclass(frozen=True, slots=True)
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
            conditional_writes: bool = True) -> "StoreConfig":
        return cls(store_id=secrets.token_hex(16), level=level, chunker=chunker or ChunkerParams(),
                   conditional_writes=conditional_writes)

    def to_bytes(self) -> bytes:
        return json.dumps(asdict(self), indent=2, sort_keys=True).encode() + b"\n"

    @classmethod
    def from_bytes(cls, data: bytes) -> "StoreConfig":
        try:
            raw = json.loads(data)
            version = int(raw["format_version"])
        except (ValueError, KeyError, TypeError) as exc:
            raise FormatError(f"store config is unreadable: {exc}") from None
        if version > FORMAT_VERSION:
            raise FormatError(
                f"store uses format version {version}; this cas reads up to {FORMAT_VERSION}: upgrade cas"
            )
        if raw.get("hash") != "blake3" or raw.get("codec") != "zstd":
            raise FormatError(f"store uses an unknown hash or codec: {raw.get('hash')}/{raw.get('codec')}")
        try:
            return cls(
                store_id=str(raw["store_id"]),
                format_version=version,
                chunker=ChunkerParams(**raw["chunker"]),
                level=int(raw["level"]),
                pack_target=int(raw["pack_target"]),
                conditional_writes=bool(raw.get("conditional_writes", True)),
            )
        except (KeyError, TypeError) as exc:
            raise FormatError(f"store config is missing a field: {exc}") from None


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


def create_or_load_config(backend, *, level: int = 1) -> StoreConfig:
    """Create the config create-only; a racing initializer adopts the winner's."""
    try:
        return load_config(backend)
    except NotFound:
        pass
    backend.create_location()
    config = StoreConfig.new(level=level, conditional_writes=backend.probe_conditional_writes())
    if backend.put(layout.CONFIG, config.to_bytes(), create_only=True):
        return config
    return load_config(backend)
