"""cas, restic and plain boto3 side by side on S3: a local SeaweedFS server, a bf16 checkpoint series.

Starts SeaweedFS on 127.0.0.1 (tests/s3servers.py, as bench_gc does; stopped at the end), generates
a bf16 safetensors series with series.py and ingests it one checkpoint at a time, each step a whole
process timed with its own peak RSS (measure.run), into:

- cas: `cas put FILE --store s3://BUCKET/PREFIX` (a fresh local cache dir per repetition),
- restic 0.14: its S3 backend, repository version 2 (compressed),
- boto3: `upload_file` of the whole file under one key per step, the naive tracker baseline.

Per tool: first and median later ingest time, bytes and objects stored under its prefix (listed in
the bucket), restore of the last checkpoint (`cas get`, `restic restore`, `download_file`) checked
byte for byte, re-ingest of the unchanged last checkpoint (`cas put` again, `restic backup --force`,
upload again) with what it added to the bucket, and the peak RSS of all its processes. Repository
creation (`cas init`, `restic init`) is timed apart and not counted as ingest. Every repetition
uses fresh prefixes; figures are medians over repetitions.

    python benchmarks/bench_s3.py [--quick] [--repeat N]
"""

from __future__ import annotations

import argparse
import filecmp
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))
import series  # noqa: E402
from bench_gc import child_env  # noqa: E402
from measure import Proc, cas_command, run  # noqa: E402
from s3servers import S3Server, start_seaweedfs  # noqa: E402

MB = 1e6
MiB = 1 << 20
BUCKET = "cas-bench-s3"
RESTIC = shutil.which("restic") or "/usr/bin/restic"
RESTIC_PASSWORD = "cas-bench-s3"
KIND = "bf16"
QUICK_SCALE, FULL_SCALE = 2.0, 4.0  # ~124 MB, ~249 MB per checkpoint
QUICK_STEPS, FULL_STEPS = 2, 10
QUICK_REPEAT, FULL_REPEAT = 3, 3

# The naive tracker: one short-lived python process per file, boto3's managed transfer of the whole file.
BOTO3_SCRIPT = """
import sys
import boto3
from botocore.config import Config
op, bucket, key, path = sys.argv[1:]
s3 = boto3.client("s3", config=Config(signature_version="s3v4", s3={"addressing_style": "path"},
                                      retries={"mode": "standard", "total_max_attempts": 5}))
if op == "put":
    s3.upload_file(path, bucket, key)
else:
    s3.download_file(bucket, key, path)
"""


# ---- the server and the bucket ------------------------------------------------------------------

@contextmanager
def local_s3(work: Path) -> Iterator[S3Server]:
    """A SeaweedFS S3 server on 127.0.0.1 with its data under work/seaweedfs, stopped on exit."""
    root = work / "seaweedfs"
    root.mkdir(parents=True, exist_ok=True)
    server = start_seaweedfs(str(root))
    try:
        yield server
    finally:
        server.stop()


def s3_client(server: S3Server):
    """A client for listing the bucket from this process, with the server's credentials passed explicitly."""
    import boto3
    from botocore.config import Config
    env = server.env()
    return boto3.session.Session().client(
        "s3", endpoint_url=server.endpoint, region_name=env["AWS_DEFAULT_REGION"],
        aws_access_key_id=env["AWS_ACCESS_KEY_ID"], aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
        config=Config(signature_version="s3v4", s3={"addressing_style": "path"},
                      retries={"mode": "standard", "total_max_attempts": 5}))


def list_objects(client, prefix: str) -> dict[str, int]:
    """Key -> size of every object under prefix/."""
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix + "/")
    return {o["Key"]: o["Size"] for page in pages for o in page.get("Contents", ())}


# ---- the tools: setup(), put(src), restore(src, dest_dir) -> (Proc, restored path), reingest(src) ----

class Tool:
    """A store under one prefix of the bucket; subclasses run one process per operation."""

    name = ""
    data_marker = "/"  # keys holding file data contain this (pack objects, restic data packs)

    def __init__(self, server: S3Server, prefix: str, root: Path):
        self.prefix, self.root = prefix, root
        root.mkdir(parents=True)
        self.env = child_env(root / "cas-cache", server.env())  # CAS_CACHE_DIR: only cas reads it
        self.reported_new_bytes: int | None = None  # what the tool says its last put added

    def setup(self) -> Proc | None:
        return None

    def put(self, src: Path) -> Proc:
        raise NotImplementedError

    def restore(self, src: Path, dest_dir: Path) -> tuple[Proc, Path]:
        raise NotImplementedError

    def reingest(self, src: Path) -> Proc:
        return self.put(src)


