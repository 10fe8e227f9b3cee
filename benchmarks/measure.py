"""Whole-process measurement for the benchmarks: wall time and the child's own peak RSS, apparent du."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

LAUNCHER = str(Path(__file__).resolve().parent / "launch.py")


@dataclass
class Proc:
    """One finished child: wall seconds (interpreter start included), peak RSS in KiB, its output."""

    seconds: float
    maxrss_kib: int
    stdout: str
    stderr: str = ""
    code: int = 0

    @property
    def rss_mb(self) -> float:
        return self.maxrss_kib * 1024 / 1e6

    def json(self):
        return json.loads(self.stdout)


def run(cmd: list, env: dict | None = None, *, cwd: Path | None = None, check: bool = True,
        show_stderr: bool = False) -> Proc:
    """Run one child via launch.py (a small forker, so the child's ru_maxrss is its own); raise on failure.

    Dirty pages are flushed first (untimed), so no tool pays for the write-back of the one before it.
    """
    cmd = [str(c) for c in cmd]
    os.sync()
    read_end, write_end = os.pipe()
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err, open(read_end, "rb") as report:
        try:
            child = subprocess.run([sys.executable, "-I", "-S", LAUNCHER, str(write_end), *cmd], stdout=out,
                                   stderr=None if show_stderr else err, env=env, cwd=cwd, pass_fds=(write_end,))
        finally:
            os.close(write_end)
        out.seek(0)
        err.seek(0)
        stderr = err.read().decode(errors="replace")
        if child.returncode and check:
            raise RuntimeError(f"{shlex.join(cmd)} exited {child.returncode}: {stderr[-2000:]}")
        seconds, maxrss = report.read().split()
        return Proc(float(seconds), int(maxrss), out.read().decode(errors="replace"), stderr, child.returncode)


def tree_bytes(root: Path) -> int:
    """Sum of the apparent sizes of the files under root (0 when it does not exist)."""
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, names in os.walk(root) for f in names)


def cas_command(override: str | None) -> list[str]:
    """`override` split as a shell line, else the cas beside this interpreter, on PATH, or `python -m cas`."""
    if override:
        return shlex.split(override)
    beside = Path(sys.executable).parent / "cas"
    if beside.exists():
        return [str(beside)]
    found = shutil.which("cas")
    return [found] if found else [sys.executable, "-m", "cas"]
