"""Run records: versions (run, name, step, kind → digest) and run events, as immutable objects with unique keys.

Records are, with pins, the roots of the store. The backend is their source of truth; the local LMDB
index caches them. A (run, name, step) may be logged again: the record with the latest stamp wins
(the earlier one is superseded, not rewritten). A version with an automatic step claims its step by
itself: its record is written create-only under the step's one automatic key, so concurrent loggers
never get the same step and no other object is written. Small content (texts, dicts) lives inline in
its record: one object per log call, checked against its digest whenever it is read.
"""

from __future__ import annotations

import functools
import re
import time
import unicodedata
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import msgpack

from . import framing, layout
from .datatype import datatype, field
from .digest import hash_bytes
from .errors import AlreadyExists, IntegrityError, InvalidInput, NotFound

RECORD_FORMAT = 2  # 1: the bare msgpack map; 2: sealed with its BLAKE3 (cas/framing.py)
INLINE_MAX = 4096  # content up to this size is kept in its record, not in a pack
MAX_NAME = 512
STEP_CLAIM_ATTEMPTS = 10_000
# the stamp of a version whose step was chosen automatically: one key per step, so writing it create-only
# claims the step; it sorts before every real stamp, so logging that step again explicitly supersedes it
AUTO_STAMP = "0" * 20 + "-" + "0" * 12
_LIMITS = dict(max_bin_len=INLINE_MAX, max_str_len=1 << 20, max_array_len=1 << 16, max_map_len=1 << 16)
_READ_LIMITS = framing.Limits(bin=_LIMITS["max_bin_len"], str=_LIMITS["max_str_len"], array=_LIMITS["max_array_len"],
                              map=_LIMITS["max_map_len"])
MAX_RECORD = 16 << 20  # bytes of one record: a writer refuses a larger one, a reader calls it damaged


def check_name(name, what: str = "artifact name") -> str:
    """Names are 1..512 characters, no control characters, no '@', no empty, '.' or '..' path segments."""
    if not isinstance(name, str) or not name or len(name) > MAX_NAME:
        raise InvalidInput(f"invalid {what} {name!r}: 1 to {MAX_NAME} characters", subject=str(name))
    return _check_text(name, what)


@functools.lru_cache(maxsize=4096)  # every record names its run and artifact: a few names, read many times
def _check_text(name: str, what: str) -> str:
    if any(unicodedata.category(c) in ("Cc", "Cf", "Cs") for c in name):
        raise InvalidInput(f"invalid {what} {name!r}: control characters are not allowed", subject=name)
    if "@" in name:
        raise InvalidInput(f"invalid {what} {name!r}: '@' separates the step in references", subject=name)
    if what == "run name" and "/" in name:
        raise InvalidInput(f"invalid run name {name!r}: '/' is not allowed", subject=name)
    if any(part in ("", ".", "..") for part in name.split("/")):
        raise InvalidInput(f"invalid {what} {name!r}: empty, '.' or '..' path segments", subject=name)
    return name


_ALIAS = re.compile(r"[A-Za-z][A-Za-z0-9_.-]{0,127}\Z")
ALIAS_EVENT = "alias"  # a run event pointing an alias of one artifact name at a step (or removing it)


def check_alias(alias) -> str:
    """An alias is 1..128 ASCII letters, digits, '_', '-' and '.', starting with a letter (so it never
    reads as a step): best, production, v1.2-rc."""
    if not isinstance(alias, str) or not _ALIAS.match(alias):
        raise InvalidInput(f"invalid alias {alias!r}: 1 to 128 letters, digits, '_', '-' or '.', starting with a "
                           f"letter", subject=str(alias))
    return alias


