"""Hashing: BLAKE3 ids of chunks and files, the domain-separated tree digest, and digest references."""

from __future__ import annotations

import re

from blake3 import blake3

from .errors import InvalidInput

DIGEST_SIZE = 32
TREE_CONTEXT = "cas 2026 tree manifest v1"
_HEX = re.compile(r"^[0-9a-f]+$")


def hash_bytes(data) -> bytes:
    """BLAKE3 of `data` (bytes-like), as 32 raw bytes. Large inputs release the GIL."""
    return blake3(data).digest()


def file_hasher(*, threads: bool = False):
    """An incremental hasher whose digest equals `b3sum` of the bytes fed to it (on every core if threads)."""
    return blake3(max_threads=blake3.AUTO) if threads else blake3()


def tree_digest(canonical: bytes) -> bytes:
    """Digest of a tree manifest: BLAKE3 in derive-key mode, so it never equals a file digest."""
    return blake3(canonical, derive_key_context=TREE_CONTEXT).digest()


def to_hex(digest: bytes) -> str:
    return digest.hex()


def looks_like_digest(ref: str) -> bool:
    """Whether a reference names content by its digest (`cas://...`, or 8 to 64 hex characters) rather
    than by a pin label: a label that looks like a digest is read as a digest."""
    text = ref.strip()
    return text.startswith("cas://") or (8 <= len(text) <= 2 * DIGEST_SIZE and bool(_HEX.match(text.lower())))


def split_inside(ref: str) -> tuple[str, str]:
    """(digest reference, path inside the folder it names) of `<digest>[/<path>]` or `cas://<digest>[/<path>]`."""
    scheme = "cas://" if ref.startswith("cas://") else ""
    head, _, inside = ref[len(scheme):].partition("/")
    return scheme + head, inside.strip("/")


def parse_ref(ref: str) -> str:
    """Normalize a digest reference to lowercase hex: full digest, `cas://<digest>`, or a prefix.

    Returns the hex string (64 chars for a full digest, 8..63 for a prefix to be resolved).
    """
    text = ref.strip()
    if text.startswith("cas://"):
        text = text[len("cas://"):]
    text = text.lower()
    if not _HEX.match(text) or len(text) > 2 * DIGEST_SIZE:
        raise InvalidInput(f"not a digest reference: {ref!r}", subject=ref)
    if len(text) < 8:
        raise InvalidInput(f"digest prefix too short (need at least 8 hex characters): {ref!r}", subject=ref)
    return text
