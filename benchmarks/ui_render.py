"""`cas ui` at size: server time to render a run of 1,000 versions and a folder of 10,000 files, and the
time until `cas ui` listens on a store of 1,000 records. Targets: <= 0.5 s per page, < 2 s to start.

    python benchmarks/ui_render.py [--versions 1000] [--files 10000]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--versions", type=int, default=1000)
    p.add_argument("--files", type=int, default=10000)
    args = p.parse_args(argv)
    import tracker
    from cas import Store
    from cas.ui.server import Site
    with tempfile.TemporaryDirectory(prefix="cas-ui-bench-") as tmp:
        uri = os.path.join(tmp, "store")
        os.environ["CAS_CACHE_DIR"] = os.path.join(tmp, "cache")
        run = tracker.init("big", store=uri)
        for step in range(1, args.versions + 1):
            run.log_text(f"loss {1 / step:.6f}", "metrics.txt", step=step)
        folder = os.path.join(tmp, "many")
        os.makedirs(folder)
        for i in range(args.files):
            with open(os.path.join(folder, f"f{i:06d}.txt"), "w") as f:
                f.write(str(i))
        tree = run.log_artifact(folder, name="folder")
        run.end()
        site = Site(Store.open(uri))
        timings = {}
        for name, render in (("run page", lambda: site.run("big")),
                             ("folder page", lambda: site.version(f"runs:/big/folder@{tree.step}", 0)),
                             ("runs page", site.runs)):
            render()  # the first render reads the records into the cache, as the server's first request does
            start = time.perf_counter()
            render()
            timings[name] = time.perf_counter() - start
        start = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-m", "cas", "--store", uri, "ui", "--port", "8795"],
                                stderr=subprocess.PIPE, text=True)
        try:
            while True:
                try:
                    urllib.request.urlopen("http://127.0.0.1:8795/store", timeout=5).read()
                    break
                except OSError:
                    time.sleep(0.02)
            timings["start until serving"] = time.perf_counter() - start
        finally:
            proc.terminate()
            proc.wait()
    print(json.dumps({"versions": args.versions, "files": args.files,
                      "seconds": {k: round(v, 3) for k, v in timings.items()}}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
