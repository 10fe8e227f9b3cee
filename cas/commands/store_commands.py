"""The content and store commands: init, put, get, cat, stats, verify, reindex."""

from __future__ import annotations

import os
import stat
import sys
from functools import partial
from typing import Any

from ..errors import IntegrityError, InvalidInput
from ..output import emit
from ..progress import human
from .common import open_store, pack_sizes, progress_bar


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


def cmd_init(args, uri, as_json) -> int:
    store = open_store(uri)
    created = not store.exists
    config = store.init()
    emit({"store": store.backend.uri, "store_id": config.store_id, "created": created,
          "format_version": config.format_version}, as_json,
         f"{'created' if created else 'found'} store {config.store_id} at {store.backend.uri}")
    return 0


def cmd_put(args, uri, as_json) -> int:
    if args.label is not None and (len(args.paths) > 1 or args.no_pin):
        raise InvalidInput("--label takes exactly one PATH and cannot be combined with --no-pin")
    if args.parent is not None and (len(args.paths) > 1 or args.no_delta):
        raise InvalidInput("--parent takes exactly one PATH and cannot be combined with --no-delta")
    from ..refs import check_label
    from ..store import source_kind
    store = open_store(uri)
    labels = [None if args.no_pin else (args.label if args.label is not None else path) for path in args.paths]
    # all checked first: a typo must not leave half a batch stored
    for path, label in zip(args.paths, labels, strict=True):
        source_kind(path)
        if label is not None:
            check_label(label)
    results = []
    for path, label in zip(args.paths, labels, strict=True):
        name = os.path.basename(path.rstrip('/')) or path
        with progress_bar(f"put {name}", as_json, partial(_source_size, path)) as bar:
            res = store.put_file(path, pin=label, parent=_parent(store, args, label), on_progress=bar)
        item = {"path": path, "digest": res.digest, "size": res.size, "new_bytes": res.new_bytes, "kind": res.kind}
        if label is not None:
            item["label"] = label
        results.append(item)
        if not as_json:
            emit(None, False, f"{res.digest}  {human(res.size):>10}  new {human(res.new_bytes):>10}  {path}")
    if as_json:
        emit(results[0] if len(results) == 1 else results, True)
    return 0


def _parent(store, args, label: str | None) -> str | None:
    """The version a put's deltas are against: --parent, else what the label pins now (if anything)."""
    if args.no_delta:
        return None
    if args.parent is not None:
        store.resolve(args.parent)  # one line now if it names nothing
        return args.parent
    if label is None or not store.exists or not store.require().tensors:
        return None
    return label if any(p.label == label for p in store.pins()) else None


def cmd_get(args, uri, as_json) -> int:
    store = open_store(uri)
    with progress_bar("get", as_json, lambda: store.resolve(args.ref)[1].size) as bar:  # the file's or folder's size
        target = store.get_file(args.ref, args.output, force=args.force, on_progress=bar)
    emit({"ref": args.ref, "path": target}, as_json, f"restored {target}")
    return 0


def cmd_cat(args, uri, as_json) -> int:
    """The whole file is read and checked against its digest before its first byte goes out: a spool
    (in memory up to 64 MiB, then a temp file in the cache folder) holds it meanwhile."""
    import shutil
    import tempfile
    store = open_store(uri)
    store.require()
    os.makedirs(store.cache_dir, exist_ok=True)
    with tempfile.SpooledTemporaryFile(max_size=64 << 20, dir=store.cache_dir) as spool:
        if args.tensor is not None:
            from ..tensorfiles.stored import open_checkpoint
            spool.write(open_checkpoint(store, args.ref).tensor_bytes(args.tensor))  # verified chunk by chunk
        else:
            store.stream(args.ref, spool.write)
        spool.seek(0)
        out = sys.stdout.buffer
        shutil.copyfileobj(spool, out, 1 << 20)
        out.flush()
    return 0