def check_fields(value, what: str) -> dict:
    """A dict a record can hold (config, metadata): str keys, plain values, within the record limits."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidInput(f"invalid {what}: a dict, not {type(value).__name__}", subject=what)
    try:
        msgpack.unpackb(msgpack.packb(value, use_bin_type=True), raw=False, **_LIMITS)
    except (TypeError, ValueError, OverflowError, msgpack.UnpackException) as exc:
        raise InvalidInput(f"invalid {what}: {exc}", subject=what) from None
    return value


def check_step(step) -> int:
    if isinstance(step, bool) or not isinstance(step, int) or step < 0 or step >= 10 ** 19:
        raise InvalidInput(f"invalid step {step!r}: a non-negative integer", subject=str(step))
    return step



@datatype(frozen=True)
class Version:
    """One logged version of an artifact of a run."""

    run: str
    name: str
    step: int
    kind: str
    digest: str | None  # None for a reference-only artifact
    size: int
    new_bytes: int
    time: float
    metadata: dict = field(default_factory=dict)
    ref_uri: str | None = None  # log_artifact_ref: what it points at
    inline: bytes | None = None
    object_type: str = "file"  # file or tree
    key: str = ""
    forgotten: bool = False  # a tombstone: `cas forget` dropped this (run, name, step)
    ref_state: dict | None = None  # log_artifact_ref: what identified the target when logged

    @property
    def uri(self) -> str:
        return f"runs:/{self.run}/{self.name}@{self.step}"

    def to_dict(self) -> dict:
        return {"run": self.run, "name": self.name, "step": self.step, "kind": self.kind, "digest": self.digest,
                "size": self.size, "new_bytes": self.new_bytes, "time": self.time, "uri": self.uri,
                "type": self.object_type, "metadata": self.metadata,
                **({"ref_uri": self.ref_uri} if self.ref_uri else {})}


@datatype(frozen=True)
class RunEvent:
    """Something that happened to a run: started, status changed, config or metadata set, an input used."""

    run: str
    type: str  # start, status, input
    time: float
    data: dict = field(default_factory=dict)


@datatype
class RunState:
    """A run as its events tell it, folded oldest first: a start (re)opens it, a status closes it."""

    status: str = "running"
    config: dict = field(default_factory=dict)
    metadata: dict = field(default_factory=dict)
    inputs: list[dict] = field(default_factory=list)  # use_artifact events: ref, digest, uri
    start_time: float | None = None
    end_time: float | None = None

    def apply(self, event: RunEvent) -> None:
        data = event.data
        if event.type == "start":
            self.start_time = self.start_time or event.time
            self.config.update(data.get("config") or {})
            self.metadata.update(data.get("metadata") or {})
            self.status, self.end_time = "running", None
        elif event.type == "status":
            self.status = data.get("status", self.status)
            self.end_time = event.time if self.status != "running" else None
        elif event.type == "metadata":
            self.metadata.update(data.get("metadata") or {})
        elif event.type == "input":
            self.inputs.append({k: v for k, v in data.items() if v is not None})


def _encode(doc: dict) -> bytes:
    return framing.seal({"v": RECORD_FORMAT, **doc})


def decode(raw: bytes, *, key: str) -> Version | RunEvent:
    """A record read from storage or the cache, checked for shape and against its key; inline content
    checked against its digest. IntegrityError naming the key otherwise."""
    what = f"record {key}"
    if len(raw) > MAX_RECORD:
        raise IntegrityError(f"{what} is damaged: {len(raw)} bytes", subject=key)
    doc = framing.unseal(raw, _READ_LIMITS, what=what, subject=key, version=RECORD_FORMAT)
    try:
        rec = _version(doc, key) if doc.get("t") == "version" else _event(doc)
        if layout.is_record_key(key) and not key.startswith(_folder(rec)):
            raise ValueError("its run, name or step does not match its key")
    except (ValueError, KeyError, InvalidInput) as exc:
        raise framing.damaged(what, key, exc) from None
    return rec


def _version(doc: dict, key: str) -> Version:
    inline, ref_uri = doc.get("inline"), doc.get("ref_uri")
    if not (inline is None or type(inline) is bytes) or not (ref_uri is None or type(ref_uri) is str):
        raise ValueError("bad inline or ref_uri")
    if doc.get("type", "file") not in ("file", "tree") or type(doc.get("forgotten", False)) is not bool:
        raise ValueError("bad type or forgotten")
    v = Version(check_name(doc["run"], "run name"), check_name(doc["name"]),
                framing.integer(doc["step"], "step", 0, 10 ** 19 - 1), framing.text(doc["kind"], "kind"),
                framing.hex_digest(doc["digest"]), framing.integer(doc["size"], "size"),
                framing.integer(doc["new_bytes"], "new_bytes"), framing.when(doc["time"]),
                framing.mapping(doc.get("metadata", {}), "metadata"), ref_uri, inline, doc.get("type", "file"), key,
                doc.get("forgotten", False),
                framing.mapping(doc["ref_state"], "ref_state") if doc.get("ref_state") is not None else None)
    if v.inline is not None and hash_bytes(v.inline).hex() != v.digest:
        raise ValueError("its inline content does not match its digest")
    return v


def _event(doc: dict) -> RunEvent:
    return RunEvent(check_name(doc["run"], "run name"), framing.text(doc["t"], "type"), framing.when(doc["time"]),
                    framing.mapping(doc.get("data", {}), "data"))


def _folder(rec: Version | RunEvent) -> str:
    """The key prefix a record must lie under: its run's events, or its (run, name, step)."""
    if isinstance(rec, RunEvent):
        return layout.run_events_prefix(rec.run)
    return f"{layout.version_prefix(rec.run, rec.name)}{rec.step:020d}/"


