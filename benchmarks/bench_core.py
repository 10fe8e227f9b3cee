"""Side-by-side ingest/restore benchmark of cp, zstd -3 and the cas CLI over generated checkpoint series."""

from __future__ import annotations

import argparse
import filecmp
import json
import os
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import blake3
import zstandard
from pyfastcdc import FastCDC

sys.path.insert(0, str(Path(__file__).resolve().parent))
import series  # noqa: E402

MB = 1e6
CHUNKER = dict(avg_size=48 * 1024, min_size=16 * 1024, max_size=256 * 1024)  # real average: avg + min = 64 KiB
ZSTD_BIN = shutil.which("zstd") or "/usr/bin/zstd"
QUICK_SCALE = 0.25
LAUNCHER = str(Path(__file__).resolve().parent / "launch.py")


@dataclass
class Proc:
    seconds: float
    maxrss_kib: int
    stdout: str


def run(cmd: list, env: dict | None = None) -> Proc:
    """Run one child via launch.py: its wall time and own peak RSS (os.wait4); raise on failure."""
    cmd = [str(c) for c in cmd]
    read_end, write_end = os.pipe()
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err, open(read_end, "rb") as report:
        try:
            child = subprocess.run([sys.executable, "-I", "-S", LAUNCHER, str(write_end), *cmd],
                                   stdout=out, stderr=err, env=env, pass_fds=(write_end,))
        finally:
            os.close(write_end)
        out.seek(0)
        err.seek(0)
        if child.returncode:
            raise RuntimeError(f"{shlex.join(cmd)} exited {child.returncode}: {err.read().decode()[-2000:]}")
        seconds, maxrss = report.read().split()
        return Proc(float(seconds), int(maxrss), out.read().decode())


def tree_bytes(root: Path) -> int:
    """Sum of file sizes under root (an apparent-size du)."""
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, names in os.walk(root) for f in names)


def cas_command(override: str | None) -> list[str]:
    """--cas, else the cas next to this interpreter, else on PATH, else `python -m cas`."""
    if override:
        return shlex.split(override)
    beside = Path(sys.executable).parent / "cas"
    if beside.exists():
        return [str(beside)]
    found = shutil.which("cas")
    return [found] if found else [sys.executable, "-m", "cas"]


# ---- the tools: put(src) -> (Proc, key), get(key, dest) -> Proc, stored() -> dict ----------------

class Files:
    """A folder holding one file per step, written and read back by a command each (cp, zstd)."""

    def __init__(self, root: Path, suffix: str, put: list[str], get: list[str]):
        self.root, self.suffix, self.put_cmd, self.get_cmd = root / "store", suffix, put, get
        self.root.mkdir(parents=True)

    @staticmethod
    def _fill(template: list[str], src, dst) -> list:
        return [src if arg == "{in}" else dst if arg == "{out}" else arg for arg in template]

    def put(self, src: Path) -> tuple[Proc, str]:
        dest = self.root / (src.name + self.suffix)
        return run(self._fill(self.put_cmd, src, dest)), str(dest)

    def get(self, key: str, dest: Path) -> Proc:
        return run(self._fill(self.get_cmd, key, dest))

    def stored(self) -> dict:
        size = tree_bytes(self.root)
        return {"stored_bytes": size, "folder_bytes": size}


class Cas:
    """A cas store driven through its CLI, with its own index cache dir."""

    def __init__(self, root: Path, cmd: list[str]):
        self.store, self.cmd = root / "store", cmd
        self.env = {k: v for k, v in os.environ.items() if k != "CAS_STORE"}
        self.env["CAS_CACHE_DIR"] = str(root / "cache")
        self.last_new_bytes = None

    def _cas(self, *args) -> Proc:
        return run([*self.cmd, "--store", self.store, *args], env=self.env)

    def put(self, src: Path) -> tuple[Proc, str]:
        proc = self._cas("--json", "put", src, "--no-pin")
        out = json.loads(proc.stdout)
        if out.get("size") != src.stat().st_size:
            raise RuntimeError(f"cas put reported size {out.get('size')} for {src}")
        self.last_new_bytes = out.get("new_bytes")
        return proc, out["digest"]

    def get(self, key: str, dest: Path) -> Proc:
        return self._cas("get", key, "-o", dest)

    def stored(self) -> dict:
        stats = json.loads(self._cas("--json", "stats").stdout)
        stored, folder = stats["stored_bytes"], tree_bytes(self.store)
        if abs(folder - stored) > max(0.01 * stored, 64 * 1024):
            print(f"warning: cas stats stored_bytes {stored} but its folder holds {folder} bytes", file=sys.stderr)
        return {"stored_bytes": stored, "folder_bytes": folder, "stats": stats}


