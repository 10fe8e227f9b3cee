"""GIL hand-offs for the put and get pipelines: short switch intervals while a pipeline runs.

The chunker, hashers and compressors release the GIL for each chunk (tens of microseconds of
work) and must take it back to go on. With Python's default 5 ms switch interval a thread that
wants it back can wait that long behind a thread running Python code, and the pipeline runs on
one core. While any pipeline runs, the interval is 0.2 ms; the previous value is restored when
the last one ends.
"""

from __future__ import annotations

import sys
import threading
from contextlib import contextmanager

PIPELINE_INTERVAL = 0.0002

_lock = threading.Lock()
_active = 0
_saved = 0.0


@contextmanager
def quick_handoffs():
    global _active, _saved
    with _lock:
        if _active == 0:
            _saved = sys.getswitchinterval()
            sys.setswitchinterval(min(_saved, PIPELINE_INTERVAL))
        _active += 1
    try:
        yield
    finally:
        with _lock:
            _active -= 1
            if _active == 0:
                sys.setswitchinterval(_saved)
