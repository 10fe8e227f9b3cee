"""Invariant 2 and 3: every read is verified; the local index is a cache rebuilt from the packs."""

from __future__ import annotations

import os
import random
import shutil

import pytest
from conftest import write_checkpoint

from cas import Store

MiB = 1 << 20


def _packs(store_dir):
    root = os.path.join(store_dir, "packs")
    return sorted(os.path.join(d, f) for d, _, fs in os.walk(root) for f in fs if not f.startswith("."))


@pytest.fixture
def stored(cli, tmp_path):
    path = tmp_path / "ckpt.bin"
    data = write_checkpoint(path, 6 * MiB, seed=3)
    res = cli("--json", "put", str(path)).json()
    return res["digest"], data


@pytest.mark.parametrize("where", ["header", "first-blob", "middle", "footer", "trailer", "random"])
def test_flipped_byte_is_caught_everywhere(cli, store_dir, tmp_path, stored, where):
    digest, data = stored
    [pack] = _packs(store_dir)
    size = os.path.getsize(pack)
    pos = {"header": 3, "first-blob": 20, "middle": size // 2, "footer": size - 80, "trailer": size - 20,
           "random": random.Random(where).randrange(size)}[where]
    with open(pack, "r+b") as f:
        f.seek(pos)
        byte = f.read(1)
        f.seek(pos)
        f.write(bytes([byte[0] ^ 0x40]))
    pack_id = os.path.basename(pack)

    v = cli("verify", "--read-data")
    assert v.code != 0
    assert pack_id in v.err
    assert len([line for line in v.err.splitlines() if line.startswith("cas: error:")]) == 1

    dest = tmp_path / "out.bin"
    g = cli("get", digest, "-o", str(dest))
    if g.code == 0:  # the flip hit bytes no chunk of this file uses (header, footer): content must be exact
        assert dest.read_bytes() == data
    else:
        assert "integrity" in g.err.lower() or pack_id in g.err
        assert not dest.exists()
        assert not [n for n in os.listdir(tmp_path) if "cas-tmp" in n]


def test_blob_corruption_fails_get_and_read_apis(store_dir, tmp_path):
    from cas.errors import IntegrityError
    path = tmp_path / "f"
    write_checkpoint(path, 2 * MiB, seed=4)
    store = Store.open(store_dir)
    digest = store.put_file(path).digest
    [pack] = _packs(store_dir)
    with open(pack, "r+b") as f:
        f.seek(1000)
        b = f.read(1)
        f.seek(1000)
        f.write(bytes([b[0] ^ 1]))
    with pytest.raises(IntegrityError) as err:
        store.read_bytes(digest)
    assert os.path.basename(pack) in str(err.value)
    with pytest.raises(IntegrityError):
        store.open_file(digest).read(100)
    with pytest.raises(IntegrityError):
        store.get_file(digest, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_reindex_rebuilds_the_same_answers(cli, store_dir, tmp_path):
    files = {}
    for i in range(3):
        p = tmp_path / f"f{i}"
        data = write_checkpoint(p, (i + 1) * MiB, seed=i)
        files[cli("--json", "put", str(p)).json()["digest"]] = data
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "x").write_bytes(b"x" * 100)
    tree = cli("--json", "put", str(tmp_path / "d")).json()["digest"]
    before = cli("--json", "stats").json()

    shutil.rmtree(os.environ["CAS_CACHE_DIR"])
    r = cli("--json", "reindex")
    assert r.code == 0, r.err
    assert r.json()["packs"] == before["packs"]
    assert cli("--json", "stats").json() == before
    for digest, data in files.items():
        out = tmp_path / f"out-{digest[:8]}"
        assert cli("get", digest[:12], "-o", str(out)).code == 0
        assert out.read_bytes() == data
    assert cli("get", tree, "-o", str(tmp_path / "tree-out")).code == 0
    assert (tmp_path / "tree-out" / "x").read_bytes() == b"x" * 100

    shutil.rmtree(os.environ["CAS_CACHE_DIR"])  # the next command rebuilds it by itself
    assert cli("--json", "stats").json() == before


def test_index_learns_packs_written_by_another_cache(store_dir, tmp_path, monkeypatch):
    a = Store.open(store_dir, cache_dir=str(tmp_path / "cache-a"))
    (tmp_path / "f").write_bytes(os.urandom(MiB))
    digest = a.put_file(tmp_path / "f").digest
    b = Store.open(store_dir, cache_dir=str(tmp_path / "cache-b"))
    assert b.read_bytes(digest) == (tmp_path / "f").read_bytes()
    assert b.put_file(tmp_path / "f").new_bytes == 0


def test_a_frame_declaring_another_size_is_refused_before_decoding():
    """A damaged (or hostile) frame header claiming a huge size never makes cas allocate it."""
    from cas import codec
    from cas.errors import IntegrityError
    codec_id, stored = codec.compress(b"weights " * 4096, 1)
    assert codec_id == codec.ZSTD
    assert codec.decompress(codec_id, stored, 8 * 4096, name="blob") == b"weights " * 4096
    with pytest.raises(IntegrityError, match="frame declares 32768 bytes, expected 100"):
        codec.decompress(codec_id, stored, 100, name="blob")
    import zstandard  # a frame without the size (as earlier versions wrote) still reads, bounded
    legacy = zstandard.ZstdCompressor(level=1, write_content_size=False).compress(b"weights " * 4096)
    assert codec.decompress(codec.ZSTD, legacy, 8 * 4096, name="blob") == b"weights " * 4096
    with pytest.raises(IntegrityError):
        codec.decompress(codec.ZSTD, legacy, 100, name="blob")
