"""One function per CLI verb: open the store, call it, hand the result to `emit`."""

from __future__ import annotations

import os
import stat
import sys
from collections.abc import Callable
from functools import partial

from .cli import emit
from .errors import IntegrityError, InvalidInput
from .progress import Progress, human


def _open(uri):
    from .store import Store
    store = Store.open(uri)
    store.on_warning = lambda msg: sys.stderr.write(f"cas: warning: {msg}\n")
    if uri is None and not os.environ.get("CAS_STORE"):  # the default store: say where it was made
        store.on_created = lambda where: sys.stderr.write(f"cas: created a new store at {where}\n")
    return store


def _bar(label: str, as_json: bool, total: Callable[[], int | None] | None = None, *, unit: str = "B") -> Progress:
    """A progress bar on stderr when it is a terminal, never with --json; total() is asked only when it draws."""
    bar = Progress(label, None, enabled=False if as_json else None, unit=unit)
    if bar.enabled and total is not None:
        bar.total = total()
    return bar


def _source_size(path: str) -> int | None:
    """Bytes a put of path reads: the file's size, or the sizes of the regular files in the folder."""
    try:
        if not os.path.isdir(path):
            return os.path.getsize(path)
        total = 0
        for folder, _, names in os.walk(path):
            for name in names:
                st = os.lstat(os.path.join(folder, name))
                total += st.st_size if stat.S_ISREG(st.st_mode) else 0
        return total
    except OSError:
        return None  # the put itself reports what is wrong


def _pack_sizes(store) -> list[int]:
    """The size of each pack in the store (none if there is no store: the command says so itself)."""
    from . import layout
    if not store.exists:
        return []
    return [size for key, size in store.backend.list(layout.PACKS) if layout.pack_id_from_key(key) is not None]


def cmd_init(args, uri, as_json) -> int:
    store = _open(uri)
    created = not store.exists
    config = store.init()
    emit({"store": store.backend.uri, "store_id": config.store_id, "created": created,
          "format_version": config.format_version}, as_json,
         f"{'created' if created else 'found'} store {config.store_id} at {store.backend.uri}")
    return 0


def cmd_put(args, uri, as_json) -> int:
    if args.label is not None and (len(args.paths) > 1 or args.no_pin):
        raise InvalidInput("--label takes exactly one PATH and cannot be combined with --no-pin")
    from .refs import check_label
    from .store import source_kind
    store = _open(uri)
    labels = [None if args.no_pin else (args.label if args.label is not None else path) for path in args.paths]
    for path, label in zip(args.paths, labels):  # all checked first: a typo must not leave half a batch stored
        source_kind(path)
        if label is not None:
            check_label(label)
    results = []
    for path, label in zip(args.paths, labels):
        with _bar(f"put {os.path.basename(path.rstrip('/')) or path}", as_json, partial(_source_size, path)) as bar:
            res = store.put_file(path, pin=label, on_progress=bar)
        item = {"path": path, "digest": res.digest, "size": res.size, "new_bytes": res.new_bytes, "kind": res.kind}
        if label is not None:
            item["label"] = label
        results.append(item)
        if not as_json:
            emit(None, False, f"{res.digest}  {human(res.size):>10}  new {human(res.new_bytes):>10}  {path}")
    if as_json:
        emit(results[0] if len(results) == 1 else results, True)
    return 0


def cmd_get(args, uri, as_json) -> int:
    store = _open(uri)
    with _bar("get", as_json, lambda: store.resolve(args.ref)[1].size) as bar:  # the file's or folder's size
        target = store.get_file(args.ref, args.output, force=args.force, on_progress=bar)
    emit({"ref": args.ref, "path": target}, as_json, f"restored {target}")
    return 0


def cmd_cat(args, uri, as_json) -> int:
    """The whole file is read and checked against its digest before its first byte goes out: a spool
    (in memory up to 64 MiB, then a temp file in the cache folder) holds it meanwhile."""
    import shutil
    import tempfile
    store = _open(uri)
    store._require()
    os.makedirs(store.cache_dir, exist_ok=True)
    with tempfile.SpooledTemporaryFile(max_size=64 << 20, dir=store.cache_dir) as spool:
        store.stream(args.ref, spool.write)
        spool.seek(0)
        out = sys.stdout.buffer
        shutil.copyfileobj(spool, out, 1 << 20)
        out.flush()
    return 0


def cmd_stats(args, uri, as_json) -> int:
    stats = _open(uri).stats()
    text = "\n".join(f"{k:18} {human(v) if k.endswith('bytes') else ('yes' if v else 'no') if isinstance(v, bool) else v}"
                     for k, v in stats.items())
    emit(stats, as_json, text)
    return 0