class RecordBook:
    """Writes records to the backend and answers questions about runs from the local cache."""

    def __init__(self, backend, index, *, before_commit=None, objects=None):
        self.backend = backend
        self.index = index
        self.before_commit = before_commit or (lambda: None)  # the store's writer-lease check
        self.objects = objects  # the store's record objects (cas/record_objects.py), if it reads them
        self._synced: set[str] = set()  # prefixes synced by this book

    # ---- syncing ------------------------------------------------------------------------
    def ensure(self, prefix: str = layout.RUNS, *, on_damaged=None) -> RecordBook:
        """Sync prefix unless this book synced it (or a prefix holding it) already; returns the book."""
        if not any(prefix.startswith(done) for done in self._synced):
            self.sync(prefix, on_damaged=on_damaged)
        return self

    def sync(self, prefix: str = layout.RUNS, *, on_damaged=None, objects: bool = True) -> int:
        """Learn records written elsewhere under prefix (all runs by default); returns how many.

        First the record objects this cache has not read (unless `objects` is False), which may hold
        records of any run; then the loose records under prefix, as listed: a cached record whose loose
        key is not listed is forgotten, whatever record object holds it, and each listed one not cached
        is fetched. A damaged record raises IntegrityError, or goes to on_damaged(error) and is skipped
        if given.
        """
        before = cached = self.index.record_keys(prefix)  # before listing: a record cached by now is durable,
        if objects and self.objects is not None and self.objects.learn(on_damaged=on_damaged):  # so listed
            cached = self.index.record_keys(prefix)  # (one from a record object: written after its loose key)
            self._synced = set()  # records of other runs came too: each run's listing is still to check them
        keys = [k for k, _ in self.backend.list(prefix) if layout.is_record_key(k)]
        gone = cached - set(keys)
        if gone:  # records are never deleted: the store was restored from a copy or replaced
            self.index.forget_records(gone)
        fresh = self.index.unknown_records(keys)

        def fetch(key):
            raw = self.backend.get(key)
            try:
                return key, raw, decode(raw, key=key)
            except IntegrityError as exc:
                if on_damaged is None:
                    raise
                on_damaged(exc)
                return None
        if len(fresh) > 1 and self.backend.read_concurrency > 1:
            with ThreadPoolExecutor(self.backend.read_concurrency, thread_name_prefix="cas-records") as pool:
                got = list(pool.map(fetch, fresh))
        else:
            got = [fetch(k) for k in fresh]
        kept = [item for item in got if item is not None]
        skipped, got = len(got) - len(kept), kept
        self.index.add_records([(key, raw, inline_of(rec)) for key, raw, rec in got])
        self._synced.add(prefix)
        return len(set(keys) - before) - skipped

    # ---- writing ------------------------------------------------------------------------
    def _write(self, key: str, doc: dict, *, claim: bool = False):
        """Write a record create-only and cache it; returns it, or None if `claim` and the key is taken."""
        try:
            raw = _encode(doc)
            rec = decode(raw, key=key)
        except (TypeError, ValueError, OverflowError, IntegrityError) as exc:  # a value a record cannot hold
            raise InvalidInput(f"cannot record this {doc['t']} of run {doc['run']!r}: {exc}",
                               subject=doc["run"]) from None
        self.before_commit()
        if self.objects is not None:
            self.objects.compact_if_due()  # before the record: a failure here writes nothing
        if not self.backend.put(key, raw, create_only=True):
            if claim:
                return None
            raise AlreadyExists(f"record {key} exists already", subject=key)  # unique keys: never happens
        self.index.add_records([(key, raw, inline_of(rec))])
        return rec

    def log_version(self, run: str, name: str, *, kind: str, digest: str | None, size: int, new_bytes: int,
                    step: int | None = None, metadata: dict | None = None, ref_uri: str | None = None,
                    inline: bytes | None = None, object_type: str = "file", ref_state: dict | None = None) -> Version:
        check_name(run, "run name")
        check_name(name)
        if step is not None:
            check_step(step)
        now = time.time()
        doc: dict[str, object] = {
               "t": "version", "run": run, "name": name, "step": step, "kind": kind or "artifact", "digest": digest,
               "size": size, "new_bytes": new_bytes, "time": now, "metadata": check_fields(metadata, "metadata"),
               "type": object_type}
        if ref_uri is not None:
            doc["ref_uri"] = ref_uri
        if ref_state is not None:
            doc["ref_state"] = check_fields(ref_state, "ref_state")
        if inline is not None:
            doc["inline"] = bytes(inline)
        if step is not None:
            return self._write(layout.version_key(run, name, step, layout.new_stamp(now)), doc)
        return self._claim_next_step(doc)

    def _claim_next_step(self, doc: dict) -> Version:
        """Write a version at the next step of its name, one past every step recorded: the record is the claim."""
        run, name = doc["run"], doc["name"]
        step = 0
        for _ in range(STEP_CLAIM_ATTEMPTS):
            # again after a lost race: explicit steps may have landed (loose records: they are the claims)
            self.sync(layout.version_prefix(run, name), objects=False)
            taken = {v.step for v in self.versions(run, name, live_only=False)}
            step = max(max(taken, default=0), step) + 1  # versions count from 1
            doc["step"] = step
            rec = self._write(layout.version_key(run, name, step, AUTO_STAMP), doc, claim=True)
            if rec is not None:
                return rec
        raise AlreadyExists(f"could not claim a step for {run}/{name}", subject=name)

    def log_event(self, run: str, type_: str, **data) -> RunEvent:
        check_name(run, "run name")
        now = time.time()
        doc = {"t": type_, "run": run, "time": now, "data": data}
        self._write(layout.event_key(run, layout.new_stamp(now)), doc)
        return RunEvent(run, type_, now, data)

    # ---- reading ------------------------------------------------------------------------
    def _records(self, prefix: str):
        for key, raw in self.index.iter_records(prefix):
            yield decode(raw, key=key)

    def versions(self, run: str, name: str | None = None, *, kind: str | None = None,
                 live_only: bool = True) -> list[Version]:
        """Versions of a run (one name, or all), ordered by name and step; live ones only unless asked."""
        prefix = layout.version_prefix(run, name) if name is not None else layout.run_versions_prefix(run)
        latest: dict[tuple[str, int], Version] = {}
        everything = []
        for rec in self._records(prefix):
            if not isinstance(rec, Version) or rec.run != run or (name is not None and rec.name != name):
                continue
            everything.append(rec)
            ident = (rec.name, rec.step)
            if ident not in latest or rec.key > latest[ident].key:  # keys end in the stamp: latest wins
                latest[ident] = rec
        chosen = [v for v in latest.values() if not v.forgotten] if live_only else everything
        if kind is not None:
            chosen = [v for v in chosen if v.kind == kind]
        return sorted(chosen, key=lambda v: (v.name, v.step, v.key))

    def forget(self, versions: list[Version]) -> None:
        """Drop versions by writing a tombstone for each (run, name, step); no data is touched here."""
        for v in versions:
            now = time.time()
            doc = {"t": "version", "run": v.run, "name": v.name, "step": v.step, "kind": v.kind, "digest": None,
                   "size": 0, "new_bytes": 0, "time": now, "metadata": {}, "forgotten": True}
            self._write(layout.version_key(v.run, v.name, v.step, layout.new_stamp(now)), doc)

    def all_versions(self) -> list[Version]:
        """The live versions of every run."""
        return [v for run in self.run_names() for v in self.versions(run)]

    def events(self, run: str) -> list[RunEvent]:
        return sorted((r for r in self._records(layout.run_events_prefix(run)) if isinstance(r, RunEvent)),
                      key=lambda e: e.time)

    def run_state(self, run: str) -> RunState:
        """The run's status, config, metadata, inputs and times, from its events."""
        state = RunState()
        for event in self.events(run):
            state.apply(event)
        return state

    def run_names(self) -> list[str]:
        """Every run that has a start event or a version: the name in the first record of each run's
        folder (every record of a folder names its run: decode checks it against the key)."""
        names, folder = set(), None
        for key, raw in self.index.iter_records(layout.RUNS):
            if folder is None or not key.startswith(folder):
                rec = decode(raw, key=key)
                folder = layout.run_prefix(rec.run)
                names.add(rec.run)
        return sorted(names)

    def exists(self, run: str) -> bool:
        return any(True for _ in self.index.iter_records(layout.run_prefix(run)))

    def require_run(self, run: str) -> str:
        """The run name, checked: NotFound with one line if no such run was ever recorded."""
        check_name(run, "run name")
        if not self.exists(run):
            raise NotFound(f"unknown run {run!r}", subject=run)
        return run

    # ---- copying ------------------------------------------------------------------------
    def raw_records(self, prefix: str) -> list[tuple[str, bytes]]:
        """(key, raw bytes) of every cached record whose key starts with prefix (a run's, or one key)."""
        return [(key, bytes(raw)) for key, raw in self.index.iter_records(prefix)]

    def copy_records(self, items: list[tuple[str, bytes]]) -> int:
        """Write records read from another store under their own keys (create-only: a key already
        here holds the same record); each is decoded and checked against its key first. Returns how
        many were written."""
        written, cached = 0, []
        for key, raw in items:
            rec = decode(raw, key=key)
            self.before_commit()
            if self.backend.put(key, raw, create_only=True):
                written += 1
            cached.append((key, raw, inline_of(rec)))
        self.index.add_records(cached)
        return written

    # ---- aliases ------------------------------------------------------------------------
    def set_alias(self, run: str, name: str, alias: str, step: int | None) -> RunEvent:
        """Point `alias` of (run, name) at a step, or remove it (step None): an event record, so aliases
        are append-only like every record, and the one with the greatest key wins (see aliases)."""
        check_name(name)
        check_alias(alias)
        if step is not None:
            check_step(step)
        return self.log_event(run, ALIAS_EVENT, name=name, alias=alias, step=step)

    def aliases(self, run: str) -> dict[tuple[str, str], int]:
        """(name, alias) → step, for a run's aliases. For each (name, alias) the record with the greatest
        key wins: its nanosecond time, then its random suffix (so every reader agrees on the winner,
        whatever order the records arrived in); a removed alias is left out."""
        found: dict[tuple[str, str], int | None] = {}
        for key, raw in self.index.iter_records(layout.run_events_prefix(run)):  # in key order
            rec = decode(raw, key=key)
            if not isinstance(rec, RunEvent) or rec.type != ALIAS_EVENT:
                continue
            name, alias, step = rec.data.get("name"), rec.data.get("alias"), rec.data.get("step")
            if isinstance(name, str) and isinstance(alias, str) and (step is None or type(step) is int):
                found[(name, alias)] = step
        return {k: step for k, step in found.items() if step is not None}

    def aliases_by_version(self, run: str) -> dict[tuple[str, int], list[str]]:
        """(name, step) → the aliases naming that version of a run, sorted."""
        out: dict[tuple[str, int], list[str]] = {}
        for (name, alias), step in sorted(self.aliases(run).items()):
            out.setdefault((name, step), []).append(alias)
        return out

    def aliased_versions(self, run: str) -> list[Version]:
        """The versions of a run that an alias names: the latest record of each (name, step) that holds
        content, even one forgotten since (an alias keeps what it names, as a pin does)."""
        targets = {(name, step) for (name, _), step in self.aliases(run).items()}
        if not targets:
            return []
        latest: dict[tuple[str, int], Version] = {}
        for v in self.versions(run, live_only=False):
            if (v.name, v.step) in targets and v.digest is not None and not v.forgotten:
                if (v.name, v.step) not in latest or v.key > latest[(v.name, v.step)].key:
                    latest[(v.name, v.step)] = v
        return list(latest.values())

    # ---- resolving ----------------------------------------------------------------------
    def resolve(self, ref: str) -> Version:
        """The version named by runs:/<run>/<name> (latest step), runs:/<run>/<name>@<step> or
        runs:/<run>/<name>@<alias>."""
        version, inside = self.locate(ref)
        if inside and version.object_type != "tree":
            raise NotFound(f"unknown reference: {ref} ({version.uri} is a file, not a folder)", subject=ref)
        if inside:
            raise InvalidInput(f"{ref} names a path inside the folder {version.uri}, not a version", subject=ref)
        return version

    def locate(self, ref: str) -> tuple[Version, str]:
        """The version a runs:/ reference names and the path inside it (a logged folder) it goes on to,
        "" for none: runs:/<run>/<name>[@<step or alias>][/<path>]. Names may contain '/': the longest
        live name the reference starts with wins."""
        run, rest = split_runs_ref(ref)
        live = self.versions(run)
        held = self.aliased_versions(run)  # an alias keeps a version it names nameable, even forgotten
        names = {v.name for v in live + held}
        name = max((n for n in names if rest == n or rest.startswith((n + "@", n + "/"))), key=len, default=None)
        if name is None:
            if not self.exists(run):
                raise NotFound(f"unknown run {run!r} in {ref}", subject=ref)
            check_runs_ref(ref)  # a malformed reference says so
            raise NotFound(f"unknown reference: {ref}", subject=ref)
        tail = rest[len(name):]
        at, inside = (tail[1:].partition("/")[::2]) if tail.startswith("@") else ("", tail[1:])
        if tail.startswith("@") and not at:
            raise InvalidInput(f"malformed step in {ref!r}: a non-negative integer or an alias", subject=ref)
        if at:
            step = _step_or_alias(at, ref, self.aliases(run), name)
            versions = sorted((v for v in live + held if v.name == name and v.step == step), key=lambda v: v.key)
        else:
            versions = [v for v in live if v.name == name]
        if not versions:
            raise NotFound(f"unknown reference: {ref}", subject=ref)
        return versions[-1], inside