def cmd_show(args, uri, as_json) -> int:
    from ..tensorfiles.stored import open_checkpoint
    ckpt = open_checkpoint(open_store(uri), args.ref)
    result = {"format": ckpt.layout.format if ckpt.layout else None, "size": ckpt.reader.size,
              "tensors": [t.to_dict() for t in ckpt.tensors]}
    if ckpt.layout is None:
        text = f"{args.ref}: not a checkpoint cas reads tensors of (stored as bytes, {human(ckpt.reader.size)})"
    else:
        width = max((len(t.name) for t in ckpt.tensors), default=4)
        rows = [f"{t.name:<{width}}  {t.dtype:<5} {str(list(t.shape)):<18} {human(t.size):>10}" for t in ckpt.tensors]
        total = sum(t.size for t in ckpt.tensors)
        text = "\n".join([f"{args.ref}: {result['format']}, {len(rows)} tensors, {human(total)} of "
                          f"{human(ckpt.reader.size)}", *rows])
    emit(result, as_json, text)
    return 0


def cmd_stats(args, uri, as_json) -> int:
    stats = open_store(uri).stats()
    shown = {k: v for k, v in stats.items() if not (k.startswith("delta_") and stats["delta_chunks"] == 0)}
    text = "\n".join(f"{k:18} {_stat_text(k, v)}" for k, v in shown.items())
    emit(stats, as_json, text)
    return 0


def _stat_text(key: str, value) -> str:
    if key.endswith("bytes"):
        return human(value)
    return ("yes" if value else "no") if isinstance(value, bool) else str(value)


def cmd_verify(args, uri, as_json) -> int:
    store = open_store(uri)
    with progress_bar("verify", as_json, (lambda: sum(pack_sizes(store))) if args.read_data else None) as bar:
        report = store.verify(read_data=args.read_data, on_progress=bar if args.read_data else None)
    refs = _check_refs(store) if args.refs else None
    for r in refs or []:
        if r["status"] in ("changed", "vanished"):
            report.problems.append(f"reference {r['uri']} ({r['ref_uri']}) {r['status']} since it was logged")
    if as_json:
        emit({**report.to_dict(), "refs": refs}, True)
    else:
        for problem in report.problems:
            sys.stderr.write(f"cas: {problem}\n")
        for r in refs or []:
            if r["status"] in ("unreachable", "unrecorded"):
                sys.stderr.write(f"cas: warning: reference {r['uri']} ({r['ref_uri']}) is {r['status']}\n")
        if report.ok:
            emit(None, False, f"ok: {report.packs} packs, {report.chunks} chunks, {report.manifests} manifests, "
                              f"{report.pins} pins, {report.index_objects} index objects"
                              + (f", {human(report.bytes_read)} read" if args.read_data else "")
                              + ("" if report.conditional_writes else
                                 "; the backend ignores create-only writes (If-None-Match), so they check first"))
    if not report.ok:
        raise IntegrityError(f"verify found {len(report.problems)} problem(s); first: {report.problems[0]}")
    return 0


def _check_refs(store) -> list[dict]:
    """Each live reference (log_artifact_ref) looked at again: unchanged, changed, vanished, unreachable
    or unrecorded (tracker/references.py)."""
    from tracker.references import check
    out = []
    for v in store.records.all_versions() if store.exists else []:
        if v.ref_uri is not None:
            status, now = check(v.ref_state, v.ref_uri)
            out.append({"uri": v.uri, "ref_uri": v.ref_uri, "status": status, "recorded": v.ref_state, "now": now})
    return out


def cmd_reindex(args, uri, as_json) -> int:
    store = open_store(uri)
    with progress_bar("reindex", as_json, lambda: len(pack_sizes(store)), unit="packs") as bar:
        counts = store.reindex(on_progress=bar)
    emit(counts, as_json, f"reindexed {counts['packs']} packs: {counts['chunks']} chunks, "
                          f"{counts['manifests']} manifests")
    return 0


