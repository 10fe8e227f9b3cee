"""cas against the tools users would pick instead (cp, zstd -3, restic, borg, DVC, MLflow) on checkpoint series.

For every series of `series.KINDS` and every tool: ingest the checkpoints one at a time into a fresh
repository, whole CLI processes timed wall-clock with their own peak RSS; stored bytes after each
checkpoint; restore of the last one, checked byte for byte; re-ingest of it unchanged. Medians over
--repeat repetitions, the ideal for the chunker (unique 64 KiB CDC chunks, each zstd -3), the brief's
targets as ratios measured in the same run, then the report (Markdown tables in docs/benchmarks.md,
raw JSON, a plot). `bash benchmarks/run` installs the peers and runs this.
"""

from __future__ import annotations

import argparse
import datetime
import filecmp
import importlib.util
import os
import platform
import shlex
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import blake3
import zstandard
from pyfastcdc import FastCDC

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import peers  # noqa: E402
import report  # noqa: E402
import series  # noqa: E402
import targets  # noqa: E402
from measure import run  # noqa: E402

CHUNKER = dict(avg_size=48 * 1024, min_size=16 * 1024, max_size=256 * 1024)  # real average: avg + min = 64 KiB
PRESETS = {  # mode -> defaults of --steps, --scale, --repeat, --once, --big-scale
    "full": dict(steps="10", scale="4", repeat=3, once="", big_scale=16.0),
    "quick": dict(steps="3", scale="1,bf16=4", repeat=3,
                  once="cp,zstd -3,DVC,MLflow,ZipNN,ZipNN delta chain,z4ai,z4ai delta chain", big_scale=16.0),
}
MB = 1e6


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# ---- one tool, one series --------------------------------------------------------------------------

def run_tool(tool_class: type[peers.Tool], cmds: peers.Commands, files: list[Path], work: Path) -> dict:
    """Ingest files one by one into a fresh repository, restore the last and compare, re-ingest it."""
    root = work / "tool"
    target = work / "restore"
    target.mkdir()
    try:
        tool = tool_class(root, cmds)
        ingest, rss, cumulative = [], [], []
        for src in files:
            proc, key = tool.put(src)
            ingest.append(proc.seconds)
            rss.append(proc.rss_mb)
            cumulative.append(tool.stored())
        restore, restored = tool.get(key, target)
        filecmp.clear_cache()
        if not filecmp.cmp(files[-1], restored, shallow=False):
            raise RuntimeError(f"{tool.name}: restored {restored} differs from {files[-1]}")
        again = tool.reput(files[-1])
    finally:
        shutil.rmtree(root, ignore_errors=True)
        shutil.rmtree(target, ignore_errors=True)
    return {"ingest_s": ingest, "first_s": ingest[0], "later_s": statistics.median(ingest[1:]) if ingest[1:] else None,
            "stored_bytes": cumulative[-1], "cumulative_bytes": cumulative, "restore_s": restore.seconds,
            "reingest_s": again.seconds if again else None, "rss_ingest_mb": max(rss), "rss_restore_mb": restore.rss_mb}


def ideal(files: list[Path], level: int = 3) -> dict:
    """Unique CDC chunks (blake3) over the series, each zstd-compressed alone (raw when that does not pay)."""
    cdc = FastCDC(CHUNKER["avg_size"], min_size=CHUNKER["min_size"], max_size=CHUNKER["max_size"])
    zc = zstandard.ZstdCompressor(level=level, write_content_size=False)
    seen, chunks, unique_raw, stored, cumulative = set(), 0, 0, 0, []
    for path in files:
        for c in cdc.cut_file(str(path)):
            chunks += 1
            digest = blake3.blake3(c.data).digest()
            if digest not in seen:
                seen.add(digest)
                unique_raw += c.length
                stored += min(c.length, len(zc.compress(c.data)))
        cumulative.append(stored)
    return {"chunks": chunks, "unique_chunks": len(seen), "unique_bytes": unique_raw, "stored_bytes": stored,
            "cumulative_bytes": cumulative}


