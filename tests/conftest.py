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
    # no test may reach beyond 127.0.0.1: no instance metadata, no user AWS config
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", os.devnull)
    for name in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
                 "AWS_PROFILE", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def store_dir(tmp_path):
    return str(tmp_path / "store")


@dataclass
class Result:
    code: int
    out: str
    err: str
    raw: bytes = b""  # stdout as bytes

    def json(self):
        return json.loads(self.out)


@pytest.fixture
def cli(store_dir, capsysbinary):
    """Run `cas --store <store_dir> ...` in-process; returns (exit code, stdout, stderr)."""
    def run(*args: str, store: str | None = store_dir) -> Result:
        argv = (["--store", store] if store else []) + list(args)
        code = main(argv)
        cap = capsysbinary.readouterr()
        return Result(code, cap.out.decode(errors="replace"), cap.err.decode(errors="replace"), cap.out)
    return run


def cas_command() -> list[str]:
    return [sys.executable, "-m", "cas"]


def run_cas(*args: str, env=None, **kw) -> subprocess.CompletedProcess:
    """Run the CLI as a real subprocess (for signals, crashes and timing)."""
    full_env = dict(os.environ, **(env or {}))
    return subprocess.run(cas_command() + list(args), capture_output=True, text=True, env=full_env, **kw)


def one_error_line(err: str) -> str:
    """stderr must be exactly one error line, and no traceback: `cas: error: ...`, or with --json one JSON
    object with error, exit_code and type. Returns it as the text line."""
    assert "Traceback" not in err, err
    lines = err.splitlines()
    assert len(lines) == 1, err
    if lines[0].startswith("{"):
        obj = json.loads(lines[0])
        assert set(obj) == {"error", "exit_code", "type"}, obj
        return "cas: error: " + obj["error"]
    assert lines[0].startswith("cas: error: "), err
    return lines[0]


def leftovers(root) -> list[str]:
    """Temp files or folders anywhere under root: atomic-write temps (.tmp*) and restore siblings (*cas-tmp*)."""
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            if name.startswith(".tmp") or "cas-tmp" in name:
                found.append(os.path.join(dirpath, name))
    return sorted(found)


def files_under(root) -> dict[str, bytes]:
    """Relative POSIX path → bytes of every file under root (a whole store, for before/after comparisons)."""
    out = {}
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            full = os.path.join(dirpath, name)
            with open(full, "rb") as f:
                out[os.path.relpath(full, root).replace(os.sep, "/")] = f.read()
    return out


def write_checkpoint(path, size: int, seed: int = 0) -> bytes:
    """Checkpoint-like bytes: float32 weights from a seeded normal distribution."""
    import numpy as np
    data = np.random.default_rng(seed).standard_normal(size // 4, dtype=np.float32).tobytes()
    data += b"\0" * (size - len(data))
    with open(path, "wb") as f:
        f.write(data)
    return data


# ---- real S3 servers (see tests/s3servers.py) ----------------------------------------------------

@pytest.fixture
def synthetic(store_dir):
    """A generated store of 20,000 chunks (20 files), a quarter of its files unpinned, where `cli` looks."""
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))
    from synth_store import make_store
    where = store_dir
    made = make_store(where, 20_000, chunk_size=64, chunks_per_file=1000, files_per_pack=8, packs_per_index=2,
                      garbage=0.25, seed=b"testseed")
    return where, made


@pytest.fixture(scope="session")
def seaweedfs(tmp_path_factory):
    from s3servers import start_seaweedfs
    server = start_seaweedfs(str(tmp_path_factory.mktemp("seaweedfs")))
    yield server
    server.stop()


@pytest.fixture(scope="session")
def moto(tmp_path_factory):
    from s3servers import start_moto
    server = start_moto(str(tmp_path_factory.mktemp("moto")))
    yield server
    server.stop()


_bucket_counter = iter(range(1_000_000))


def _s3_env(server, monkeypatch):
    for name, value in server.env().items():
        monkeypatch.setenv(name, value)
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def s3_store(seaweedfs, monkeypatch):
    """A fresh s3:// store URI on the SeaweedFS server (a new bucket per test), with the env set for it."""
    _s3_env(seaweedfs, monkeypatch)
    return f"s3://cas-test-{os.getpid()}-{next(_bucket_counter)}/store"


@pytest.fixture
def moto_store(moto, monkeypatch):
    _s3_env(moto, monkeypatch)
    return f"s3://cas-moto-{os.getpid()}-{next(_bucket_counter)}/store"


# ---- hostile bytes for the decoders' property tests ----------------------------------------------

def byte_change(data: bytes):
    """A hypothesis strategy: data with bits flipped, cut short, or a stretch replaced."""
    from hypothesis import strategies as st

    @st.composite
    def changed(draw) -> bytes:
        how = draw(st.sampled_from(["flip", "truncate", "splice"]))
        if how == "flip":
            out = bytearray(data)
            for bit in draw(st.lists(st.integers(0, 8 * len(data) - 1), min_size=1, max_size=8)):
                out[bit // 8] ^= 1 << (bit % 8)
            return bytes(out)
        if how == "truncate":
            return data[:draw(st.integers(0, len(data) - 1))]
        start = draw(st.integers(0, len(data)))
        end = draw(st.integers(start, min(len(data), start + 64)))
        return data[:start] + draw(st.binary(max_size=64)) + data[end:]
    return changed()

