"""Deduplication and round trips: edited and shifted checkpoints cost only their changed chunks."""

from __future__ import annotations

import os

import pytest
from blake3 import blake3
from conftest import write_checkpoint

from cas import Store

MiB = 1 << 20


@pytest.fixture
def ckpt(tmp_path):
    path = tmp_path / "ckpt.bin"
    return path, write_checkpoint(path, 64 * MiB, seed=1)


def test_edit_and_insert_cost_only_changed_chunks(cli, tmp_path, ckpt):
    path, data = ckpt
    first = cli("--json", "put", str(path)).json()
    assert first["digest"] == blake3(data).hexdigest()
    assert first["size"] == len(data) and first["new_bytes"] == len(data)

    edited = bytearray(data)
    start = 20 * MiB
    edited[start:start + MiB] = os.urandom(MiB)  # rewrite 1 MiB in place
    (tmp_path / "edited.bin").write_bytes(edited)
    second = cli("--json", "put", str(tmp_path / "edited.bin")).json()
    assert 0 < second["new_bytes"] <= 2 * MiB

    mid = len(data) // 2
    inserted = data[:mid] + os.urandom(1000) + data[mid:]
    (tmp_path / "inserted.bin").write_bytes(inserted)
    third = cli("--json", "put", str(tmp_path / "inserted.bin")).json()
    assert 0 < third["new_bytes"] <= MiB

    again = cli("--json", "put", str(path)).json()
    assert again["new_bytes"] == 0 and again["digest"] == first["digest"]

    for res, content in ((first, data), (second, bytes(edited)), (third, inserted)):
        out = tmp_path / f"restored-{res['digest'][:8]}"
        assert cli("get", res["digest"], "-o", str(out)).code == 0
        assert out.read_bytes() == content


def test_cat_with_prefix_streams_exact_bytes(store_dir, tmp_path, capfdbinary):
    from cas.cli import main
    data = os.urandom(3 * MiB + 17)
    (tmp_path / "f.bin").write_bytes(data)
    store = Store.open(store_dir)
    digest = store.put_file(tmp_path / "f.bin").digest
    capfdbinary.readouterr()
    assert main(["--store", store_dir, "cat", digest[:12]]) == 0
    assert capfdbinary.readouterr().out == data
    assert main(["--store", store_dir, "cat", "cas://" + digest]) == 0
    assert capfdbinary.readouterr().out == data


def test_digest_is_b3sum_of_the_file(store_dir, tmp_path):
    data = os.urandom(MiB) * 3 + b"tail"
    (tmp_path / "f").write_bytes(data)
    res = Store.open(store_dir).put_file(tmp_path / "f")
    assert res.digest == blake3(data).hexdigest()


def test_empty_file_and_small_bytes(store_dir, tmp_path):
    store = Store.open(store_dir)
    (tmp_path / "empty").write_bytes(b"")
    res = store.put_file(tmp_path / "empty")
    assert res.size == 0 and res.digest == blake3(b"").hexdigest()
    assert store.read_bytes(res.digest) == b""
    small = store.put_bytes(b"hello")
    assert store.read_bytes(small.digest) == b"hello"
    out = tmp_path / "out"
    store.get_file(res.digest, out)
    assert out.read_bytes() == b""


def test_open_file_is_seekable_and_reads_only_needed_chunks(store_dir, tmp_path):
    data = os.urandom(8 * MiB)
    (tmp_path / "f").write_bytes(data)
    store = Store.open(store_dir)
    digest = store.put_file(tmp_path / "f").digest
    reads = []
    original_get = store.backend.get

    def counting_get(key, start=0, end=None):
        reads.append((start, end))
        return original_get(key, start, end)

    store.backend.get = counting_get
    with store.open_file(digest[:10]) as f:
        assert f.read(8) == data[:8]
        f.seek(5 * MiB + 3)
        assert f.read(100) == data[5 * MiB + 3: 5 * MiB + 103]
        f.seek(-10, os.SEEK_END)
        assert f.read() == data[-10:]
    assert len(reads) <= 6
    assert sum(e - s for s, e in reads if e is not None) < 2 * MiB


def test_many_small_files_use_few_objects(store_dir, tmp_path):
    folder = tmp_path / "many"
    for i in range(2000):
        sub = folder / f"d{i % 20}"
        sub.mkdir(parents=True, exist_ok=True)
        (sub / f"f{i}.txt").write_text(f"file number {i}\n" * (i % 7))
    store = Store.open(store_dir)
    res = store.put_file(folder)
    objects = [k for k, _ in store.backend.list("")]
    assert len(objects) <= 5, objects
    out = tmp_path / "out"
    store.get_file(res.digest, out)
    for i in range(0, 2000, 97):
        assert (out / f"d{i % 20}" / f"f{i}.txt").read_text() == f"file number {i}\n" * (i % 7)


