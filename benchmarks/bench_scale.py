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
run, so growth is read in the same run. Sizes up to --repeat-up-to (3 M) run the whole sequence
--repeat (3) times, each on a fresh copy of the store with a new cache, and report each command's
median time (and the largest peak RSS): the smallest size is the denominator of every ratio, and a
single run of a 17 s command varied by a quarter on this shared machine. The largest size runs once.

With `--records VERSIONS,RUNS` it runs the records scenario instead (records_scenario): run records
written loose, as a cas without record objects wrote them; machine A's first `cas runs` (one GET a
record); a run started on A (tracker.init: the first writer, which compacts them into record objects);
then a new machine B's `cas runs` (the measured one), B's warm `cas runs` and `cas log RUN`, and a new
machine C's `cas log RUN`. GETs are counted by running each command through counted.py.

    python benchmarks/bench_scale.py [--sizes 1,3,10] [--repeat 3] [--out benchmarks/results/scale.json] [--keep DIR]
    python benchmarks/bench_scale.py --records 100000,1000

Results are merged into the output file: each mode rewrites its own keys only.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from bench_gc import child_env  # noqa: E402
from measure import cas_command, run, tree_bytes  # noqa: E402
from synth_store import make_records, make_store  # noqa: E402 (it puts this checkout's cas on the path)

from cas.store import Store  # noqa: E402

COMMANDS = (  # (key, arguments after `cas`), in the order they run
    ("stats_cold", ["stats", "--json"]),
    ("stats_warm", ["stats", "--json"]),
    ("reindex", ["reindex", "--json"]),
    ("verify", ["verify", "--json"]),
    ("gc_dry_run", ["gc", "--dry-run", "--grace", "0", "--json"]),
    ("gc", ["gc", "--grace", "0", "--json"]),
)


def one_size(millions: float, work: Path, cas: list[str], commands=COMMANDS, repeat: int = 1) -> dict:
    """The commands on a store of `millions` chunks; with repeat > 1, each sequence runs on a fresh copy
    of the store with a new cache, and each command's median time and largest peak RSS are reported."""
    made_store = work / "made"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    made = make_store(str(made_store), int(millions * 1e6), garbage=0.5, cache_dir=str(work / "writer-cache"))
    shutil.rmtree(work / "writer-cache", ignore_errors=True)
    out: dict = {"millions": millions, "made": made, "store_bytes": tree_bytes(made_store), "repeat": repeat}
    runs: dict[str, list] = {key: [] for key, _ in commands}
    for r in range(repeat):
        store, cache = work / "store", work / "cache"
        shutil.rmtree(store, ignore_errors=True)
        shutil.rmtree(cache, ignore_errors=True)
        shutil.copytree(made_store, store)  # gc changes the store: every sequence starts from the same one
        env = child_env(cache)
        for key, args in commands:
            proc = run([*cas, *args, "--store", str(store)], env)
            runs[key].append((proc.seconds, proc.rss_mb))
            if key == "stats_cold" and r == 0:
                out["cache_bytes"] = tree_bytes(cache)
                out["cache_bytes_per_chunk"] = round(out["cache_bytes"] / made["chunks"], 1)
            print(f"  {millions:g} M {key}: {proc.seconds:.2f} s, {proc.rss_mb:.1f} MB", file=sys.stderr)
    for key, got in runs.items():
        out[key] = {"seconds": round(statistics.median(s for s, _ in got), 2),
                    "peak_rss_mb": round(max(m for _, m in got), 1)}
        if repeat > 1:
            out[key]["all_seconds"] = [round(s, 2) for s, _ in got]
    return out


COUNTED = [sys.executable, str(HERE / "counted.py")]
LOG_RUN = "run-00000"


def counted(args: list[str], cache: Path, work: Path, name: str) -> dict:
    """One whole process through counted.py: seconds, peak RSS and its GETs by top-level folder."""
    gets = work / f"gets-{name}.json"
    proc = run([*COUNTED, *args], child_env(cache, {"CAS_BENCH_GETS": str(gets)}))
    out = {"seconds": round(proc.seconds, 2), "peak_rss_mb": round(proc.rss_mb, 1),
           "gets": json.loads(gets.read_text()), "stdout": proc.stdout}
    print(f"  {name}: {out['seconds']} s, {out['peak_rss_mb']} MB, GETs {out['gets']}", file=sys.stderr)
    return out