def median_of(runs: list[dict]) -> dict:
    """Field-wise median over repetitions: numbers, and lists element by element."""
    out = {}
    for key, value in runs[0].items():
        values = [r[key] for r in runs]
        if isinstance(value, list):
            out[key] = [statistics.median(column) for column in zip(*values)]
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            out[key] = statistics.median(values)
        else:
            out[key] = value
    return out


# ---- a series ---------------------------------------------------------------------------------------

def bench_series(kind: str, args, tools: dict, work: Path) -> dict:
    """Generate the series `kind` (its steps and scale from args), run every tool on it, remove the files."""
    steps, scale = int(per_kind(args.steps, kind)), per_kind(args.scale, kind)
    try:
        files = series.generate(kind, work / "data", steps, scale, args.seed)
        out = bench_tools(kind, files, args, tools, work) | {"scale": scale}
        if kind == "bf16" and "cas" in tools:
            log(f"{kind}: one tensor against the whole file")
            out["tensor_read"] = tensor_read(args.cmds, files[-1], work)
        return out
    finally:
        shutil.rmtree(work / "data", ignore_errors=True)


def bench_tools(kind: str, files: list[Path], args, tools: dict, work: Path) -> dict:
    """The ideal, then every tool args.repeat times (a fresh repository each time); a failing tool is dropped."""
    sizes = [f.stat().st_size for f in files]
    log(f"{kind}: {len(files)} files, {sum(sizes) / MB:.1f} MB (last {sizes[-1] / MB:.1f} MB); ideal...")
    out = {"file_bytes": sizes, "logical_bytes": sum(sizes), "ideal": ideal(files),
           "runs": {name: [] for name in tools}, "errors": {}}
    for rep in range(args.repeat):
        for name, tool_class in tools.items():
            if name in out["errors"] or (rep and name in args.once):
                continue
            if getattr(tool_class, "float_only", False) and kind in series.TEXT_KINDS:
                continue
            log(f"{kind}: repetition {rep + 1}/{args.repeat}: {name}")
            try:
                out["runs"][name].append(run_tool(tool_class, args.cmds, files, work))
            except (RuntimeError, OSError) as exc:  # a failing peer is reported, the others still run
                log(f"{kind}: {name} FAILED: {exc}")
                out["errors"][name] = str(exc)[:500]
    out["median"] = {name: median_of(runs) for name, runs in out["runs"].items() if runs}
    return out


def bench_big(scale: float, args, work: Path) -> dict:
    """One large bf16 checkpoint through cas alone (ingest, restore): peak RSS whatever the file size."""
    files = series.generate("bf16", work / "data", 1, scale, args.seed)
    log(f"big file: {files[0].stat().st_size / MB:.0f} MB through cas")
    try:
        return {"file_bytes": files[0].stat().st_size, **run_tool(peers.Cas, args.cmds, files, work)}
    except (RuntimeError, OSError) as exc:
        log(f"big file FAILED: {exc}")
        return {"file_bytes": files[0].stat().st_size, "error": str(exc)[:500]}
    finally:
        shutil.rmtree(work / "data")


TENSOR = "h.5.mlp.c_fc.weight"  # a large tensor of the bf16 model (768 x 3072 at scale 4: 4.7 MB of 249 MB)


def tensor_read(cmds: peers.Commands, path: Path, work: Path, reps: int = 3) -> dict:
    """`cas cat --tensor` of one tensor against `cas cat` of the whole file (both to /dev/null, median of
    reps, whole processes), and `cas show`: seconds each."""
    tool = peers.Cas(work / "tensor-read", cmds)
    try:
        _, digest = tool.put(path)
        base = " ".join(shlex.quote(str(c)) for c in [*cmds.cas, "--store", tool.repo])

        def timed(command: str) -> float:
            return statistics.median(run(["sh", "-c", f"{base} {command} > /dev/null"], tool.env).seconds
                                     for _ in range(reps))
        return {"tensor": TENSOR, "whole_s": timed(f"cat {digest}"),
                "tensor_s": timed(f"cat {digest} --tensor {TENSOR}"), "show_s": timed(f"show {digest}")}
    finally:
        shutil.rmtree(work / "tensor-read", ignore_errors=True)