# ---- re-putting an unchanged file: hashed on every core, not chunked again -----------------------

def test_unchanged_file_is_rehashed_not_rechunked(store_dir, tmp_path, monkeypatch):
    from cas.ingest import PutSession
    path = tmp_path / "ckpt.bin"
    data = write_checkpoint(path, 3 * MiB, seed=7)
    store = Store.open(store_dir)
    first = store.put_file(path)

    def no_chunking(self, stream, size_hint=None, regions=None, bases=None):
        raise AssertionError("an unchanged file was chunked again")
    monkeypatch.setattr(PutSession, "put_stream", no_chunking)
    again = store.put_file(path)
    assert (again.digest, again.new_bytes, again.size) == (first.digest, 0, len(data))

    path.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))  # new content: the fast path must not answer
    with pytest.raises(AssertionError, match="chunked again"):
        store.put_file(path)


def test_a_stale_hint_never_decides_the_digest(store_dir, tmp_path):
    """Even if the remembered digest for this very file (same path and stat) is wrong, the bytes decide."""
    from cas.file_hints import identity as _identity
    store = Store.open(store_dir)
    a, b = tmp_path / "a.bin", tmp_path / "b.bin"
    write_checkpoint(a, 2 * MiB, seed=1)
    data_b = write_checkpoint(b, 2 * MiB, seed=2)
    digest_a = store.put_file(a).digest
    store.put_file(b)
    store.index.remember_files({_identity(str(b), os.stat(b)): bytes.fromhex(digest_a)})
    again = store.put_file(b)
    assert again.digest == blake3(data_b).hexdigest() != digest_a
    assert store.index.remembered_digest(_identity(str(b), os.stat(b))) == bytes.fromhex(again.digest)


def test_a_put_leaves_the_switch_interval_as_it_found_it(store_dir, tmp_path):
    """The pipeline shortens the GIL switch interval only while it runs (cas/handoff.py)."""
    import sys
    before = sys.getswitchinterval()
    path = tmp_path / "ckpt.bin"
    write_checkpoint(path, 3 * MiB, seed=3)
    store = Store.open(store_dir)
    digest = store.put_file(path).digest
    assert sys.getswitchinterval() == before
    store.get_file(digest, tmp_path / "out.bin")
    assert sys.getswitchinterval() == before
    assert (tmp_path / "out.bin").read_bytes() == path.read_bytes()


def test_only_large_files_are_remembered_and_reindex_forgets_them(store_dir, tmp_path):
    """Files under 1 MiB are not remembered (chunking them is as cheap as hashing); `cas reindex` empties
    the hints along with the rest of the cache (docs/format.md, Local index)."""
    from cas.file_hints import REMEMBER_FROM, identity as _identity
    small, large = tmp_path / "small.bin", tmp_path / "large.bin"
    small.write_bytes(os.urandom(REMEMBER_FROM - 1))
    write_checkpoint(large, REMEMBER_FROM, seed=5)
    store = Store.open(store_dir)
    store.put_file(small)
    digest = store.put_file(large).digest
    assert _identity(str(small), os.stat(small)) is None
    assert store.index.remembered_digest(_identity(str(large), os.stat(large))) == bytes.fromhex(digest)
    store.reindex()
    assert store.index.remembered_digest(_identity(str(large), os.stat(large))) is None


def test_a_restore_flushes_as_it_writes_and_syncs_the_whole_file_before_naming_it(store_dir, tmp_path, monkeypatch):
    """Write-back starts every FLUSH_EVERY bytes on another thread; the file gets its name only after
    the last fsync, and comes out byte for byte."""
    from cas import restore
    data = os.urandom(3 * MiB)
    (tmp_path / "f.bin").write_bytes(data)
    store = Store.open(store_dir)
    digest = store.put_file(tmp_path / "f.bin").digest
    calls = []

    def spy(kind, real):
        return lambda fd: calls.append((kind, os.fstat(fd).st_size)) or real(fd)
    monkeypatch.setattr(restore, "FLUSH_EVERY", 256 << 10)
    monkeypatch.setattr(os, "fdatasync", spy("fdatasync", os.fdatasync))
    monkeypatch.setattr(os, "fsync", spy("fsync", os.fsync))
    out = tmp_path / "out.bin"
    store.get_file(digest, out)
    assert out.read_bytes() == data
    # one flush at least is started while writing (more when the earlier one is done by the next 256 KiB)
    kinds = [kind for kind, _ in calls]
    assert "fdatasync" in kinds and calls[-1] == ("fsync", len(data)), calls
    assert kinds.index("fsync") == len(kinds) - 1  # every early flush was waited for before the last fsync
