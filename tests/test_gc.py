"""`cas gc` and `cas forget` with real processes on real storage (a folder, and SeaweedFS over S3).

1. forget then gc gives back the space only forgotten versions used, whatever pack it sits in;
2. dry runs write nothing; 3. gc looping beside a writer that re-logs forgotten content loses
nothing; 4. a writer paused past its lease commits intact data or nothing (and gc honours a
longer lease than its own); a writer committing between gc's reads and its deletes; 5. a state
machine against a model; 6. `plan_gc` on hand-made inputs; 7. the command's exit codes and JSON.

CAS_GC_ROUNDS sets the rounds of the gc-beside-a-writer loop on a folder and on S3 (default 100;
CI runs 10; a soak run sets more).
"""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time

import numpy as np
import pytest
from blake3 import blake3
from conftest import cas_command, run_cas
from hypothesis import HealthCheck, settings, strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule, run_state_machine_as_test

import tracker
from cas import Store, layout
from cas.backends.local import LocalBackend
from cas.backends.memory import MemoryBackend
from cas.blobset import Blobs
from cas.config import ChunkerParams, StoreConfig, load_config
from cas.datatype import replace
from cas.errors import IntegrityError
from cas.gc import Condemnation, execute_gc, plan_gc
from cas.pack import CHUNK, Location
from cas.pack_index import PackRecord
from cas.reach import Reach
from cas.supply import Catalog

MiB = 1 << 20
ROUNDS = int(os.environ.get("CAS_GC_ROUNDS", "100"))
S3_ROUNDS = ROUNDS


# ---- helpers ---------------------------------------------------------------------------------------

