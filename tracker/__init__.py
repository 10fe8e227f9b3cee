"""tracker: runs, artifact names, steps and kinds mapped to content hashes in a cas store.

    import tracker
    with tracker.init("exp-1", config={"lr": 3e-4}) as run:
        v = run.log_artifact("ckpt.pt", name="model", kind="checkpoint", step=100)
    tracker.download("runs:/exp-1/model@100", "restored/")
"""

from __future__ import annotations

from cas.records import Version, check_fields, check_name

from .aliases import set_alias
from .lineage import lineage
from .run import Run, RunInfo, _open_store, generate_run_name, run_info
from .tensors import load_tensor, safe_open

__all__ = ["init", "download", "open", "get_run", "versions", "alias", "lineage", "copy", "forget", "load_tensor",
           "safe_open", "Run", "RunInfo", "Version"]


def init(name: str | None = None, *, store=None, config: dict | None = None, metadata: dict | None = None) -> Run:
    """Open a run, creating it if new and resuming it if it exists; `store` is a URI or a cas Store."""
    st = _open_store(store)
    if name is None:
        name = generate_run_name()
    check_name(name, "run name")
    config, metadata = check_fields(config, "config"), check_fields(metadata, "metadata")
    st.init()
    st.records.log_event(name, "start", config=config, metadata=metadata)
    return Run(st, name)


def download(ref: str, dest, *, store=None, force: bool = False, on_progress=None) -> str:
    """Restore the file or folder a reference names at dest; returns the path written.

    on_progress(n) is called with the bytes of each chunk as they are written (see `cas.progress.Progress`).
    """
    return _open_store(store).get_file(ref, dest, force=force, on_progress=on_progress)


def open(ref: str, *, store=None):  # noqa: A001 - mirrors the built-in on purpose: tracker.open(ref)
    """A readable, seekable file object for a stored file."""
    return _open_store(store).open_file(ref)


def alias(ref: str, name: str, *, delete: bool = False, store=None) -> Version:
    """Point alias `name` at the version `ref` names (runs:/<run>/<artifact>[@<step or alias>]), moving
    it if it named another version of that artifact; delete=True removes it. `runs:/<run>/<artifact>@<name>`
    then resolves to that version; an aliased version is kept by `forget` and by gc. Returns the version."""
    return set_alias(_open_store(store), ref, name, delete=delete)


def copy(sources, *, to, store=None, on_progress=None) -> dict:
    """Copy runs (names), versions (runs:/ references), pins (labels) or content (digests) to the
    store `to` (a URI or a Store), sending only the chunks it lacks; records and pins are written
    there once their data is durable. Returns {"sent_bytes", "skipped_bytes", "objects", ...}."""
    from cas.copy import copy as copy_to
    names = [sources] if isinstance(sources, str) else list(sources)
    return copy_to(_open_store(store), _open_store(to), names, on_progress=on_progress).to_dict()


def versions(run: str, *, name: str | None = None, kind: str | None = None, where: dict | None = None,
             store=None) -> list[Version]:
    """A run's live versions, optionally of one name or kind, and whose metadata has every key of
    `where` with that value (a number matches the same number written otherwise: 3 == 3.0 == "3")."""
    from .query import matches
    records = _open_store(store).records_of(run)
    found = records.versions(records.require_run(run), name, kind=kind)
    return [v for v in found if matches(v.metadata, where or {})]


def get_run(name: str, *, store=None) -> RunInfo:
    """A run's status, config, metadata, live versions and inputs."""
    return run_info(_open_store(store), name)


def forget(runs, *, name: str | None = None, kind: str | None = None, keep_last: int | None = None,
           keep_every: int | None = None, keep_within: float | str | None = None, all: bool = False,  # noqa: A002
           dry_run: bool = False, store=None) -> list[Version]:
    """Drop versions of runs by policy (records only; `cas gc` frees the data). Returns what was dropped.

    Versions kept by any keep option (keep_within: seconds, or a duration such as "12h"), versions
    whose digest is pinned and aliased versions are kept; so is the latest version (highest step) of
    each (run, name), unless keep_last=0 or all=True. With no keep option, `all=True` must be given.
    """
    from cas.gc_lists import parse_duration

    from .retention import Policy, to_forget
    st = _open_store(store)
    within = parse_duration(keep_within) if isinstance(keep_within, str) else keep_within
    policy = Policy(name, kind, keep_last, keep_every, all, within).check()
    names = [runs] if isinstance(runs, str) else list(runs)
    versions, aliased = [], set()
    for run in names:
        versions += st.records.versions(st.records.require_run(run))
        aliased |= {(run, n, step) for (n, _), step in st.records.aliases(run).items()}
    dropped = to_forget(versions, policy, {p.digest for p in st.pins()}, aliased)
    if not dry_run:
        st.records.forget(dropped)
    return dropped
