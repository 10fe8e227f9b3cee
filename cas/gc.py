"""Garbage collection in two phases without a lock on the write path: collect, plan, execute the plan.

`_Reader.collect` reads the store's metadata, `plan_gc` decides from it alone (a pure function: a
dry run prints its plan), `_execute` carries the plan out, confirming each deletion against the
store as it is then.

Phase 1 condemns packs no root needs (writing gc/condemned/<stamp>, then gc/sessions/<stamp> with the
writer sessions live once the condemnation was durable); writers that start later see it and store
those blobs again instead of deduplicating. Phase 2 deletes a condemned pack once the grace period
has passed since condemnation, every session listed with it is over, and it is still unneeded.
The argument for why this is safe is in docs/design.md. Reads metadata only: index objects,
manifests, records, pins.
"""

from __future__ import annotations

import os
import time

from . import collector, layout, pack_index, temps
from .blobset import EMPTY, Blobs
from .datatype import datatype, field
from .errors import IntegrityError, NotFound, StorageError
from .gc_lists import decode_list, decode_sessions, encode_list, encode_sessions
from .leases import backend_now, expired_sessions, lease_seconds, live_sessions
from .pack import read_pack_entries
from .pack_index import PackRecord
from .scratch import Scratch, group_rows
from .supply import Catalog, Supplied, needed
from .walk import RAISE, Walk

DEFAULT_GRACE = 24 * 3600.0
LIST_PASSES = 50  # listings of index objects before giving up on a store that keeps merging them
REPACK_THRESHOLD = 0.25  # a needed pack whose dead share reaches this is repacked


@datatype(frozen=True)
class Condemnation:
    stamp: str
    time: float  # backend clock when it was written
    packs: frozenset[bytes]
    sessions: frozenset[str] | None  # None: gc stopped before listing them; the condemnation is void


@datatype
class GcPlan:
    keep: set[bytes] = field(default_factory=set)
    repack: list[bytes] = field(default_factory=list)
    supplies: dict[bytes, Supplied] = field(default_factory=dict)  # kept pack → the blobs it is the home of
    condemn: set[bytes] = field(default_factory=set)
    delete: set[bytes] = field(default_factory=set)
    finished: list[str] = field(default_factory=list)  # condemnation stamps fully handled by this run
    void: list[str] = field(default_factory=list)  # condemnations without a sessions list
    waiting: set[bytes] = field(default_factory=set)  # condemned, not yet deletable
    partly_dead: dict[bytes, tuple[int, float]] = field(default_factory=dict)  # kept as is: dead bytes, share
    condemn_now_deletes: bool = False  # grace 0, no writer live: `delete` holds what this run condemns too


def plan_gc(packs: Catalog, reachable: Blobs, condemnations: list[Condemnation],
            live: set[str], now: float, grace: float, repack_threshold: float = REPACK_THRESHOLD) -> GcPlan:
    """What to repack, condemn and delete; a pure function of the store's metadata (`collect` reads it).

    With grace 0 the packs this run condemns are deleted in the same run if no writer is live; the
    execution confirms that no writer was live once the condemnation was durable (else they wait).
    """
    plan = GcPlan()
    condemned = {p for c in condemnations for p in c.packs}
    plan.keep, plan.supplies = needed(packs, reachable, condemned)
    for pid in sorted(plan.keep):
        supplied = plan.supplies[pid].stored
        blobs = packs[pid].blob_bytes
        share = 1 - supplied / max(1, blobs)
        if pid not in condemned and share >= repack_threshold:
            plan.repack.append(pid)
        elif pid not in condemned and supplied < blobs:
            plan.partly_dead[pid] = (blobs - supplied, share)
    dead = set(packs) - plan.keep
    plan.condemn = (dead | set(plan.repack)) - condemned
    if grace == 0:  # condemned and deleted in this run, unless a writer is live (then it waits for them)
        (plan.waiting if live else plan.delete).update(plan.condemn)
        plan.condemn_now_deletes = not live
    for c in condemnations:
        if c.sessions is None:
            plan.void.append(c.stamp)
            continue
        ready = now - c.time >= grace and not (c.sessions & live)
        if ready:
            plan.delete |= c.packs & dead
            plan.finished.append(c.stamp)
        else:
            plan.waiting |= c.packs & dead
    return plan