def _cas(store: str, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return run_cas("--store", store, *args, env=env)


def _ok(store: str, *args: str, env: dict | None = None):
    r = _cas(store, "--json", *args, env=env)
    assert r.returncode == 0, (args, r.stderr)
    return json.loads(r.stdout) if r.stdout.strip() else None


def _machine(tmp_path, name: str) -> dict[str, str]:
    """Another machine: its own cache."""
    return {"CAS_CACHE_DIR": str(tmp_path / f"cache-{name}")}


def _one_error_line(stderr: str) -> str:
    lines = stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("cas: error: "), stderr
    return lines[0]


def _restored(store: str, ref: str, dest, env: dict | None = None) -> bytes:
    r = _cas(store, "get", ref, "-o", str(dest), "--force", env=env)
    assert r.returncode == 0, (ref, r.stderr)
    with open(dest, "rb") as f:
        return f.read()


def _floats(n_bytes: int, seed: int) -> bytes:
    return np.random.default_rng(seed).standard_normal(n_bytes // 4, dtype=np.float32).tobytes()


def _snapshot(store: str) -> dict[str, str]:
    """Every object of a store, key → BLAKE3 of its bytes (local: every file and folder under it)."""
    if store.startswith("s3://"):
        import boto3
        bucket, _, prefix = store[len("s3://"):].partition("/")
        client = boto3.client("s3")
        pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix + "/")
        keys = [o["Key"] for page in pages for o in page.get("Contents", ())]
        return {k: blake3(client.get_object(Bucket=bucket, Key=k)["Body"].read()).hexdigest() for k in keys}
    out = {}
    for folder, _, files in os.walk(store):
        rel = os.path.relpath(folder, store)
        out[rel + "/"] = "folder"
        for name in files:
            with open(os.path.join(folder, name), "rb") as f:
                out[os.path.join(rel, name)] = blake3(f.read()).hexdigest()
    return out


def _pack_files(store: str) -> set[str]:
    return {name for _, _, files in os.walk(os.path.join(store, "packs")) for name in files
            if not name.startswith(".tmp")}


@pytest.fixture(params=["local", "s3"])
def any_store(request, store_dir):
    return request.getfixturevalue("s3_store") if request.param == "s3" else store_dir


# ---- 1. forget --keep-last 2, then gc gives the space back ------------------------------------------

REGION = 8 * MiB


def _checkpoint_series(steps: int = 6) -> list[bytes]:
    """A 32 MiB float32 checkpoint of four 8 MiB regions; each later step rewrites one of the first
    three with fresh floats (region 3 never changes). Steps 1-4 then own regions that steps 5-6 do
    not use, spread over a pack that stays partly alive (step 1's) and a pack that dies whole (step 2's).
    """
    regions = [_floats(REGION, seed=100 + r) for r in range(4)]
    out = []
    for step in range(1, steps + 1):
        if step > 1:
            regions[(step - 2) % 3] = _floats(REGION, seed=1000 + step)
        out.append(b"".join(regions))
    return out


def test_forget_then_gc_frees_what_only_forgotten_versions_used(any_store, tmp_path):
    store = any_store
    ckpt = tmp_path / "ckpt.bin"
    series = _checkpoint_series()
    with tracker.init("train", store=store) as run:
        for data in series:
            ckpt.write_bytes(data)
            run.log_artifact(ckpt, name="model", kind="checkpoint")  # default steps: 1..6
    assert [v["step"] for v in _ok(store, "log", "train")] == [1, 2, 3, 4, 5, 6]

    # measured before forgetting, from the index: stored bytes of chunks only steps 1-4 reference
    measure = Store.open(store, cache_dir=str(tmp_path / "measure-cache"))
    reach = Reach(measure)
    chunks = {v.step: reach.footprint(bytes.fromhex(v.digest)).chunks for v in measure.records.versions("train")}
    only_forgotten = set().union(*(chunks[s] for s in (1, 2, 3, 4))) - chunks[5] - chunks[6]
    expected = reach.stored(only_forgotten)
    assert reach.raw(only_forgotten) >= 4 * REGION - 2 * MiB  # regions 0-2 of step 1, region 0 of step 2
    du = _ok(store, "du", "train")
    assert sum(r["exclusive_bytes"] for r in du["versions"][:4]) <= expected  # exclusive ⊆ only-forgotten
    measure.close()

    before = _ok(store, "stats")
    forgot = _ok(store, "forget", "train", "--keep-last", "2")
    assert forgot["forgotten"] == [f"runs:/train/model@{s}" for s in (1, 2, 3, 4)]
    report = _ok(store, "gc", "--grace", "0")
    after = _ok(store, "stats")
    freed = before["stored_bytes"] - after["stored_bytes"]
    assert freed >= 0.8 * expected, (freed, expected, report)
    assert report["deleted_packs"] >= 2 and report["repacked_packs"] >= 1, report  # a dead pack, a partly dead one
    assert report["freed_bytes"] >= freed

    for step in (5, 6):  # kept versions restore byte for byte, on this machine and on another one
        assert _restored(store, f"runs:/train/model@{step}", tmp_path / f"out{step}") == series[step - 1]
        fresh = _restored(store, f"runs:/train/model@{step}", tmp_path / f"fresh{step}", env=_machine(tmp_path, "b"))
        assert fresh == series[step - 1]
    for step in (1, 2, 3, 4):
        r = _cas(store, "get", f"runs:/train/model@{step}", "-o", str(tmp_path / "gone"))
        assert r.returncode == 3 and "unknown reference" in _one_error_line(r.stderr)
        assert not (tmp_path / "gone").exists()
    assert _cas(store, "verify", "--read-data").returncode == 0
    assert _cas(store, "verify", "--read-data", env=_machine(tmp_path, "c")).returncode == 0
    again = _ok(store, "gc", "--grace", "0")  # nothing left to free
    assert again["deleted_packs"] == 0 and again["condemned_packs"] == 0, again


# ---- 2. dry runs change nothing ----------------------------------------------------------------------

def test_dry_runs_change_nothing(any_store, tmp_path):
    store = any_store
    with tracker.init("r", store=store) as run:
        for step in range(1, 6):
            path = tmp_path / f"v{step}.bin"
            path.write_bytes(_floats(MiB, seed=step))
            run.log_artifact(path, name="weights")
        run.log_text("small note", "notes.md")
    _ok(store, "forget", "r", "--name", "weights", "--keep-last", "3")
    _ok(store, "gc", "--grace", "24h")  # leaves a condemnation waiting for its grace period
    _ok(store, "forget", "r", "--name", "weights", "--keep-last", "2")  # and fresh garbage
    before = _snapshot(store)
    assert any("gc/condemned/" in k for k in before)
    for env in (None, _machine(tmp_path, "other")):
        plan = _ok(store, "gc", "--dry-run", "--grace", "0", env=env)
        assert plan["dry_run"] and plan["deleted_packs"] >= 1 and plan["condemned_packs"] >= 1, plan
        assert _cas(store, "gc", "--dry-run", env=env).returncode == 0
        would = _ok(store, "forget", "r", "--keep-last", "1", "--dry-run", env=env)
        assert would["dry_run"] and would["count"] >= 1, would
        assert _ok(store, "forget", "r", "--all", "--dry-run", env=env)["count"] >= 2
        assert _snapshot(store) == before
    assert [v["step"] for v in _ok(store, "log", "r", "--name", "weights")] == [4, 5]
    # the dry run printed the plan the real run then carries out (no writer is live here)
    done = _ok(store, "gc", "--grace", "0")
    same = ("packs", "reachable_blobs", "repacked_packs", "repacked_bytes", "condemned_packs", "deleted_packs",
            "deleted_bytes", "waiting_packs", "partly_dead_packs", "reclaimable_bytes")
    assert {k: done[k] for k in same} == {k: plan[k] for k in same}, (plan, done)


# ---- 3. gc looping with a short grace beside a writer that re-logs forgotten content ---------------

WRITER = textwrap.dedent("""
    import json, random, sys, time
    import tracker
    from cas import Store
    from cas.errors import PackMissing

    store_uri, rounds, log_path, *paths = sys.argv[1:]
    contents = [open(p, "rb").read() for p in paths]
    store = Store.open(store_uri)
    rng = random.Random(7)
    log = open(log_path, "w")
    with tracker.init("w", store=store) as run:
        previous = None
        for r in range(int(rounds)):
            path = paths[r % len(paths)]
            hold = rng.choice([0, 0, 0.2, 0.5, 1.0])
            with store.writing():  # the session starts (and learns gc's state) before the wait
                time.sleep(hold)  # gc may condemn what this session is about to deduplicate against
                v = run.log_artifact(path, name="m", kind="checkpoint")
            store.sync()  # did gc condemn a pack this version uses while its session was open?
            digest = bytes.fromhex(v.digest)
            try:
                manifest = store.file_manifest(digest)
            except PackMissing:  # gc moved it since the sync (repacked, then deleted the old pack): look again
                store.sync()
                manifest = store.file_manifest(digest)
            packs = {store.index.manifest(digest).pack_id}
            locs = [store.index.chunk(manifest.chunk_id(i)) for i in range(len(manifest))]
            packs |= {loc.pack_id for loc in locs}
            deltas = sum(1 for loc in locs if loc.base)
            into_condemned = bool(packs & store.index.condemned_packs())
            ok = store.read_bytes(v.uri) == contents[r % len(paths)]
            ok_prev = previous is None or store.read_bytes(previous[0]) == previous[1]  # live for a round of gc
            log.write(json.dumps({"round": r, "uri": v.uri, "step": v.step, "new_bytes": v.new_bytes,
                                  "into_condemned": into_condemned, "ok": ok, "ok_previous": ok_prev,
                                  "hold": hold, "delta_chunks": deltas}) + "\\n")
            log.flush()
            tracker.forget("w", name="m", keep_last=1, store=store)  # the previous version becomes garbage
            previous = (v.uri, contents[r % len(paths)])
""")

GC_LOOP = textwrap.dedent("""
    import json, os, subprocess, sys
    store, stop, log_path = sys.argv[1:]
    with open(log_path, "w") as log:
        while not os.path.exists(stop):
            r = subprocess.run([sys.executable, "-m", "cas", "--store", store, "--json", "gc", "--grace", "1s"],
                               capture_output=True, text=True)
            log.write(json.dumps({"rc": r.returncode, "out": r.stdout, "err": r.stderr}) + "\\n")
            log.flush()
""")


def _gc_beside_writer(store: str, tmp_path, rounds: int) -> None:
    """Three checkpoints (.npy arrays) the writer logs in turn, forgetting the one before: their first
    MiB is the same (deduplicated each round), the rest moves a little from one to the next, so each
    version's tensor chunks are deltas against the version before it, whose chunks stay as bases."""
    array = np.frombuffer(_floats(3 * MiB, seed=50), dtype=np.float32).copy()
    rng = np.random.default_rng(60)
    paths = []
    for k in range(3):
        path = tmp_path / f"content-{k}.npy"
        np.save(path, array)
        paths.append(str(path))
        array[MiB // 4:] += rng.standard_normal(array.size - MiB // 4).astype(np.float32) * 1e-6
    _ok(store, "init")
    lease = {"CAS_LEASE_SECONDS": "10"}
    writer_log, gc_log, stop = tmp_path / "writer.jsonl", tmp_path / "gc.jsonl", tmp_path / "stop"
    writer = subprocess.Popen([sys.executable, "-c", WRITER, store, str(rounds), str(writer_log), *paths],
                              env=dict(os.environ, **lease, **_machine(tmp_path, "writer")),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    gc = subprocess.Popen([sys.executable, "-c", GC_LOOP, store, str(stop), str(gc_log)],
                          env=dict(os.environ, **lease, **_machine(tmp_path, "gc")),
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = writer.communicate(timeout=60 + 5 * rounds)
    finally:
        stop.touch()
        if writer.poll() is None:
            writer.kill()
        _, gc_err = gc.communicate(timeout=120)
    assert writer.returncode == 0 and err == "", err
    assert gc.returncode == 0, gc_err

    logged = [json.loads(line) for line in writer_log.read_text().splitlines()]
    assert len(logged) == rounds  # the writer committed every version ...
    assert all(e["ok"] and e["ok_previous"] for e in logged), [e for e in logged if not (e["ok"] and e["ok_previous"])]
    runs = [json.loads(line) for line in gc_log.read_text().splitlines()]
    failed = [g for g in runs if g["rc"] != 0]
    assert not failed, failed[:3]
    reports = [json.loads(g["out"]) for g in runs]
    deleted = sum(g["deleted_packs"] for g in reports)
    into_condemned = sum(e["into_condemned"] for e in logged)
    stored_again = sum(e["new_bytes"] > 0 for e in logged[3:])
    assert sum(e["delta_chunks"] for e in logged) > 0  # versions were stored as deltas against the one before
    print(f"{rounds} rounds, {len(runs)} gc runs: {deleted} packs deleted, {into_condemned} versions committed "
          f"into a pack condemned during their session, {stored_again} re-logs stored condemned content again")
    if rounds >= 20:  # the races did happen: gc deleted content that was later logged again (so stored
        # again), and condemned content a session was deduplicating against (so it had to keep it)
        assert deleted >= 1 and stored_again >= 1 and into_condemned >= 1

    other = _machine(tmp_path, "checker")
    live = _ok(store, "log", "w", env=other)
    assert [v["uri"] for v in live] == [logged[-1]["uri"]]
    last = open(paths[(rounds - 1) % 3], "rb").read()
    assert _restored(store, logged[-1]["uri"], tmp_path / "last", env=other) == last
    assert _cas(store, "verify", "--read-data", env=other).returncode == 0
    _ok(store, "gc", "--grace", "0", env=other)
    final = _cas(store, "verify", "--read-data", env=_machine(tmp_path, "final"))
    assert final.returncode == 0, final.stderr + final.stdout
    assert _restored(store, logged[-1]["uri"], tmp_path / "last2", env=_machine(tmp_path, "final")) == last


def test_gc_loop_beside_a_writer_relogging_forgotten_content(store_dir, tmp_path):
    _gc_beside_writer(store_dir, tmp_path, ROUNDS)


def test_gc_loop_beside_a_writer_on_s3(s3_store, tmp_path):
    _gc_beside_writer(s3_store, tmp_path, S3_ROUNDS)


# ---- 4. a writer paused past its lease -------------------------------------------------------------

TRACKER_WRITER = textwrap.dedent("""
    import sys
    import tracker
    from cas.errors import CasError
    store, path = sys.argv[1:]
    try:
        with tracker.init("paused", store=store) as run:
            run.log_artifact(path, name="ckpt", kind="checkpoint")
    except CasError as exc:
        sys.stderr.write(f"cas: error: {exc}\\n")
        sys.exit(exc.exit_code)
""")


@pytest.mark.parametrize("how, when", [("put", "packing"), ("tracker", "uploaded")])
def test_writer_paused_past_its_lease_commits_intact_data_or_nothing(store_dir, tmp_path, how, when):
    """Paused while it packs new data (its first pack spooled), or once its first pack is in the store."""
    store = store_dir
    lease = {"CAS_LEASE_SECONDS": "2"}
    writer_env, gc_env = dict(lease, **_machine(tmp_path, "writer")), dict(lease, **_machine(tmp_path, "gc"))
    old = _floats(8 * MiB, seed=1)
    (tmp_path / "old.bin").write_bytes(old)
    _ok(store, "put", str(tmp_path / "old.bin"), "--label", "old", env=writer_env)
    _ok(store, "unpin", "old", env=writer_env)  # garbage now; the writer's machine still knows its chunks
    big = old + _floats(40 * MiB, seed=2)  # deduplicates the old content first, then packs new data
    (tmp_path / "big.bin").write_bytes(big)
    if how == "put":
        cmd = cas_command() + ["--store", store, "put", str(tmp_path / "big.bin"), "--label", "new"]
    else:
        cmd = [sys.executable, "-c", TRACKER_WRITER, store, str(tmp_path / "big.bin")]
    packs_before = _pack_files(store)
    proc = subprocess.Popen(cmd, env=dict(os.environ, **writer_env), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    spool = os.path.join(store, "tmp")

    def ready() -> bool:
        if when == "uploaded":
            return bool(_pack_files(store) - packs_before)
        return os.path.isdir(spool) and any(n.startswith(f".tmp.pack-{proc.pid}-") for n in os.listdir(spool))
    try:
        deadline = time.monotonic() + 60
        while not ready():
            assert proc.poll() is None, ("the writer ended before it could be paused", proc.communicate())
            assert time.monotonic() < deadline
            time.sleep(0.002)
        os.kill(proc.pid, signal.SIGSTOP)  # it deduplicated against the old content and is packing new data
        try:
            time.sleep(2.5)  # its lease is now older than 2 s by the store's clock
            reports = []
            for _ in range(3):
                reports.append(_ok(store, "gc", "--grace", "0", env=gc_env))
                time.sleep(0.5)
            assert sum(r["deleted_packs"] for r in reports) >= 1, reports  # gc took the old content
        finally:
            os.kill(proc.pid, signal.SIGCONT)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    reader = _machine(tmp_path, "reader")
    if proc.returncode == 0:  # committed: the data it names must be whole
        ref = "runs:/paused/ckpt" if how == "tracker" else _ok(store, "pins", env=reader)[0]["digest"]
        assert _restored(store, ref, tmp_path / "restored.bin", env=reader) == big
    else:
        assert proc.returncode == 9, err
        assert "lease expired" in _one_error_line(err)
        if how == "put":
            assert _ok(store, "pins", env=reader) == []
        else:
            assert _ok(store, "log", "paused", env=reader) == []
        # as the message says, run it again: it must not trust what the failed run wrote (gc took it)
        _ok(store, "gc", "--grace", "0", env=gc_env)
        again = subprocess.run(cmd, env=dict(os.environ, **writer_env), capture_output=True, text=True)
        assert again.returncode == 0, again.stderr
        ref = "runs:/paused/ckpt" if how == "tracker" else _ok(store, "pins", env=reader)[0]["digest"]
        assert _restored(store, ref, tmp_path / "again.bin", env=_machine(tmp_path, "reader-2")) == big
    assert _cas(store, "verify", "--read-data", env=reader).returncode == 0
    print(f"paused {how} ({when}): exit {proc.returncode}")


HOLDING_WRITER = textwrap.dedent("""
    import sys
    import tracker
    from cas import Store
    store_uri, path = sys.argv[1:]
    store = Store.open(store_uri)
    with tracker.init("long", store=store) as run:
        with store.writing():  # the session starts and learns gc's state ...
            print("session", flush=True)
            sys.stdin.readline()  # ... then waits while gc runs, then deduplicates and commits
            run.log_artifact(path, name="ckpt")
""")


def test_gc_honours_the_longer_lease_a_writer_declares(store_dir, tmp_path):
    """CAS_LEASE_SECONDS may differ between machines: gc with a 1 s lease must not judge over a
    session whose writer renews every quarter of its own 30 s lease."""
    store = store_dir
    writer_env = dict(_machine(tmp_path, "writer"), CAS_LEASE_SECONDS="30")
    gc_env = dict(_machine(tmp_path, "gc"), CAS_LEASE_SECONDS="1")
    data = _floats(4 * MiB, seed=3)
    (tmp_path / "ckpt.bin").write_bytes(data)
    _ok(store, "put", str(tmp_path / "ckpt.bin"), "--label", "old", env=writer_env)
    _ok(store, "unpin", "old", env=writer_env)
    proc = subprocess.Popen([sys.executable, "-c", HOLDING_WRITER, store, str(tmp_path / "ckpt.bin")],
                            env=dict(os.environ, **writer_env), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline() == "session\n"
        time.sleep(2)  # older than gc's lease, well within the writer's
        report = _ok(store, "gc", "--grace", "0", env=gc_env)
        assert report["deleted_packs"] == 0 and report["waiting_packs"] >= 1, report
        proc.stdin.write("go\n")
        proc.stdin.flush()
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    _ok(store, "gc", "--grace", "0", env=gc_env)  # the new ref keeps the condemned pack
    reader = _machine(tmp_path, "reader")
    assert _restored(store, "runs:/long/ckpt", tmp_path / "out.bin", env=reader) == data
    assert _cas(store, "verify", "--read-data", env=reader).returncode == 0


# ---- a writer committing while gc runs -------------------------------------------------------------

class _HookedLocal(LocalBackend):
    """A real folder backend that runs `hook` once: when the run records are listed after gc condemned
    something (in a `--grace 0` run, gc's last re-check of the roots before it deletes)."""

    def __init__(self, root: str, hook):
        super().__init__(root)
        self.hook = hook

    def list(self, prefix):
        if prefix == layout.RUNS and self.hook is not None and any(super().list(layout.GC_CONDEMNED)):
            hook, self.hook = self.hook, None
            hook()
        return super().list(prefix)


def test_a_writer_committing_during_gc_is_seen_by_its_last_check(store_dir, tmp_path):
    """A version committed after gc read the packs but before it deletes: gc's last re-check reads the
    refs again; blobs in packs it never read are not its concern (it deletes none of those)."""
    writer = Store.open(store_dir, cache_dir=str(tmp_path / "writer-cache"))
    garbage, kept, late = (_floats(300 * 1024, seed=s) for s in (1, 2, 3))
    writer.put_bytes(garbage)  # unpinned: garbage
    writer.put_bytes(kept, pin="kept")

    def commit_late_version():  # another machine logs new content while gc runs
        with tracker.init("late", store=writer) as run:
            path = tmp_path / "late.bin"
            path.write_bytes(late)
            run.log_artifact(path, name="x")
    hooked = _HookedLocal(store_dir, commit_late_version)
    gc_store = Store(hooked, load_config(hooked), cache_dir=str(tmp_path / "gc-cache"))
    report = execute_gc(gc_store, grace=0)
    assert hooked.hook is None and report["deleted_packs"] == 1, report
    reader = Store.open(store_dir, cache_dir=str(tmp_path / "reader-cache"))
    assert reader.read_bytes("runs:/late/x") == late
    assert reader.read_bytes(writer.pins()[0].digest) == kept
    assert reader.verify(read_data=True).ok


# ---- 5. a state machine against a model ------------------------------------------------------------

class _ClockedMemory(MemoryBackend):
    """The memory backend, its clock (the last-modified times gc reads) moved forward by the test."""

    def __init__(self):
        super().__init__("memory://gc-model")
        self.offset = 0.0

    def put(self, key, data, *, create_only=False):
        with self._lock:
            if create_only and key in self._objects:
                return False
            self._objects[key] = bytes(data)
            self._times[key] = time.time() + self.offset
            return True


_BLOCKS = [_floats(8 * 1024, seed=200 + i) for i in range(6)]
def _checkpoints(count: int) -> list[bytes]:
    """.npy checkpoints whose floats move a little from one to the next: stored as deltas of each other."""
    array = np.frombuffer(_floats(96 * 1024, seed=70), dtype=np.float32).copy()
    rng, out = np.random.default_rng(71), []
    for _ in range(count):
        buf = io.BytesIO()
        np.save(buf, array)
        out.append(buf.getvalue())
        array += rng.standard_normal(array.size).astype(np.float32) * 1e-6
    return out


CONTENTS = [_BLOCKS[0] + _BLOCKS[1], _BLOCKS[1] + _BLOCKS[2], _BLOCKS[0] + _BLOCKS[2] + _BLOCKS[3],
            _BLOCKS[3] + _BLOCKS[4] + _BLOCKS[5], _BLOCKS[5], b"tiny content", *_checkpoints(6)]


class GcMachine(RuleBasedStateMachine):
    """Writers (one of them holding its session open across gc runs) put, pin, log and forget; gc runs
    with grace 0 or 30 s on a clock the test moves. A model says which refs must survive: every one
    restores byte for byte on another machine, and verify --read-data passes."""

    def __init__(self):
        super().__init__()
        shm = "/dev/shm" if os.path.isdir("/dev/shm") else None  # the caches fsync: keep that cheap
        self.tmp = tempfile.mkdtemp(prefix="cas-gc-machine-", dir=shm)
        self.backend = _ClockedMemory()
        config = replace(StoreConfig.new(chunker=ChunkerParams(256, 1024, 4096)), pack_target=16 * 1024)
        assert self.backend.put(layout.CONFIG, config.to_bytes(), create_only=True)
        self.stores = [Store(self.backend, config, cache_dir=os.path.join(self.tmp, name))
                       for name in ("writer", "holder", "gc", "reader")]
        self.writer, self.holder, self.gc, self.reader = self.stores
        self.run = tracker.init("r", store=self.writer)
        self.held_run = tracker.init("h", store=self.holder)
        self.session = None  # the holder's open writing() context
        self.pins: dict[str, int] = {}  # label → content
        self.versions: dict[tuple[str, str, int], int] = {}  # (run, name, step) → content

    def _path(self, content: int) -> str:
        path = os.path.join(self.tmp, f"content-{content}.bin")
        if not os.path.exists(path):
            with open(path, "wb") as f:
                f.write(CONTENTS[content])
        return path

    @rule(content=st.integers(0, len(CONTENTS) - 1), label=st.sampled_from(["a", "b"]), delta=st.booleans())
    def put(self, content, label, delta):
        parent = label if delta and label in self.pins else None  # a checkpoint's chunks may be deltas
        self.writer.put_file(self._path(content), pin=label, parent=parent)
        self.pins[label] = content

    @precondition(lambda self: self.pins)
    @rule(data=st.data())
    def unpin(self, data):
        label = data.draw(st.sampled_from(sorted(self.pins)))
        self.writer.unpin(label)
        del self.pins[label]

    @rule(content=st.integers(0, len(CONTENTS) - 1), name=st.sampled_from(["m", "n"]))
    def log(self, content, name):
        v = self.run.log_artifact(self._path(content), name=name)
        self.versions[("r", name, v.step)] = content

    @rule(name=st.sampled_from(["m", "n"]), keep=st.integers(0, 2))
    def forget(self, name, keep):
        pinned = {blake3(CONTENTS[c]).hexdigest() for c in self.pins.values()}
        steps = sorted(s for (run, n, s) in self.versions if (run, n) == ("r", name))
        expected = [s for s in steps[:len(steps) - keep]
                    if blake3(CONTENTS[self.versions[("r", name, s)]]).hexdigest() not in pinned]
        dropped = tracker.forget("r", name=name, keep_last=keep, store=self.writer)
        assert [v.step for v in dropped] == expected
        for s in expected:
            del self.versions[("r", name, s)]

    @rule(grace=st.sampled_from([0.0, 30.0]))
    def gc(self, grace):
        execute_gc(self.gc, grace=grace)

    @rule(seconds=st.sampled_from([10.0, 40.0]))
    def tick(self, seconds):
        self.backend.offset += seconds

    @precondition(lambda self: self.session is None)
    @rule()
    def open_session(self):
        self.session = self.holder.writing()
        self.session.__enter__()  # learns gc's state now; gc may condemn more before it deduplicates

    @precondition(lambda self: self.session is not None)
    @rule(content=st.integers(0, len(CONTENTS) - 1))
    def log_in_session(self, content):
        v = self.held_run.log_artifact(self._path(content), name="held")
        self.versions[("h", "held", v.step)] = content

    @precondition(lambda self: self.session is not None)
    @rule()
    def close_session(self):
        self.session.__exit__(None, None, None)
        self.session = None

    @invariant()
    def every_live_ref_restores(self):
        self.reader.records.sync()
        self.reader.sync()
        for label, content in self.pins.items():
            assert self.reader.read_bytes(blake3(CONTENTS[content]).hexdigest()) == CONTENTS[content], label
        for (run, name, step), content in self.versions.items():
            assert self.reader.read_bytes(f"runs:/{run}/{name}@{step}") == CONTENTS[content]
        live = {(v.run, v.name, v.step) for v in self.reader.records.all_versions()}
        assert live == set(self.versions)
        report = self.reader.verify(read_data=True)
        assert report.ok, report.problems

    delta_chunks = 0  # over every example: the puts with a parent did store deltas

    def teardown(self):
        try:
            GcMachine.delta_chunks += sum(1 for _, loc in self.writer.index.iter_chunks() if loc.base)
            if self.session is not None:
                self.session.__exit__(None, None, None)
            self.backend.offset += 60
            for _ in range(3):  # garbage goes once no session is open (a repack may leave a pack partly dead)
                execute_gc(self.gc, grace=0)
                if execute_gc(self.gc, grace=0, dry_run=True)["condemned_packs"] == 0:
                    break
            else:
                raise AssertionError("gc --grace 0 keeps finding garbage")
            self.every_live_ref_restores()
        finally:
            for store in self.stores:
                store.close()
            shutil.rmtree(self.tmp, ignore_errors=True)


def test_gc_state_machine(monkeypatch):
    monkeypatch.setenv("CAS_LEASE_SECONDS", "100000")  # sessions end by release here; expiry is test 4's
    run_state_machine_as_test(GcMachine, settings=settings(max_examples=50, stateful_step_count=30, deadline=None,
                                                           suppress_health_check=list(HealthCheck)))
    assert GcMachine.delta_chunks > 0


# ---- 6. plan_gc on hand-made inputs ----------------------------------------------------------------

def _id(n: int) -> bytes:
    return bytes([n]) * 32


def _pack(n: int, *blobs: tuple[int, int], overhead: int = 100) -> PackRecord:
    """Pack n holding chunks (key number, stored length) back to back after an 8-byte header."""
    entries, offset = [], 8
    for key, length in blobs:
        entries.append(Location(_id(n), CHUNK, _id(key), offset, length, length, 0, _id(key)))
        offset += length
    return PackRecord(_id(n), offset + overhead, tuple(entries))


def _packs(*records: PackRecord) -> Catalog:
    return Catalog.of(records)


def _reach(*keys: int) -> Blobs:
    return Blobs({(CHUNK, _id(k)) for k in keys})


def _ids(*numbers: int) -> set[bytes]:
    return {_id(n) for n in numbers}


def test_plan_condemns_dead_packs_and_keeps_the_needed_ones():
    packs = _packs(_pack(1, (10, 100)), _pack(2, (20, 100)), _pack(3, (30, 100), (31, 100)))
    plan = plan_gc(packs, _reach(10, 30, 31), [], set(), now=1000.0, grace=60.0)
    assert plan.keep == _ids(1, 3) and plan.condemn == _ids(2)
    assert plan.delete == set() and plan.repack == [] and plan.finished == [] and plan.void == []
    everything_dead = plan_gc(packs, Blobs(), [], set(), now=1000.0, grace=60.0)
    assert everything_dead.condemn == _ids(1, 2, 3) and everything_dead.keep == set()


def test_plan_with_grace_0_deletes_what_it_condemns_unless_a_writer_is_live():
    """The dry run prints this plan: with grace 0 a real run condemns and deletes in one go, and only
    a writer live now (it may have deduplicated against the pack) makes the pack wait."""
    packs = _packs(_pack(1, (10, 100)), _pack(2, (20, 100)), _pack(3, (30, 70), (31, 30)))
    plan = plan_gc(packs, _reach(10, 30), [], set(), now=1000.0, grace=0.0)
    assert plan.condemn == _ids(2, 3) and plan.repack == [_id(3)]  # 30 % dead: repacked, then condemned
    assert plan.delete == _ids(2, 3) and plan.waiting == set() and plan.condemn_now_deletes
    busy = plan_gc(packs, _reach(10, 30), [], {"sessions/w"}, now=1000.0, grace=0.0)
    assert busy.condemn == _ids(2, 3) and busy.delete == set() and busy.waiting == _ids(2, 3)
    assert not busy.condemn_now_deletes


@pytest.mark.parametrize("now, grace, live, deleted", [
    (1000.0, 0.0, set(), True),                       # grace 0, no session: at once
    (1059.0, 60.0, set(), False),                     # grace not over
    (1060.0, 60.0, set(), True),                      # grace over, no session
    (1060.0, 60.0, {"sessions/w"}, False),            # grace over, a listed session still live
    (5000.0, 60.0, {"sessions/w", "sessions/x"}, False),
    (1060.0, 60.0, {"sessions/later"}, True),         # a session that started later saw the condemnation
    (1000.0, 0.0, {"sessions/w"}, False),
])
def test_plan_deletes_a_condemned_pack_after_grace_once_its_sessions_are_over(now, grace, live, deleted):
    packs = _packs(_pack(1, (10, 100)), _pack(2, (20, 100)))
    condemned = Condemnation("c1", 1000.0, frozenset(_ids(2)), frozenset({"sessions/w", "sessions/x"}))
    plan = plan_gc(packs, _reach(10), [condemned], live, now=now, grace=grace)
    assert plan.condemn == set()  # already condemned: not condemned twice
    if deleted:
        assert plan.delete == _ids(2) and plan.finished == ["c1"] and plan.waiting == set()
    else:
        assert plan.delete == set() and plan.finished == [] and plan.waiting == _ids(2)


def test_plan_keeps_a_condemned_pack_that_became_reachable_again():
    packs = _packs(_pack(1, (10, 100)), _pack(2, (20, 100), (21, 100)))
    condemned = Condemnation("c1", 1000.0, frozenset(_ids(2)), frozenset())
    plan = plan_gc(packs, _reach(10, 20), [condemned], set(), now=2000.0, grace=60.0)
    assert plan.delete == set() and _id(2) in plan.keep
    assert plan.finished == ["c1"]  # the condemnation is done with: the pack is needed, no longer condemned
    assert plan.repack == []  # a condemned pack is not repacked while condemned
    # the same blob also in a pack nobody condemned: that one is its home, the condemned one goes
    packs = _packs(_pack(1, (10, 100)), _pack(2, (20, 100), (21, 100)), _pack(3, (20, 100), (21, 100)))
    plan = plan_gc(packs, _reach(10, 20), [condemned], set(), now=2000.0, grace=60.0)
    assert plan.delete == _ids(2) and plan.keep == _ids(1, 3)


@pytest.mark.parametrize("live_len, dead_len, threshold, repacked", [
    (70, 30, 0.25, True),
    (75, 25, 0.25, True),   # at the threshold
    (80, 20, 0.25, False),
    (70, 30, 0.5, False),
    (10, 990, 1.0, False),  # threshold 1: only wholly dead packs go, and those are simply condemned
])
def test_plan_repacks_a_partly_dead_pack_above_the_threshold(live_len, dead_len, threshold, repacked):
    packs = _packs(_pack(1, (10, live_len), (11, dead_len)), _pack(2, (20, 50)))
    plan = plan_gc(packs, _reach(10, 20), [], set(), now=1000.0, grace=0.0, repack_threshold=threshold)
    assert plan.keep == _ids(1, 2)
    if repacked:
        assert plan.repack == [_id(1)] and plan.condemn == _ids(1)
        assert plan.supplies[_id(1)].keys() == [_id(10)]  # what the repack copies
    else:
        assert plan.repack == [] and plan.condemn == set()


def test_plan_judges_a_pack_by_its_blobs_not_its_footer():
    """A small pack is mostly header and footer: that is not dead space (else gc repacks it forever)."""
    packs = _packs(_pack(1, (10, 20), overhead=400))
    plan = plan_gc(packs, _reach(10), [], set(), now=1000.0, grace=0.0)
    assert plan.repack == [] and plan.condemn == set()


def test_plan_copies_only_the_blobs_a_repacked_pack_is_the_home_of():
    """A blob that a fuller pack also holds stays there: repacks do not carry duplicates along."""
    packs = _packs(_pack(1, (10, 100), (11, 100), (12, 100)), _pack(2, (20, 50), (12, 100)))
    plan = plan_gc(packs, _reach(10, 11, 20, 12), [], set(), now=1000.0, grace=0.0)
    assert plan.repack == [_id(2)]  # pack 1 (all alive) is the home of 12; pack 2 is 2/3 dead
    assert plan.supplies[_id(2)].keys() == [_id(20)]


def test_plan_drops_a_void_condemnation_and_deletes_nothing_of_it():
    packs = _packs(_pack(1, (10, 100)), _pack(2, (20, 100)))
    void = Condemnation("c1", 1000.0, frozenset(_ids(2)), None)  # gc stopped before listing the sessions
    plan = plan_gc(packs, _reach(10), [void], set(), now=9999.0, grace=0.0)
    assert plan.void == ["c1"] and plan.delete == set() and plan.finished == []


def test_plan_refuses_when_a_reachable_blob_has_no_pack():
    packs = _packs(_pack(1, (10, 100)))
    with pytest.raises(IntegrityError, match="reachable blobs are in no pack"):
        plan_gc(packs, _reach(10, 99), [], set(), now=1000.0, grace=0.0)


# ---- 7. the command: exit codes, --grace, --json -----------------------------------------------------

def test_gc_command_exit_codes_grace_parsing_and_json(cli, store_dir, tmp_path):
    missing = cli("gc")
    assert missing.code == 3 and _one_error_line(missing.err)
    folder = tmp_path / "d"
    folder.mkdir()
    (folder / "a.bin").write_bytes(_floats(512 * 1024, seed=1))
    (folder / "b.bin").write_bytes(_floats(512 * 1024, seed=2))
    assert cli("put", str(folder), "--label", "d").code == 0
    for args in (["gc"], ["gc", "--grace", "0"], ["gc", "--dry-run"]):  # nothing to delete
        r = cli(*args)
        assert r.code == 0 and r.err == "", (args, r.err)
    nothing = cli("--json", "gc", "--grace", "0").json()
    assert nothing["deleted_packs"] == 0 and nothing["freed_bytes"] == 0
    for bad in ("abc", "10x", "-1", "1.5h", "", "5 m", "1e3", "h", "24hours"):
        r = cli("gc", "--grace", bad)
        assert r.code == 2 and "invalid duration" in _one_error_line(r.err), (bad, r.err)
    r = cli("gc", "--grace")
    assert r.code == 2 and _one_error_line(r.err)
    for good in ("0", "30s", "15m", "24h", "7d", "45"):
        assert cli("gc", "--grace", good).code == 0

    # keep a.bin alone: the folder's pack becomes half dead and is repacked; an unpinned put is dead whole
    a_digest = blake3((folder / "a.bin").read_bytes()).hexdigest()
    assert cli("pin", a_digest, "--label", "a").code == 0
    assert cli("unpin", "d").code == 0
    (tmp_path / "c.bin").write_bytes(_floats(256 * 1024, seed=3))
    assert cli("put", str(tmp_path / "c.bin"), "--no-pin").code == 0
    report = cli("--json", "gc", "--grace", "0").json()
    for key in ("deleted_packs", "freed_bytes", "repacked_packs", "repacked_bytes", "condemned_packs",
                "waiting_packs"):
        assert type(report[key]) is int, (key, report)
    assert report["repacked_packs"] == 1 and report["repacked_bytes"] > 0
    assert report["deleted_packs"] == 2 and report["freed_bytes"] > 0
    assert cli("--json", "gc", "--grace", "0").json()["deleted_packs"] == 0
    assert cli("get", a_digest, "-o", str(tmp_path / "a.out")).code == 0
    assert (tmp_path / "a.out").read_bytes() == (folder / "a.bin").read_bytes()
    assert cli("verify", "--read-data").code == 0


def test_gc_removes_sessions_whose_writers_can_never_commit(cli, store_dir, tmp_path, monkeypatch):
    """A session object not renewed for twice its lease belongs to a writer whose lease lapsed for good."""
    import msgpack
    monkeypatch.setenv("CAS_LEASE_SECONDS", "10")
    src = tmp_path / "f.bin"
    src.write_bytes(b"x" * 1000)
    assert cli("put", str(src)).code == 0
    sessions = os.path.join(store_dir, "sessions")
    os.makedirs(sessions, exist_ok=True)
    old = time.time() - 3600
    for name, lease in (("stale", 10.0), ("long-lease", 7200.0), ("fresh", 10.0)):
        path = os.path.join(sessions, name)
        with open(path, "wb") as f:
            f.write(msgpack.packb({"host": "h", "pid": 1, "lease": lease}))
        if name != "fresh":
            os.utime(path, (old, old))
    report = cli("--json", "gc", "--grace", "0").json()
    assert report["expired_sessions"] == 1 and isinstance(report["expired_sessions"], int)
    assert sorted(os.listdir(sessions)) == ["fresh", "long-lease"]  # a declared longer lease is honoured


def test_a_cache_that_missed_gc_relearns_and_reads(store_dir, tmp_path):
    """gc on one machine repacks and deletes a pack another machine's cache still points at: that
    machine's next read finds the pack gone, syncs, and reads the blob from its new home."""
    from cas import Store
    folder = tmp_path / "src"
    folder.mkdir()
    keep = _floats(1 * MiB, seed=90)
    (folder / "keep.bin").write_bytes(keep)
    (folder / "junk.bin").write_bytes(_floats(3 * MiB, seed=91))
    reader = Store.open(store_dir, cache_dir=str(tmp_path / "reader-cache"))
    reader.put_selection([("keep.bin", str(folder / "keep.bin")), ("junk.bin", str(folder / "junk.bin"))])
    digest = reader.put_bytes(keep, pin="keep").digest  # dedups: every blob is in the tree's pack
    assert reader.read_bytes(digest) == keep
    gc = Store.open(store_dir, cache_dir=str(tmp_path / "gc-cache"))
    report = execute_gc(gc, grace=0)
    assert report["repacked_packs"] == 1 and report["deleted_packs"] == 1
    assert reader.read_bytes(digest) == keep  # the stale cache learned the deletion and reread
    out = tmp_path / "out.bin"
    Store.open(store_dir, cache_dir=str(tmp_path / "reader-cache")).get_file(digest, out)
    assert out.read_bytes() == keep