def bench_s3(args, work: Path) -> tuple[dict | None, str]:
    """The S3 section from benchmarks/bench_s3.py when it exists: (raw result, Markdown)."""
    try:
        import bench_s3
    except ModuleNotFoundError as exc:
        if exc.name != "bench_s3":
            raise
        return None, ""
    log("S3 section")
    try:
        result = bench_s3.run_s3(args.quick, work / "s3")
        return result, bench_s3.s3_markdown(result)
    except Exception as exc:  # another module's failure must not lose the local results
        log(f"S3 section FAILED: {exc!r}")
        return {"error": repr(exc)}, f"## S3\n\nThe S3 benchmark failed: `{exc!r}`\n"


# ---- environment and arguments ----------------------------------------------------------------------

def cpu_model() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    lines = cpuinfo.read_text().splitlines() if cpuinfo.exists() else []
    return next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")),
                platform.processor() or platform.machine())


def machine() -> dict:
    return {"cpu": cpu_model(), "cores": os.cpu_count(),
            "ram_bytes": os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"),
            "os": platform.platform(), "python": platform.python_version()}


def git_commit() -> str:
    try:
        head = run(["git", "-C", HERE, "rev-parse", "--short", "HEAD"]).stdout.strip()
        dirty = run(["git", "-C", HERE, "status", "--short", "--untracked-files=no"]).stdout.strip()
    except RuntimeError:
        return "?"
    return head + (" (with uncommitted changes)" if dirty else "")


def environment(args, argv: list[str], tool_versions: dict, missing: dict) -> dict:
    launcher = os.environ.get("CAS_BENCH_LAUNCHER", "python benchmarks/bench_peers.py")  # benchmarks/run sets it
    command = shlex.join([*shlex.split(launcher), *argv])
    return {"date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "command": command, "commit": git_commit(), "machine": machine(), "versions": tool_versions,
            "missing_tools": missing, "reingest_notes": {name: tool.reingest_note for name, tool in peers.TOOLS.items()
                                                         if tool.reingest_note and name in tool_versions},
            "mode": "quick" if args.quick else "full", "steps": args.steps,
            "scale": args.scale, "repeat": args.repeat, "seed": args.seed, "chunker": CHUNKER}


def parse_per_kind(text: str, default: float) -> dict[str, float]:
    """"4" or "1,bf16=4" -> {"*": 1.0, "bf16": 4.0}: a default and per-kind values."""
    out = {"*": default}
    for part in filter(None, (p.strip() for p in text.split(","))):
        kind, _, value = part.rpartition("=")
        out[kind or "*"] = float(value)
    return out


