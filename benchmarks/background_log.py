"""log_artifact(wait=False) against the blocking call, on S3 (a local SeaweedFS server, as bench_s3).

In one process: a run logs a fresh 1 GB bf16 checkpoint blocking, then another with wait=False (the
time until the call returns, then until run.wait()), and deletes that file right after the call; each
restores byte for byte afterwards from a fresh cache. Median of --repeat rounds, each checkpoint new
bytes (no dedup between them). Prints JSON; the target is returned <= 0.6x blocking.

    python benchmarks/background_log.py [--size-mb 1000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from bench_s3 import BUCKET, local_s3, s3_client  # noqa: E402


def checkpoint(path: Path, size: int, seed: int) -> str:
    """A bf16-like file of `size` bytes (random weights near zero, as series.py makes), and its sha256."""
    import numpy as np
    rng = np.random.default_rng(seed)
    digest = hashlib.sha256()
    with open(path, "wb") as f:
        left = size
        while left:
            n = min(left, 64 << 20)
            block = (rng.standard_normal(n // 4, dtype=np.float32) * 0.02).view(np.uint32) >> 16
            data = block.astype(np.uint16).tobytes()[:n]
            data += bytes(n - len(data))
            f.write(data)
            digest.update(data)
            left -= n
    return digest.hexdigest()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size-mb", type=int, default=1000)
    p.add_argument("--repeat", type=int, default=3)
    args = p.parse_args(argv)
    size = args.size_mb * 1_000_000
    with tempfile.TemporaryDirectory(prefix="cas-bg-") as tmp:
        work = Path(tmp)
        with local_s3(work) as server:
            os.environ.update(server.env())
            s3_client(server).create_bucket(Bucket=BUCKET)
            import tracker
            from cas import Store
            rounds = []
            for rep in range(args.repeat):
                uri = f"s3://{BUCKET}/rep{rep}"
                os.environ["CAS_CACHE_DIR"] = str(work / f"cache{rep}")
                run = tracker.init("bg", store=uri)
                files = [work / f"blocking{rep}.bin", work / f"background{rep}.bin"]
                sums = [checkpoint(f, size, seed=2 * rep + i) for i, f in enumerate(files)]
                t0 = time.perf_counter()
                run.log_artifact(files[0], name="blocking")
                blocking = time.perf_counter() - t0
                t0 = time.perf_counter()
                run.log_artifact(files[1], name="background", wait=False)
                returned = time.perf_counter() - t0
                files[1].unlink()  # gone right after the call
                run.wait()
                stored = time.perf_counter() - t0
                run.end()
                os.environ["CAS_CACHE_DIR"] = str(work / f"fresh{rep}")
                fresh = Store.open(uri)
                for name, want in zip(("blocking", "background"), sums):
                    out = work / f"restored-{name}"
                    fresh.get_file(f"runs:/bg/{name}", out, force=True)
                    if hashlib.sha256(out.read_bytes()).hexdigest() != want:
                        raise SystemExit(f"{name}: restored bytes differ")
                    out.unlink()
                files[0].unlink()
                rounds.append({"blocking_s": blocking, "returned_s": returned, "stored_s": stored})
                print(f"[bg] round {rep}: {rounds[-1]}", file=sys.stderr, flush=True)
    med = {k: statistics.median(r[k] for r in rounds) for k in rounds[0]}
    result = {"size_bytes": size, "rounds": rounds, "median": med,
              "returned_over_blocking": med["returned_s"] / med["blocking_s"], "target": 0.6}
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
