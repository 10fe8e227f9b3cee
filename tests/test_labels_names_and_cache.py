"""Pin labels of any length, file names that are not UTF-8, damaged pin objects, an unusable cache folder."""

from __future__ import annotations

import glob
import os

import pytest
from conftest import write_checkpoint

from cas import Store
from cas.errors import IntegrityError
from cas.layout import pin_prefix


def _one_line(err: str) -> str:
    assert err.startswith("cas: error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    return err


def test_long_and_unicode_labels_pin_and_list(cli, tmp_path):
    src = tmp_path / "f.bin"
    src.write_bytes(b"x" * 1000)
    labels = ["é" * 1000, "runs/exp-1/" + "deep/" * 150 + "ckpt.pt", "a"]
    for label in labels:
        r = cli("put", str(src), "--label", label)
        assert r.code == 0, r.err
    listed = cli("--json", "pins").json()
    assert sorted(p["label"] for p in listed) == sorted(labels)
    assert cli("unpin", labels[0]).code == 0
    assert sorted(p["label"] for p in cli("--json", "pins").json()) == sorted(labels[1:])


def test_label_over_the_limit_is_refused_before_storing(cli, store_dir, tmp_path):
    src = tmp_path / "f.bin"
    src.write_bytes(b"y" * 1000)
    r = cli("put", str(src), "--label", "z" * 1025)
    assert r.code == 2 and "bad pin label" in _one_line(r.err)
    assert not os.path.exists(store_dir)  # nothing stored, not even the store


def test_non_utf8_names(cli, store_dir, tmp_path):
    folder = tmp_path / "d"
    folder.mkdir()
    bad = os.fsencode(str(folder)) + b"/\xfe.bin"
    with open(bad, "wb") as f:
        f.write(b"data")
    r = cli("put", str(folder))
    assert r.code == 2 and "not valid UTF-8" in _one_line(r.err)
    r = cli("put", os.fsdecode(bad))  # the default label is the path: refused before storing
    assert r.code == 2 and "UTF-8" in _one_line(r.err)
    r = cli("put", os.fsdecode(bad), "--label", "ok")
    assert r.code == 0, r.err
    assert cli("--json", "pins").json()[0]["label"] == "ok"


def test_damaged_pin_object_is_an_integrity_error(cli, store_dir, tmp_path):
    src = tmp_path / "f.bin"
    src.write_bytes(b"q" * 5000)
    assert cli("put", str(src), "--label", "good").code == 0
    assert cli("put", str(src), "--label", "bad").code == 0
    store = Store.open(store_dir)
    bad_key = [k for k, _ in store.backend.list(pin_prefix("bad"))][0]
    with open(os.path.join(store_dir, *bad_key.split("/")), "r+b") as f:
        f.write(b"\xc1garbage")
    r = cli("pins")
    assert r.code == 5 and "pin object" in _one_line(r.err)
    r = cli("verify")
    assert r.code == 5 and "damaged" in r.err and "Traceback" not in r.err
    digest = cli("--json", "put", str(src), "--no-pin").json()["digest"]
    assert cli("get", digest, "-o", str(tmp_path / "out") + "/").code == 0  # naming the file tolerates it
    with pytest.raises(IntegrityError):
        store.pins()


@pytest.mark.parametrize("kind", ["file", "unwritable"])
def test_unusable_cache_folder_is_one_line(cli, tmp_path, monkeypatch, kind):
    src = tmp_path / "f.bin"
    src.write_bytes(b"c" * 100)
    if kind == "file":
        cache = tmp_path / "cache-file"
        cache.write_text("not a folder")
        monkeypatch.setenv("CAS_CACHE_DIR", str(cache))
    else:
        monkeypatch.setenv("CAS_CACHE_DIR", "/proc/cas-cannot-be-here")
    r = cli("put", str(src))
    assert r.code == 6 and "cache folder" in _one_line(r.err)


def test_sync_can_be_called_first(store_dir, tmp_path):
    Store.open(store_dir).put_bytes(b"hello")
    other = Store.open(store_dir, cache_dir=str(tmp_path / "other-cache"))
    assert other.sync() == 1  # learned the one pack of the other cache's put
    assert other.sync() == 0
    assert other.stats()["files"] == 1


def test_failed_folder_restore_keeps_the_empty_destination(cli, store_dir, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    write_checkpoint(src / "w.bin", 3 << 20, seed=5)
    digest = cli("--json", "put", str(src)).json()["digest"]
    for pack in glob.glob(os.path.join(store_dir, "packs", "*", "*")):
        with open(pack, "r+b") as f:
            f.seek(100)
            byte = f.read(1)
            f.seek(100)
            f.write(bytes([byte[0] ^ 0xFF]))
    dest = tmp_path / "dest"
    dest.mkdir(mode=0o750)
    r = cli("get", digest, "-o", str(dest))
    assert r.code == 5
    assert dest.is_dir() and os.listdir(dest) == [] and (dest.stat().st_mode & 0o777) == 0o750


def test_reader_refuses_use_after_close(store_dir):
    store = Store.open(store_dir)
    digest = store.put_bytes(b"abc" * 1000).digest
    f = store.open_file(digest)
    assert f.read(3) == b"abc"
    f.close()
    with pytest.raises(ValueError):
        f.read(1)