# ---- collect, then execute the plan -----------------------------------------------------------------
@datatype
class Collected:
    """What gc read of a store (all it plans from): pack catalog, reachable blobs, condemnations, writers."""

    packs: Catalog
    index_keys: list[str]
    named: dict[str, list[bytes]]  # index object key → the packs it names
    reachable: Blobs
    condemnations: list[Condemnation]
    live: set[str]
    now: float


class _Reader:
    """Reads the store for one gc run, each manifest and index object once (both are immutable)."""

    def __init__(self, store, scratch: Scratch):
        self.store = store
        # memoized: later passes read only the manifests of new roots; nodes keep no chunk lists
        self.walk = Walk(store, policy=RAISE, keep_chunks=False, scratch=scratch)
        self.reached = Blobs(scratch=scratch)
        self.every_pack = Catalog(scratch)  # every pack read so far, from index objects or footers
        self.index_objects: dict[str, list[bytes]] = {}  # index object key → the packs it names

    def reachable(self, *, unlearned: frozenset[str] = frozenset()) -> Blobs:
        """(kind, key) of every blob the roots as they are now need, and those earlier calls found:
        manifests and chunks, from manifests only. The walk's policy is RAISE: a root whose content is
        missing or damaged stops gc before it deletes. The roots are read first, and only then the
        index: a root's data was indexed before the root was written, so the sync makes it known.
        unlearned: index objects the sync leaves for later (this run's repack: it copied blobs the
        cache knows in packs that stay until this run deletes them, after its last walk)."""
        store = self.store
        roots = store.roots(fresh=True)
        store.sync(unlearned=unlearned)
        try:
            self.walk.reach(roots, into=self.reached)
        except IntegrityError as exc:
            raise type(exc)(f"gc stopped: {exc}; nothing was deleted (run cas verify)", subject=exc.subject) from None
        return self.reached  # this reader's own set, grown by each call

    def catalog(self) -> tuple[Catalog, list[str]]:
        """Every pack of the store with its entries (from index objects, plus the footers of packs none
        names), and the index object keys.

        An index object a writer merged away while we read sends us back to list again (the merged
        object names its packs). Packs are listed once, after the index objects: a pack an index object
        names but the listing does not is gone.
        """
        backend = self.store.backend
        for _ in range(LIST_PASSES):
            keys = pack_index.list_keys(backend)
            vanished = False
            for key, records in pack_index.iter_present(backend, [k for k in keys if k not in self.index_objects]):
                if records is None:
                    vanished = True
                else:  # into the spill tables as each object is read: no Location object per chunk is kept
                    self.index_objects[key] = [self.every_pack.add(rec).pack_id for rec in records]
            if not vanished:
                break
        else:
            raise StorageError("the store's index objects kept changing while gc read them; nothing was changed: "
                               "run gc again", subject=layout.INDEXES)
        listed = {pid: size for key, size in backend.list(layout.PACKS)
                  if (pid := layout.pack_id_from_key(key)) is not None}
        named = {pid for key in keys for pid in self.index_objects[key] if pid in listed}
        for pid, size in listed.items():
            if pid not in named and pid not in self.every_pack:  # a crash left it unnamed (or a writer is
                self.every_pack.add(PackRecord(pid, size, tuple(read_pack_entries(backend, pid, size))))  # uploading)
        return self.every_pack.only(sorted(listed)), keys

    def named(self, keys: list[str]) -> dict[str, list[bytes]]:
        return {key: self.index_objects[key] for key in keys}

    def collect(self, *, dry_run: bool) -> Collected:
        backend = self.store.backend
        _condemnations(backend)  # a damaged gc list stops gc here, before anything else is read
        reachable = self.reachable()
        packs, keys = self.catalog()
        now = time.time() if dry_run else backend_now(backend)  # a dry run writes nothing, not even a clock probe
        return Collected(packs, keys, self.named(keys), reachable, _condemnations(backend),
                         set(live_sessions(backend, now)), now)


