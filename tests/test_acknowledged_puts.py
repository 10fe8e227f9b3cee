"""An acknowledged put is restorable: hints (remembered digests, the local index) never stand in for data.

Each test replays a way a put was once acknowledged while its chunks were gone, and checks that the
put now either fails with one line or restores byte for byte from a fresh cache.
"""

from __future__ import annotations

import os
import shutil

import numpy as np
from conftest import one_error_line

from cas import Store
from cas.digest import hash_bytes

MiB = 1 << 20


def _floats(n: int, seed: int) -> bytes:
    return np.random.default_rng(seed).standard_normal(n // 4, dtype=np.float32).tobytes()


def _restores_from_a_fresh_cache(store_dir, ref: str, expected: bytes, tmp_path, monkeypatch, *,
                                 packs_removed: bool = False) -> None:
    fresh = tmp_path / f"fresh-cache-{len(os.listdir(tmp_path))}"
    monkeypatch.setenv("CAS_CACHE_DIR", str(fresh))
    store = Store.open(store_dir)
    assert store.read_bytes(ref) == expected
    report = store.verify(read_data=True)
    if packs_removed:  # verify names the packs removed behind cas's back, and nothing else
        assert report.problems and all("missing" in p for p in report.problems), report.problems
    else:
        assert report.ok, report.problems


def _manifest_outlives_its_chunks(cli, tmp_path) -> tuple[bytes, bytes, os.PathLike]:
    """v1, then a folder holding v2 (v1 plus 1 MiB) and a large file kept alive apart; both versions
    forgotten and gc --grace 0: v2's manifest stays in the partly dead pack gc keeps for the large
    file, while the chunks it shares with v1 go with v1's pack. Returns (v1, v2, the folder)."""
    v1 = _floats(8 * MiB, seed=1)
    (tmp_path / "v1.bin").write_bytes(v1)
    folder = tmp_path / "D"
    folder.mkdir()
    keep = _floats(40 * MiB, seed=2)
    (folder / "keep.bin").write_bytes(keep)
    v2 = v1 + _floats(MiB, seed=3)
    (folder / "v2.bin").write_bytes(v2)
    assert cli("put", str(tmp_path / "v1.bin"), "--label", "v1").code == 0
    assert cli("put", str(folder), "--label", "D").code == 0
    keep_digest = cli("put", str(folder / "keep.bin"), "--json").json()["digest"]
    assert cli("pin", keep_digest, "--label", "keep").code == 0
    assert cli("unpin", "D").code == 0
    assert cli("unpin", "v1").code == 0
    assert cli("unpin", str(folder / "keep.bin")).code == 0
    gc = cli("gc", "--grace", "0", "--json").json()
    assert gc["deleted_packs"] >= 1, gc
    return v1, v2, folder


def test_reput_fast_path_after_gc_took_the_chunks_its_manifest_lists(cli, store_dir, tmp_path, monkeypatch):
    """The manifest of v2 stays in a partly dead pack gc keeps, while the chunks it lists go with v1's pack."""
    v1, v2, folder = _manifest_outlives_its_chunks(cli, tmp_path)
    res = cli("put", str(folder / "v2.bin"), "--label", "v2", "--json")
    assert res.code == 0, res.err
    put = res.json()
    assert put["new_bytes"] >= len(v1) - (256 << 10), put  # v1's chunks were deleted: stored again
    _restores_from_a_fresh_cache(store_dir, put["digest"], v2, tmp_path, monkeypatch)


def test_a_ref_to_a_file_whose_chunks_gc_took_is_refused(cli, store_dir, tmp_path, monkeypatch):
    """Pinning v2 by its digest once the chunks its surviving manifest lists are gone: one line, exit 3,
    no pin (it was acknowledged and did not read back); put again, it pins and restores."""
    _, v2, folder = _manifest_outlives_its_chunks(cli, tmp_path)
    digest = hash_bytes(v2).hex()
    assert Store.open(store_dir).index.manifest(bytes.fromhex(digest)) is not None  # the manifest outlived them
    res = cli("pin", digest, "--label", "v2")
    assert res.code == 3 and "not all in the store" in one_error_line(res.err)
    assert "v2" not in [p.label for p in Store.open(store_dir).pins()]
    assert cli("put", str(folder / "v2.bin"), "--no-pin").code == 0
    assert cli("pin", digest, "--label", "v2").code == 0
    _restores_from_a_fresh_cache(store_dir, "v2", v2, tmp_path, monkeypatch)


def test_a_ref_to_content_in_a_condemned_pack_stores_it_again(cli, store_dir, tmp_path, monkeypatch):
    """Pinning a forgotten file gc has condemned (not yet deleted) is accepted: its blobs are stored
    again, so a gc past the grace deletes the condemned pack and the pin still reads back."""
    data = _floats(3 * MiB, seed=11)
    (tmp_path / "a.bin").write_bytes(data)
    digest = cli("put", str(tmp_path / "a.bin"), "--json").json()["digest"]
    assert cli("unpin", str(tmp_path / "a.bin")).code == 0
    assert cli("gc", "--json").json()["condemned_packs"] >= 1  # default grace: condemned, kept
    assert cli("pin", digest, "--label", "back").code == 0
    assert cli("gc", "--grace", "0", "--json").json()["deleted_packs"] >= 1
    _restores_from_a_fresh_cache(store_dir, "back", data, tmp_path, monkeypatch)


def test_a_put_that_failed_after_writing_its_manifest_is_not_trusted_by_the_next(cli, store_dir, tmp_path,
                                                                                  monkeypatch):
    """A put that wrote its packs, index object and manifest but never its ref: gc takes its data, and
    running the same put again stores it again rather than trusting what the failed one left."""
    data = _floats(6 * MiB, seed=4)
    path = tmp_path / "ckpt.bin"
    path.write_bytes(data)
    store = Store.open(store_dir)
    failing = RuntimeError("the pin write failed")

    def refuse(*args, **kwargs):
        raise failing
    monkeypatch.setattr("cas.refs.write_pin", refuse)
    try:
        store.put_file(str(path), pin="ckpt")
    except RuntimeError as exc:
        assert exc is failing
    else:
        raise AssertionError("the pin write should have failed")
    monkeypatch.undo()
    monkeypatch.setenv("CAS_CACHE_DIR", str(tmp_path / "cache"))  # undo() also reset the fixture's env
    assert cli("gc", "--grace", "0").code == 0  # the failed put's packs are garbage: deleted
    res = cli("put", str(path), "--label", "ckpt", "--json")
    assert res.code == 0, res.err
    assert res.json()["new_bytes"] == len(data)
    _restores_from_a_fresh_cache(store_dir, res.json()["digest"], data, tmp_path, monkeypatch)


def test_a_copied_store_used_from_the_same_machine(cli, store_dir, tmp_path, monkeypatch):
    """`cp -a store storeB`: both share a store id, so one cache; a put into one must not dedup against
    packs only the other holds."""
    base = _floats(4 * MiB, seed=5)
    (tmp_path / "base.bin").write_bytes(base)
    assert cli("put", str(tmp_path / "base.bin")).code == 0
    copy = str(tmp_path / "storeB")
    shutil.copytree(store_dir, copy, symlinks=True)
    grown = base + _floats(4 * MiB, seed=6)
    (tmp_path / "grown.bin").write_bytes(grown)
    assert cli("put", str(tmp_path / "grown.bin")).code == 0  # the new half's packs are in store A only
    grown2 = grown + _floats(MiB, seed=7)
    (tmp_path / "grown2.bin").write_bytes(grown2)
    res = cli("put", str(tmp_path / "grown2.bin"), "--json", store=copy)
    assert res.code == 0, res.err
    assert res.json()["new_bytes"] >= 5 * MiB  # the grown half is not in B: stored there
    _restores_from_a_fresh_cache(copy, res.json()["digest"], grown2, tmp_path, monkeypatch)
    monkeypatch.setenv("CAS_CACHE_DIR", str(tmp_path / "cache"))
    back = cli("get", res.json()["digest"], "-o", str(tmp_path / "out.bin"), store=copy)  # the shared cache too
    assert back.code == 0, back.err
    assert (tmp_path / "out.bin").read_bytes() == grown2
    assert cli("get", res.json()["digest"], "-o", str(tmp_path / "nothere.bin")).code == 3  # not in A


def test_a_store_restored_from_a_backup(cli, store_dir, tmp_path, monkeypatch):
    """The store folder goes back to an older copy; the cache knew packs the backup lacks."""
    base = _floats(4 * MiB, seed=8)
    (tmp_path / "base.bin").write_bytes(base)
    assert cli("put", str(tmp_path / "base.bin")).code == 0
    backup = str(tmp_path / "backup")
    shutil.copytree(store_dir, backup, symlinks=True)
    new = _floats(4 * MiB, seed=9)
    (tmp_path / "new.bin").write_bytes(new)
    assert cli("put", str(tmp_path / "new.bin")).code == 0
    shutil.rmtree(store_dir)
    shutil.copytree(backup, store_dir, symlinks=True)
    res = cli("put", str(tmp_path / "new.bin"), "--json")  # same path and stat: the re-put hint is stale
    assert res.code == 0, res.err
    assert res.json()["new_bytes"] == len(new)
    _restores_from_a_fresh_cache(store_dir, res.json()["digest"], new, tmp_path, monkeypatch)


def test_a_pack_removed_behind_the_caches_back_is_never_deduplicated_against(cli, store_dir, tmp_path,
                                                                            monkeypatch):
    """Someone with write access deletes a pack (index objects untouched): the next put that would dedup
    against it checks that the packs it relies on exist, and stores the chunks again."""
    data = _floats(4 * MiB, seed=10)
    (tmp_path / "a.bin").write_bytes(data)
    assert cli("put", str(tmp_path / "a.bin"), "--no-pin").code == 0
    packs = [os.path.join(d, n) for d, _, names in os.walk(os.path.join(store_dir, "packs")) for n in names]
    for p in packs:
        os.remove(p)
    (tmp_path / "b.bin").write_bytes(data + b"tail")
    res = cli("put", str(tmp_path / "b.bin"), "--json")
    assert res.code == 0, res.err
    assert res.json()["new_bytes"] >= len(data) - (256 << 10)
    _restores_from_a_fresh_cache(store_dir, res.json()["digest"], data + b"tail", tmp_path, monkeypatch,
                                 packs_removed=True)


def test_the_fast_path_refuses_a_manifest_whose_chunks_are_gone(cli, store_dir, tmp_path, monkeypatch):
    data = _floats(4 * MiB, seed=11)
    path = tmp_path / "x.bin"
    path.write_bytes(data)
    assert cli("put", str(path), "--no-pin").code == 0
    packs = [os.path.join(d, n) for d, _, names in os.walk(os.path.join(store_dir, "packs")) for n in names]
    for p in packs:
        os.remove(p)
    res = cli("put", str(path), "--json")
    assert res.code == 0, res.err
    assert res.json()["new_bytes"] == len(data)
    _restores_from_a_fresh_cache(store_dir, res.json()["digest"], data, tmp_path, monkeypatch, packs_removed=True)


# ---- forged manifests: named by a genuine digest, listing other content ------------------------------------
def _forge(store_dir, kind: int, genuine: bytes, raw: bytes, size: int) -> None:
    """Store a manifest blob under a digest it does not hash to, as someone with write access could."""
    store = Store.open(store_dir)
    with store.writing(), store.write_session() as session:
        session.add_manifest(kind, genuine, raw, size)


def _genuine_digest(tmp_path, path) -> bytes:
    other = Store.open(str(tmp_path / "elsewhere"))
    return bytes.fromhex(other.put_file(str(path)).digest)


def test_a_forged_tree_manifest_is_refused_with_warm_and_fresh_caches(cli, store_dir, tmp_path, monkeypatch):
    from cas.manifest import TreeManifest
    from cas.pack import TREE_MANIFEST
    wanted = tmp_path / "wanted"
    wanted.mkdir()
    (wanted / "model.bin").write_bytes(b"the real weights" * 1000)
    genuine = _genuine_digest(tmp_path, wanted)
    planted = tmp_path / "planted"
    planted.mkdir()
    (planted / "model.bin").write_bytes(b"something else" * 1000)
    store = Store.open(store_dir)
    fake = bytes.fromhex(store.put_file(str(planted), pin="planted").digest)
    tree = store.load_manifest(fake, store.index.manifest(fake))
    assert isinstance(tree, TreeManifest)
    _forge(store_dir, TREE_MANIFEST, genuine, tree.to_bytes(), tree.size)
    for cache in ("warm", "fresh"):
        if cache == "fresh":
            monkeypatch.setenv("CAS_CACHE_DIR", str(tmp_path / "fresh-cache"))
        res = cli("get", genuine.hex(), "-o", str(tmp_path / f"out-{cache}"))
        assert res.code == 5, (cache, res.err)
        assert "does not hash to its name" in res.err
        assert not os.path.exists(tmp_path / f"out-{cache}")
    report = Store.open(store_dir).verify(read_data=True)
    assert any(genuine.hex() in p for p in report.problems), report.problems


def test_a_forged_file_manifest_hands_out_no_byte(cli, store_dir, tmp_path, capsysbinary):
    from cas.pack import FILE_MANIFEST
    (tmp_path / "wanted.bin").write_bytes(_floats(MiB, seed=20))
    genuine = _genuine_digest(tmp_path, tmp_path / "wanted.bin")
    (tmp_path / "planted.bin").write_bytes(_floats(MiB, seed=21))
    store = Store.open(store_dir)
    fake = bytes.fromhex(store.put_file(str(tmp_path / "planted.bin"), pin="planted").digest)
    manifest = store.file_manifest(fake)
    _forge(store_dir, FILE_MANIFEST, genuine, manifest.to_bytes(), manifest.size)
    res = cli("cat", genuine.hex())
    assert res.code == 5 and res.out == "", res.err
    store = Store.open(store_dir)
    with store.open_file(genuine.hex()) as f:
        assert f.read(10) == (tmp_path / "planted.bin").read_bytes()[:10]  # a ranged read checks chunks only
        f.seek(0)
        try:
            f.read()
        except Exception as exc:  # the whole read reaches the end and finds the digest wrong
            assert type(exc).__name__ == "IntegrityError", exc
        else:
            raise AssertionError("reading the whole forged file should fail")
    assert cli("get", genuine.hex(), "-o", str(tmp_path / "out.bin")).code == 5
    assert not os.path.exists(tmp_path / "out.bin")
    report = store.verify(read_data=True)
    assert any(genuine.hex() in p for p in report.problems), report.problems


def test_relearning_never_marks_a_pack_cached_after_its_listing_as_missing(store_dir, tmp_path, monkeypatch):
    """relearn() reads what the cache knows before it lists the store: a pack another process caches in
    between is durable, so it is listed, and is never taken for missing (it would then be unreadable)."""
    store = Store.open(store_dir)
    store.put_bytes(_floats(MiB, seed=30))
    late = Store.open(store_dir)
    listing = store.backend.list

    def list_then_a_put_lands(prefix):
        keys = list(listing(prefix))
        if prefix == "packs/":
            late.put_bytes(_floats(MiB, seed=31))  # durable and cached after the listing was taken
        return iter(keys)
    monkeypatch.setattr(store.backend, "list", list_then_a_put_lands)
    store.relearn()
    monkeypatch.undo()
    monkeypatch.setenv("CAS_CACHE_DIR", str(tmp_path / "cache"))
    digest = hash_bytes(_floats(MiB, seed=31)).hex()
    assert Store.open(store_dir).read_bytes(digest) == _floats(MiB, seed=31)
