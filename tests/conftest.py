"""Shared fixtures: an isolated cache dir per test, a store folder, and ways to run the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass

import pytest

from cas.cli import main


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    monkeypatch.setenv("CAS_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("CAS_STORE", raising=False)


@pytest.fixture
def store_dir(tmp_path):
    return str(tmp_path / "store")


@dataclass
class Result:
    code: int
    out: str
    err: str

    def json(self):
        return json.loads(self.out)


@pytest.fixture
def cli(store_dir, capsysbinary):
    """Run `cas --store <store_dir> ...` in-process; returns (exit code, stdout, stderr)."""
    def run(*args: str, store: str | None = store_dir) -> Result:
        argv = (["--store", store] if store else []) + list(args)
        code = main(argv)
        cap = capsysbinary.readouterr()
        return Result(code, cap.out.decode(errors="replace"), cap.err.decode(errors="replace"))
    return run


def cas_command() -> list[str]:
    return [sys.executable, "-m", "cas"]


def run_cas(*args: str, env=None, **kw) -> subprocess.CompletedProcess:
    """Run the CLI as a real subprocess (for signals, crashes and timing)."""
    full_env = dict(os.environ, **(env or {}))
    return subprocess.run(cas_command() + list(args), capture_output=True, text=True, env=full_env, **kw)


def write_checkpoint(path, size: int, seed: int = 0) -> bytes:
    """Checkpoint-like bytes: float32 weights from a seeded normal distribution."""
    import numpy as np
    data = np.random.default_rng(seed).standard_normal(size // 4, dtype=np.float32).tobytes()
    data += b"\0" * (size - len(data))
    with open(path, "wb") as f:
        f.write(data)
    return data