def _condemnations(backend) -> list[Condemnation]:
    listed = dict(backend.list(layout.GC))
    out = []
    for key in sorted(k for k in listed if k.startswith(layout.GC_CONDEMNED)):
        stamp = key[len(layout.GC_CONDEMNED):]
        try:
            when, packs = decode_list(backend.get(key), key=key)
        except NotFound:
            continue
        sessions = None
        if layout.gc_sessions_key(stamp) in listed:
            sessions = frozenset(decode_sessions(backend.get(skey := layout.gc_sessions_key(stamp)), key=skey))
        out.append(Condemnation(stamp, when, frozenset(packs), sessions))
    return out


def _stamp(now: float) -> str:
    return f"{int(now * 1e3):015d}-{os.urandom(4).hex()}"


def execute_gc(store, *, grace: float = DEFAULT_GRACE, dry_run: bool = False,
               repack_threshold: float = REPACK_THRESHOLD, on_progress=None) -> dict:
    """Collect, plan, and (unless dry_run) execute the plan; returns the report (the plan's, for a dry
    run). on_progress(n) counts the stored bytes copied out of partly dead packs."""
    store.require()
    _condemnations(store.backend)  # a damaged gc list stops gc here, before anything is read or written
    with store.scratch() as scratch:  # checks the spill budgets first: a bad one changes nothing
        rewritten = 0 if dry_run else _store_alone_what_only_bases_need(store)
        return _collect_plan_execute(store, scratch, grace=grace, dry_run=dry_run, repack_threshold=repack_threshold,
                                     rewritten=rewritten, on_progress=on_progress)


def _collect_plan_execute(store, scratch: Scratch, *, grace: float, dry_run: bool, repack_threshold: float,
                          rewritten: int, on_progress) -> dict:
    reader = _Reader(store, scratch)
    seen = reader.collect(dry_run=dry_run)
    plan = plan_gc(seen.packs, seen.reachable, seen.condemnations, seen.live, seen.now, grace, repack_threshold)
    report = _planned(plan, seen, dry_run=dry_run, repack_threshold=repack_threshold)
    report["rewritten_chunks"] = rewritten
    backend = store.backend
    if dry_run:
        report["aborted_uploads"] = backend.abort_stale_uploads(max(grace, 2 * lease_seconds()), dry_run=True)
        _clean_temps(store, grace, report, dry_run=True)
        return report
    stored_before = _stored_bytes(backend)
    _execute(store, plan, seen, reader, on_progress or (lambda n: None))
    report.update(deleted_packs=len(plan.delete), deleted_bytes=sum(seen.packs[p].size for p in plan.delete),
                  waiting_packs=len(plan.waiting))
    report["aborted_uploads"] = backend.abort_stale_uploads(max(grace, 2 * lease_seconds()))
    stale = expired_sessions(backend, backend_now(backend))
    backend.delete(stale)
    report["expired_sessions"] = len(stale)
    _clean_temps(store, grace, report, dry_run=False)
    store.sync()
    report["freed_bytes"] = stored_before - _stored_bytes(backend)  # the drop in stored_bytes, all told
    return report


def _planned(plan: GcPlan, seen: Collected, *, dry_run: bool, repack_threshold: float) -> dict:
    """The report of a plan before it runs: what a dry run prints, and what a real run starts from."""
    deleted = sum(seen.packs[p].size for p in plan.delete)
    return {"dry_run": dry_run, "packs": len(seen.packs), "reachable_blobs": len(seen.reachable),
            "repacked_packs": len(plan.repack), "repacked_bytes": sum(seen.packs[p].size for p in plan.repack),
            "condemned_packs": len(plan.condemn), "deleted_packs": len(plan.delete), "deleted_bytes": deleted,
            "freed_bytes": deleted, "waiting_packs": len(plan.waiting), "aborted_uploads": 0, "expired_sessions": 0,
            "repack_threshold": repack_threshold, **_partly_dead_report(plan.partly_dead)}