def make_tools(cas_cmd: list[str]) -> dict:
    """Tool name -> constructor taking the tool's work folder."""
    return {"cp": partial(Files, suffix="", put=["cp", "{in}", "{out}"], get=["cp", "{in}", "{out}"]),
            "zstd-3": partial(Files, suffix=".zst", put=[ZSTD_BIN, "-3", "-q", "{in}", "-o", "{out}"],
                              get=[ZSTD_BIN, "-d", "-q", "{in}", "-o", "{out}"]),
            "cas": partial(Cas, cmd=cas_cmd)}


# ---- measuring --------------------------------------------------------------------------------

def run_tool(name: str, make, files: list[Path], work: Path) -> dict:
    """Ingest the series one file at a time, then restore the last file and check it byte for byte."""
    root = work / name
    tool = make(root)
    times, rss_put, key = [], 0, None
    for src in files:
        proc, key = tool.put(src)
        times.append(proc.seconds)
        rss_put = max(rss_put, proc.maxrss_kib)
    result = {"ingest_s": times, "first_s": times[0],
              "later_s": statistics.median(times[1:]) if len(times) > 1 else None,
              "total_s": sum(times), "mb_per_s": sum(f.stat().st_size for f in files) / MB / sum(times),
              "rss_put_mib": rss_put / 1024, **tool.stored()}
    dest = work / f"restored-{name}"
    proc = tool.get(key, dest)
    filecmp.clear_cache()
    if not filecmp.cmp(files[-1], dest, shallow=False):
        raise RuntimeError(f"{name}: restored {dest} differs from {files[-1]}")
    result.update(restore_s=proc.seconds, rss_get_mib=proc.maxrss_kib / 1024)
    if isinstance(tool, Cas):
        result["reingest_s"] = tool.put(files[-1])[0].seconds
        result["reingest_new_bytes"] = tool.last_new_bytes
    shutil.rmtree(root)
    dest.unlink()
    return result


def ideal(files: list[Path], level: int = 3) -> dict:
    """Unique CDC chunks (blake3) over the series, each zstd-compressed alone (raw when that does not pay)."""
    cdc = FastCDC(CHUNKER["avg_size"], min_size=CHUNKER["min_size"], max_size=CHUNKER["max_size"])
    zc = zstandard.ZstdCompressor(level=level, write_content_size=False)
    seen, chunks, unique_raw, stored = set(), 0, 0, 0
    for path in files:
        for c in cdc.cut_file(str(path)):
            chunks += 1
            digest = blake3.blake3(c.data).digest()
            if digest not in seen:
                seen.add(digest)
                unique_raw += c.length
                stored += min(c.length, len(zc.compress(c.data)))
    return {"chunks": chunks, "unique_chunks": len(seen), "unique_bytes": unique_raw, "stored_bytes": stored}


def median_of(runs: list[dict]) -> dict:
    """Field-wise median over repetitions (numbers only)."""
    keys = [k for k, v in runs[0].items() if isinstance(v, (int, float)) and not isinstance(v, bool)]
    return {k: statistics.median(r[k] for r in runs) for k in keys}


def bench_series(kind: str, args, work: Path, tools: dict) -> dict:
    data = work / "data" / kind
    files = series.generate(kind, data, args.steps, args.scale, args.seed)
    sizes = [f.stat().st_size for f in files]
    print(f"[{kind}] {len(files)} files, {sum(sizes) / MB:.1f} MB; computing ideal...", file=sys.stderr)
    out = {"file_bytes": sizes, "logical_bytes": sum(sizes), "ideal": ideal(files), "runs": {}}
    for rep in range(args.repeat):
        for name, make in tools.items():
            print(f"[{kind}] repetition {rep + 1}/{args.repeat}: {name}", file=sys.stderr)
            out["runs"].setdefault(name, []).append(run_tool(name, make, files, work))
    out["median"] = {name: median_of(runs) for name, runs in out["runs"].items()}
    cas, zstd = out["median"]["cas"], out["median"]["zstd-3"]
    out["ratios"] = {"cas_stored_over_ideal": cas["stored_bytes"] / out["ideal"]["stored_bytes"],
                     "cas_stored_over_zstd": cas["stored_bytes"] / zstd["stored_bytes"],
                     "cas_ingest_time_over_zstd": cas["total_s"] / zstd["total_s"],
                     "cas_folder_over_stats": cas["folder_bytes"] / cas["stored_bytes"]}
    if not args.keep:
        shutil.rmtree(data)
    return out


# ---- reporting --------------------------------------------------------------------------------

TOOL_COLUMNS = (("first ingest s", "first_s", 1, ".3f"), ("later ingest s (median)", "later_s", 1, ".3f"),
                ("total ingest s", "total_s", 1, ".3f"), ("ingest MB/s", "mb_per_s", 1, ".1f"),
                ("stored MB", "stored_bytes", MB, ".2f"), ("restore s", "restore_s", 1, ".3f"),
                ("peak RSS put MiB", "rss_put_mib", 1, ".0f"), ("peak RSS get MiB", "rss_get_mib", 1, ".0f"))
