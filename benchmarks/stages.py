"""Where a put's and a get's CPU time goes: each stage of the pipeline alone, on one core, on one checkpoint.

Runs every stage of `cas put` single-threaded over the same bytes (read from the page cache, read the
checkpoint's layout from its header, cut chunks as a format 3 store does: tensors at fixed offsets,
the rest with FastCDC; BLAKE3 of each chunk, BLAKE3 of the file, compression of each chunk at the
store's level: byte planes for float tensor chunks, zstd for the others; BLAKE3 of the pack bytes)
and of `cas get` (decompression, the two BLAKE3 checks), then times
whole `cas put` / `cas get` processes of the same file (wall, user and system CPU). The sum of the
stages over the cores, plus start-up, is the floor for the pipeline on this machine.

    python benchmarks/stages.py                   # a generated 249 MB bf16 checkpoint
    python benchmarks/stages.py --kind ft-full-pt # any kind of benchmarks/series.py
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import blake3

from cas import codec
from cas.chunker import Chunker, tensor_regions
from cas.config import ChunkerParams
from cas.tensorfiles import read_layout

sys.path.insert(0, str(Path(__file__).resolve().parent))
import series  # noqa: E402
from measure import cas_command  # noqa: E402

LEVEL = 1  # the store's default chunk level


def timed(fn) -> float:
    start = time.thread_time()
    fn()
    return time.thread_time() - start


def _read_in_segments(path: Path, segment: int = 2 << 20) -> None:
    """Read the file as cas does: into one reused buffer, a segment at a time."""
    buf = bytearray(segment)
    with open(path, "rb", buffering=0) as f:
        while f.readinto(buf):
            pass


def stage_times(path: Path) -> tuple[int, dict[str, float]]:
    """Single-threaded CPU seconds of each stage over the file's bytes, with cas's own chunker and codec."""
    data = path.read_bytes()
    view = memoryview(data)
    out: dict[str, float] = {}
    out["read (page cache)"] = timed(lambda: _read_in_segments(path))
    layouts: list = []
    out["layout (header)"] = timed(lambda: layouts.append(read_layout(lambda a, b: view[a:b], len(data))))
    regions = tensor_regions(layouts[0]) if layouts[0] is not None else None
    chunker = Chunker(ChunkerParams())
    cut: list[tuple[list[int], list[int]]] = []
    name = "tensor-aligned + FastCDC" if regions else "FastCDC"
    out[name] = timed(lambda: cut.append(chunker._cut_regions(view, 0, regions) if regions
                                         else (chunker.cut(view), [])))
    lengths, widths = cut[0]
    widths = widths or [0] * len(lengths)
    chunks, pos = [], 0
    for n in lengths:
        chunks.append(view[pos:pos + n])
        pos += n
    floats = sum(len(c) for c, w in zip(chunks, widths) if w)
    out["BLAKE3 chunk ids"] = timed(lambda: [blake3.blake3(c).digest() for c in chunks])
    out["BLAKE3 file digest"] = timed(lambda: blake3.blake3(view).digest())
    stored: list[tuple[int, bytes]] = []
    out[f"compress ({floats / len(data):.0%} by byte plane, the rest zstd {LEVEL})"] = timed(
        lambda: stored.extend(codec.compress_planes(c, w, LEVEL) if w else codec.compress(c, LEVEL)
                              for c, w in zip(chunks, widths)))
    out["BLAKE3 pack bytes"] = timed(lambda: [blake3.blake3(s).digest() for _, s in stored])
    out["decompress"] = timed(
        lambda: [codec.decompress(k, s, len(c), name="c") for (k, s), c in zip(stored, chunks)])
    return len(data), out


def cas_process(args: list[str], env: dict) -> dict:
    """Wall, user and system seconds of one cas process."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run(args, env=env, check=True, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return {"wall": wall, "user": after.ru_utime - before.ru_utime, "sys": after.ru_stime - before.ru_stime}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--kind", default="bf16", choices=series.KINDS)
    p.add_argument("--scale", type=float, default=4.0)
    args = p.parse_args(argv)
    cas = cas_command(None)
    with tempfile.TemporaryDirectory(prefix="cas-stages-") as tmp:
        work = Path(tmp)
        path = series.generate(args.kind, work / "data", 1, args.scale)[0]
        size, stages = stage_times(path)
        env = dict(os.environ, CAS_CACHE_DIR=str(work / "cache"))
        store = ["--store", str(work / "store")]
        put = cas_process([*cas, *store, "put", "--no-pin", str(path)], env)
        digest = blake3.blake3(path.read_bytes()).hexdigest()
        get = cas_process([*cas, *store, "get", "-o", str(work / "out"), digest], env)
        again = cas_process([*cas, *store, "put", "--no-pin", str(path)], env)
        start = cas_process([*cas, "--version"], env)
    mb = size / 1e6
    print(f"{args.kind} checkpoint, {mb:.1f} MB; each stage alone on one core:\n")
    print("| stage | CPU s | MB/s per core |\n|---|---|---|")
    for name, seconds in stages.items():
        print(f"| {name} | {seconds:.3f} | {mb / seconds:,.0f} |")
    put_stages = sum(v for k, v in stages.items() if k != "decompress")
    get_stages = stages["read (page cache)"] + stages["decompress"] + stages["BLAKE3 chunk ids"] + \
        stages["BLAKE3 file digest"]
    print(f"\nput stages {put_stages:.2f} CPU s, get stages {get_stages:.2f} CPU s; "
          f"`cas --version` {start['wall']:.2f} s\n")
    print("| process | wall s | user s | sys s |\n|---|---|---|---|")
    for name, r in (("cas put (new)", put), ("cas put (unchanged)", again), ("cas get", get)):
        print(f"| {name} | {r['wall']:.2f} | {r['user']:.2f} | {r['sys']:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