def per_kind(values: dict[str, float], kind: str) -> float:
    return values.get(kind, values["*"])


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="small settings, under 10 minutes on 2 cores: 3 checkpoints "
                   "per series at scale 1 (bf16: scale 4, 249 MB), 3 repetitions (DVC and MLflow: one)")
    p.add_argument("--series", default=",".join(series.KINDS), help="comma-separated kinds (default: all)")
    p.add_argument("--tools", default=",".join(peers.TOOLS), help="comma-separated tools (default: all)")
    p.add_argument("--steps", help='checkpoints per series, or per kind: "3,bf16=4" (full 10, quick 3,bf16=4)')
    p.add_argument("--scale", help='size multiplier, or per kind: "1,bf16=4" (full 4: a 249 MB bf16 checkpoint)')
    p.add_argument("--repeat", type=int, help="repetitions, medians reported (full 3, quick 3)")
    p.add_argument("--once", help="comma-separated tools run in the first repetition only (quick: cp, zstd -3, "
                                  "DVC and MLflow, whose times no target is measured against)")
    p.add_argument("--big-scale", type=float,
                   help="bf16 scale of the one-file memory check, 0 to skip (full 16 = 1 GB)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-s3", action="store_true", help="skip the S3 section")
    p.add_argument("--out", help="write results.md, latest.json and the plot into this folder instead of the "
                                 "docs (docs/benchmarks.md between its result markers, docs/img, benchmarks/results)")
    p.add_argument("--cas", help="command to run cas (default: cas beside this python, on PATH, or python -m cas)")
    p.add_argument("--workdir", help="parent of the scratch folder (default: the system temp folder)")
    args = p.parse_args(argv)
    for key, value in PRESETS["quick" if args.quick else "full"].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.series = [k.strip() for k in args.series.split(",") if k.strip()]
    args.tools = [t.strip() for t in args.tools.split(",") if t.strip()]
    args.once = {t.strip() for t in args.once.split(",") if t.strip()}
    if unknown := [k for k in args.series if k not in series.KINDS]:
        p.error(f"unknown series {unknown}; choose from {', '.join(series.KINDS)}")
    if unknown := [t for t in [*args.tools, *args.once] if t not in peers.TOOLS]:
        p.error(f"unknown tools {unknown}; choose from {', '.join(peers.TOOLS)}")
    try:
        args.steps, args.scale = parse_per_kind(args.steps, 10), parse_per_kind(args.scale, 1.0)
    except ValueError as exc:
        p.error(f"--steps/--scale: {exc}")
    if args.repeat < 1 or any(v < 1 or v != int(v) for v in args.steps.values()) or min(args.scale.values()) <= 0:
        p.error("--repeat and --steps must be whole numbers >= 1, --scale > 0")
    args.cmds = peers.Commands.from_env(args.cas)
    return args


# ---- main -------------------------------------------------------------------------------------------

def missing_module(kind: str) -> str | None:
    """Why the series kind cannot be generated here (the training series need torch), or None."""
    if kind in getattr(series, "FT_KINDS", ()) and importlib.util.find_spec("torch") is None:
        return "torch is not installed (`pip install -e '.[bench]'`, which `benchmarks/run` does)"
    return None


def bench_all(args, tools: dict, work: Path) -> dict:
    results, skipped = {}, {}
    for kind in args.series:
        if reason := missing_module(kind):
            skipped[kind] = reason
            log(f"{kind}: skipped: {reason}")
            continue
        try:
            results[kind] = bench_series(kind, args, tools, work)
        except ImportError as exc:  # the torch series without torch installed
            skipped[kind] = f"needs {exc.name or 'a missing module'} ({exc})"
            log(f"{kind}: skipped: {skipped[kind]}")
    big = bench_big(args.big_scale, args, work) if args.big_scale and "cas" in tools else None
    return {"series": results, "skipped_series": skipped, "big": big}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    started = time.monotonic()
    tool_versions, missing = peers.versions(args.cmds, args.tools)
    tools = {name: peers.TOOLS[name] for name in args.tools if name not in missing}
    for name, reason in missing.items():
        log(f"{name} is not available, skipped: {reason}")
    if args.workdir:
        os.makedirs(args.workdir, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="cas-bench-peers-", dir=args.workdir))
    log(f"scratch folder {work}")
    try:
        results = {"env": environment(args, argv, tool_versions, missing), **bench_all(args, tools, work)}
        results["s3"], results["s3_markdown"] = (None, "") if args.no_s3 else bench_s3(args, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    results["targets"] = targets.evaluate(results)
    results["env"]["wall_s"] = round(time.monotonic() - started, 1)
    written = report.write(results, Path(args.out) if args.out else None)
    log(f"done in {results['env']['wall_s']:.0f} s; wrote {', '.join(map(str, written))}")
    failed = any(res["errors"] for res in results["series"].values()) or "error" in (results["big"] or {})
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
