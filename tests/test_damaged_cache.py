"""A damaged local cache (the LMDB index) is rebuilt, or reported in one line that says to run reindex.

Every command runs as a real process, so a SIGBUS or an LMDB assertion (SIGABRT) shows as a signal
death. The store is built once; each test starts from a copy of its healthy cache and damages it.
"""

from __future__ import annotations

import glob
import os
import random
import shutil
import struct
import subprocess
import sys

import lmdb
import pytest
from conftest import one_error_line, run_cas

from cas.index import Index

PSIZE = 4096
REINDEX_HINT = "run `cas reindex`"


class Stocked:
    """A store with a big file and a folder of small ones, and a copy of its healthy cache."""

    def __init__(self, root):
        self.root = str(root)
        self.store = os.path.join(self.root, "store")
        self.cache = os.path.join(self.root, "cache")
        self.big = os.path.join(self.root, "big.bin")
        rnd = random.Random(11)
        with open(self.big, "wb") as f:
            f.write(rnd.randbytes(5_000_000))
        src = os.path.join(self.root, "src")
        os.makedirs(src)
        for i in range(150):
            with open(os.path.join(src, f"f{i:03}"), "wb") as f:
                f.write(rnd.randbytes(rnd.randrange(500, 4000)))
        r = self.cas("--json", "put", self.big, src)
        assert r.returncode == 0, r.stderr
        self.digest = r.stdout.split('"digest": "')[1][:64]
        self.index = glob.glob(os.path.join(self.cache, "*", "*", "index"))[0]
        self.data = os.path.join(self.index, "data.mdb")
        self.healthy = os.path.join(self.root, "healthy-cache")
        shutil.copytree(self.cache, self.healthy)
        env = lmdb.open(self.index, readonly=True, lock=False, max_dbs=16)
        self.used_pages = env.info()["last_pgno"] + 1
        assert env.stat()["psize"] == PSIZE
        env.close()
        assert self.used_pages >= 20, "a cache this small would not reach branch pages"

    def cas(self, *args: str) -> subprocess.CompletedProcess:
        return run_cas("--store", self.store, *args, env={"CAS_CACHE_DIR": self.cache}, cwd=self.root, timeout=120)

    def restore_healthy(self) -> None:
        shutil.rmtree(self.cache)
        shutil.copytree(self.healthy, self.cache)

    def healthy_bytes(self) -> bytes:
        with open(os.path.join(self.healthy, os.path.relpath(self.data, self.cache)), "rb") as f:
            return f.read()

    def write_data(self, content: bytes) -> None:
        with open(self.data, "wb") as f:
            f.write(content)


@pytest.fixture(scope="module")
def stocked(tmp_path_factory):
    return Stocked(tmp_path_factory.mktemp("damaged-cache"))


@pytest.fixture
def fresh(stocked):
    stocked.restore_healthy()
    yield stocked
    assert not glob.glob(stocked.index + ".discarded-*"), "a discarded cache was left behind"


