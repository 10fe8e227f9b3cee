"""Crashes, signals, full disks, changing sources, racing writers and failed restores.

Almost every test runs the real `cas` command as a subprocess, because what is under test is what a user sees:
exit codes, one-line errors, and what is left on disk. The last section places a signal at one exact point (inside a
pack's finish, as a worker thread starts, in verify's per-pack loop). Round counts of the slow loops come from
CAS_CRASH_ROUNDS (default 50).
"""

from __future__ import annotations

import filecmp
import glob
import json
import os
import random
import signal
import subprocess
import threading
import time

import numpy as np
import pytest
from blake3 import blake3
from conftest import cas_command, leftovers, one_error_line, run_cas, write_checkpoint

KiB = 1 << 10
MiB = 1 << 20
CRASH_ROUNDS = int(os.environ.get("CAS_CRASH_ROUNDS", "50"))


# ---- helpers --------------------------------------------------------------------------------------

def _default_sigint() -> None:
    # A child started from a background job may inherit SIGINT as ignored; then Python would never raise
    # KeyboardInterrupt in it. Give it the default disposition, as an interactive shell would.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _spawn(*args: str, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen(cas_command() + list(args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ, **(env or {})), preexec_fn=_default_sigint)


def _wait_for(condition, proc: subprocess.Popen, timeout: float = 120.0) -> bool:
    """Poll until condition() holds (True) or proc has exited / the timeout passed (False)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        if proc.poll() is not None:
            return bool(condition())
        time.sleep(0.002)
    return False


def _spools(store: str, pid: int) -> list[str]:
    """The pack spool files a given cas process has open in the store's tmp/ folder."""
    return glob.glob(os.path.join(store, "tmp", f".tmp.pack-{pid}-*"))





def _b3(data: bytes) -> str:
    return blake3(data).hexdigest()


def _verify(store: str, **kw) -> None:
    v = run_cas("--store", store, "verify", "--read-data", **kw)
    assert v.returncode == 0, v.stderr
    assert v.stdout.startswith("ok:"), v.stdout


def _pins(store: str) -> dict[str, str]:
    r = run_cas("--store", store, "--json", "pins")
    assert r.returncode == 0, r.stderr
    return {p["label"]: p["digest"] for p in json.loads(r.stdout)}


def _packs(store: str) -> list[str]:
    root = os.path.join(store, "packs")
    return sorted(os.path.join(d, f) for d, _, fs in os.walk(root) for f in fs if not f.startswith("."))


