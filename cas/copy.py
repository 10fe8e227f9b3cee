"""`cas copy`: runs, versions, pins and content from one store to another, sending only the blobs the
target lacks.

What is copied: every blob the sources reach (the one walk: manifests, chunks, the bases of delta
chunks), as stored (compressed, verified when read from the source), then the records and pins that
name them. The target is asked through its own index (synced first) which blobs it holds; the blobs
go into packs of one put session of the target, and the records and pins are written only after that
session is durable, under the target's writer lease, so gc there never sees a record whose data is
missing. Record objects keep their keys (create-only: one already there is the same record), so
copying twice writes nothing twice; a killed copy run again sends only what is still missing.
"""

from __future__ import annotations

from . import layout, refs
from .datatype import datatype, field
from .errors import InvalidInput, NotFound, PackMissing
from .pack import CHUNK, TREE_MANIFEST
from .walk import RAISE, Walk


@datatype
class Plan:
    """What the sources name: the roots to walk, the run records to copy (key, raw) and pins to write."""

    roots: dict[str, bytes] = field(default_factory=dict)
    records: list[tuple[str, bytes]] = field(default_factory=list)
    pins: list[refs.Pin] = field(default_factory=list)


def plan(source, names: list[str]) -> Plan:
    """A run name: every record of the run, its live (and aliased) versions as roots. A runs:/
    reference: that version's record. A pin label: the pin. A digest or cas:// reference: the
    content alone, pinned in the target as `copy/<digest>` (something must name it there, or gc
    would take it)."""
    out = Plan()
    records = source.records
    pins = {p.label: p for p in source.pins()}
    for name in names:
        if name.startswith("runs:/"):
            version = records.resolve(name)
            if version.digest is not None:
                out.roots[version.uri] = bytes.fromhex(version.digest)
            out.records += records.raw_records(version.key)
        elif "/" not in name and ":" not in name and records.exists(name):
            for v in records.versions(name) + records.aliased_versions(name):
                if v.digest is not None:
                    out.roots[v.uri] = bytes.fromhex(v.digest)
            out.records += records.raw_records(layout.run_prefix(name))
        elif name in pins and not name.startswith("cas://"):
            pin = pins[name]
            out.roots[f"pin:{pin.label}"] = bytes.fromhex(pin.digest or "")
            out.pins.append(pin)
        else:
            digest, loc = source.resolve(name)
            out.roots[name] = digest
            out.pins.append(refs.Pin(f"copy/{digest.hex()}", digest.hex(), 0.0,
                                     "tree" if loc.kind == TREE_MANIFEST else "file", loc.size))
    if not out.roots and not out.records:
        raise NotFound(f"nothing to copy in {', '.join(names)}", subject=names[0] if names else "")
    return out


@datatype
class CopyReport:
    sent_bytes: int = 0  # stored bytes of the blobs sent
    skipped_bytes: int = 0  # stored bytes of the blobs the target had already
    objects: int = 0  # blobs sent
    skipped_objects: int = 0
    records: int = 0  # run records written (ones already there are not counted)
    pins: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"sent_bytes": self.sent_bytes, "skipped_bytes": self.skipped_bytes, "objects": self.objects,
                "skipped_objects": self.skipped_objects, "records": self.records, "pins": self.pins}


def _send(reader, target, blobs, report: CopyReport, on_progress) -> None:
    """Send the blobs the target lacks in one put session. The ones its index says it holds are relied
    on like any deduplicated blob: their packs must still exist when the session commits; if one is
    gone (the target's cache was stale), the target relearns what it holds and the copy runs again."""
    for attempt in (1, 2):
        try:
            with target.write_session(on_progress) as session:
                missing = [loc for loc in blobs if not session.rely_on(loc.kind, loc.key)]
                report.skipped_objects = len(blobs) - len(missing)
                report.skipped_bytes = sum(loc.stored_len for loc in blobs) - sum(loc.stored_len for loc in missing)
                report.objects = report.sent_bytes = 0
                if on_progress is not None and hasattr(on_progress, "total"):
                    on_progress.total = sum(loc.stored_len for loc in missing)  # a progress bar's 100 %
                for loc, stored in reader.stored_blobs(missing):  # each verified as it is read
                    session.copy_blob(loc, stored)
                    report.objects += 1
                    report.sent_bytes += loc.stored_len
                    if on_progress is not None:
                        on_progress(loc.stored_len)
            return
        except PackMissing:
            if attempt == 2:
                raise
            target.relearn()


def copy(source, target, names: list[str], *, on_progress=None) -> CopyReport:
    """Copy what `names` name from source to target; returns what was sent and skipped."""
    if source.location() == target.location():
        raise InvalidInput("source and target are the same store", subject=target.location())
    what = plan(source, names)
    report = CopyReport()
    reader = source.chunk_reader()
    blobs = []
    for kind, key in Walk(source, policy=RAISE).reach(what.roots):
        loc = source.index.chunk(key) if kind == CHUNK else source.index.manifest(key)
        if loc is not None:  # None: content kept inline in a run record, which comes with the record
            blobs.append(loc)
    with target.writing():  # synced: the target's index knows what it holds
        _send(reader, target, blobs, report, on_progress)
        # the data is durable in the target: now the records and pins that name it
        report.records = target.records.copy_records(what.records)
        for pin in what.pins:
            target.pin(pin.digest, pin.label)
            report.pins.append(pin.label)
    return report
