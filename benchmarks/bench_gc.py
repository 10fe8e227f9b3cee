"""gc at scale: a store of ~100,000 chunks and ~1,000 tracker versions; cas stats, verify, gc --dry-run, forget, gc.

The store is built through the tracker API (in a child process, so that S3 credentials reach only
children) with a small chunker (1/2/8 KiB), from deterministic data: RUNS runs of STEPS versions of
one file each, every version a copy of its predecessor with a few small regions rewritten, so most
chunks are shared. Then each command runs as a `cas` CLI subprocess (wall time and own peak RSS,
as in bench_peers): stats (the metadata-listing baseline), verify, gc --dry-run --grace 0 (warm and
cold cache), forget of the older half of every run, gc --dry-run and gc --grace 0, gc again (nothing
to free), stats and verify again, and `cas get` of a few kept versions compared byte for byte.
Local store and S3 (SeaweedFS on 127.0.0.1, started and stopped here).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from measure import Proc as Result, cas_command, run, tree_bytes  # noqa: E402

MB = 1e6
KiB = 1024
CHUNKER = (1 * KiB, 2 * KiB, 8 * KiB)  # min, avg, max
NEW_SHARE = 0.10  # share of a version's chunks that are new (the rest it shares with its predecessor)
EDIT_BYTES = 512  # each edit rewrites this many bytes in place
RUNS = 10
ARTIFACT = "model.bin"
QUICK_FACTOR = 10
BACKENDS = ("local", "s3")
BUCKET = "cas-bench-gc"


# ---- the data: deterministic versions that share most chunks with their predecessor --------------

@dataclass
class Spec:
    seed: int
    runs: int
    steps: int
    file_bytes: int
    edits: int  # edits per version after the first
    edit_bytes: int
    chunker: tuple[int, int, int]
    avg_chunk: float  # measured on random data with this chunker
    new_per_edit: float  # measured new chunks per edit
    predicted_chunks: int

    @property
    def versions(self) -> int:
        return self.runs * self.steps

    def run_name(self, r: int) -> str:
        return f"gc-bench-{r:02d}"


def versions_of(spec: Spec, r: int, upto: int | None = None):
    """(step, buffer) of run r, steps 1..upto; the buffer is rewritten in place from one step to the next."""
    rng = random.Random(spec.seed * 1_000_003 + r)
    buf = bytearray(rng.randbytes(spec.file_bytes))
    for step in range(1, (upto or spec.steps) + 1):
        if step > 1:
            for _ in range(spec.edits):
                pos = rng.randrange(spec.file_bytes - spec.edit_bytes)
                buf[pos:pos + spec.edit_bytes] = rng.randbytes(spec.edit_bytes)
        yield step, buf


def version_bytes(spec: Spec, r: int, step: int) -> bytes:
    for s, buf in versions_of(spec, r, step):
        if s == step:
            return bytes(buf)
    raise ValueError(step)


def _chunk_ids(chunker, data) -> set:
    import blake3
    view, ids, at = memoryview(data), set(), 0
    for n in chunker.cut(data):
        ids.add(blake3.blake3(view[at:at + n]).digest())
        at += n
    return ids


def make_spec(chunks: int, versions: int, seed: int) -> Spec:
    """Sizes that give about `chunks` unique chunks over `versions` versions, calibrated with cas's chunker."""
    from cas.chunker import Chunker
    from cas.config import ChunkerParams
    chunker = Chunker(ChunkerParams(*CHUNKER))
    runs = max(1, min(RUNS, versions))
    steps = max(1, versions // runs)
    rng = random.Random(seed ^ 0x5EED)
    sample = rng.randbytes(4 << 20)
    avg = len(sample) / len(chunker.cut(sample))
    per_file = chunks / runs / (1 + NEW_SHARE * (steps - 1))  # chunks of one version
    file_bytes = max(16 * KiB, int(per_file * avg))
    new_per_version = NEW_SHARE * per_file
    new_per_edit = 2.0
    for _ in range(2):  # measure new chunks per edit at the edit density we are going to use
        edits = max(1, round(new_per_version / new_per_edit))
        base = bytearray(rng.randbytes(file_bytes))
        before = _chunk_ids(chunker, base)
        for _ in range(edits):
            pos = rng.randrange(file_bytes - EDIT_BYTES)
            base[pos:pos + EDIT_BYTES] = rng.randbytes(EDIT_BYTES)
        new_per_edit = max(0.25, len(_chunk_ids(chunker, base) - before) / edits)
    edits = max(1, round(new_per_version / new_per_edit)) if steps > 1 else 0
    predicted = round(runs * (file_bytes / avg + (steps - 1) * edits * new_per_edit))
    return Spec(seed, runs, steps, file_bytes, edits, EDIT_BYTES, CHUNKER, round(avg, 1), round(new_per_edit, 3),
                predicted)


# ---- building the store (child process: `bench_gc.py --build URI --spec JSON`) -------------------

def build(uri: str, spec: Spec, scratch: Path) -> dict:
    """Create the store with the small chunker (config written create-only first), then log every version."""
    import tracker
    from cas import layout
    from cas.backends import open_backend
    from cas.config import ChunkerParams, StoreConfig
    from cas.store import Store
    backend = open_backend(uri)
    backend.create_location()
    config = StoreConfig.new(chunker=ChunkerParams(*spec.chunker),
                             conditional_writes=backend.probe_conditional_writes())
    if not backend.put(layout.CONFIG, config.to_bytes(), create_only=True):
        raise SystemExit(f"a store exists already at {uri}")
    backend.close()
    store = Store.open(uri)
    scratch.mkdir(parents=True, exist_ok=True)
    path = scratch / ARTIFACT
    out, start = [], time.perf_counter()
    for r in range(spec.runs):
        with tracker.init(spec.run_name(r), store=store, config={"seed": spec.seed, "run": r}) as run:
            for step, buf in versions_of(spec, r):
                path.write_bytes(buf)
                v = run.log_artifact(path, name=ARTIFACT, kind="checkpoint", step=step)
                out.append({"run": r, "step": step, "uri": v.uri, "digest": v.digest, "size": v.size,
                            "new_bytes": v.new_bytes})
        print(f"  built run {r + 1}/{spec.runs} ({len(out)} versions, {time.perf_counter() - start:.0f} s)",
              file=sys.stderr, flush=True)
    store.close()
    path.unlink()
    return {"store_id": config.store_id, "versions": out, "events": 2 * spec.runs}


# ---- running children ------------------------------------------------------------------------------

def child_env(cache: Path, extra: dict | None = None) -> dict:
    """This process's environment without store or AWS settings, plus a cache dir and the given extras."""
    env = {k: v for k, v in os.environ.items() if k != "CAS_STORE" and not k.startswith("AWS_")}
    env["CAS_CACHE_DIR"] = str(cache)
    env.update(extra or {})
    return env


# ---- one backend -----------------------------------------------------------------------------------

STEPS = (  # (key, label) of the timed commands, in the order they run
    ("build", "build: tracker.log_artifact of every version (one process)"),
    ("stats", "cas stats (baseline: metadata listing)"),
    ("verify", "cas verify (metadata only)"),
    ("gc_dry", "cas gc --dry-run --grace 0"),
    ("gc_dry_cold", "cas gc --dry-run --grace 0, cold cache (new machine)"),
    ("forget", "cas forget --keep-last STEPS/2 (every run)"),
    ("gc_dry_after", "cas gc --dry-run --grace 0, after forget"),
    ("gc", "cas gc --grace 0, after forget"),
    ("gc_again", "cas gc --grace 0, again (nothing to free)"),
    ("stats_after", "cas stats, after gc"),
    ("verify_after", "cas verify, after gc"),
    ("get", "cas get of a kept version (median of the spot checks)"),
)


def bench_backend(name: str, uri: str, spec: Spec, args, work: Path, cas: list[str], extra_env: dict) -> dict:
    root = work / name
    root.mkdir()
    env = child_env(root / "cache", extra_env)
    times: dict[str, dict] = {}

    def timed(key: str, res: Result) -> Result:
        times[key] = {"s": res.seconds, "rss_mib": res.maxrss_kib / 1024}
        return res

    def cas_(*a, check=True, environ=None) -> Result:
        return run([*cas, "--store", uri, "--json", *a], environ or env, check=check)

    print(f"[{name}] building {spec.versions} versions in {spec.runs} runs at {uri}", file=sys.stderr, flush=True)
    built = timed("build", run([sys.executable, __file__, "--build", uri, "--spec", json.dumps(asdict(spec)),
                                "--scratch", root / "scratch"], env, show_stderr=True)).json()
    versions = built["versions"]
    out = {"uri": uri, "store_id": built["store_id"], "versions": len(versions), "events": built["events"],
           "logical_bytes": sum(v["size"] for v in versions), "new_bytes": sum(v["new_bytes"] for v in versions)}

    print(f"[{name}] stats, verify, gc --dry-run", file=sys.stderr, flush=True)
    out["stats_before"] = timed("stats", cas_("stats")).json()
    out["verify_before"] = timed("verify", cas_("verify", check=False)).json()
    out["gc_dry"] = timed("gc_dry", cas_("gc", "--dry-run", "--grace", "0")).json()
    cold = child_env(root / "cache-cold", extra_env)
    out["gc_dry_cold"] = timed("gc_dry_cold", cas_("gc", "--dry-run", "--grace", "0", environ=cold)).json()
    shutil.rmtree(root / "cache-cold")

    keep = spec.steps - spec.steps // 2
    print(f"[{name}] forget all but the last {keep} steps of each run, then gc", file=sys.stderr, flush=True)
    forgot = timed("forget", cas_("forget", *(spec.run_name(r) for r in range(spec.runs)), "--name", ARTIFACT,
                                  "--keep-last", keep)).json()
    expected = {f"runs:/{spec.run_name(r)}/{ARTIFACT}@{s}"
                for r in range(spec.runs) for s in range(1, spec.steps - keep + 1)}
    out["forgotten"] = forgot["count"]
    out["forgotten_as_expected"] = set(forgot["forgotten"]) == expected
    out["gc_dry_after"] = timed("gc_dry_after", cas_("gc", "--dry-run", "--grace", "0")).json()
    out["gc"] = timed("gc", cas_("gc", "--grace", "0")).json()
    out["gc_again"] = timed("gc_again", cas_("gc", "--grace", "0")).json()
    out["stats_after"] = timed("stats_after", cas_("stats")).json()
    out["verify_after"] = timed("verify_after", cas_("verify", check=False)).json()
    out["checks"] = spot_checks(spec, args, uri, root, cas, env, keep, times)
    out["times"] = times
    if name == "local":
        out["folder_bytes_after"] = tree_bytes(Path(uri))
    if not args.keep:
        shutil.rmtree(root / "cache", ignore_errors=True)
    return out


def spot_checks(spec: Spec, args, uri: str, root: Path, cas: list[str], env: dict, keep: int, times: dict) -> dict:
    """`cas get` some kept versions (the oldest kept one of a run leans on repacked data) and compare bytes;
    a forgotten version must no longer resolve."""
    rng = random.Random(spec.seed + 17)
    first_kept = spec.steps - keep + 1
    picks = [(0, first_kept), (spec.runs - 1, spec.steps)]
    while len(picks) < max(2, args.spot):
        picks.append((rng.randrange(spec.runs), rng.randrange(first_kept, spec.steps + 1)))
    got, seconds, rss, bad = 0, [], [], []
    for r, step in picks[:max(2, args.spot)]:
        ref = f"runs:/{spec.run_name(r)}/{ARTIFACT}@{step}"
        dest = root / "restored.bin"
        res = run([*cas, "--store", uri, "get", ref, "-o", dest, "--force"], env, check=False)
        if res.code:
            bad.append(f"{ref}: cas get exited {res.code}: {res.stderr.strip()[-300:]}")
            continue
        seconds.append(res.seconds)
        rss.append(res.maxrss_kib / 1024)
        if dest.read_bytes() != version_bytes(spec, r, step):
            bad.append(f"{ref}: restored bytes differ")
        else:
            got += 1
        dest.unlink()
    gone = None
    if first_kept > 1:
        ref = f"runs:/{spec.run_name(0)}/{ARTIFACT}@1"
        res = run([*cas, "--store", uri, "get", ref, "-o", root / "forgotten.bin"], env, check=False)
        gone = res.code != 0
        if not gone:
            bad.append(f"{ref} was forgotten but still restores")
    if seconds:
        times["get"] = {"s": statistics.median(seconds), "rss_mib": max(rss)}
    return {"spot_checked": len(picks[:max(2, args.spot)]), "restored_identical": got, "forgotten_gone": gone,
            "problems": bad}


def summary(res: dict) -> dict:
    t, before, after, gc = res["times"], res["stats_before"], res["stats_after"], res["gc"]
    ok = (res["verify_before"]["ok"] and res["verify_after"]["ok"] and not res["checks"]["problems"]
          and res["forgotten_as_expected"])
    return {"versions": res["versions"], "live_after": res["versions"] - res["forgotten"],
            "packs": before["packs"], "packs_after": after["packs"], "chunks": before["chunks"],
            "chunks_after": after["chunks"], "stored_bytes": before["stored_bytes"],
            "stored_after": after["stored_bytes"], "stats_s": t["stats"]["s"], "verify_s": t["verify"]["s"],
            "gc_dry_s": t["gc_dry"]["s"], "gc_s": t["gc"]["s"], "gc_again_s": t["gc_again"]["s"],
            "dry_over_stats": t["gc_dry"]["s"] / t["stats"]["s"], "gc_over_stats": t["gc"]["s"] / t["stats"]["s"],
            "again_over_stats": t["gc_again"]["s"] / t["stats"]["s"], "gc_rss": t["gc"]["rss_mib"],
            "deleted": gc["deleted_packs"], "repacked": gc["repacked_packs"], "freed": gc["freed_bytes"],
            "net_freed": before["stored_bytes"] - after["stored_bytes"],
            "correct": "yes" if ok else "NO"}


# ---- reporting -----------------------------------------------------------------------------------

STORE_COLUMNS = (("versions", "versions", 1, "d"), ("live after forget", "live_after", 1, "d"),
                 ("packs", "packs", 1, "d"), ("packs after", "packs_after", 1, "d"),
                 ("chunks", "chunks", 1, "d"), ("chunks after", "chunks_after", 1, "d"),
                 ("stored MB", "stored_bytes", MB, ".1f"), ("stored MB after", "stored_after", MB, ".1f"))
MAIN_COLUMNS = (("stats s", "stats_s", 1, ".2f"), ("verify s", "verify_s", 1, ".2f"),
                ("gc --dry-run s", "gc_dry_s", 1, ".2f"), ("gc s", "gc_s", 1, ".2f"),
                ("gc dry-run / stats", "dry_over_stats", 1, ".2f"), ("gc / stats", "gc_over_stats", 1, ".2f"),
                ("gc again s", "gc_again_s", 1, ".2f"), ("gc again / stats", "again_over_stats", 1, ".2f"),
                ("gc peak RSS MiB", "gc_rss", 1, ".0f"), ("packs deleted", "deleted", 1, "d"),
                ("packs repacked", "repacked", 1, "d"), ("deleted packs MB", "freed", MB, ".1f"),
                ("net freed MB", "net_freed", MB, ".1f"),
                ("correct", "correct", 1, "s"))


def _cell(v, div, spec):
    if v is None:
        return "–"
    if spec == "s":
        return str(v)
    return format(v / div, spec) if div != 1 else format(v, spec)


def table(first: str, columns, rows: dict[str, dict]) -> list[str]:
    lines = [[first, *(c[0] for c in columns)], ["---"] * (len(columns) + 1)]
    for label, figs in rows.items():
        lines.append([label, *(_cell(figs.get(key), div, spec) for _, key, div, spec in columns)])
    return ["| " + " | ".join(cells) + " |" for cells in lines] + [""]


def report(results: dict, env: dict) -> str:
    s = env["spec"]
    lines = ["# cas gc benchmark", "",
             f"cas `{env['cas']}` ({env['cas_version']}; source {env['source']}), Python {env['python']}, "
             f"{env['cpus']} CPUs. "
             f"Chunker min/avg/max {'/'.join(str(c // KiB) for c in s['chunker'])} KiB (measured average "
             f"{s['avg_chunk']:.0f} B); {s['runs']} runs x {s['steps']} versions of one {s['file_bytes'] / MB:.2f} MB "
             f"file, each version rewriting {s['edits']} regions of {s['edit_bytes']} B of its predecessor "
             f"(~{s['new_per_edit']:.1f} new chunks each); random (incompressible) data, seed {s['seed']}; "
             f"predicted {s['predicted_chunks']} unique chunks. Times are wall-clock seconds of whole CLI processes, "
             f"RSS each process's own peak. `forget` keeps the last {s['steps'] - s['steps'] // 2} steps of each run.",
             "", "## Main figures", ""]
    summaries = {name: summary(res) for name, res in results.items()}
    lines += table("backend", MAIN_COLUMNS, summaries)
    lines += ["\"gc\" is `cas gc --grace 0` after the forget; \"gc again\" a second one with nothing left to free. "
              "\"deleted packs MB\" is gc's freed_bytes (the size of the packs it deleted, repacked ones included, "
              "whose live blobs went to new packs); \"net freed MB\" is stored_bytes of `cas stats` before minus "
              "after. "
              "\"correct\": verify passed before and after gc, the spot-checked kept versions restored byte-identical, "
              "the forgotten ones were exactly the expected set and no longer resolve.", ""]
    lines += ["## Store", ""] + table("backend", STORE_COLUMNS, summaries)
    lines += ["## Every command", ""]
    cols = []
    for name in results:
        cols += [(f"{name} s", f"{name}_s", 1, ".2f"), (f"{name} peak RSS MiB", f"{name}_rss", 1, ".0f")]
    rows = {}
    for key, label in STEPS:
        row = {}
        for name, res in results.items():
            t = res["times"].get(key)
            if t:
                row[f"{name}_s"], row[f"{name}_rss"] = t["s"], t["rss_mib"]
        rows[label] = row
    lines += table("command", cols, rows)
    lines += ["## gc reports and checks", ""]
    for name, res in results.items():
        gc, dry, checks = res["gc"], res["gc_dry_after"], res["checks"]
        keys = ("packs", "reachable_blobs", "repacked_packs", "repacked_bytes", "condemned_packs", "deleted_packs",
                "freed_bytes", "waiting_packs")
        lines += [f"- **{name}** ({res['uri']}): {res['versions']} versions + {res['events']} run events logged, "
                  f"{res['logical_bytes'] / MB:.0f} MB logical, {res['new_bytes'] / MB:.1f} MB new; "
                  f"forgot {res['forgotten']} versions "
                  f"({'as expected' if res['forgotten_as_expected'] else 'NOT the expected set'}).",
                  f"  - gc --dry-run before forget: {_brief(res['gc_dry'], keys)}",
                  f"  - gc --dry-run after forget: {_brief(dry, keys)}",
                  f"  - gc --grace 0: {_brief(gc, keys)}",
                  f"  - gc --grace 0 again: {_brief(res['gc_again'], keys)}",
                  f"  - verify before gc: {_verify(res['verify_before'])}; after gc: {_verify(res['verify_after'])}",
                  f"  - spot checks: {checks['restored_identical']}/{checks['spot_checked']} kept versions restored "
                  f"byte-identical with `cas get`; a forgotten version "
                  f"{_gone_text(checks['forgotten_gone'])}"
                  + (f"; problems: {'; '.join(checks['problems'])}" if checks["problems"] else "")]
        if dry["deleted_packs"] == 0 and gc["deleted_packs"] > 0:
            lines.append(f"  - note: the dry run after forget reported 0 packs to delete, the real gc --grace 0 "
                         f"deleted {gc['deleted_packs']}: a dry run counts only packs condemned by an earlier gc, "
                         f"not those a grace-0 run condemns and deletes at once")
        if "folder_bytes_after" in res:
            lines.append(f"  - store folder after gc: {res['folder_bytes_after'] / MB:.1f} MB "
                         f"(stats says {res['stats_after']['stored_bytes'] / MB:.1f} MB)")
    lines += ["", f"Whole run: {env['wall_s']:.0f} s wall."]
    return "\n".join(lines)


def source_state() -> str:
    """The commit of the cas tree this runs from, and its modified tracked files (the figures depend on them)."""
    repo = HERE.parent
    try:
        head = subprocess.run(["git", "-C", repo, "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", repo, "status", "--short", "--untracked-files=no"], capture_output=True,
                               text=True, check=True).stdout.split("\n")
        diff = subprocess.run(["git", "-C", repo, "diff", "HEAD"], capture_output=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)"
    changed = sorted(line[3:] for line in dirty if line.strip())
    import hashlib
    return f"commit {head}" + (f", modified: {', '.join(changed)} (diff {hashlib.sha1(diff).hexdigest()[:8]})"
                               if changed else ", clean")


def _gone_text(gone: bool | None) -> str:
    return "no longer resolves" if gone else "STILL RESOLVES" if gone is False else "was not tried"


def _brief(rep: dict, keys) -> str:
    return ", ".join(f"{k} {rep.get(k)}" for k in keys)


def _verify(rep: dict) -> str:
    if rep["ok"]:
        return f"ok ({rep['packs']} packs, {rep['chunks']} chunks, {rep['manifests']} manifests)"
    return f"FAILED ({len(rep['problems'])} problems, first: {rep['problems'][0]})"


# ---- main ------------------------------------------------------------------------------------------

def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--chunks", type=int, help="about this many unique chunks (default 100000; 10x fewer with --quick)")
    p.add_argument("--records", type=int, help="versions logged (default 1000; 10x fewer with --quick)")
    p.add_argument("--quick", action="store_true", help=f"{QUICK_FACTOR}x smaller, for a smoke run")
    p.add_argument("--backend", default=",".join(BACKENDS), help="comma-separated: local,s3 (default both)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--spot", type=int, default=6, help="kept versions restored and compared after gc (default 6)")
    p.add_argument("--cas", help="command to run cas (default: cas beside this python, on PATH, or python -m cas)")
    p.add_argument("--workdir", help="parent of the scratch dir (default: the system temp dir)")
    p.add_argument("--keep", action="store_true", help="keep the scratch dir (stores, server data)")
    p.add_argument("--out", help="also write the Markdown report here")
    p.add_argument("--json", help="write the raw figures here")
    p.add_argument("--build", help=argparse.SUPPRESS)  # child mode: build the store at this URI
    p.add_argument("--spec", help=argparse.SUPPRESS)
    p.add_argument("--scratch", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    factor = QUICK_FACTOR if args.quick else 1
    args.chunks = args.chunks if args.chunks is not None else 100_000 // factor
    args.records = args.records if args.records is not None else 1_000 // factor
    args.backend = [b.strip() for b in args.backend.split(",") if b.strip()]
    if unknown := [b for b in args.backend if b not in BACKENDS]:
        p.error(f"unknown backend {unknown}; choose from {', '.join(BACKENDS)}")
    if args.chunks < 100 or args.records < 2:
        p.error("--chunks must be >= 100 and --records >= 2")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.build:
        spec = Spec(**{**json.loads(args.spec), "chunker": tuple(json.loads(args.spec)["chunker"])})
        print(json.dumps(build(args.build, spec, Path(args.scratch))))
        return 0
    started, source = time.perf_counter(), source_state()
    cas = cas_command(args.cas)
    spec = make_spec(args.chunks, args.records, args.seed)
    if spec.versions != args.records:
        print(f"note: {spec.versions} versions ({spec.runs} runs x {spec.steps}), not {args.records}", file=sys.stderr)
    print(f"spec: {asdict(spec)}", file=sys.stderr)
    if args.workdir:
        os.makedirs(args.workdir, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="cas-bench-gc-", dir=args.workdir))
    print(f"scratch dir {work}", file=sys.stderr)
    server, results = None, {}
    try:
        for name in args.backend:
            if name == "local":
                results[name] = bench_backend(name, str(work / "local-store"), spec, args, work, cas, {})
            else:
                sys.path.insert(0, str(HERE.parent / "tests"))
                from s3servers import start_seaweedfs
                (work / "seaweedfs").mkdir()
                server = start_seaweedfs(str(work / "seaweedfs"))
                print(f"[s3] SeaweedFS at {server.endpoint}", file=sys.stderr)
                results[name] = bench_backend(name, f"s3://{BUCKET}/store", spec, args, work, cas, server.env())
                server.stop()
                server = None
    except RuntimeError as exc:
        print(f"bench_gc: error: {exc}", file=sys.stderr)
        return 1
    finally:
        if server is not None:
            server.stop()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    env = {"cas": shlex.join(cas), "cas_version": run([*cas, "--version"], dict(os.environ)).stdout.strip(),
           "source": source if source_state() == source else f"{source} at the start, {source_state()} at the end",
           "python": platform.python_version(), "cpus": os.cpu_count(), "spec": asdict(spec),
           "args": {k: v for k, v in vars(args).items() if k not in ("build", "spec", "scratch")},
           "wall_s": time.perf_counter() - started}
    text = report(results, env)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    if args.json:
        Path(args.json).write_text(json.dumps({"env": env, "backends": results,
                                               "summary": {n: summary(r) for n, r in results.items()}},
                                              indent=2) + "\n")
    ok = all(summary(r)["correct"] == "yes" for r in results.values())
    if not ok:
        print("bench_gc: a correctness check failed (see the report)", file=sys.stderr)
    return 0 if ok else 2


if __name__ == "__main__":
    sys.exit(main())