class RunRoots:
    """The run records as a root provider (cas/roots.py): live versions by runs:/ URI, and the
    resolver of runs:/ references. `book` opens the store's RecordBook (synced on first use)."""

    scheme: str | None = "runs:/"

    def __init__(self, book: Callable[..., RecordBook]):
        self.book = book

    def roots(self, *, on_damaged=None) -> dict[str, bytes]:
        """Every live version, and every version an alias names (forgotten or not), by runs:/ URI."""
        book = self.book(on_damaged=on_damaged)
        found = {v.uri: bytes.fromhex(v.digest) for v in book.all_versions() if v.digest}
        for run in book.run_names():
            found.update((v.uri, bytes.fromhex(v.digest)) for v in book.aliased_versions(run) if v.digest)
        return found

    def refresh(self) -> None:
        self.book().sync()

    def resolve(self, ref: str) -> str:
        """The digest a runs:/ reference names, followed by /<path> when it names a path inside a logged
        folder (the store resolves that path in the folder's tree)."""
        version, inside = self.book().locate(ref)
        if version.digest is None:
            raise InvalidInput(f"{ref} is a reference to {version.ref_uri}; nothing is stored", subject=ref)
        return f"{version.digest}/{inside}" if inside else version.digest


def split_runs_ref(ref: str) -> tuple[str, str]:
    """(run, the rest) of runs:/<run>/<rest>; InvalidInput if malformed."""
    if not isinstance(ref, str) or not ref.startswith("runs:/"):
        raise InvalidInput(f"not a runs:/ reference: {ref!r}", subject=str(ref))
    run, sep, rest = ref[len("runs:/"):].partition("/")
    if not sep or not rest:
        raise InvalidInput(f"malformed reference {ref!r} (use runs:/<run>/<name>[@<step>])", subject=ref)
    return check_name(run, "run name"), rest


