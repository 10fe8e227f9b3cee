"""What killed writers leave behind is cleaned by gc, and `gc --grace 0` beside live writers never fails
spuriously and never loses what they acknowledge."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
from conftest import cas_command, run_cas

MiB = 1 << 20


def _temp_bytes(store: str) -> int:
    total = 0
    for dirpath, _, names in os.walk(store):
        for name in names:
            if name.startswith(".tmp."):
                total += os.path.getsize(os.path.join(dirpath, name))
    return total


def _ok(store: str, *args: str, env: dict | None = None):
    r = run_cas("--store", store, "--json", *args, env=env)
    assert r.returncode == 0, (args, r.stderr)
    return json.loads(r.stdout) if r.stdout.strip() else None


def test_puts_killed_with_sigkill_leave_nothing_after_gc(store_dir, tmp_path):
    data = np.random.default_rng(0).standard_normal((48 * MiB) // 4, dtype=np.float32).tobytes()
    spool = os.path.join(store_dir, "tmp")
    _ok(store_dir, "init")
    for i in range(3):
        path = tmp_path / f"big-{i}.bin"
        path.write_bytes(data[: (40 + i) * MiB])
        proc = subprocess.Popen(cas_command() + ["--store", store_dir, "put", str(path)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while not (os.path.isdir(spool) and any(os.path.getsize(os.path.join(spool, n)) > MiB
                                                for n in os.listdir(spool) if n.startswith(f".tmp.pack-{proc.pid}-"))):
            assert proc.poll() is None and time.monotonic() < deadline, "the put ended before it could be killed"
            time.sleep(0.005)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    left = _temp_bytes(store_dir)
    assert left > 3 * MiB
    stats = _ok(store_dir, "stats")
    assert stats["temp_bytes"] == left and stats["temp_files"] >= 3
    assert _ok(store_dir, "gc", "--dry-run", "--grace", "0")["removed_temp_bytes"] == left
    assert _temp_bytes(store_dir) == left  # a dry run removes nothing
    kept = _ok(store_dir, "gc")  # the default grace: these are seconds old, so they stay
    assert kept["removed_temp_files"] == 0 and _temp_bytes(store_dir) == left
    report = _ok(store_dir, "gc", "--grace", "0")
    assert report["removed_temp_bytes"] == left
    assert _temp_bytes(store_dir) < MiB
    assert run_cas("--store", store_dir, "verify").returncode == 0


WRITER = textwrap.dedent("""
    import os, sys
    import numpy as np
    from cas import Store
    store_uri, name, rounds, folder = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    base = np.random.default_rng(7).standard_normal(3 << 18, dtype=np.float32).tobytes()  # 3 MiB shared by all
    store = Store.open(store_uri)
    for i in range(rounds):
        tail = np.random.default_rng(1000 * hash(name) % 997 + i).standard_normal(1 << 16, dtype=np.float32)
        path = os.path.join(folder, f"{name}-{i}.bin")
        with open(path, "wb") as f:
            f.write(base + tail.tobytes())
        res = store.put_file(path, pin=f"{name}-{i}")
        print(f"{name}-{i} {res.digest}", flush=True)
        if i % 2 == 0:
            store.unpin(f"{name}-{i}")  # garbage now: gc may take it while the next put dedups against it
            print(f"{name}-{i} -", flush=True)
""")


def test_gc_grace_0_beside_two_writers_putting_and_unpinning(store_dir, tmp_path):
    rounds = int(os.environ.get("CAS_GC_ROUNDS", "100"))
    _ok(store_dir, "init")
    writers = []
    for name in ("w1", "w2"):
        env = dict(os.environ, CAS_CACHE_DIR=str(tmp_path / f"cache-{name}"))
        writers.append(subprocess.Popen([sys.executable, "-c", WRITER, store_dir, name, str(max(6, rounds)),
                                         str(tmp_path)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                        text=True))
    gc_env = {"CAS_CACHE_DIR": str(tmp_path / "cache-gc")}
    runs = 0
    try:
        while runs < rounds or any(w.poll() is None for w in writers):
            r = run_cas("--store", store_dir, "--json", "gc", "--grace", "0", env=gc_env)
            assert r.returncode == 0, r.stderr  # never a spurious failure beside live writers
            runs += 1
            if runs > 20 * rounds + 100:
                break
    finally:
        outputs = [w.communicate(timeout=300) for w in writers]
    for w, (_out, err) in zip(writers, outputs):
        assert w.returncode == 0, err
    pinned = {}
    for out, _ in outputs:
        for line in out.splitlines():
            label, digest = line.split()
            if digest == "-":
                pinned.pop(label)
            else:
                pinned[label] = digest
    reader = {"CAS_CACHE_DIR": str(tmp_path / "cache-reader")}
    for label, digest in pinned.items():  # every acknowledged, still pinned put restores byte for byte
        dest = tmp_path / f"restored-{label}"
        assert run_cas("--store", store_dir, "get", digest, "-o", str(dest), env=reader).returncode == 0
        assert dest.read_bytes() == (tmp_path / f"{label}.bin").read_bytes()
    assert run_cas("--store", store_dir, "verify", "--read-data", env=reader).returncode == 0
    print(f"gc --grace 0 ran {runs} times beside 2 writers; {len(pinned)} pinned puts restored")