def cmd_ls(args, uri, as_json) -> int:
    """A run name lists the run's artifact names; anything else is a stored folder (or file) to list."""
    from ..manifest import TreeManifest
    store = open_store(uri)
    ref = args.ref
    if "/" not in ref and ":" not in ref and store.exists and store.records.exists(ref):
        names: dict[str, dict] = {}
        for v in store.records.versions(ref):
            names[v.name] = {"name": v.name, "kind": v.kind, "versions": names.get(v.name, {}).get("versions", 0) + 1,
                             "latest_step": v.step, "size": v.size, "type": v.object_type}
        out: dict = {"ref": ref, "run": ref, "names": list(names.values()), "digest": None, "entries": []}
        text = "\n".join(f"{n['name']:40} {n['type']:5} {n['versions']:5} version{'' if n['versions'] == 1 else 's'}"
                         f"  latest @{n['latest_step']}  {human(n['size']):>10}" for n in out["names"])
        emit(out, as_json, text or "no artifacts")
        return 0
    digest, _, manifest = store.lookup(ref)
    if isinstance(manifest, TreeManifest):
        entries: list[dict[str, Any]] = [
            {"path": e.path, "kind": e.kind, "size": e.size, "digest": e.digest.hex() or None,
             **({"target": e.target} if e.target else {})} for e in manifest.entries]
    else:
        entries = [{"path": ref, "kind": "file", "size": manifest.size, "digest": digest.hex()}]
    text = "\n".join(f"{e['kind']:4} {human(e['size']) if e['kind'] == 'file' else '-':>10}  "
                     f"{(e['digest'] or '-')[:16]:16}  {e['path']}" for e in entries)
    emit({"ref": ref, "run": None, "names": [], "digest": digest.hex(), "entries": entries}, as_json,
         text or "an empty folder")
    return 0


def cmd_copy(args, uri, as_json) -> int:
    from ..copy import copy
    source, target = open_store(uri), open_store(args.to)
    source.require()
    with progress_bar("copy", as_json) as bar:
        report = copy(source, target, args.sources, on_progress=bar)
    result = report.to_dict()
    emit(result, as_json, f"sent {human(report.sent_bytes)} in {report.objects} blobs, "
                          f"{human(report.skipped_bytes)} already there; {report.records} records"
                          + (f"; pinned {', '.join(report.pins)}" if report.pins else ""))
    return 0


def cmd_cache(args, uri, as_json) -> int:
    store = open_store(uri)
    store.require()
    cache = store.chunk_cache()
    if cache is None:
        result = {"folder": None, "limit_bytes": 0, "files": 0, "bytes": 0, "removed_bytes": 0}
        emit(result, as_json, "no chunk cache: the store is local, or CAS_CHUNK_CACHE_SIZE is 0")
        return 0
    removed = cache.clear() if args.action == "clear" else 0
    stats = cache.stats()
    text = f"{stats['files']} files, {human(stats['bytes'])} of {human(stats['limit_bytes'])} in {stats['folder']}"
    emit({**stats, "removed_bytes": removed}, as_json,
         (f"removed {human(removed)}; " if args.action == "clear" else "") + text)
    return 0


def cmd_completion(args, uri, as_json) -> int:
    from ..completion import script, shell_from_env
    sys.stdout.write(script(args.shell or shell_from_env()))
    return 0


def cmd_ui(args, uri, as_json) -> int:
    from ..ui.server import serve
    store = open_store(uri)

    def ready(server) -> None:
        host, port = server.server_address[:2]
        url = f"http://{host if ':' not in host else f'[{host}]'}:{port}/"
        sys.stderr.write(f"cas ui: {store.location()} at {url} (Ctrl-C to stop)\n")
        sys.stderr.flush()
        if args.open:
            import webbrowser
            webbrowser.open(url)
    try:
        serve(store, args.host, args.port, ready=ready)
    except OSError as exc:
        raise InvalidInput(f"cannot listen on {args.host}:{args.port}: {exc.strerror or exc}",
                           subject="--port") from None
    except KeyboardInterrupt:
        pass
    return 0
