"""A run: the logging calls of MLflow, ClearML, Polyaxon and Aim, each storing content in cas and writing a record."""

from __future__ import annotations

import glob as globlib
import os
import secrets
import shutil
import time
from concurrent.futures import Future
from dataclasses import dataclass, field

from cas import Store
from cas.datatype import replace
from cas.digest import hash_bytes
from cas.errors import InvalidInput, NotFound
from cas.records import INLINE_MAX, Version, check_fields, check_name, check_step

from . import formats
from .aliases import set_alias
from .background import Background, stage
from .registered import DEFAULT_INTERVAL, Watcher

_ADJECTIVES = ("amber", "brisk", "calm", "dusty", "eager", "fuzzy", "gentle", "hidden", "icy", "jolly", "keen",
               "lucid", "misty", "noble", "olive", "proud", "quiet", "rapid", "silver", "tidy", "upbeat", "vivid",
               "witty", "young", "zesty")
OUTPUTS = "outputs"  # the artifact name of a run's outputs folder
_NOUNS = ("otter", "falcon", "maple", "comet", "harbor", "lynx", "meadow", "nebula", "pebble", "quartz", "raven",
          "summit", "tundra", "willow", "yak", "zephyr", "badger", "cedar", "dune", "ember")


def _open_store(store) -> Store:
    if isinstance(store, Store):
        return store
    return Store.open(store)


def generate_run_name() -> str:
    """A readable, unique run name such as 'quiet-falcon-3f9a'."""
    return f"{secrets.choice(_ADJECTIVES)}-{secrets.choice(_NOUNS)}-{secrets.token_hex(2)}"