def records_scenario(versions: int, runs: int, work: Path) -> dict:
    """See the module's docstring: loose records, the first writer compacts, a new machine reads few objects."""
    store = work / "store"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    made_store = make_store(str(store), 20_000, cache_dir=str(work / "writer-cache"))
    digests = sorted({(p.digest, p.size) for p in Store.open(str(store), cache_dir=str(work / "writer-cache")).pins()})
    made = make_records(str(store), versions, runs, digests=digests[:8], cache_dir=str(work / "writer-cache"))
    shutil.rmtree(work / "writer-cache", ignore_errors=True)
    out: dict = {"versions": versions, "runs": runs, "made": made, "files_named": len(digests[:8])}
    at = ["--store", str(store)]
    runs_json = ["runs", "--json", *at]
    out["a_runs_loose"] = counted(runs_json, work / "cache-a", work, "A cas runs, loose records only")
    start = f"import tracker; tracker.init('compactor', store={str(store)!r}).end()"
    out["a_first_writer"] = counted(["-c", start], work / "cache-a", work, "A tracker.init (compacts)")
    objects = sorted(p.stat().st_size for p in (store / "records").iterdir())
    out["record_objects"] = {"count": len(objects), "bytes": objects}
    out["b_runs_new_machine"] = counted(runs_json, work / "cache-b", work, "B cas runs, new machine")
    out["b_runs_warm"] = counted(runs_json, work / "cache-b", work, "B cas runs, warm")
    log = ["log", LOG_RUN, "--json", *at]
    warm = [counted(log, work / "cache-b", work, f"B cas log, warm {i}") for i in range(3)]
    out["b_log_warm"] = min(warm, key=lambda r: r["seconds"]) | {"all_seconds": [r["seconds"] for r in warm]}
    out["c_log_new_machine"] = counted(log, work / "cache-c", work, "C cas log, new machine")
    before, after = json.loads(out["a_runs_loose"]["stdout"]), json.loads(out["b_runs_new_machine"]["stdout"])
    out["same_runs"] = before == [r for r in after if r["name"] != "compactor"]
    out["store_made"] = made_store
    for value in out.values():
        if isinstance(value, dict):
            value.pop("stdout", None)
    return out


def save(path: str, updates: dict) -> dict:
    """Merge `updates` into the JSON file at path (its other keys are kept); returns the whole."""
    target = Path(path)
    whole = json.loads(target.read_text()) if target.exists() else {}
    whole.update(updates)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(whole, indent=1) + "\n")
    return whole


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="1,3,10", help="millions of chunks, comma-separated")
    ap.add_argument("--out", default=str(HERE / "results" / "scale.json"))
    ap.add_argument("--keep", help="work folder (kept); default a temporary one, removed")
    ap.add_argument("--cas", help="the cas command line (default: beside this python)")
    ap.add_argument("--commands", help="comma-separated keys of the commands to run (default: all): "
                                       + ",".join(k for k, _ in COMMANDS))
    ap.add_argument("--repeat", type=int, default=3,
                    help="runs of each command at sizes up to --repeat-up-to millions, median reported (default 3)")
    ap.add_argument("--repeat-up-to", type=float, default=3.0,
                    help="largest size, in millions of chunks, that is run --repeat times (default 3; larger: once)")
    ap.add_argument("--records", metavar="VERSIONS,RUNS", help="run the records scenario instead, e.g. 100000,1000")
    args = ap.parse_args()
    if args.records:
        versions, runs = (int(x) for x in args.records.split(","))
        base = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="cas-scale-records-"))
        started = time.time()
        try:
            result = records_scenario(versions, runs, base / "records")
        finally:
            if not args.keep:
                shutil.rmtree(base, ignore_errors=True)
        result["wall_seconds"] = round(time.time() - started, 1)
        result["machine"] = {"cpus": os.cpu_count(), "python": platform.python_version()}
        save(args.out, {"records": result})
        print(json.dumps(result, indent=1))
        return
    cas = cas_command(args.cas)
    commands = [c for c in COMMANDS if not args.commands or c[0] in args.commands.split(",")]
    base = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="cas-scale-"))
    started = time.time()
    sizes = []
    try:
        for m in (float(s) for s in args.sizes.split(",")):
            print(f"bench_scale: {m:g} M chunks", file=sys.stderr)
            repeat = args.repeat if m <= args.repeat_up_to else 1
            sizes.append(one_size(m, base / f"{m:g}M", cas, commands, repeat))
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
    save(args.out, result)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