RATIO_COLUMNS = (("cas stored / ideal", "cas_stored_over_ideal", 1, ".3f"),
                 ("cas stored / zstd-3", "cas_stored_over_zstd", 1, ".3f"),
                 ("cas ingest time / zstd-3", "cas_ingest_time_over_zstd", 1, ".2f"),
                 ("cas re-ingest unchanged s", "reingest_s", 1, ".3f"),
                 ("cas folder / stats stored_bytes", "cas_folder_over_stats", 1, ".4f"))


def md_table(first: str, columns, rows: dict[str, dict]) -> list[str]:
    """A Markdown table: one row per (label, figures), one column per (title, key, divisor, format)."""
    lines = [[first, *(c[0] for c in columns)], ["---"] * (len(columns) + 1)]
    for label, figures in rows.items():
        lines.append([label, *("–" if figures.get(key) is None else format(figures[key] / div, spec)
                               for _, key, div, spec in columns)])
    return ["| " + " | ".join(cells) + " |" for cells in lines] + [""]


def report(results: dict, env: dict) -> str:
    lines = ["# cas core benchmark", "",
             f"cas `{env['cas']}` ({env['cas_version']}), {env['zstd_version']}, Python {env['python']}, "
             f"{env['cpus']} CPUs; steps {env['steps']}, scale {env['scale']}, seed {env['seed']}, "
             f"median of {env['repeat']} repetition(s). Times are wall-clock seconds of whole CLI processes.", ""]
    for kind, res in results.items():
        sizes, i = res["file_bytes"], res["ideal"]
        lines += [f"## {kind}: {len(sizes)} files, {sum(sizes) / MB:.1f} MB logical "
                  f"(last file {sizes[-1] / MB:.1f} MB)", ""]
        lines += md_table("tool", TOOL_COLUMNS, {**res["median"], "ideal (CDC + zstd-3 per unique chunk)": i})
        lines += [f"Ideal: {i['unique_chunks']} unique of {i['chunks']} chunks, "
                  f"{i['unique_bytes'] / MB:.2f} MB unique before compression.", ""]
    ratios = {kind: {**res["ratios"], "reingest_s": res["median"]["cas"]["reingest_s"]}
              for kind, res in results.items()}
    return "\n".join(lines + ["## cas vs the others", ""] + md_table("series", RATIO_COLUMNS, ratios))


def environment(args, cas_cmd: list[str]) -> dict:
    zstd_version = run([ZSTD_BIN, "--version"]).stdout.strip().strip("*").strip()
    return {"cas": shlex.join(cas_cmd), "cas_version": run([*cas_cmd, "--version"]).stdout.strip(),
            "zstd_version": zstd_version, "python": platform.python_version(), "cpus": os.cpu_count(),
            "steps": args.steps, "scale": args.scale, "seed": args.seed, "repeat": args.repeat,
            "chunker": CHUNKER}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--series", default=",".join(series.KINDS), help="comma-separated kinds (default: all)")
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--scale", type=float, help=f"size multiplier (default 1; {QUICK_SCALE} with --quick)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--repeat", type=int, help="repetitions, median reported (default 3; 1 with --quick)")
    p.add_argument("--quick", action="store_true", help=f"1 repetition at scale {QUICK_SCALE}")
    p.add_argument("--cas", help="command to run cas (default: cas beside this python, on PATH, or python -m cas)")
    p.add_argument("--workdir", help="parent of the scratch dir (default: the system temp dir)")
    p.add_argument("--keep", action="store_true", help="keep the scratch dir with the generated series")
    p.add_argument("--out", help="also write the Markdown report here")
    p.add_argument("--json", help="write the raw figures here")
    args = p.parse_args(argv)
    args.scale = args.scale if args.scale is not None else (QUICK_SCALE if args.quick else 1.0)
    args.repeat = args.repeat if args.repeat is not None else (1 if args.quick else 3)
    args.series = [k.strip() for k in args.series.split(",") if k.strip()]
    if unknown := [k for k in args.series if k not in series.KINDS]:
        p.error(f"unknown series {unknown}; choose from {', '.join(series.KINDS)}")
    if args.repeat < 1 or args.steps < 1:
        p.error("--repeat and --steps must be >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    cas_cmd = cas_command(args.cas)
    if args.workdir:
        os.makedirs(args.workdir, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="cas-bench-", dir=args.workdir))
    print(f"scratch dir {work}", file=sys.stderr)
    try:
        env = environment(args, cas_cmd)
        results = {kind: bench_series(kind, args, work, make_tools(cas_cmd)) for kind in args.series}
    except RuntimeError as exc:
        print(f"bench_core: error: {exc}", file=sys.stderr)
        return 1
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    text = report(results, env)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    if args.json:
        Path(args.json).write_text(json.dumps({"env": env, "series": results}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