def clean(r: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    """No signal death, no traceback; a failure is exactly one error line."""
    assert 0 <= r.returncode < 128, f"exit {r.returncode}: {r.stderr[-2000:]}"
    assert "Traceback" not in r.stderr, r.stderr
    if r.returncode != 0:
        one_error_line(r.stderr)
    return r


def command(s: Stocked, name: str) -> list[str]:
    out = os.path.join(s.root, "out.bin")
    return {"get": ["get", s.digest, "-o", out, "--force"], "verify": ["verify"], "stats": ["stats"],
            "reindex": ["reindex"], "put": ["put", s.big, "--label", "again"]}[name]


def survives(s: Stocked, name: str) -> None:
    """The command works on the damaged cache, or fails in one line saying to run reindex, which fixes it."""
    r = clean(s.cas(*command(s, name)))
    if r.returncode != 0:
        assert r.returncode == 6 and REINDEX_HINT in r.stderr, r.stderr
        assert clean(s.cas("reindex")).returncode == 0
        r = clean(s.cas(*command(s, name)))
        assert r.returncode == 0, r.stderr
    assert_restores(s)


def assert_restores(s: Stocked) -> None:
    out = os.path.join(s.root, "out.bin")
    assert clean(s.cas("get", s.digest, "-o", out, "--force")).returncode == 0
    with open(out, "rb") as a, open(s.big, "rb") as b:
        assert a.read() == b.read()
    os.unlink(out)


# ---- truncation: the SIGBUS of the review -------------------------------------------------------

def truncated_size(s: Stocked, how: str) -> int:
    return {"empty": 0, "one page": PSIZE, "half": s.used_pages // 2 * PSIZE,
            "all but the last page": (s.used_pages - 1) * PSIZE}[how]


@pytest.mark.parametrize("how", ["empty", "one page", "half", "all but the last page"])
@pytest.mark.parametrize("name", ["get", "verify", "stats", "reindex", "put"])
def test_truncated_data_file_is_rebuilt(fresh, name, how):
    os.truncate(fresh.data, truncated_size(fresh, how))
    survives(fresh, name)


def test_truncation_is_replaced_at_open_with_at_most_a_warning(fresh):
    os.truncate(fresh.data, fresh.used_pages // 2 * PSIZE)
    r = clean(fresh.cas("get", fresh.digest, "-o", os.path.join(fresh.root, "out.bin"), "--force"))
    assert r.returncode == 0
    assert r.stderr == "" or (r.stderr.count("\n") == 1 and r.stderr.startswith("cas: warning: "))
    os.unlink(os.path.join(fresh.root, "out.bin"))


# ---- garbage pages and flipped bits ---------------------------------------------------------------

def with_garbage(s: Stocked, pages: list[int], seed: int) -> None:
    rnd = random.Random(seed)
    data = bytearray(s.healthy_bytes())
    for pgno in pages:
        data[pgno * PSIZE:(pgno + 1) * PSIZE] = rnd.randbytes(PSIZE)
    s.write_data(bytes(data))


def test_garbage_over_any_single_page_never_crashes_get(fresh):
    for pgno in range(fresh.used_pages):
        with_garbage(fresh, [pgno], seed=pgno)
        survives(fresh, "get")


@pytest.mark.parametrize("where", ["meta page 0", "meta page 1", "both meta pages", "a middle page",
                                   "the last page", "half the file"])
@pytest.mark.parametrize("name", ["verify", "stats", "reindex", "put"])
def test_garbage_pages_are_rebuilt(fresh, name, where):
    n = fresh.used_pages
    pages = {"meta page 0": [0], "meta page 1": [1], "both meta pages": [0, 1], "a middle page": [n // 2],
             "the last page": [n - 1], "half the file": list(range(n // 2, n))}[where]
    with_garbage(fresh, pages, seed=len(pages) + n)
    survives(fresh, name)


def structural_offsets(content: bytes) -> list[int]:
    """Offsets of the bytes LMDB trusts for structure: page headers, node pointers and node headers."""
    out = []
    for pgno in range(2, len(content) // PSIZE):
        base = pgno * PSIZE
        _, _, flags, lower, upper = struct.unpack_from("<QHHHH", content, base)
        out += range(base, base + 16)
        if flags in (1, 2) and 16 < lower <= upper <= PSIZE:
            ptrs = struct.unpack_from(f"<{(lower - 16) // 2}H", content, base + 16)
            out += range(base + 16, base + lower)
            for ptr in ptrs:
                out += range(base + ptr, base + ptr + 8)
    return out


def test_flipped_bits_in_page_structure_are_rebuilt(fresh):
    content = fresh.healthy_bytes()
    offsets = structural_offsets(content)
    rnd = random.Random(5)
    for _ in range(25):
        data = bytearray(content)
        for off in rnd.sample(offsets, 3):
            data[off] ^= 1 << rnd.randrange(8)
        fresh.write_data(bytes(data))
        survives(fresh, "get")


def test_flipped_bits_in_the_meta_pages_are_rebuilt(fresh):
    content = fresh.healthy_bytes()
    rnd = random.Random(6)
    for meta in (0, 1):
        for _ in range(6):
            data = bytearray(content)
            off = meta * PSIZE + rnd.randrange(16 + 136)
            data[off] ^= 1 << rnd.randrange(8)
            fresh.write_data(bytes(data))
            survives(fresh, "get")


def test_flipped_bits_anywhere_never_crash(fresh):
    """A flip inside a key or a value leaves a well-formed cache that names the wrong thing: reads are
    still verified, so such a get fails in one line (blaming the store, exit 5) and reindex repairs it."""
    content = fresh.healthy_bytes()
    rnd = random.Random(7)
    for _ in range(20):
        data = bytearray(content)
        for _ in range(4):
            data[rnd.randrange(2 * PSIZE, len(data))] ^= 1 << rnd.randrange(8)
        fresh.write_data(bytes(data))
        r = clean(fresh.cas(*command(fresh, "get")))
        if r.returncode != 0:
            assert clean(fresh.cas("reindex")).returncode == 0
        assert_restores(fresh)


# ---- the lock file and the folder ------------------------------------------------------------------

@pytest.mark.parametrize("how", ["deleted", "garbage", "empty"])
def test_lock_file_deleted_or_garbage_works(fresh, how):
    lock = os.path.join(fresh.index, "lock.mdb")
    if how == "deleted":
        os.unlink(lock)
    else:
        with open(lock, "wb") as f:
            f.write(b"" if how == "empty" else random.Random(3).randbytes(8192))
    for name in ("stats", "put", "verify"):
        assert clean(fresh.cas(*command(fresh, name))).returncode == 0
    assert_restores(fresh)


@pytest.mark.parametrize("kind", ["a file", "unwritable"])
def test_unusable_cache_folder_is_one_storage_error(stocked, tmp_path, kind):
    if kind == "a file":
        cache = tmp_path / "cache-file"
        cache.write_text("not a folder")
    else:
        cache = "/proc/cas-cannot-be-here"
    r = run_cas("--store", stocked.store, "stats", env={"CAS_CACHE_DIR": str(cache)})
    assert r.returncode == 6 and "cache folder" in one_error_line(r.stderr)


def test_index_folder_that_is_a_file_is_one_storage_error(fresh):
    shutil.rmtree(fresh.index)
    with open(fresh.index, "w") as f:
        f.write("not a folder")
    try:
        r = fresh.cas("stats")
        assert r.returncode == 6 and "cache folder" in one_error_line(r.stderr)
    finally:
        os.unlink(fresh.index)


# ---- errors while in use, and replacing a cache another process holds ------------------------------

def test_lmdb_errors_in_use_are_one_line_naming_reindex(tmp_path):
    from cas.errors import StorageError
    index = Index(str(tmp_path / "index"))
    index.add_pack(b"p" * 32, 10, [])

    def corrupt(txn):
        raise lmdb.CorruptedError("mdb_get: MDB_CORRUPTED")
    for call in (index._read, index._write):
        with pytest.raises(StorageError, match="damaged: run `cas reindex`"):
            call(corrupt)
    with pytest.raises(StorageError, match="damaged"):
        index._read(lambda txn: struct.unpack("<Q", b"short"))


def test_reset_replaces_a_cache_another_process_still_reads(tmp_path):
    path = str(tmp_path / "index")
    index = Index(path)
    index.add_pack(b"p" * 32, 10, [])
    reader = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, path], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert reader.stdout.readline().strip() == "p"  # it sees the one pack
    index.reset()
    assert index.pack_ids() == {}
    index.add_pack(b"q" * 32, 20, [])
    reader.stdin.write("again\n")
    reader.stdin.flush()
    assert reader.stdout.readline().strip() == "pr"  # still its own files, still sound
    assert reader.wait(timeout=30) == 0
    assert Index(path).pack_ids() == {b"q" * 32: 20}
    assert not glob.glob(path + ".discarded-*")


_HOLDER = """
import sys
from cas.index import Index
index = Index(sys.argv[1])
def show():
    print("".join(sorted(chr(k[0]) for k in index.pack_ids())), flush=True)
show()
sys.stdin.readline()
index.add_pack(b"r" * 32, 30, [])  # writes go to the files it opened
show()
"""
