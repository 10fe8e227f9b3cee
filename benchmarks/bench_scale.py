"""Scale: time and peak RSS of the store-wide commands on large synthetic stores (synth_store.py).

For each size (millions of 64-byte chunks, 1,000 per file, one pin per file, half the files left
unpinned so gc has work), a store is written directly in the store format and each command runs as a
whole process with its own peak RSS (measure.run), in this order:

- `cas stats` cold (an empty cache: a new machine's first command, which syncs the index objects),
- `cas stats` warm (same cache),
- `cas reindex` (rebuilds the cache from every pack's footer),
- `cas verify` (structure; no pack data read),
- `cas gc --dry-run --grace 0`, then `cas gc --grace 0`.

Also reported: the cache's bytes on disk per chunk after the cold stats. Times are wall seconds of
whole processes (interpreter start included); the ratio columns compare each size with the first one
run, so growth is read in the same run.

    python benchmarks/bench_scale.py [--sizes 1,3,10] [--out benchmarks/results/scale.json] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from bench_gc import child_env  # noqa: E402
from measure import cas_command, run, tree_bytes  # noqa: E402
from synth_store import make_store  # noqa: E402

COMMANDS = (  # (key, arguments after `cas`), in the order they run
    ("stats_cold", ["stats", "--json"]),
    ("stats_warm", ["stats", "--json"]),
    ("reindex", ["reindex", "--json"]),
    ("verify", ["verify", "--json"]),
    ("gc_dry_run", ["gc", "--dry-run", "--grace", "0", "--json"]),
    ("gc", ["gc", "--grace", "0", "--json"]),
)


def one_size(millions: float, work: Path, cas: list[str], commands=COMMANDS) -> dict:
    store, cache = work / "store", work / "cache"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    made = make_store(str(store), int(millions * 1e6), garbage=0.5, cache_dir=str(work / "writer-cache"))
    shutil.rmtree(work / "writer-cache", ignore_errors=True)
    out: dict = {"millions": millions, "made": made, "store_bytes": tree_bytes(store)}
    env = child_env(cache)
    for key, args in commands:
        proc = run([*cas, *args, "--store", str(store)], env)
        out[key] = {"seconds": round(proc.seconds, 2), "peak_rss_mb": round(proc.rss_mb, 1)}
        if key == "stats_cold":
            out["cache_bytes"] = tree_bytes(cache)
            out["cache_bytes_per_chunk"] = round(out["cache_bytes"] / made["chunks"], 1)
        print(f"  {millions:g} M {key}: {out[key]['seconds']} s, {out[key]['peak_rss_mb']} MB", file=sys.stderr)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="1,3,10", help="millions of chunks, comma-separated")
    ap.add_argument("--out", default=str(HERE / "results" / "scale.json"))
    ap.add_argument("--keep", help="work folder (kept); default a temporary one, removed")
    ap.add_argument("--cas", help="the cas command line (default: beside this python)")
    ap.add_argument("--commands", help="comma-separated keys of the commands to run (default: all): "
                                       + ",".join(k for k, _ in COMMANDS))
    args = ap.parse_args()
    cas = cas_command(args.cas)
    commands = [c for c in COMMANDS if not args.commands or c[0] in args.commands.split(",")]
    base = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="cas-scale-"))
    started = time.time()
    sizes = []
    try:
        for m in (float(s) for s in args.sizes.split(",")):
            print(f"bench_scale: {m:g} M chunks", file=sys.stderr)
            sizes.append(one_size(m, base / f"{m:g}M", cas, commands))
            shutil.rmtree(base / f"{m:g}M", ignore_errors=True)
    finally:
        if not args.keep:
            shutil.rmtree(base, ignore_errors=True)
    first = sizes[0]
    for s in sizes:
        s["vs_first"] = {k: {"seconds": round(s[k]["seconds"] / max(first[k]["seconds"], 1e-9), 2),
                             "peak_rss": round(s[k]["peak_rss_mb"] / max(first[k]["peak_rss_mb"], 1e-9), 2)}
                         for k, _ in commands}
    result = {"machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
              "wall_seconds": round(time.time() - started, 1), "sizes": sizes}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