class Cas(Tool):
    name, data_marker = "cas", "/packs/"

    def __init__(self, server: S3Server, prefix: str, root: Path, cmd: list[str]):
        super().__init__(server, prefix, root)
        self.cmd, self.uri, self.digest = cmd, f"s3://{BUCKET}/{prefix}", None

    def _cas(self, *args) -> Proc:
        return run([*self.cmd, "--store", self.uri, "--json", *args], self.env)

    def setup(self) -> Proc:
        return self._cas("init")

    def put(self, src: Path) -> Proc:
        res = self._cas("put", src)  # pinned under its path, as restic's snapshot keeps its file
        item = json.loads(res.stdout)
        if item["size"] != src.stat().st_size:
            raise RuntimeError(f"cas put reported size {item['size']} for {src}")
        self.digest, self.reported_new_bytes = item["digest"], item["new_bytes"]
        return res

    def restore(self, src: Path, dest_dir: Path) -> tuple[Proc, Path]:
        dest = dest_dir / src.name
        return self._cas("get", self.digest, "-o", dest), dest


class Restic(Tool):
    name, data_marker = "restic", "/data/"

    def __init__(self, server: S3Server, prefix: str, root: Path):
        super().__init__(server, prefix, root)
        self.repo = f"s3:{server.endpoint}/{BUCKET}/{prefix}"
        self.env.update(RESTIC_PASSWORD=RESTIC_PASSWORD, RESTIC_CACHE_DIR=str(root / "restic-cache"))
        self.snapshot = None

    def _restic(self, *args) -> Proc:
        return run([RESTIC, "-r", self.repo, *args], self.env)

    def setup(self) -> Proc:
        return self._restic("init", "--repository-version", "2")

    def _backup(self, src: Path, *flags: str) -> Proc:
        res = self._restic("backup", "--json", *flags, src)
        summary = [m for m in map(json.loads, res.stdout.splitlines()) if m.get("message_type") == "summary"][-1]
        self.snapshot, self.reported_new_bytes = summary["snapshot_id"], summary["data_added"]
        return res

    def put(self, src: Path) -> Proc:
        return self._backup(src)

    def reingest(self, src: Path) -> Proc:
        return self._backup(src, "--force")

    def restore(self, src: Path, dest_dir: Path) -> tuple[Proc, Path]:
        res = self._restic("restore", self.snapshot, "--target", dest_dir)
        (dest,) = dest_dir.rglob(src.name)  # restic restores under the file's absolute path
        return res, dest


class Boto3(Tool):
    name = "boto3"

    def _boto3(self, op: str, key: str, path: Path) -> Proc:
        return run([sys.executable, "-c", BOTO3_SCRIPT, op, BUCKET, key, path], self.env)

    def put(self, src: Path) -> Proc:
        self.reported_new_bytes = src.stat().st_size
        return self._boto3("put", f"{self.prefix}/{src.name}", src)

    def restore(self, src: Path, dest_dir: Path) -> tuple[Proc, Path]:
        dest = dest_dir / src.name
        return self._boto3("get", f"{self.prefix}/{src.name}", dest), dest


def make_tools(server: S3Server, rep_root: Path, rep: int, cas: list[str]) -> list[Tool]:
    def where(name: str) -> tuple[str, Path]:
        return f"rep{rep}/{name}", rep_root / name
    return [Cas(server, *where("cas"), cas), Restic(server, *where("restic")), Boto3(server, *where("boto3"))]


# ---- measuring --------------------------------------------------------------------------------

def bucket_state(client, tool: Tool) -> dict:
    objects = list_objects(client, tool.prefix)
    return {"stored_bytes": sum(objects.values()), "objects": len(objects),
            "data_objects": sum(tool.data_marker in k for k in objects)}