def cmd_verify(args, uri, as_json) -> int:
    store = _open(uri)
    with _bar("verify", as_json, (lambda: sum(_pack_sizes(store))) if args.read_data else None) as bar:
        report = store.verify(read_data=args.read_data, on_progress=bar if args.read_data else None)
    if as_json:
        emit(report.to_dict(), True)
    else:
        for problem in report.problems:
            sys.stderr.write(f"cas: {problem}\n")
        if report.ok:
            emit(None, False, f"ok: {report.packs} packs, {report.chunks} chunks, {report.manifests} manifests, "
                              f"{report.pins} pins, {report.index_objects} index objects"
                              + (f", {human(report.bytes_read)} read" if args.read_data else "")
                              + ("" if report.conditional_writes else
                                 "; the backend ignores create-only writes (If-None-Match), so they check first"))
    if not report.ok:
        raise IntegrityError(f"verify found {len(report.problems)} problem(s); first: {report.problems[0]}")
    return 0


def cmd_reindex(args, uri, as_json) -> int:
    store = _open(uri)
    with _bar("reindex", as_json, lambda: len(_pack_sizes(store)), unit="packs") as bar:
        counts = store.reindex(on_progress=bar)
    emit(counts, as_json, f"reindexed {counts['packs']} packs: {counts['chunks']} chunks, "
                          f"{counts['manifests']} manifests")
    return 0


def cmd_pin(args, uri, as_json) -> int:
    pin = _open(uri).pin(args.ref, args.label)
    emit({"label": pin.label, "digest": pin.digest}, as_json, f"pinned {pin.digest} as {pin.label}")
    return 0


def cmd_pins(args, uri, as_json) -> int:
    pins = _open(uri).pins()
    rows = [{"label": p.label, "digest": p.digest, "kind": p.kind, "size": p.size, "time": p.time} for p in pins]
    emit(rows, as_json, "\n".join(f"{p.digest}  {p.kind:4}  {human(p.size):>10}  {p.label}" for p in pins))
    return 0


def cmd_unpin(args, uri, as_json) -> int:
    pin = _open(uri).unpin(args.label)
    emit({"label": pin.label, "digest": pin.digest}, as_json, f"unpinned {pin.label} ({pin.digest})")
    return 0


def cmd_runs(args, uri, as_json) -> int:
    from .reach import Reach, usage
    store = _open(uri)
    records = store.records
    reach, roots = Reach(store), None
    out = []
    for name in records.run_names():
        versions = records.versions(name)
        status = "running"
        for event in records.events(name):
            if event.type == "status":
                status = event.data.get("status", status)
            elif event.type == "start":
                status = "running"
        stored = [v for v in versions if v.digest]
        if roots is None:
            roots = store.roots()
        use = usage(reach, roots, [v.uri for v in stored])
        out.append({"name": name, "status": status, "versions": len(versions),
                    "logical_bytes": sum(v.size for v in versions), "stored_bytes": use["total_bytes"]})
    text = "\n".join(f"{r['name']:30} {r['status']:9} {r['versions']:5} version{'' if r['versions'] == 1 else 's'}  {human(r['logical_bytes']):>10} "
                      f"logical  {human(r['stored_bytes']):>10} stored" for r in out)
    emit(out, as_json, text or "no runs")
    return 0


def cmd_log(args, uri, as_json) -> int:
    records = _open(uri).records
    versions = records.versions(records.require_run(args.run), args.name, kind=args.kind)
    out = [{"name": v.name, "step": v.step, "kind": v.kind, "digest": v.digest, "size": v.size,
            "new_bytes": v.new_bytes, "time": v.time, "uri": v.uri, **({"ref_uri": v.ref_uri} if v.ref_uri else {})}
           for v in versions]
    text = "\n".join(f"{v['step']:>6}  {v['name']:30} {v['kind']:12} {(v['digest'] or '-')[:16]:16} "
                      f"{human(v['size']):>10}  new {human(v['new_bytes']):>10}" for v in out)
    emit(out, as_json, text or "no versions")
    return 0


def cmd_du(args, uri, as_json) -> int:
    from .reach import Reach, usage
    store = _open(uri)
    roots = store.roots()
    if args.run is not None:
        focus = [v.uri for v in store.records.versions(store.records.require_run(args.run)) if v.digest]
    else:
        focus = sorted(roots)
    result = {"run": args.run, **usage(Reach(store), roots, focus)}
    lines = [f"{'logical':>10} {'only this':>10} {'shared':>10}  version"]
    lines += [f"{human(r['logical_bytes']):>10} {human(r['exclusive_bytes']):>10} {human(r['shared_bytes']):>10}  "
              f"{r['ref']}" for r in result["versions"]]
    lines.append(f"total {human(result['total_bytes'])} stored: {human(result['exclusive_bytes'])} only one version "
                 f"references, {human(result['shared_bytes'])} shared")
    emit(result, as_json, "\n".join(lines))
    return 0


