"""Lineage: which run produced a version and which runs used it (`run.use_artifact`), and a run's
inputs and outputs. Read from the run records; nothing is stored for it beyond them."""

from __future__ import annotations

from cas.errors import NotFound
from cas.records import RunEvent, Version


def _version(v: Version) -> dict:
    return {"run": v.run, "name": v.name, "step": v.step, "uri": v.uri, "digest": v.digest, "time": v.time}


def _inputs(records, run: str) -> list[dict]:
    return [{"run": run, "ref": e.data.get("ref"), "uri": e.data.get("uri"), "digest": e.data.get("digest"),
             "time": e.time} for e in records.events(run) if isinstance(e, RunEvent) and e.type == "input"]


def lineage(ref: str, *, store=None) -> dict:
    """For a version (runs:/<run>/<name>[@<step or alias>]): `produced_by` (its run and step),
    `used_by` (the runs that declared it, or its content, as an input), and `inputs` (what its run
    used). For a run name: its `inputs` and `outputs` (live versions). For other content (a digest, a
    pin): the first version that held it (`versions`: all of them) and the runs that used it."""
    from .run import _open_store
    st = _open_store(store)
    records = st.records
    outputs: list[dict] = []
    if ref.startswith("runs:/"):
        version = records.resolve(ref)
        digests, uris = {version.digest}, {version.uri}
        holders, inputs = [version], _inputs(records, version.run)
    elif "/" not in ref and ":" not in ref and records.exists(ref):
        return {"run": ref, "produced_by": None, "used_by": [], "inputs": _inputs(records, ref),
                "outputs": [_version(v) for v in records.versions(ref) if v.digest], "versions": []}
    else:
        digest = st.resolve(ref)[0].hex()
        holders = sorted((v for v in records.all_versions() if v.digest == digest), key=lambda v: v.time)
        digests, uris, inputs = {digest}, {v.uri for v in holders}, []
    used = [i for run in records.run_names() for i in _inputs(records, run)
            if i["digest"] in digests or i["uri"] in uris]
    if not holders and not used:
        raise NotFound(f"no run logged or used {ref}", subject=ref)
    return {"run": None, "produced_by": _version(holders[0]) if holders else None, "used_by": used, "inputs": inputs,
            "outputs": outputs, "versions": [_version(v) for v in holders]}