def _execute(store, plan: GcPlan, seen: Collected, reader: _Reader, on_progress) -> None:
    """Repack, condemn, then delete what the plan says, each deletion confirmed against the store as it
    is now; `plan` is narrowed to what was done."""
    backend = store.backend
    with store.writing():
        repacked: frozenset[str] = frozenset()
        if plan.repack:
            repacked = _repack(store, plan.supplies, plan.repack, on_progress)
        if plan.condemn:
            stamp = _stamp(seen.now)
            backend.put(layout.condemned_key(stamp), encode_list(plan.condemn, seen.now), create_only=True)
            # listed only now that the condemnation is durable: a writer missing from this list started
            # after it, and saw it when its session began (gc's own session commits no refs)
            sessions = sorted(set(live_sessions(backend, backend_now(backend))) - {store.lease.key})
            backend.put(layout.gc_sessions_key(stamp), encode_sessions(sessions), create_only=True)
            if plan.condemn_now_deletes and sessions:  # a writer began before the condemnation was durable
                plan.delete -= plan.condemn
                plan.waiting |= plan.condemn
            elif plan.condemn_now_deletes:
                plan.finished.append(stamp)
    if plan.delete:
        _confirm(store, plan, seen, reader, repacked)
    if plan.delete:
        now = backend_now(backend)
        backend.put(layout.deleted_key(_stamp(now)), encode_list(plan.delete, now), create_only=True)
        backend.delete([layout.pack_key(p) for p in sorted(plan.delete)])
        _rename_packs(backend, seen, plan.delete)
    backend.delete([k for stamp in plan.finished + plan.void
                    for k in (layout.condemned_key(stamp), layout.gc_sessions_key(stamp))])


def _confirm(store, plan: GcPlan, seen: Collected, reader: _Reader, repacked: frozenset[str]) -> None:
    """Spare every pack of plan.delete some root needs now: a writer may have committed a ref to a
    condemned pack before it learned of the condemnation. Roots seen earlier in this run count too
    (a superset only spares more packs). The catalog is read again when this run repacked (the
    repacked blobs' new homes are what let the victims go); blobs only in packs written since are
    not our concern, as we delete none of those. The cache does not learn the repack's index objects
    here (the catalog is read from the index objects themselves): learned one by one into a large
    cache they took a tenth of gc, and the sync after the deletions learns every pack again anyway."""
    still = reader.reachable(unlearned=repacked)
    packs = reader.catalog()[0] if plan.repack else seen.packs
    keep, _ = needed(packs, still, {p for c in _condemnations(store.backend) for p in c.packs}, missing_ok=True)
    plan.delete -= keep  # its condemnation ends with this run: the pack is live again


def _rename_packs(backend, seen: Collected, deleted: set[bytes]) -> None:
    """Index objects name only packs that are still there: each one that named a pack this run deleted,
    or one the store no longer lists (an index object is written after its packs are durable, and was
    listed before the packs were, so a pack it names that was not listed is gone), is written again
    with the packs that stay (one object at a time: a reader never holds more than one), and the packs
    a crash left unnamed that this run kept are named in a new one. An object a writer merged away
    meanwhile is left to the merged one, which readers read against gc's deleted lists."""
    def stays(pid: bytes) -> bool:
        return pid in seen.packs and pid not in deleted
    named: set[bytes] = set()
    for key in seen.index_keys:
        pids = seen.named[key]
        named.update(pids)
        if all(stays(pid) for pid in pids):
            continue
        if not any(stays(pid) for pid in pids):  # content-named: it names what it named when read
            backend.delete([key])
            continue
        try:
            records = [rec for rec in pack_index.read(backend, key) if stays(rec.pack_id)]
        except NotFound:
            continue
        rewritten = pack_index.write(backend, records) if records else None
        if rewritten != key:
            backend.delete([key])
    unnamed = [pid for pid in sorted(seen.packs) if pid not in named and stays(pid)]
    if unnamed:
        pack_index.write(backend, [PackRecord(pid, seen.packs[pid].size,
                                              tuple(read_pack_entries(backend, pid, seen.packs[pid].size)))
                                   for pid in unnamed])


def _stored_bytes(backend) -> int:
    """What `cas stats` calls stored_bytes: every object of the store (temp files are not objects)."""
    return sum(size for _, size in backend.list(""))


