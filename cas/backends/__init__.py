"""Backends: dumb byte stores under string keys, chosen by URI scheme and imported lazily."""

from __future__ import annotations

import os

from ..errors import InvalidInput
from .base import Backend

__all__ = ["Backend", "open_backend"]


def open_backend(uri: str) -> Backend:
    """The backend for a store URI: a path, file:///abs/path, s3://bucket/prefix or memory://name.

    A URI holding '@' is never repeated in a message: it may hold a password.
    """
    shown = "(not repeated: it holds '@')" if "@" in uri else repr(uri)
    if "://" not in uri:
        if not uri or uri.startswith(("s3:", "file:")):
            raise InvalidInput(f"malformed store URI: {shown}", subject="store URI")
        from .local import LocalBackend
        return LocalBackend(os.path.abspath(uri), uri=uri)
    scheme, rest = uri.split("://", 1)
    authority = rest.split("/", 1)[0]
    if "@" in authority or (scheme == "s3" and ":" in authority):  # never repeated: it may hold a secret
        raise InvalidInput(f"a {scheme}:// store URI must not hold a user or password (S3 credentials come from "
                           "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or a profile)", subject=f"{scheme}://")
    if scheme == "file":
        if not rest.startswith("/"):
            raise InvalidInput(f"file URIs need an absolute path (file:///abs/path): {shown}", subject="file://")
        from .local import LocalBackend
        return LocalBackend(rest, uri=uri)
    if scheme == "memory":
        from .memory import MemoryBackend
        return MemoryBackend.named(rest)
    if scheme == "s3":
        from .s3 import S3Backend
        return S3Backend(uri)
    raise InvalidInput(f"unknown store URI scheme in {shown} (use a path, file:// or s3://)", subject="store URI")
