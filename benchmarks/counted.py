"""Run `cas ARGS...` (or `-c CODE`) in this process, counting the local backend's GETs by top-level key
folder (runs, records, index, ...); the counts go to the JSON file named by CAS_BENCH_GETS at exit.

For the benchmarks only: the counting is a wrapper installed here, not a hook in cas.

    CAS_BENCH_GETS=gets.json python benchmarks/counted.py runs --json --store STORE
"""

from __future__ import annotations

import atexit
import json
import os
import sys
import threading

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from cas.backends.local import LocalBackend  # noqa: E402

COUNTS: dict[str, int] = {}
_lock = threading.Lock()
_get = LocalBackend.get


def _counting_get(self, key, start=0, end=None):
    with _lock:
        top = key.split("/", 1)[0]
        COUNTS[top] = COUNTS.get(top, 0) + 1
    return _get(self, key, start, end)


def _report() -> None:
    path = os.environ.get("CAS_BENCH_GETS")
    if path:
        with open(path, "w") as f:
            json.dump(COUNTS, f)


LocalBackend.get = _counting_get  # type: ignore[method-assign]
atexit.register(_report)

if __name__ == "__main__":
    if sys.argv[1:2] == ["-c"]:
        exec(sys.argv[2])
    else:
        from cas.cli import main
        sys.exit(main(sys.argv[1:]))
