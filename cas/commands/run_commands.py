"""The run commands: runs, log, alias, lineage, du, diff, forget."""

from __future__ import annotations

from ..output import emit
from ..progress import human
from .common import open_store


def cmd_runs(args, uri, as_json) -> int:
    from ..reach import Reach, stored_together
    store = open_store(uri)
    records = store.records
    names = records.run_names()
    reach = Reach(store)
    if names:  # every root walked once, named, so damage is told by the roots that reach it
        reach.walk.reach(store.roots())
    out = []
    for name in names:  # every run listed, damaged or not
        versions = records.versions(name)
        status = records.run_state(name).status
        stored = stored_together(reach, (bytes.fromhex(v.digest) for v in versions if v.digest))
        out.append({"name": name, "status": status, "versions": len(versions),
                    "logical_bytes": sum(v.size for v in versions), "stored_bytes": stored})
    if reach.damaged:
        store.on_warning(f"{len(reach.damaged)} damaged objects: stored sizes may be low; "
                         f"`cas verify` names them")
    text = "\n".join(f"{r['name']:30} {r['status']:9} {r['versions']:5} version{'' if r['versions'] == 1 else 's'}  "
                      f"{human(r['logical_bytes']):>10} logical  {human(r['stored_bytes']):>10} stored" for r in out)
    emit(out, as_json, text or "no runs")
    return 0


def cmd_log(args, uri, as_json) -> int:
    import tracker
    from tracker.query import parse_where
    store = open_store(uri)
    where = parse_where(args.where)
    versions = tracker.versions(args.run, name=args.name, kind=args.kind, where=where, store=store)
    aliases = store.records_of(args.run).aliases_by_version(args.run)
    out = [{"name": v.name, "step": v.step, "kind": v.kind, "digest": v.digest, "size": v.size,
            "new_bytes": v.new_bytes, "time": v.time, "uri": v.uri, "metadata": v.metadata,
            "aliases": aliases.get((v.name, v.step), []), **({"ref_uri": v.ref_uri} if v.ref_uri else {})}
           for v in versions]
    text = "\n".join(f"{v['step']:>6}  {v['name']:30} {v['kind']:12} {(v['digest'] or '-')[:16]:16} "
                      f"{human(v['size']):>10}  new {human(v['new_bytes']):>10}"
                      + (f"  @{' @'.join(v['aliases'])}" if v["aliases"] else "") for v in out)
    emit(out, as_json, text or "no versions")
    return 0


def cmd_alias(args, uri, as_json) -> int:
    import tracker
    version = tracker.alias(args.ref, args.alias, delete=args.delete, store=open_store(uri))
    target = f"runs:/{version.run}/{version.name}@{args.alias}"
    result = {"alias": args.alias, "run": version.run, "name": version.name,
              "step": None if args.delete else version.step, "uri": version.uri, "deleted": args.delete}
    emit(result, as_json, f"removed {target}" if args.delete else f"{target} -> {version.uri}")
    return 0


def cmd_lineage(args, uri, as_json) -> int:
    import tracker
    result = tracker.lineage(args.ref, store=open_store(uri))
    lines = []
    if result.get("produced_by"):
        p = result["produced_by"]
        lines.append(f"produced by run {p['run']} at step {p['step']} ({p['uri']})")
    lines += [f"used by run {u['run']} ({u['ref']})" for u in result["used_by"]]
    lines += [f"input: {i['ref']}" for i in result["inputs"]]
    lines += [f"output: {o['uri']}" for o in result["outputs"]]
    emit(result, as_json, "\n".join(lines) or "no lineage recorded")
    return 0


def cmd_du(args, uri, as_json) -> int:
    from ..reach import Reach, usage
    store = open_store(uri)
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
    from ..pack import TREE_MANIFEST
    from ..reach import Reach, diff
    store = open_store(uri)
    a, la = store.resolve(args.ref_a)
    b, lb = store.resolve(args.ref_b)
    result = diff(Reach(store), a, b)
    lines = [f"shared {human(result['shared_bytes'])} ({result['shared_chunks']} chunks); "
             f"only in {args.ref_a}: {human(result['only_a_bytes'])}; "
             f"only in {args.ref_b}: {human(result['only_b_bytes'])}"]
    result["tensors"] = None  # not two checkpoints
    if la.kind != TREE_MANIFEST and lb.kind != TREE_MANIFEST:
        from ..tensorfiles.stored import open_checkpoint, tensor_diff
        first, second = open_checkpoint(store, a.hex()), open_checkpoint(store, b.hex())
        if first.layout is not None and second.layout is not None:
            result["tensors"] = tensor_diff(first, second)
            lines += _tensor_lines(result["tensors"], len(second.tensors))
    emit(result, as_json, "\n".join(lines))
    return 0


def _tensor_lines(changes: list[dict], count: int) -> list[str]:
    """The tensors that changed, with the share of their bytes that did."""
    lines = [f"{len(changes)} of {count} tensors differ" if changes else f"all {count} tensors are the same"]
    for c in changes:
        share = f"{c['changed_bytes'] / c['size']:.1%} of {human(c['size'])} changed" if c["status"] == "changed" \
            else human(c["size"])
        lines.append(f"  {c['status']:<8} {c['name']}  {share}")
    return lines


def cmd_forget(args, uri, as_json) -> int:
    import tracker
    dropped = tracker.forget(args.runs, name=args.name, kind=args.kind, keep_last=args.keep_last,
                             keep_every=args.keep_every, keep_within=args.keep_within, all=args.all,
                             dry_run=args.dry_run, store=open_store(uri))
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