class _Content:
    """Seeded file contents of varying kinds; later files reuse (shifted) pieces of earlier ones."""

    def __init__(self, seed: int):
        self.rng = random.Random(seed)
        self.gen = np.random.default_rng(seed)
        self.pool: list[bytes] = []

    def fresh(self, n: int) -> bytes:
        r = self.rng.random()
        if r < 0.6:  # checkpoint-like float32 weights: compresses a little
            return self.gen.standard_normal(n // 4 + 1, dtype=np.float32).tobytes()[:n]
        if r < 0.9:  # incompressible
            return self.gen.bytes(n)
        return bytes(n)  # a run of zeros (optimizer state, padding)

    def make(self, lo: int, hi: int, *, fresh_only: bool = False) -> bytes:
        target = self.rng.randint(lo, hi)
        parts, size = [], 0
        while size < target:
            n = min(self.rng.randint(256 * KiB, 6 * MiB), target - size)
            if self.pool and not fresh_only and self.rng.random() < 0.45:
                block = self.rng.choice(self.pool)
                start = self.rng.randrange(max(1, len(block) - n))
                piece = block[start:start + n]
            else:
                piece = self.fresh(n)
            parts.append(piece)
            size += len(piece)
        data = b"".join(parts)
        start = self.rng.randrange(len(data))
        self.pool.append(data[start:start + self.rng.randint(1 * MiB, 8 * MiB)])
        if len(self.pool) > 8:
            self.pool.pop(self.rng.randrange(len(self.pool)))
        return data


@pytest.fixture(scope="module")
def big_file(tmp_path_factory):
    """300 MiB of checkpoint-like data (no holes), so that a put or get takes a noticeable while."""
    path = tmp_path_factory.mktemp("big") / "big.bin"
    data = write_checkpoint(path, 300 * MiB, seed=99)
    return str(path), _b3(data)


# ---- 1. SIGKILL at random points of a put -----------------------------------------------------------

@pytest.mark.slow
def test_sigkill_mid_put_never_damages_the_store(store_dir, tmp_path):
    content = _Content(seed=20240607)
    rng = random.Random(7)
    src = tmp_path / "src"
    src.mkdir()

    # acknowledged puts: (label, digest) -> (bytes kept in memory, or the source file kept on disk)
    acked: dict[tuple[str, str], bytes | str] = {}
    durations = []
    for i in range(3):
        data = content.make(16 * MiB, 40 * MiB, fresh_only=(i == 0))
        path = src / f"acked-{i}.bin"
        path.write_bytes(data)
        t0 = time.monotonic()
        r = run_cas("--store", store_dir, "--json", "put", str(path))
        durations.append(time.monotonic() - t0)
        assert r.returncode == 0, r.stderr
        res = json.loads(r.stdout)
        assert res["digest"] == _b3(data) and res["size"] == len(data)
        acked[(str(path), res["digest"])] = data
    typical = max(durations)

    killed = killed_writing = finished = 0
    for i in range(CRASH_ROUNDS):
        data = content.make(2 * MiB, 40 * MiB, fresh_only=(i == 0))
        path = src / f"round-{i:03d}.bin"
        path.write_bytes(data)
        p = _spawn("--store", store_dir, "--json", "put", str(path))
        if i % 3 == 0:
            # kill once it is spooling a pack: certainly in the middle of writing (round 0: at once)
            _wait_for(lambda: _spools(store_dir, p.pid), p)
            time.sleep(0 if i == 0 else rng.uniform(0, typical / 3))
        else:
            time.sleep(rng.uniform(0, typical))
        writing = p.poll() is None and bool(_spools(store_dir, p.pid))
        p.kill()
        out, err = p.communicate(timeout=120)
        if p.returncode == -signal.SIGKILL:
            killed += 1
            killed_writing += writing
            path.unlink()
        else:  # it finished before the kill: then it is acknowledged like any other put
            assert p.returncode == 0, err
            res = json.loads(out)
            assert res["digest"] == _b3(data), res
            acked[(str(path), res["digest"])] = str(path)
            finished += 1
    print(f"\n{CRASH_ROUNDS} rounds: {killed} killed ({killed_writing} while spooling a pack), {finished} finished; "
          f"typical put {typical:.2f}s")
    if CRASH_ROUNDS:
        assert killed >= 1 and killed_writing >= 1, "no round was killed mid-way: the test tested nothing"

    _verify(store_dir)
    pins = _pins(store_dir)
    out_dir = tmp_path / "restored"
    out_dir.mkdir()
    for n, ((label, digest), source) in enumerate(acked.items()):
        assert pins.get(label) == digest, f"pin {label} lost"
        dest = out_dir / f"{n}.bin"
        g = run_cas("--store", store_dir, "get", digest, "-o", str(dest))
        assert g.returncode == 0, g.stderr
        if isinstance(source, bytes):
            assert dest.read_bytes() == source
        else:
            assert filecmp.cmp(dest, source, shallow=False)
        dest.unlink()

    # the store takes new work after all that
    data = content.make(8 * MiB, 16 * MiB)
    path = src / "after.bin"
    path.write_bytes(data)
    r = run_cas("--store", store_dir, "--json", "put", str(path))
    assert r.returncode == 0, r.stderr
    digest = json.loads(r.stdout)["digest"]
    assert digest == _b3(data)
    g = run_cas("--store", store_dir, "get", digest, "-o", str(out_dir / "after.bin"))
    assert g.returncode == 0, g.stderr
    assert (out_dir / "after.bin").read_bytes() == data
    _verify(store_dir)


@pytest.mark.slow
def test_a_long_put_names_its_durable_packs_as_they_become_durable(store_dir, tmp_path, monkeypatch):
    """Index objects are written as the packs they name are durable, not once the upload queue is full
    (twice the uploads at once: 8 packs of 32 MiB on S3, where a put whose uploads kept pace left up
    to 512 MiB durable and unnamed, all of it to send again if killed). Here the local store's uploads
    (renames) always keep pace, and the queue is long."""
    from cas import Store, ingest
    from cas.datatype import replace
    monkeypatch.setattr(ingest, "INDEX_OBJECT_BYTES", 512 << 10)  # an index object per 2 packs
    store = Store.open(store_dir)
    store.config = replace(store.init(), pack_target=256 * 1024)
    store.backend.upload_concurrency = 16  # a queue of 32 packs
    events: list[str] = []
    put_file, put = store.backend.put_file, store.backend.put

    def record_pack(key, path, **kw):
        events.append("pack")
        return put_file(key, path, **kw)

    def record_index(key, data, **kw):
        events.append("index" if key.startswith("index/") else "other")
        return put(key, data, **kw)
    monkeypatch.setattr(store.backend, "put_file", record_pack)
    monkeypatch.setattr(store.backend, "put", record_index)
    data = os.urandom(24 << 20)
    (tmp_path / "f.bin").write_bytes(data)
    digest = store.put_file(tmp_path / "f.bin").digest
    assert events.count("pack") >= 60 and events.count("index") >= 12, events
    assert events.index("index") < events.count("pack") // 4, events  # the first named early, not at the end
    assert Store.open(store_dir).read_bytes(digest) == data


def test_sigkill_during_the_first_put_into_a_new_store(tmp_path):
    """Killed while creating the store itself (config, folders, first pack): the next put just works."""
    rng = random.Random(11)
    path = tmp_path / "first.bin"
    data = write_checkpoint(path, 6 * MiB, seed=5)
    t0 = time.monotonic()
    assert run_cas("--store", str(tmp_path / "scratch"), "put", str(path)).returncode == 0
    typical = time.monotonic() - t0

    killed = 0
    for i in range(max(3, CRASH_ROUNDS // 5)):
        store = str(tmp_path / f"store-{i}")
        p = _spawn("--store", store, "--json", "put", str(path))
        time.sleep(rng.uniform(0, typical))
        p.kill()
        p.communicate(timeout=60)
        killed += p.returncode == -signal.SIGKILL
        r = run_cas("--store", store, "--json", "put", str(path))
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout)["digest"] == _b3(data)
        _verify(store)
        dest = tmp_path / f"out-{i}.bin"
        g = run_cas("--store", store, "get", _b3(data), "-o", str(dest))
        assert g.returncode == 0, g.stderr
        assert dest.read_bytes() == data
    assert killed >= 1


# ---- 2. SIGINT / SIGTERM ----------------------------------------------------------------------------

@pytest.mark.parametrize("delay", [0.0, 0.3], ids=["at-first-pack", "later"])
@pytest.mark.parametrize("sig, code, message", [(signal.SIGINT, 130, "interrupted"),
                                                (signal.SIGTERM, 143, "terminated")], ids=["SIGINT", "SIGTERM"])
def test_signal_mid_put_exits_cleanly(store_dir, big_file, sig, code, message, delay):
    path, _ = big_file
    p = _spawn("--store", store_dir, "put", path)
    assert _wait_for(lambda: _spools(store_dir, p.pid), p), "put never started a pack"
    time.sleep(delay)
    assert p.poll() is None, "the put finished before the signal: the file is too small for this machine"
    p.send_signal(sig)
    out, err = p.communicate(timeout=120)
    assert p.returncode == code, err
    line = one_error_line(err)
    assert line.startswith(f"cas: error: {message}: ") and "until `cas gc` removes them" in line
    assert out == ""
    _verify(store_dir)
    assert _pins(store_dir) == {}  # an interrupted put pins nothing
    left = leftovers(store_dir)
    assert left == []


def test_signal_mid_get_leaves_nothing_at_dest(store_dir, tmp_path, big_file):
    path, digest = big_file
    r = run_cas("--store", store_dir, "put", path)
    assert r.returncode == 0, r.stderr
    for sig, code, message in [(signal.SIGINT, 130, "interrupted"), (signal.SIGTERM, 143, "terminated")]:
        parent = tmp_path / "restore"  # missing: get makes it, and must remove it again
        dest = parent / "big.bin"
        p = _spawn("--store", store_dir, "get", digest, "-o", str(dest))
        # wait until the temp sibling holds data, so the signal lands mid-restore
        assert _wait_for(lambda: any(os.path.getsize(t) > 0 for t in glob.glob(str(parent / ".big.bin.cas-tmp-*"))),
                         p), "get never started writing"
        assert p.poll() is None, "the get finished before the signal"
        p.send_signal(sig)
        out, err = p.communicate(timeout=120)
        assert p.returncode == code, err
        assert one_error_line(err) == f"cas: error: {message}"
        assert not parent.exists(), os.listdir(parent)
        assert leftovers(tmp_path) == []
    g = run_cas("--store", store_dir, "get", digest, "-o", str(tmp_path / "restore" / "big.bin"))
    assert g.returncode == 0, g.stderr
    assert filecmp.cmp(tmp_path / "restore" / "big.bin", path, shallow=False)


# ---- 3. full disk -----------------------------------------------------------------------------------

@pytest.fixture
def small_disk(tmp_path):
    """A 50 MiB tmpfs (needs root and mount rights; skipped otherwise)."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        pytest.skip("needs root to mount a small tmpfs")
    mnt = tmp_path / "disk"
    mnt.mkdir()
    try:
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=50m", "tmpfs", str(mnt)], capture_output=True,
                           text=True)
    except FileNotFoundError:
        pytest.skip("no mount command")
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {r.stderr.strip()}")
    try:
        yield mnt
    finally:
        if subprocess.run(["umount", str(mnt)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def test_full_disk_fails_cleanly_and_keeps_earlier_data(small_disk, tmp_path):
    store = str(small_disk / "store")
    small = tmp_path / "small.bin"
    small_data = write_checkpoint(small, 2 * MiB, seed=1)
    r = run_cas("--store", store, "--json", "put", str(small))
    assert r.returncode == 0, r.stderr
    small_digest = json.loads(r.stdout)["digest"]

    huge = tmp_path / "huge.bin"
    huge.write_bytes(os.urandom(100 * MiB))
    r = run_cas("--store", store, "--json", "put", str(huge))
    assert r.returncode != 0
    assert "no space left" in one_error_line(r.stderr).lower()
    assert r.stdout == ""
    assert leftovers(small_disk) == []
    assert _pins(store) == {str(small): small_digest}

    _verify(store)
    out = tmp_path / "small.out"
    g = run_cas("--store", store, "get", small_digest, "-o", str(out))
    assert g.returncode == 0, g.stderr
    assert out.read_bytes() == small_data

    # the failed put left no hidden garbage holding the space: a small put still fits
    other = tmp_path / "other.bin"
    other_data = write_checkpoint(other, 1 * MiB, seed=2)
    r = run_cas("--store", store, "--json", "put", str(other))
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["digest"] == _b3(other_data)
    _verify(store)


# ---- 4. a source that changes while it is being read ------------------------------------------------

@pytest.mark.parametrize("how", ["append", "overwrite-in-place"])
def test_file_changing_during_put_is_refused(store_dir, tmp_path, how):
    path = tmp_path / "live.bin"
    size = 200 * MiB
    write_checkpoint(path, size, seed=8)
    block = os.urandom(64 * KiB)
    stop = threading.Event()
    writes = [0]

    def mutate():
        rng = random.Random(3)
        with open(path, "r+b", buffering=0) as f:
            while not stop.is_set():
                if how == "append":
                    f.seek(0, os.SEEK_END)
                else:
                    f.seek(rng.randrange(size - len(block)))
                f.write(block)
                writes[0] += 1
                time.sleep(0.002)  # slower than cas reads, so that the put does reach the end

    writer = threading.Thread(target=mutate, daemon=True)
    writer.start()
    try:
        deadline = time.monotonic() + 10
        while writes[0] < 3 and time.monotonic() < deadline:  # it writes before the put starts reading
            time.sleep(0.001)
        r = run_cas("--store", store_dir, "--json", "put", str(path), timeout=300)
        during = writes[0]
    finally:
        stop.set()
        writer.join()
    assert during > 3
    assert r.returncode == 8, r.stderr
    line = one_error_line(r.stderr)
    assert "changed while reading" in line and str(path) in line
    assert r.stdout == ""
    assert _pins(store_dir) == {}
    s = run_cas("--store", store_dir, "--json", "stats")
    assert s.returncode == 0, s.stderr
    assert json.loads(s.stdout)["files"] == 0  # no file manifest recorded
    assert leftovers(store_dir) == []
    _verify(store_dir)

    # once it holds still, it stores fine
    r = run_cas("--store", store_dir, "--json", "put", str(path))
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["digest"] == _b3(path.read_bytes())


# ---- 5. two writers at once -------------------------------------------------------------------------

@pytest.mark.parametrize("caches", ["shared-cache", "separate-caches"])
def test_two_processes_putting_the_same_file_at_once(store_dir, tmp_path, caches):
    envs = [None, None] if caches == "shared-cache" else \
        [{"CAS_CACHE_DIR": str(tmp_path / "cache-a")}, {"CAS_CACHE_DIR": str(tmp_path / "cache-b")}]
    stored = {}
    # round 0 races to create the store itself; round 1 races on an existing store
    for rnd in range(2):
        path = tmp_path / f"same-{rnd}.bin"
        data = write_checkpoint(path, 64 * MiB, seed=20 + rnd)
        procs = [_spawn("--store", store_dir, "--json", "put", str(path), env=env) for env in envs]
        results = [p.communicate(timeout=300) for p in procs]
        for p, (_out, err) in zip(procs, results):
            assert p.returncode == 0, err
            assert err == ""
        digests = {json.loads(out)["digest"] for out, _ in results}
        assert digests == {_b3(data)}
        stored[_b3(data)] = path
    for env in envs:
        _verify(store_dir, env=env)
    assert _pins(store_dir) == {str(path): digest for digest, path in stored.items()}
    for n, (digest, path) in enumerate(stored.items()):
        for m, env in enumerate(envs):
            dest = tmp_path / f"out-{n}-{m}.bin"
            g = run_cas("--store", store_dir, "get", digest, "-o", str(dest), env=env)
            assert g.returncode == 0, g.stderr
            assert filecmp.cmp(dest, path, shallow=False)


# ---- 6. a failed get leaves nothing behind ----------------------------------------------------------

def test_get_of_unknown_reference_leaves_nothing(store_dir, tmp_path):
    path = tmp_path / "f.bin"
    write_checkpoint(path, 1 * MiB, seed=1)
    assert run_cas("--store", store_dir, "put", str(path)).returncode == 0
    unknown = _b3(b"never stored")
    dest = tmp_path / "new" / "deeper" / "out.bin"
    g = run_cas("--store", store_dir, "get", unknown, "-o", str(dest))
    assert g.returncode == 3
    line = one_error_line(g.stderr)
    assert "unknown reference" in line and unknown in line
    assert not (tmp_path / "new").exists()
    assert leftovers(tmp_path) == []


@pytest.fixture
def damaged(store_dir, tmp_path):
    """A file (and a folder holding it) whose only pack has a flipped byte in its middle."""
    folder = tmp_path / "model"
    folder.mkdir()
    data = write_checkpoint(folder / "weights.bin", 6 * MiB, seed=4)
    r = run_cas("--store", store_dir, "--json", "put", str(folder / "weights.bin"))
    assert r.returncode == 0, r.stderr
    digest = json.loads(r.stdout)["digest"]
    r = run_cas("--store", store_dir, "--json", "put", str(folder))
    assert r.returncode == 0, r.stderr
    tree = json.loads(r.stdout)["digest"]
    packs = _packs(store_dir)
    big = max(packs, key=os.path.getsize)
    with open(big, "r+b") as f:
        pos = os.path.getsize(big) // 2
        f.seek(pos)
        b = f.read(1)
        f.seek(pos)
        f.write(bytes([b[0] ^ 0x10]))
    return digest, tree, os.path.basename(big), data


def _assert_integrity_failure(g, pack_id: str) -> None:
    assert g.returncode == 5, g.stderr
    line = one_error_line(g.stderr)
    assert pack_id in line, line


def test_get_from_damaged_pack_leaves_nothing_at_new_dest(store_dir, tmp_path, damaged):
    digest, _, pack_id, _ = damaged
    dest = tmp_path / "restore" / "sub" / "weights.bin"  # the missing parents are made, then removed again
    g = run_cas("--store", store_dir, "get", digest, "-o", str(dest))
    _assert_integrity_failure(g, pack_id)
    assert not (tmp_path / "restore").exists()
    assert leftovers(tmp_path) == []


def test_get_from_damaged_pack_into_existing_folder(store_dir, tmp_path, damaged):
    digest, _, pack_id, _ = damaged
    folder = tmp_path / "existing"
    folder.mkdir()
    g = run_cas("--store", store_dir, "get", digest, "-o", str(folder))
    _assert_integrity_failure(g, pack_id)
    assert os.listdir(folder) == []


def test_get_force_from_damaged_pack_keeps_the_old_file(store_dir, tmp_path, damaged):
    digest, _, pack_id, _ = damaged
    dest = tmp_path / "keep.bin"
    dest.write_bytes(b"the user's old file")
    g = run_cas("--store", store_dir, "get", digest, "-o", str(dest), "--force")
    _assert_integrity_failure(g, pack_id)
    assert dest.read_bytes() == b"the user's old file"
    assert leftovers(tmp_path) == []


def test_get_of_folder_with_damaged_file_leaves_nothing(store_dir, tmp_path, damaged):
    _, tree, pack_id, _ = damaged
    dest = tmp_path / "model-out"
    g = run_cas("--store", store_dir, "get", tree, "-o", str(dest))
    _assert_integrity_failure(g, pack_id)
    assert not dest.exists()
    assert leftovers(tmp_path) == []


# ---- signals at exact points ---------------------------------------------------------

@pytest.mark.parametrize("signal_name", ["SIGINT", "SIGTERM"])
def test_signal_while_a_pack_is_finished_leaves_no_spool_file(cli, store_dir, tmp_path, monkeypatch, request,
                                                               signal_name):
    """In-process stand-in for a signal landing in PackWriter.finish() (its footer write or fsync): the handler
    that `cas` has installed for the signal runs there, as it would when the signal arrives."""
    from cas.pack import PackWriter

    finish = PackWriter.finish
    signum = getattr(signal, signal_name)
    if signal_name == "SIGINT":  # pytest started from a background job inherits SIGINT as ignored
        previous = signal.signal(signal.SIGINT, signal.default_int_handler)
        request.addfinalizer(lambda: signal.signal(signal.SIGINT, previous))

    def interrupted_finish(self):
        result = finish(self)
        handler = signal.getsignal(signum)
        assert callable(handler), f"no Python handler for {signal_name}"
        handler(signum, None)  # raises (KeyboardInterrupt for SIGINT; cas's own exception for SIGTERM)
        return result

    monkeypatch.setattr(PackWriter, "finish", interrupted_finish)
    path = tmp_path / "f.bin"
    write_checkpoint(path, 1 * MiB, seed=6)
    r = cli("put", str(path))
    assert r.code == (130 if signal_name == "SIGINT" else 143)
    assert leftovers(store_dir) == []


# Runs `cas ARGS...` in a subprocess where a real signal is delivered at one chosen point: right after the first
# call of MODULE:FUNCTION returns, still inside its caller (the Python-level handler runs in the loop below).
_SIGNAL_AFTER_FIRST_CALL = r"""
import importlib, signal, sys, threading
where, signame, *argv = sys.argv[1:]
module_name, name = where.split(":")
module = importlib.import_module(module_name)
real = getattr(module, name)
fired = []

def wrapper(*args, **kwargs):
    result = real(*args, **kwargs)
    if not fired:
        fired.append(True)
        signal.pthread_kill(threading.get_ident(), getattr(signal, signame))
        for _ in range(3):
            pass
    return result

setattr(module, name, wrapper)
from cas.cli import main
sys.exit(main(argv))
"""

# The same for the first worker thread cas starts: the signal lands just as the OS thread exists, inside
# threading.Thread.start(). The new thread is held until exit, then allowed to run (and report whatever it meets)
# before the interpreter finishes, so that the outcome does not depend on scheduling.
_SIGNAL_AS_A_THREAD_STARTS = r"""
import signal, sys, threading
signame, *argv = sys.argv[1:]
real = threading._start_new_thread
entered, go, done = threading.Event(), threading.Event(), threading.Event()

def start_new_thread(func, args, *rest):
    threading._start_new_thread = real  # only the first thread

    def run(*a):
        entered.set()
        go.wait()
        try:
            func(*a)
        finally:
            done.set()

    ident = real(run, args, *rest)
    entered.wait()
    signal.pthread_kill(threading.get_ident(), getattr(signal, signame))
    for _ in range(3):
        pass
    return ident

def release():
    go.set()
    done.wait(30)

threading._register_atexit(release)
threading._start_new_thread = start_new_thread
from cas.cli import main
sys.exit(main(argv))
"""


def _run_script(script: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(cas_command()[:1] + ["-c", script, *args], capture_output=True, text=True, timeout=300,
                          preexec_fn=_default_sigint)


_EXPECTED = {"SIGINT": (130, "cas: error: interrupted"), "SIGTERM": (143, "cas: error: terminated")}


@pytest.mark.parametrize("sig", ["SIGINT", "SIGTERM"])
@pytest.mark.parametrize("command", ["put", "get"])
def test_signal_while_a_worker_thread_starts_is_one_clean_line(store_dir, tmp_path, command, sig):
    path = tmp_path / "f.bin"
    write_checkpoint(path, 4 * MiB, seed=9)
    if command == "put":
        args = ["put", str(path)]
    else:
        r = run_cas("--store", store_dir, "--json", "put", str(path))
        assert r.returncode == 0, r.stderr
        args = ["get", json.loads(r.stdout)["digest"], "-o", str(tmp_path / "out.bin")]
    r = _run_script(_SIGNAL_AS_A_THREAD_STARTS, sig, "--store", store_dir, *args)
    code, line = _EXPECTED[sig]
    assert r.returncode == code, r.stderr
    assert r.stderr.startswith(line) and r.stderr.count("\n") == 1 and "Traceback" not in r.stderr, r.stderr
    assert not (tmp_path / "out.bin").exists()
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("sig", ["SIGINT", "SIGTERM"])
def test_signal_during_verify_is_an_interrupt_not_damage(store_dir, tmp_path, sig):
    path = tmp_path / "f.bin"
    write_checkpoint(path, 40 * MiB, seed=10)  # two packs
    assert run_cas("--store", store_dir, "put", str(path)).returncode == 0
    assert len(_packs(store_dir)) >= 2
    r = _run_script(_SIGNAL_AFTER_FIRST_CALL, "cas.verify:_check_pack", sig, "--store", store_dir, "verify",
                    "--read-data")
    code, line = _EXPECTED[sig]
    assert (r.returncode, r.stderr) == (code, line + "\n")
