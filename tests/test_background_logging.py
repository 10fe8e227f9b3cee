"""log_artifact(..., wait=False): returns once the content is copied aside, stores it in the background
in order, and wait() / leaving the run raises the first error; a staged copy never outlives its put."""

from __future__ import annotations

import os

import pytest

import tracker
from cas import Store, temps
from cas.errors import InvalidInput, NotFound, StorageError


def _staged(store: Store) -> list[temps.TempFile]:
    return [t for t in temps.find(store.temp_folders()) if t.staged]


def test_a_file_deleted_or_changed_right_after_the_call_is_stored_as_it_was(store_dir, tmp_path):
    first, second = os.urandom(6 << 20), os.urandom(3 << 20)
    path = tmp_path / "ckpt.bin"
    (tmp_path / "folder").mkdir()
    (tmp_path / "folder" / "a.txt").write_text("a")
    with tracker.init("bg", store=store_dir) as run:
        path.write_bytes(first)
        one = run.log_artifact(path, name="model", step=1, wait=False)
        path.write_bytes(second)  # rewritten in place at once
        two = run.log_artifact(path, name="model", step=2, wait=False)
        path.unlink()  # and gone
        tree = run.log_artifact(tmp_path / "folder", wait=False)
        (tmp_path / "folder" / "a.txt").write_text("changed")
    assert one.result().step == 1 and two.result().step == 2 and tree.result().object_type == "tree"
    store = Store.open(store_dir)
    assert store.read_bytes("runs:/bg/model@1") == first and store.read_bytes("runs:/bg/model@2") == second
    restored = tracker.download("runs:/bg/folder", tmp_path / "restored", store=store_dir)
    assert open(os.path.join(restored, "a.txt")).read() == "a"
    assert _staged(store) == []  # every staged copy removed once its put was acknowledged
    assert tracker.get_run("bg", store=store_dir).status == "finished"


def test_a_failed_background_log_is_raised_by_wait_and_fails_the_run(store_dir, tmp_path, monkeypatch):
    (tmp_path / "a.bin").write_bytes(os.urandom(1 << 20))

    def broken(self, *args, **kwargs):
        raise StorageError("disk full", subject="x")
    with pytest.raises(StorageError, match="disk full"):
        with tracker.init("bg", store=store_dir) as run:
            monkeypatch.setattr(Store, "put_file", broken)
            future = run.log_artifact(tmp_path / "a.bin", wait=False)  # returns: the failure comes later
    assert isinstance(future.exception(), StorageError)
    monkeypatch.undo()
    assert tracker.get_run("bg", store=store_dir).status == "failed"
    assert _staged(Store.open(store_dir)) == []


def test_bad_input_is_refused_at_the_call(store_dir, tmp_path):
    run = tracker.init("bg", store=store_dir)
    with pytest.raises(InvalidInput, match="not a list"):
        run.log_artifact([str(tmp_path)], name="x", wait=False)
    with pytest.raises(NotFound, match="no such file"):
        run.log_artifact(tmp_path / "missing.bin", wait=False)
    with pytest.raises(InvalidInput, match="invalid artifact name"):
        run.log_artifact(tmp_path, name="a@b", wait=False)
    run.wait()


def test_a_staged_copy_is_kept_while_its_process_runs_and_removed_by_gc_after(store_dir, tmp_path, cli):
    store = Store.open(store_dir)
    store.init()
    spool = store.spool_dir()
    os.makedirs(spool, exist_ok=True)
    dead = 2 ** 22 + 12345  # above the kernel's pid limit: no such process
    for pid in (os.getpid(), dead):
        folder = os.path.join(spool, f"{temps.STAGE_PREFIX}{pid}-abc")
        os.makedirs(folder)
        with open(os.path.join(folder, "weights.bin"), "wb") as f:
            f.write(b"x" * 100)
        old = 1e9  # staged long ago
        os.utime(os.path.join(folder, "weights.bin"), (old, old))
    found = {t.pid: t for t in _staged(store)}
    assert set(found) == {os.getpid(), dead}
    stale = [t.pid for t in found.values() if temps.is_stale(t, now=2e9, grace=0, lease=60)]
    assert stale == [dead]  # the running process's copy stays however old it is
    assert cli("gc", "--grace", "0").code == 0
    assert [t.pid for t in _staged(Store.open(store_dir))] == [os.getpid()]