def _step_or_alias(text: str, ref: str, aliases: dict[tuple[str, str], int], name: str) -> int:
    if text.isascii() and text.isdigit():
        if int(text) >= 10 ** 19:
            raise InvalidInput(f"malformed step in {ref!r}: a non-negative integer", subject=ref)
        return int(text)
    check_alias(text)
    step = aliases.get((name, text))
    if step is None:
        raise NotFound(f"unknown alias {text!r} of {name} in {ref} (`cas log` shows the aliases)", subject=ref)
    return step


def check_runs_ref(ref: str) -> None:
    """InvalidInput if a runs:/ reference is malformed: a bad run or artifact name, step or alias."""
    run, rest = split_runs_ref(ref)
    name, at, after = rest.partition("@")
    check_name(name)
    at_text = after.partition("/")[0]
    if at and not (at_text.isascii() and at_text.isdigit() and int(at_text) < 10 ** 19):
        if not at_text or at_text.isdigit():
            raise InvalidInput(f"malformed step in {ref!r}: a non-negative integer", subject=ref)
        check_alias(at_text)


def inline_of(rec) -> tuple[bytes, bytes] | None:
    if isinstance(rec, Version) and rec.inline is not None and rec.digest is not None:
        return bytes.fromhex(rec.digest), rec.inline
    return None
