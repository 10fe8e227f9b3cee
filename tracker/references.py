"""References to data kept outside the store (`run.log_artifact_ref`): what identifies the target when
it is logged, and whether it still does (`cas verify --refs`).

An S3 object is identified by its size, ETag and version id (a HEAD request); a local file by its
size, modification time and BLAKE3, and its absolute path (where it is looked for again); a local
folder by its file count, total size and the BLAKE3 of every file's path, size and modification
time. Other schemes (http, gs, ...) are recorded without an identity and reported as `unrecorded`.
"""

from __future__ import annotations

import os

from cas.digest import file_hasher, hash_bytes
from cas.errors import CasError


def _local_path(uri: str) -> str | None:
    if uri.startswith("file://"):
        return uri[len("file://"):]
    return uri if "://" not in uri else None


def _file(path: str) -> dict:
    st = os.stat(path)
    hasher = file_hasher()
    with open(path, "rb") as f:
        while block := f.read(8 << 20):
            hasher.update(block)
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "blake3": hasher.digest().hex()}


def _folder(path: str) -> dict:
    rows, total = [], 0
    for dirpath, dirnames, filenames in os.walk(path):
        dirnames.sort()
        for name in sorted(filenames):
            st = os.stat(os.path.join(dirpath, name))
            rows.append(f"{os.path.relpath(os.path.join(dirpath, name), path)}\0{st.st_size}\0{st.st_mtime_ns}")
            total += st.st_size
    return {"files": len(rows), "size": total, "listing_blake3": hash_bytes("\n".join(rows).encode()).hex()}


def identify(uri: str) -> dict | None:
    """What identifies the target of `uri` now: a dict, None if it is gone, or {"error": ...} if it
    cannot be looked at now (no credentials, no network) or the scheme is not one cas knows."""
    path = _local_path(uri)
    try:
        if path is not None:
            path = os.path.abspath(path)
            if os.path.isdir(path):
                return {"kind": "folder", "path": path, **_folder(path)}
            return {"kind": "file", "path": path, **_file(path)} if os.path.isfile(path) else None
        if uri.startswith("s3://"):
            from cas.backends.s3 import S3Backend
            bucket, _, key = uri[len("s3://"):].partition("/")
            found = S3Backend(f"s3://{bucket}").object_identity(key)
            return None if found is None else {"kind": "s3", **found}
    except (OSError, CasError) as exc:
        return {"error": str(exc).splitlines()[0][:200]}
    return {"error": f"cas does not look at {uri.partition('://')[0]}:// targets"}


def check(recorded: dict | None, uri: str) -> tuple[str, dict | None]:
    """(status, identity now) of a reference: unchanged, changed, vanished, unreachable (looked at,
    but could not be read now) or unrecorded (nothing was recorded when it was logged)."""
    now = identify(recorded["path"] if recorded and "path" in recorded else uri)  # a local path as logged
    if recorded is None or "error" in recorded:
        return "unrecorded", now
    if now is None:
        return "vanished", None
    if "error" in now:
        return "unreachable", now
    return ("unchanged" if now == recorded else "changed"), now