def bench_tool(tool: Tool, files: list[Path], client) -> dict:
    """Setup, ingest every file in order, restore the last (compared byte for byte), re-ingest it unchanged."""
    setup = tool.setup()
    procs = [tool.put(src) for src in files]
    times = [p.seconds for p in procs]
    stored = bucket_state(client, tool)
    (tool.root / "restored").mkdir()
    restored, dest = tool.restore(files[-1], tool.root / "restored")
    filecmp.clear_cache()
    if not filecmp.cmp(files[-1], dest, shallow=False):
        raise RuntimeError(f"{tool.name}: restored {dest} differs from {files[-1]}")
    again = tool.reingest(files[-1])
    after = bucket_state(client, tool)
    everything = [*([setup] if setup else []), *procs, restored, again]
    return {"setup_s": setup.seconds if setup else None, "ingest_s": times, "first_s": times[0],
            "later_s": statistics.median(times[1:]) if len(times) > 1 else None, "total_s": sum(times),
            **stored, "restore_s": restored.seconds, "reingest_s": again.seconds,
            "reingest_reported_bytes": tool.reported_new_bytes,
            "reingest_added_bytes": after["stored_bytes"] - stored["stored_bytes"],
            "reingest_added_objects": after["objects"] - stored["objects"],
            "reingest_added_data_objects": after["data_objects"] - stored["data_objects"],
            "rss_put_mib": max(p.maxrss_kib for p in procs) / 1024, "rss_get_mib": restored.maxrss_kib / 1024,
            "rss_mib": max(p.maxrss_kib for p in everything) / 1024}


def median_of(runs: list[dict]) -> dict:
    """Field-wise median over repetitions of the numeric figures."""
    keys = [k for k, v in runs[0].items() if isinstance(v, (int, float)) and not isinstance(v, bool)]
    return {k: statistics.median(r[k] for r in runs) for k in keys}


def ratios(med: dict) -> dict:
    """cas over restic for each figure both have."""
    cas, restic = med["cas"], med["restic"]
    keys = ("first_s", "later_s", "reingest_s", "restore_s", "stored_bytes", "rss_mib")
    return {k: cas[k] / restic[k] for k in keys if cas.get(k) and restic.get(k)}


def run_s3(quick: bool, work: Path, repeat: int | None = None, cas: list[str] | None = None) -> dict:
    """The whole S3 benchmark in work (which it leaves empty of its own files); returns the raw figures."""
    started = time.perf_counter()
    steps = QUICK_STEPS if quick else FULL_STEPS
    scale = QUICK_SCALE if quick else FULL_SCALE
    repeat = repeat or (QUICK_REPEAT if quick else FULL_REPEAT)
    cas = cas or cas_command(None)
    Path(work).mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="s3-", dir=work))
    try:
        print(f"[s3] generating {steps} {KIND} checkpoints at scale {scale}", file=sys.stderr, flush=True)
        files = series.generate(KIND, work / "series", steps, scale)
        runs: dict[str, list[dict]] = {}
        with local_s3(work) as server:
            print(f"[s3] SeaweedFS at {server.endpoint}", file=sys.stderr, flush=True)
            client = s3_client(server)
            client.create_bucket(Bucket=BUCKET)
            for rep in range(1, repeat + 1):
                for tool in make_tools(server, work / f"rep{rep}", rep, cas):
                    print(f"[s3] repetition {rep}/{repeat}: {tool.name}", file=sys.stderr, flush=True)
                    runs.setdefault(tool.name, []).append(bench_tool(tool, files, client))
                shutil.rmtree(work / f"rep{rep}")
        med = {name: median_of(r) for name, r in runs.items()}
        return {"kind": KIND, "scale": scale, "steps": steps, "repeat": repeat,
                "file_bytes": [f.stat().st_size for f in files], "runs": runs, "median": med,
                "ratios": ratios(med), "env": environment(cas), "wall_s": time.perf_counter() - started}
    finally:
        shutil.rmtree(work, ignore_errors=True)


def environment(cas: list[str]) -> dict:
    return {"cas": " ".join(cas), "cas_version": run([*cas, "--version"], dict(os.environ)).stdout.strip(),
            "restic_version": run([RESTIC, "version"], dict(os.environ)).stdout.strip(),
            "python": platform.python_version(), "cpus": os.cpu_count()}


# ---- reporting --------------------------------------------------------------------------------

MAIN_COLUMNS = (("stored MB", "stored_bytes", MB, ".1f"), ("objects", "objects", 1, ".0f"),
                ("first ingest s", "first_s", 1, ".2f"), ("later ingest s", "later_s", 1, ".2f"),
                ("re-ingest s", "reingest_s", 1, ".2f"), ("restore s", "restore_s", 1, ".2f"),
                ("peak RSS MiB", "rss_mib", 1, ".0f"))
REINGEST_COLUMNS = (("s", "reingest_s", 1, ".2f"),
                    ("new MB reported (boto3: uploaded)", "reingest_reported_bytes", MB, ".2f"),
                    ("objects added", "reingest_added_objects", 1, ".0f"),
                    ("data objects added", "reingest_added_data_objects", 1, ".0f"),
                    ("MB added to the bucket", "reingest_added_bytes", MB, ".3f"))