class Run:
    """An open run. Use as a context manager: the end records `finished`, or `failed` if the block raised."""

    def __init__(self, store: Store, name: str):
        self.store = store
        self.name = name
        self.records = store.records
        self._background = Background()
        self._watcher = Watcher(self._log_registered)

    # ---- lifecycle ----------------------------------------------------------------------
    def __enter__(self) -> Run:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            self._finish()
        except BaseException:
            self._status("failed")
            if exc_type is None:
                raise
            return
        self._status("failed" if exc_type is not None else "finished")

    def wait(self) -> None:
        """Wait for every log_artifact(..., wait=False) of this run; raise the first error among them."""
        self._watcher.raise_error()
        self._background.wait()

    def end(self, status: str = "finished") -> None:
        """End the run: wait for background logs, log the registered objects and the outputs folder once
        more, then record the status ("failed" instead if any of that fails, and the error is raised)."""
        try:
            self._finish()
        except BaseException:
            self._status("failed")
            raise
        self._status(status)

    def _finish(self) -> None:
        self.wait()
        self._watcher.close()
        self.sync_outputs()

    def _status(self, status: str) -> None:
        self.records.log_event(self.name, "status", status=status)

    def _surface(self) -> None:
        """Raise what a thread of this run (registered objects) failed with, at the run's next call."""
        self._watcher.raise_error()

    # ---- registered objects (ClearML's register_artifact) --------------------------------------
    def register_artifact(self, name: str, obj, metadata: dict | None = None,
                          interval: float = DEFAULT_INTERVAL) -> None:
        """Watch a pandas DataFrame, a dict or a numpy array: every `interval` seconds, and when the run
        ends, log it as the next version of `name` if its bytes changed (tracker/registered.py)."""
        self._surface()
        check_name(name)
        self._watcher.register(name, obj, dict(check_fields(metadata, "metadata")), interval)

    def unregister_artifact(self, name: str) -> None:
        self._watcher.unregister(name)

    def registered_artifacts(self) -> dict:
        """The registered objects, by name (the live objects, not copies)."""
        return self._watcher.objects()

    def sync_registered(self) -> None:
        """Log every registered object whose bytes changed, now."""
        self._surface()
        self._watcher.sync()

    def _log_registered(self, name: str, data: bytes, kind: str, metadata: dict) -> None:
        self._log_bytes(data, name, kind, None, metadata=metadata)

    # ---- the outputs folder (Polyaxon's get_outputs_path) ------------------------------------
    def artifacts_path(self, rel: str = "") -> str:
        """This run's local folder on this machine (<cache dir>/<store id>/runs/<run>), or a path in it;
        created on demand. Its `outputs` folder is logged when the run ends (sync_outputs)."""
        root = self._folder()
        path = os.path.join(root, _relative(rel)) if rel else root
        os.makedirs(path, exist_ok=True)
        return path

    def _folder(self) -> str:
        """This run's local folder (not created)."""
        return os.path.join(self.store.cache_dir, self.store.init().store_id, "runs", self.name)

    def outputs_path(self, rel: str = "", is_dir: bool = False) -> str:
        """A path in the run's outputs folder (its parent folders created; with is_dir, the folder too).
        What is there when the run ends is logged as a version of `outputs`."""
        outputs = self.artifacts_path("outputs")
        path = os.path.join(outputs, _relative(rel)) if rel else outputs
        os.makedirs(path if is_dir else os.path.dirname(path), exist_ok=True)
        return path

    def sync_outputs(self) -> Version | None:
        """Log the outputs folder as the next version of `outputs` (a folder: unchanged files cost
        nothing), unless it is empty or holds what the latest version holds. Returns the new version."""
        self._surface()
        outputs = os.path.join(self._folder(), "outputs")
        if not os.path.isdir(outputs) or not any(files for _, _, files in os.walk(outputs)):
            return None
        with self.store.writing():
            res = self.store.put_file(outputs)
            latest = [v for v in self.records.versions(self.name, OUTPUTS) if v.digest] \
                if self.records.exists(self.name) else []
            if latest and latest[-1].digest == res.digest:
                return None
            return self.records.log_version(self.name, OUTPUTS, kind="outputs", digest=res.digest, size=res.size,
                                            new_bytes=res.new_bytes, object_type=res.kind)

    # ---- logging verbs --------------------------------------------------------------------
    def log_artifact(self, path, name: str | None = None, kind: str | None = None, step: int | None = None,
                     metadata: dict | None = None, *, parent: str | None = None, delta: bool = True,
                     on_progress=None, wait: bool = True, rel_path: str | None = None):
        """Log a file, a folder, or every path matching a glob pattern or in a list of paths (stored as one
        tree, file by file, relative to the folder they share).

        A checkpoint file's tensor chunks may be stored as deltas against its parent: `parent` (a
        reference, e.g. the base model of a fine-tune), else the latest live version of this run's
        artifact of the same name; delta=False stores it alone.
        on_progress(n) is called with the bytes read as the put advances (see `cas.progress.Progress`).

        rel_path (Polyaxon's): also place a copy under the run's outputs folder at outputs/<rel_path>/,
        so the `outputs` version logged when the run ends holds it (unchanged, it costs nothing more).

        wait=False (a file or a folder): returns a Future of the Version as soon as the content is copied
        to the store's spool (the file may then change or vanish); it is stored in the background, in
        the order logged. wait() or leaving the run's `with` block waits and raises the first error.
        """
        self._surface()
        if rel_path is not None:
            self._place_in_outputs(path, rel_path)
        if not wait:
            return self._log_in_background(path, name, kind, step, metadata, parent=parent, delta=delta,
                                           on_progress=on_progress)
        chosen = isinstance(path, (list, tuple))
        path = os.fspath(path) if not chosen else [os.fspath(p) for p in path]
        if name is None:
            if chosen:
                raise InvalidInput("a list of paths needs a name", subject="name")
            name = os.path.basename(path.rstrip("/" + os.sep)) or path
        self._check(name, step, metadata)
        selection = chosen or globlib.has_magic(path)
        if selection:
            matches = sorted(path) if chosen else sorted(globlib.glob(path, recursive=True))
            if not matches:
                raise NotFound(f"no files match {path}", subject=str(path))
            base = os.path.commonpath([os.path.abspath(m) for m in matches])
            if len(matches) == 1 or os.path.abspath(matches[0]) == base:
                base = os.path.dirname(base)
            items = [(os.path.relpath(os.path.abspath(m), base).replace(os.sep, "/"), m) for m in matches]
        with self.store.writing():  # one writer lease from deduplication to the record
            if delta and parent is None:
                earlier = [v for v in self.records.versions(self.name, name) if v.digest] \
                    if self.records.exists(self.name) else []
                parent = earlier[-1].digest if earlier else None
            res = (self.store.put_selection(items, on_progress=on_progress) if selection
                   else self.store.put_file(path, parent=parent if delta else None, on_progress=on_progress))
            return self.records.log_version(self.name, name, kind=kind or "artifact", digest=res.digest,
                                            size=res.size, new_bytes=res.new_bytes, step=step, metadata=metadata,
                                            object_type=res.kind)

    def _place_in_outputs(self, path, rel_path: str) -> None:
        path = os.fspath(path)
        if isinstance(path, str) and os.path.exists(path):
            dest = os.path.join(self.outputs_path(rel_path, is_dir=True), os.path.basename(path.rstrip("/" + os.sep)))
            if os.path.isdir(path):
                shutil.copytree(path, dest, symlinks=True, dirs_exist_ok=True)
            else:
                shutil.copy2(path, dest)

    def _log_in_background(self, path, name, kind, step, metadata, **options) -> Future:
        if isinstance(path, (list, tuple)) or globlib.has_magic(os.fspath(path)):
            raise InvalidInput("wait=False logs a file or a folder, not a list or a glob pattern", subject=str(path))
        path = os.fspath(path)
        if name is None:
            name = os.path.basename(path.rstrip("/" + os.sep)) or path
        self._check(name, step, metadata)
        staged = stage(self.store.spool_dir(), path)
        return self._background.submit(lambda: self.log_artifact(staged, name, kind, step, metadata, **options),
                                       staged)

    def log_model(self, path, name: str = "model", framework: str | None = None, step: int | None = None,
                  metadata: dict | None = None, *, parent: str | None = None, delta: bool = True,
                  on_progress=None, wait: bool = True, rel_path: str | None = None):
        meta = dict(check_fields(metadata, "metadata"))
        if framework is not None:
            meta["framework"] = framework
        return self.log_artifact(path, name=name, kind="model", step=step, metadata=meta, parent=parent, delta=delta,
                                 on_progress=on_progress, wait=wait, rel_path=rel_path)

    def log_text(self, text: str, artifact_file: str, step: int | None = None, on_progress=None) -> Version:
        self._surface()
        return self._log_bytes(formats.text_bytes(text), artifact_file, "text", step, on_progress)

    def log_dict(self, dictionary: dict, artifact_file: str, step: int | None = None, on_progress=None) -> Version:
        self._surface()
        return self._log_bytes(formats.dict_bytes(dictionary, artifact_file), artifact_file, "dict", step, on_progress)

    def log_table(self, data, artifact_file: str, step: int | None = None, on_progress=None) -> Version:
        self._surface()
        return self._log_bytes(formats.table_bytes(data, artifact_file), artifact_file, "table", step, on_progress)

    def log_image(self, image, artifact_file: str, step: int | None = None, on_progress=None) -> Version:
        self._surface()
        return self._log_bytes(formats.image_bytes(image, artifact_file), artifact_file, "image", step, on_progress)

    def log_numpy(self, value, artifact_file: str, step: int | None = None, on_progress=None) -> Version:
        self._surface()
        return self._log_bytes(formats.numpy_bytes(value, artifact_file), artifact_file, "numpy", step, on_progress)

    def log_artifact_ref(self, uri: str, name: str, kind: str | None = None, summary: dict | None = None) -> Version:
        """Record that this run relates to something stored elsewhere; nothing is stored. What identifies
        the target now is recorded with it (tracker/references.py), so `cas verify --refs` can tell
        whether it changed or vanished since."""
        from .references import identify
        self._surface()
        if not isinstance(uri, str) or not uri:
            raise InvalidInput(f"invalid reference URI {uri!r}", subject=str(uri))
        self._check(name, None, summary)
        return self.records.log_version(self.name, name, kind=kind or "reference", digest=None, size=0, new_bytes=0,
                                        metadata=summary, ref_uri=uri, ref_state=identify(uri))

    def use_artifact(self, ref: str) -> Version:
        """Record an input of this run (lineage) and return the version it names."""
        self._surface()
        if not isinstance(ref, str):
            raise InvalidInput(f"invalid reference {ref!r}: a str", subject=str(ref))
        if ref.startswith("runs:/"):
            version, inside = self.records.locate(ref)
            if inside:  # a file inside a logged folder: the input is that file, of that version
                digest, loc = self.store.resolve(ref)
                version = replace(version, digest=digest.hex(), size=loc.size)
        else:
            digest, loc = self.store.resolve(ref)
            version = Version("", "", 0, "input", digest.hex(), loc.size, 0, time.time())
        self.records.log_event(self.name, "input", ref=ref, digest=version.digest,
                               uri=version.uri if version.run else None)
        return version

    def alias(self, version: Version | int, alias: str, *, name: str | None = None) -> Version:
        """Point `alias` at a version of this run (a Version, or a step of artifact `name`), moving it
        from the version it named before: runs:/<run>/<name>@<alias> then names it."""
        if isinstance(version, Version):
            name, step = version.name, version.step
        elif name is None:
            raise InvalidInput("run.alias(step, alias) needs the artifact name: name=...", subject=alias)
        else:
            step = check_step(version)
        return set_alias(self.store, f"runs:/{self.name}/{name}@{step}", alias)

    def set_metadata(self, **metadata) -> None:
        self._surface()
        self.records.log_event(self.name, "metadata", metadata=check_fields(metadata, "metadata"))

    # ---- helpers ------------------------------------------------------------------------
    def _check(self, name: str, step, metadata: dict | None = None) -> None:
        """Everything a record needs, checked before any content is stored."""
        check_name(name)
        if step is not None:
            check_step(step)
        check_fields(metadata, "metadata")

    def _log_bytes(self, data: bytes, artifact_file: str, kind: str, step: int | None, on_progress=None, *,
                   metadata: dict | None = None) -> Version:
        """Small content goes inline in its record (one object); larger content is stored in packs.
        on_progress(n): called with the bytes stored as the work advances (all at once when inline)."""
        self._check(artifact_file, step, metadata)
        if len(data) <= INLINE_MAX:
            version = self.records.log_version(self.name, artifact_file, kind=kind, digest=hash_bytes(data).hex(),
                                               size=len(data), new_bytes=len(data), step=step, inline=data,
                                               metadata=metadata)
            if on_progress is not None:
                on_progress(len(data))
            return version
        with self.store.writing():
            res = self.store.put_bytes(data, on_progress=on_progress)
            return self.records.log_version(self.name, artifact_file, kind=kind, digest=res.digest, size=res.size,
                                            new_bytes=res.new_bytes, step=step, metadata=metadata)


@dataclass
class RunInfo:
    """What is known of a run: its status, config, metadata, live versions and inputs."""

    name: str
    status: str
    config: dict = field(default_factory=dict)
    metadata: dict = field(default_factory=dict)
    versions: list[Version] = field(default_factory=list)
    inputs: list[dict] = field(default_factory=list)
    start_time: float | None = None
    end_time: float | None = None


def run_info(store: Store, name: str) -> RunInfo:
    records = store.records_of(name)
    state = records.run_state(records.require_run(name))
    return RunInfo(name, state.status, state.config, state.metadata, records.versions(name), state.inputs,
                   state.start_time, state.end_time)


def _relative(rel: str) -> str:
    """A relative path inside a run's folder: no absolute path, no '..'."""
    if not isinstance(rel, str) or os.path.isabs(rel) or ".." in rel.replace("\\", "/").split("/"):
        raise InvalidInput(f"invalid path {rel!r}: relative, without '..'", subject=str(rel))
    return rel
