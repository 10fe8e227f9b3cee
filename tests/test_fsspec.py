"""fsspec's runs:// and cas:// over a real store: found through the entry points, fsspec's own abstract
suites run against runs://, random-access reads fetch only the chunks they touch."""

from __future__ import annotations

import os
import posixpath

import fsspec
import pytest
from fsspec.tests.abstract import AbstractFixtures
from fsspec.tests.abstract.copy import AbstractCopyTests
from fsspec.tests.abstract.get import AbstractGetTests
from fsspec.tests.abstract.open import AbstractOpenTests
from fsspec.tests.abstract.pipe import AbstractPipeTests
from fsspec.tests.abstract.put import AbstractPutTests

from cas import Store
from cas.digest import hash_bytes


@pytest.fixture
def store_env(store_dir, monkeypatch):
    monkeypatch.setenv("CAS_STORE", store_dir)
    return store_dir


def test_runs_write_read_seek_ls_rm_exists_through_fsspec_open(store_env, tmp_path):
    data = os.urandom(3 << 20)
    with fsspec.open("runs://exp/ckpts/model.pt", "wb") as f:
        f.write(data)
    with fsspec.open("runs://exp/ckpts/model.pt", "wb") as f:
        f.write(data[:1000])  # a second version of the same name
    fs = fsspec.filesystem("runs")
    assert fs.cat("runs://exp/ckpts/model.pt") == data[:1000]
    with fsspec.open("runs://exp/ckpts/model.pt@1", "rb") as f:
        f.seek(2 << 20)
        assert f.read(10) == data[2 << 20:(2 << 20) + 10]
    import tracker
    tracker.alias("runs:/exp/ckpts/model.pt@1", "best")
    assert fs.cat("runs://exp/ckpts/model.pt@best") == data
    assert fs.ls("runs://exp", detail=False) == ["exp/ckpts"]
    assert fs.ls("exp/ckpts", detail=False) == ["exp/ckpts/model.pt"]
    assert fs.isdir("runs://exp/ckpts") and fs.isfile("runs://exp/ckpts/model.pt")
    assert fs.size("runs://exp/ckpts/model.pt") == 1000 and fs.size("runs://exp/ckpts/model.pt@1") == len(data)
    assert not fs.exists("runs://exp/ckpts/other.pt") and not fs.exists("runs://nope/x")
    with pytest.raises(FileNotFoundError):
        fs.info("runs://exp/ckpts/other.pt")
    fs.rm("runs://exp/ckpts/model.pt")
    assert not fs.exists("runs://exp/ckpts/model.pt") and not fs.exists("runs://exp/ckpts")
    assert Store.open(store_env).records.versions("exp") == []  # forgotten: gc frees the bytes


def test_cas_reads_by_digest_and_inside_a_folder(store_env, tmp_path):
    (tmp_path / "tree" / "sub").mkdir(parents=True)
    (tmp_path / "tree" / "sub" / "a.txt").write_bytes(b"hello")
    (tmp_path / "big.bin").write_bytes(os.urandom(1 << 20))
    store = Store.open(store_env)
    tree = store.put_file(tmp_path / "tree").digest
    digest = hash_bytes((tmp_path / "big.bin").read_bytes()).hex()
    store.put_file(tmp_path / "big.bin")
    with fsspec.open(f"cas://{digest}", "rb") as f:
        f.seek(1000)
        assert f.read(5) == (tmp_path / "big.bin").read_bytes()[1000:1005]
    fs = fsspec.filesystem("cas")
    assert fs.cat(f"cas://{tree}/sub/a.txt") == b"hello"
    assert fs.ls(f"cas://{tree}", detail=False) == [f"{tree}/sub"] and fs.isdir(f"cas://{tree}/sub")
    with pytest.raises(PermissionError):
        fs.open(f"cas://{digest}", "wb")
    assert not fs.exists(f"cas://{tree}/nope")


def test_a_random_read_fetches_only_the_chunks_it_touches(store_env, tmp_path, monkeypatch):
    from cas.restore import ChunkReader
    data = os.urandom(8 << 20)
    with fsspec.open("runs://exp/big.bin", "wb") as f:
        f.write(data)
    fetched: list[int] = []
    read_run = ChunkReader._read_run
    monkeypatch.setattr(ChunkReader, "_read_run", lambda self, run, *args, **kw: fetched.append(
        sum(loc.stored_len for loc, _ in run)) or read_run(self, run, *args, **kw))
    with fsspec.open("runs://exp/big.bin", "rb") as f:
        f.seek(5 << 20)
        assert f.read(100) == data[5 << 20:(5 << 20) + 100]
    assert 0 < sum(fetched) <= 2 * (1 << 20)  # at most two chunks of at most 1 MiB, of an 8 MiB file


class TestRunsAbstractSuites(AbstractFixtures, AbstractCopyTests, AbstractGetTests, AbstractPutTests,
                             AbstractOpenTests, AbstractPipeTests):
    """fsspec's own abstract tests, against runs:// (run `abstract`)."""

    @pytest.fixture
    def fs(self, store_env):
        return fsspec.filesystem("runs")

    @pytest.fixture
    def fs_path(self):
        return "abstract"

    @pytest.fixture
    def fs_join(self):
        return posixpath.join

    @pytest.fixture
    def supports_empty_directories(self):
        return False  # folders exist through the names below them, as in object stores