RATIO_ROWS = (("first ingest", "first_s", "≤ 0.5"), ("later ingest", "later_s", "≤ 0.5"),
              ("re-ingest unchanged", "reingest_s", "≤ 0.33"), ("restore", "restore_s", "≤ 0.5"),
              ("stored bytes", "stored_bytes", "≈ 0.55"), ("peak RSS", "rss_mib", ""))


def md_table(first: str, columns, rows: dict[str, dict]) -> list[str]:
    """One row per (label, figures), one column per (title, key, divisor, format); None shows as –."""
    lines = [[first, *(c[0] for c in columns)], ["---"] * (len(columns) + 1)]
    for label, figures in rows.items():
        lines.append([label, *("–" if figures.get(key) is None else format(figures[key] / div, spec)
                               for _, key, div, spec in columns)])
    return ["| " + " | ".join(cells) + " |" for cells in lines] + [""]


def s3_markdown(result: dict) -> str:
    """A Markdown section (### S3 (local SeaweedFS)) with the per-tool table, re-ingest details and ratios."""
    sizes, med, env = result["file_bytes"], result["median"], result["env"]
    lines = ["### S3 (local SeaweedFS)", "",
             f"{len(sizes)} {result['kind']} safetensors checkpoints of {sizes[-1] / MB:.0f} MB "
             f"({sum(sizes) / MB:.0f} MB logical; series.py scale {result['scale']:g}), ingested one by one into "
             f"one bucket of a SeaweedFS server on 127.0.0.1 (same machine, {env['cpus']} CPUs: the server's work "
             f"competes with the client's). Median of {result['repeat']} repetition(s), fresh prefixes and local "
             f"caches each. Times are wall-clock seconds of whole processes; stored MB and objects are listed in the "
             f"bucket under each tool's prefix; restore is of the last checkpoint, checked byte for byte; peak RSS "
             f"is the largest of all the tool's processes. cas `{env['cas_version']}`, {env['restic_version']} "
             f"(repository v2, compressed), boto3 `upload_file` in a python process per checkpoint.", ""]
    lines += md_table("tool", MAIN_COLUMNS, med)
    lines += [f"Data objects after ingest: cas {med['cas']['data_objects']:.0f} packs, restic "
              f"{med['restic']['data_objects']:.0f} data packs. Repository creation, not counted above: "
              f"`cas init` {med['cas']['setup_s']:.2f} s, `restic init` {med['restic']['setup_s']:.2f} s.", "",
              "Re-ingest of the unchanged last checkpoint (`cas put` again, `restic backup --force`, boto3 upload "
              "again); data objects are cas packs, restic data packs, boto3 objects:", ""]
    lines += md_table("tool", REINGEST_COLUMNS, med)
    lines += ["| cas / restic | ratio | target |", "| --- | --- | --- |"]
    lines += [f"| {label} | {result['ratios'][key]:.2f} | {target} |" for label, key, target in RATIO_ROWS
              if key in result["ratios"]]
    lines += ["", f"Whole S3 run: {result['wall_s']:.0f} s wall (series generation and server start included)."]
    return "\n".join(lines) + "\n"


# ---- main ------------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help=f"{QUICK_STEPS} checkpoints instead of {FULL_STEPS}, {QUICK_REPEAT} repetitions")
    p.add_argument("--repeat", type=int, help=f"repetitions, medians reported (default {FULL_REPEAT}; "
                                               f"{QUICK_REPEAT} with --quick)")
    p.add_argument("--cas", help="command to run cas (default: cas beside this python, on PATH, or python -m cas)")
    p.add_argument("--workdir", help="parent of the scratch dir (default: the system temp dir)")
    p.add_argument("--out", help="also write the Markdown section here")
    p.add_argument("--json", help="write the raw figures here")
    args = p.parse_args(argv)
    if args.repeat is not None and args.repeat < 1:
        p.error("--repeat must be >= 1")
    if args.workdir:
        os.makedirs(args.workdir, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="cas-bench-s3-", dir=args.workdir))
    print(f"scratch dir {work}", file=sys.stderr)
    try:
        result = run_s3(args.quick, work, args.repeat, cas_command(args.cas))
    except RuntimeError as exc:
        print(f"bench_s3: error: {exc}", file=sys.stderr)
        return 1
    finally:
        shutil.rmtree(work, ignore_errors=True)
    text = s3_markdown(result)
    print(text)
    if args.out:
        Path(args.out).write_text(text)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
