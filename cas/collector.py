"""Python's cycle collector around cas's object-heavy work: paused while piles of objects that are
never in a cycle are built (decoded index objects and footers, gc's repack), and, in the `cas`
command's own process, set aside from its scans for objects that live as long as the process."""

from __future__ import annotations

import gc
from contextlib import contextmanager


@contextmanager
def many_objects():
    """Pause Python's cycle collector while a large decoded object is built (an index object or a footer:
    hundreds of thousands of lists and tuples, none in a cycle), which it would otherwise scan again and
    again as they pile up (a third of a sync's time). Left as it was found: paused by someone else, it
    stays paused."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


_owned = [False]  # whether this process is the `cas` command's own (owning_the_process)


@contextmanager
def owning_the_process():
    """Around the `cas` command: the process is cas's alone while it runs (see long_lived)."""
    was, _owned[0] = _owned[0], True
    try:
        yield
    finally:
        _owned[0] = was


@contextmanager
def long_lived():
    """Build objects that last as long as the process (a client and the modules behind it) with the
    cycle collector paused, and, in the `cas` command's own process, set everything then alive aside
    from its scans for good (gc.freeze): a cold S3 `cas get` spent 0.05-0.07 s of 0.6 s scanning
    botocore's objects again and again. Not in a user's process, where freezing would set aside the
    user's objects too, and cycles among them would never be collected."""
    with many_objects():
        yield
        if _owned[0]:
            gc.freeze()
