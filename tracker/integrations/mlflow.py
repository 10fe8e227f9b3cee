"""An MLflow artifact repository on a cas store, for artifact locations `cas+file:///path/to/store` and
`cas+s3://bucket/prefix` (registered through the `mlflow.artifact_repository` entry points).

MLflow gives a run the artifact URI `<location>/<run id>/artifacts[/<path>]`; the store is the
location, each MLflow run is a cas run named by its run id, and each artifact path is an artifact
name (logging the same path again adds a version). Files are chunked and deduplicated like every put:
two runs logging near-identical checkpoints cost one of them plus the changed chunks. Deleting
forgets (`cas gc` frees the bytes). Listing and reading go through the runs:// filesystem.
"""

from __future__ import annotations

import os
import posixpath
import re

from mlflow.entities import FileInfo
from mlflow.store.artifact.artifact_repo import ArtifactRepository

from cas import Store

from .filesystems import RunsFileSystem

_RUN_ARTIFACTS = re.compile(r"^(?P<store>.*?)/(?P<run>[0-9a-zA-Z_-]+)/artifacts(?:/(?P<path>.*))?$")


def split_uri(artifact_uri: str) -> tuple[str, str, str]:
    """(store URI, run, path inside the run's artifacts) of a cas+file:// or cas+s3:// artifact URI."""
    scheme, sep, rest = artifact_uri.partition(":")
    rest = rest[2:] if rest.startswith("//") else rest  # MLflow may write cas+file:/path for cas+file:///path
    if not sep or scheme not in ("cas+file", "cas+s3"):
        raise ValueError(f"not a cas artifact URI: {artifact_uri!r} (use cas+file:///path or cas+s3://bucket/prefix)")
    match = _RUN_ARTIFACTS.match(rest.rstrip("/"))
    location, run, path = (match["store"], match["run"], match["path"] or "") if match else (rest, "mlflow", "")
    store = location if scheme == "cas+file" else "s3://" + location
    return store, run, path.strip("/")


class CasArtifactRepository(ArtifactRepository):
    """MLflow artifacts in a cas store: versions of the cas run named by the MLflow run id."""

    def __init__(self, artifact_uri: str, tracking_uri: str | None = None, registry_uri: str | None = None):
        super().__init__(artifact_uri, tracking_uri, registry_uri)
        store_uri, self.run, self.base = split_uri(artifact_uri)
        self.fs = RunsFileSystem(Store.open(store_uri))

    def _name(self, *parts: str | None) -> str:
        return posixpath.join(self.base, *(p.strip("/") for p in parts if p)).strip("/")

    def _path(self, name: str) -> str:
        return f"{self.run}/{name}" if name else self.run

    def log_artifact(self, local_file, artifact_path=None):
        self.fs._log(self.run, self._name(artifact_path, os.path.basename(local_file)), local_file)

    def log_artifacts(self, local_dir, artifact_path=None):
        for folder, _, files in os.walk(local_dir):
            rel = os.path.relpath(folder, local_dir)
            for name in sorted(files):
                inner = posixpath.join(artifact_path or "", "" if rel == "." else rel.replace(os.sep, "/"))
                self.log_artifact(os.path.join(folder, name), inner or None)

    def list_artifacts(self, path=None):
        top = self._name(path)
        if not self.fs.exists(self._path(top)) or (top and not self.fs.isdir(self._path(top))):
            return []
        strip = len(self._path(self.base)) + 1 if self.base else len(self.run) + 1
        return [FileInfo(info["name"][strip:], info["type"] == "directory",
                         None if info["type"] == "directory" else info["size"])
                for info in self.fs.ls(self._path(top))]

    def _download_file(self, remote_file_path, local_path):
        self.fs.get_file(self._path(self._name(remote_file_path)), local_path)

    def delete_artifacts(self, artifact_path=None):
        path = self._path(self._name(artifact_path))
        if self.fs.exists(path):
            self.fs.rm(path, recursive=True)