def _partly_dead_report(partly_dead: dict[bytes, tuple[int, float]]) -> dict:
    """What gc kept although part of it is dead (below the repack threshold), and the threshold that
    would reclaim all of it (the smallest dead share among those packs, rounded down)."""
    shares = [share for _, share in partly_dead.values()]
    return {"partly_dead_packs": len(partly_dead),
            "reclaimable_bytes": sum(dead for dead, _ in partly_dead.values()),
            "min_dead_share": round(min(shares, default=0.0), 4), "max_dead_share": round(max(shares, default=0.0), 4),
            "reclaim_threshold": max(0.01, int(min(shares, default=0.0) * 100) / 100)}


def _clean_temps(store, grace: float, report: dict, *, dry_run: bool) -> None:
    """Remove the temp files killed writers left on this machine (see cas/temps.py for when one is stale)."""
    now = time.time()  # temp files carry this machine's times
    stale = [t for t in temps.find(store.temp_folders())
             if temps.is_stale(t, now=now, grace=grace, lease=lease_seconds())]
    report["removed_temp_files"] = len(stale)
    report["removed_temp_bytes"] = sum(t.size for t in stale) if dry_run else temps.remove(stale)


def _store_alone_what_only_bases_need(store) -> int:
    """Store alone (a new copy, no base) every delta chunk whose base no live file lists itself: once
    the versions that held the bases are forgotten, this is what lets their space come back (the
    delta copies stop supplying those chunks, and the bases stop being needed). Only adds copies:
    what is deleted is still decided by the plan, closed over the bases of the copies it keeps.
    Returns how many chunks were stored again."""
    store.sync()
    if not store.index.has_delta_chunks():  # the common case: no second walk of every manifest
        return 0
    walk = Walk(store, policy=RAISE)
    roots = store.roots(fresh=True)
    store.sync()
    try:
        walk.reach(roots)
    except IntegrityError:
        return 0  # gc's own walk reports it and stops
    listed = {c for node in walk.nodes.values() if node is not None for c in node.chunks}
    locs = [loc for loc in store.index.chunks_at(sorted(listed)) if loc is not None and loc.base]
    needed_only_as_base = {loc.base for loc in locs} - listed
    todo = [loc for loc in locs if loc.base in needed_only_as_base]
    if not todo:
        return 0
    reader = store.chunk_reader()
    with store.writing(), store.write_session() as session:
        for loc in todo:
            raw, width = reader.raw_and_width(loc.key)
            session.store_alone(loc.key, raw, width)
    return len(todo)


def _repack(store, supplies: dict[bytes, Supplied], victims: list[bytes], on_progress) -> frozenset[str]:
    """Copy the blobs partly dead packs are the home of, still compressed, into new packs (durable and
    indexed); returns the keys of the index objects naming them.

    Only those: a reachable blob of a victim that another kept pack supplies stays there, else every
    repack would copy duplicates along and gc would never stop finding partly dead packs.
    Each blob is verified as it is read, in coalesced ranges. The victims' chosen chunk ids are asked of
    the choice for all batches of victims (about group_rows() chunks each) in one pass over the tables,
    and read back a batch at a time.
    """
    reader = store.chunk_reader()
    batches = list(_batches(victims, supplies))
    if not batches:
        return frozenset()
    choice = supplies[victims[0]].choice  # one choice for every pack of the plan
    keys = choice.keys_by_batch([{supplies[p].pack.number for p in batch} for batch in batches])
    # each chosen blob comes once (gc's last sync learns them); millions of entries pass through, none in
    # a cycle: the cycle collector would scan every live object again each time they pile up
    with store.write_session(learn=False) as session, collector.many_objects():
        for batch, chunk_ids in zip(batches, keys):
            for pid in batch:
                supplied = supplies[pid]
                entries = read_pack_entries(store.backend, pid, supplied.pack.size)
                chosen = supplied.select(entries, chunk_ids.get(supplied.pack.number, EMPTY))
                for loc, stored in reader.stored_blobs(chosen):
                    session.copy_blob(loc, stored, force=True)
                    on_progress(loc.stored_len)
    return frozenset(key for key, _ in session.index_keys)


def _batches(victims: list[bytes], supplies: dict[bytes, Supplied]):
    batch: list[bytes] = []
    rows = 0
    for pid in victims:
        if batch and rows + supplies[pid].chunks > group_rows():
            yield batch
            batch, rows = [], 0
        batch.append(pid)
        rows += supplies[pid].chunks
    if batch:
        yield batch