def cmd_diff(args, uri, as_json) -> int:
    from .reach import Reach, diff
    store = _open(uri)
    a, _ = store.resolve(args.ref_a)
    b, _ = store.resolve(args.ref_b)
    result = diff(Reach(store), a, b)
    emit(result, as_json, f"shared {human(result['shared_bytes'])} ({result['shared_chunks']} chunks); "
                          f"only in {args.ref_a}: {human(result['only_a_bytes'])}; "
                          f"only in {args.ref_b}: {human(result['only_b_bytes'])}")
    return 0


def cmd_forget(args, uri, as_json) -> int:
    import tracker
    dropped = tracker.forget(args.runs, name=args.name, kind=args.kind, keep_last=args.keep_last,
                             keep_every=args.keep_every, all=args.all, dry_run=args.dry_run, store=_open(uri))
    result = {"forgotten": [v.uri for v in dropped], "count": len(dropped), "dry_run": args.dry_run}
    if args.dry_run:
        text = _forget_plan(dropped)
    else:
        text = "\n".join([f"forgot {v.uri}" for v in dropped] + [f"forgot {len(dropped)} versions"])
    emit(result, as_json, text)
    return 0


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def _forget_plan(dropped) -> str:
    """What a dry run would forget, grouped by (run, name): a header per artifact, its versions under it."""
    from tracker.retention import by_series
    series = by_series(dropped)
    lines = []
    for (run, name), group in series.items():
        lines.append(f"runs:/{run}/{name}: would forget {_plural(len(group), 'version')}")
        lines += [f"  {v.uri}" for v in group]
    lines.append(f"would forget {_plural(len(dropped), 'version')} of {_plural(len(series), 'name')}")
    return "\n".join(lines)


def cmd_gc(args, uri, as_json) -> int:
    from .gc import REPACK_THRESHOLD, execute_gc, parse_duration
    grace = parse_duration(args.grace)
    threshold = REPACK_THRESHOLD if args.repack_threshold is None else args.repack_threshold
    if not 0 < threshold <= 1:
        raise InvalidInput(f"--repack-threshold takes a share in (0, 1], not {threshold}")
    with _bar("gc: repacking", as_json) as bar:  # counts the partly dead packs read; silent if none
        report = execute_gc(_open(uri), grace=grace, dry_run=args.dry_run, repack_threshold=threshold,
                            on_progress=bar)
    emit(report, as_json, "\n".join(_gc_lines(report, args.grace)))
    return 0


def _packs(n: int) -> str:
    return f"{n} pack" + ("" if n == 1 else "s")


def _gc_lines(r: dict, grace: str) -> list[str]:
    """What gc did, what it left for later, and what it kept and why, in plain words."""
    would = "would " if r["dry_run"] else ""
    freed = r["freed_bytes"]
    head = (f"{would}free {human(freed)}" if r["dry_run"] else f"freed {human(freed)}" if freed >= 0 else
            f"stored {human(-freed)} more for now (live data copied out of partly dead packs)")
    lines = [f"{head}: {would}delete {_packs(r['deleted_packs'])}" if r["dry_run"] else
             f"{head}: deleted {_packs(r['deleted_packs'])}"]
    if r["repacked_packs"]:
        lines[0] += f", repack {_packs(r['repacked_packs'])}" if r["dry_run"] else \
            f", repacked {_packs(r['repacked_packs'])}"
    if r["condemned_packs"] and not (grace in ("0", "0s") and not r["waiting_packs"]):
        lines.append(f"{would}condemn {_packs(r['condemned_packs'])}: deleted by a gc run at least {grace} later "
                     f"(--grace)" if r["dry_run"] else
                     f"condemned {_packs(r['condemned_packs'])}: deleted by a gc run at least {grace} from now (--grace)")
    if r["waiting_packs"]:
        lines.append(f"{_packs(r['waiting_packs'])} condemned earlier still wait for the grace period or for writers "
                     f"that were live when they were condemned")
    if r["partly_dead_packs"]:
        low, high = f"{r['min_dead_share']:.0%}", f"{r['max_dead_share']:.0%}"
        lines.append(f"kept {_packs(r['partly_dead_packs'])} {low if low == high else low + '-' + high} dead as they "
                     f"are (below --repack-threshold {r['repack_threshold']:g}): {human(r['reclaimable_bytes'])} "
                     f"reclaimable with --repack-threshold {r['reclaim_threshold']:g}")
    if r["removed_temp_files"]:
        lines.append(f"{would}remove {r['removed_temp_files']} temp files left by killed writers "
                     f"({human(r['removed_temp_bytes'])})" if r["dry_run"] else
                     f"removed {r['removed_temp_files']} temp files left by killed writers "
                     f"({human(r['removed_temp_bytes'])})")
    return lines
