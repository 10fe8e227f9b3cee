"""Step deltas: a new checkpoint's tensor chunks stored as deltas against its parent's, read back
through at most three bases, every rebuilt chunk checked against its id, and bases kept by gc."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from conftest import one_error_line

import tracker
from cas import Store, codec, scratch as scratch_module
from cas.blobset import Blobs
from cas.digest import hash_bytes
from cas.errors import IntegrityError
from cas.file_hints import ParentCopy
from cas.gc import execute_gc
from cas.pack import CHUNK, Location
from cas.pack_index import PackRecord
from cas.restore import ChunkReader
from cas.supply import Catalog, needed

SHAPES = {"layer.0.weight": (512, 512), "layer.1.weight": (512, 512), "head.weight": (256, 512)}


def _versions(folder, count: int, seed: int = 0) -> list[str]:
    """Checkpoints whose weights move a little from one version to the next, as in training."""
    gen = torch.Generator().manual_seed(seed)
    weights = {name: torch.randn(*shape, generator=gen) * 0.02 for name, shape in SHAPES.items()}
    paths = []
    for k in range(count):
        path = os.path.join(folder, f"step-{k}.pt")
        torch.save({"model": weights, "step": k}, path)
        paths.append(path)
        weights = {n: w + torch.randn(*w.shape, generator=gen) * 1e-5 for n, w in weights.items()}
    return paths


def _version_folders(tmp_path, prefix: str, extra) -> list:
    """Two folders <prefix>0 and <prefix>1, each holding a version of model.pt and the files extra(k) gives."""
    folders = []
    for k, path in enumerate(_versions(str(tmp_path), 2)):
        folder = tmp_path / f"{prefix}{k}"
        folder.mkdir()
        os.replace(path, folder / "model.pt")
        for name, data in extra(k).items():
            (folder / name).write_bytes(data)
        folders.append(folder)
    return folders


def _delta_chunks(store: Store) -> list[Location]:
    return [loc for _, loc in store.index.iter_chunks() if loc.codec == codec.DELTA]


@pytest.mark.parametrize("budget", ["in memory", "spilled"])
def test_puts_under_one_label_store_deltas_and_gc_keeps_their_bases(cli, store_dir, tmp_path, monkeypatch, budget):
    if budget == "spilled":  # gc's tables on disk, read back a few partitions at a time
        monkeypatch.setattr(scratch_module, "SPILL_ROWS", 16)
        monkeypatch.setattr(scratch_module, "GROUP_ROWS", 32)
    paths = _versions(str(tmp_path), 6)  # the fifth and sixth branch at the first version's chunks
    model = tmp_path / "model.pt"
    sizes, digests = [], []
    for path in paths:
        model.write_bytes(open(path, "rb").read())
        put = cli("--json", "put", str(model), "--label", "model")
        assert put.code == 0
        digests.append(put.json()["digest"])
        sizes.append(Store.open(store_dir).stats()["stored_bytes"])
    # the fifth version, a delta against the first one's chunks, stays pinned after the first is forgotten
    assert cli("pin", digests[4], "--label", "fifth").code == 0
    alone = sizes[0]
    assert sizes[-1] - sizes[-2] < 0.8 * alone, sizes  # a later version costs well under a first one
    deltas = _delta_chunks(Store.open(store_dir))
    stats = cli("--json", "stats").json()
    assert deltas and stats["delta_chunks"] == len(deltas) > 0
    assert stats["delta_stored_bytes"] == sum(loc.stored_len for loc in deltas)
    assert "delta_chunks" in cli("stats").out
    assert cli("gc", "--grace", "0").code == 0  # the labels name only the fifth and the last version now
    fresh_cache = str(tmp_path / "empty-cache")
    os.environ["CAS_CACHE_DIR"] = fresh_cache
    for label, path in (("model", paths[-1]), ("fifth", paths[4])):
        got = cli("get", label, "-o", str(tmp_path / f"restored-{label}.pt"))
        assert got.code == 0 and (tmp_path / f"restored-{label}.pt").read_bytes() == open(path, "rb").read()
    assert cli("verify", "--read-data").code == 0


def test_a_chunk_decodes_through_at_most_three_bases_and_a_full_chain_branches_at_its_root(store_dir, tmp_path,
                                                                                          monkeypatch):
    """Versions 1-3 of a tensor chunk are deltas one version back (depths 1-3); the fifth version's base
    would be too deep, so it is a delta against the root of that chain (the first version's chunk,
    stored alone), depth 1 again, rather than a chunk stored alone."""
    paths = _versions(str(tmp_path), 6)
    store = Store.open(store_dir)
    parent, digests = None, []
    read: list[bytes] = []  # the bases read from a parent's file
    monkeypatch.setattr(ParentCopy, "_read", lambda self, chunk_id, span, read_from=ParentCopy._read:
                        read.append(chunk_id) or read_from(self, chunk_id, span))
    for k, path in enumerate(paths):
        read.clear()
        parent = store.put_file(path, parent=parent).digest
        digests.append(parent)
        assert bool(read) == (1 <= k <= 3 or k == 5)  # the fifth: its parent's chunks are three bases deep
        # and the root's come from the store, so no base is read from a parent's file
    reader = store.chunk_reader()
    depths = [reader.base_facts(loc.key)[0] for loc in _delta_chunks(store)]
    assert depths and max(depths) == codec.MAX_DELTA_DEPTH
    first, fifth = _chunk_ids(store, digests[0]), _chunk_ids(store, digests[4])
    fifth_deltas = [loc for loc in _delta_chunks(store) if loc.key in fifth]
    assert len(fifth_deltas) >= 3  # every tensor's chunks, not stored alone
    for loc in fifth_deltas:
        assert loc.base in first and reader.base_facts(loc.key)[:1] == (1,)
    fresh = Store.open(store_dir, cache_dir=str(tmp_path / "fresh"))
    for path in paths:
        data = open(path, "rb").read()
        assert fresh.read_bytes(fresh.put_file(path).digest) == data  # already stored: nothing new, reads back


def test_a_root_whose_pack_the_cache_does_not_offer_is_no_base(store_dir, tmp_path, monkeypatch):
    """A chain's root is relied on like any base: if the cache does not offer its pack (condemned by a
    gc, or gone) when the delta against it is packed, the chunk is stored alone instead."""
    paths = _versions(str(tmp_path), 5)
    store = Store.open(store_dir)
    digests = [store.put_file(paths[0]).digest]
    for path in paths[1:4]:
        digests.append(store.put_file(path, parent=digests[-1]).digest)
    first = _chunk_ids(store, digests[0])
    homes = store.index.chunk_homes
    monkeypatch.setattr(store.index, "chunk_homes", lambda ids: [None if i in first else h
                                                                 for i, h in zip(ids, homes(ids))])
    fifth = store.put_file(paths[4], parent=digests[-1]).digest
    fifth_ids = _chunk_ids(store, fifth)
    assert not [loc for loc in _delta_chunks(store) if loc.key in fifth_ids and loc.base in first]
    alone = [loc for _, loc in store.index.iter_chunks() if loc.key in fifth_ids and loc.codec == codec.PLANES]
    assert len(alone) >= 3  # its tensors' chunks, stored alone
    assert store.read_bytes(fifth) == open(paths[4], "rb").read()


def _chunk_ids(store: Store, digest: str) -> set[bytes]:
    manifest = store.file_manifest(bytes.fromhex(digest))
    return {manifest.chunk_id(i) for i in range(len(manifest))}


def test_tracker_deltas_against_the_last_version_or_a_given_parent_or_none(store_dir, tmp_path):
    paths = _versions(str(tmp_path), 4)
    store = Store.open(store_dir)
    with tracker.init("ft", store=store) as run:
        first = run.log_model(paths[0], name="model")
        second = run.log_model(paths[1], name="model")  # against the first, the latest version of "model"
        after_second = {loc.key: loc.base for loc in _delta_chunks(store)}
        run.log_model(paths[2], name="other", delta=False)
        after_alone = {loc.key: loc.base for loc in _delta_chunks(store)}
        chosen = run.log_model(paths[3], name="third", parent=first.uri)
        after_chosen = {loc.key: loc.base for loc in _delta_chunks(store)}
    assert after_second and set(after_second.values()) <= _chunk_ids(store, first.digest)
    assert after_alone == after_second  # delta=False stored no delta
    added = {k: b for k, b in after_chosen.items() if k not in after_second}
    assert added and set(added.values()) <= _chunk_ids(store, first.digest)
    for v, path in ((second, paths[1]), (chosen, paths[3])):
        assert tracker.open(v.uri, store=store_dir).read() == open(path, "rb").read()


def test_a_damaged_base_fails_the_child_with_one_line(cli, store_dir, tmp_path):
    paths = _versions(str(tmp_path), 2)
    store = Store.open(store_dir)
    base = store.put_file(paths[0], pin="v0")
    child = store.put_file(paths[1], parent="v0", pin="v1")
    delta = _delta_chunks(store)[0]
    home = store.index.chunk(delta.base)
    pack = os.path.join(store_dir, "packs", home.pack_id.hex()[:2], home.pack_id.hex())
    data = bytearray(open(pack, "rb").read())
    data[home.offset + home.stored_len // 2] ^= 0xFF
    os.chmod(pack, 0o644)
    open(pack, "wb").write(bytes(data))
    os.environ["CAS_CACHE_DIR"] = str(tmp_path / "other-cache")
    got = cli("get", child.digest, "-o", str(tmp_path / "out.pt"))
    assert got.code == 5 and one_error_line(got.err) and not (tmp_path / "out.pt").exists()
    assert base.digest and cli("verify", "--read-data").code != 0


def test_gc_keeps_the_base_of_a_delta_it_keeps():
    """gc's choice of the pack that supplies each blob is closed over bases: the pack of a base no
    manifest names is kept, and a base in no pack stops gc."""
    def loc(pack, key, offset, base=b""):
        return Location(pack, CHUNK, key, offset, 100, 100, codec.DELTA if base else codec.ZSTD, key, 0, base)
    a, b, c = bytes([1]) * 32, bytes([2]) * 32, bytes([3]) * 32
    chunk, base, other = bytes([10]) * 32, bytes([11]) * 32, bytes([12]) * 32
    packs = {a: PackRecord(a, 400, (loc(a, chunk, 8, base), loc(a, other, 108))),
             b: PackRecord(b, 400, (loc(b, base, 8),)),
             c: PackRecord(c, 400, (loc(c, bytes([13]) * 32, 8),))}
    catalog = Catalog.of(packs.values())
    keep, supplies = needed(catalog, Blobs({(CHUNK, chunk), (CHUNK, other)}), set())
    assert keep == {a, b} and supplies[b].keys() == [base]
    with pytest.raises(IntegrityError, match="in no pack"):
        needed(catalog.only([a]), Blobs({(CHUNK, chunk)}), set())


def test_a_delta_frame_rebuilds_exactly_and_refuses_damage():
    base = (np.random.default_rng(0).standard_normal(20_000) * 0.02).astype(np.float32)
    new = base + (np.random.default_rng(1).standard_normal(20_000) * 1e-6).astype(np.float32)
    frame = codec.encode_delta(new.tobytes(), base.tobytes(), b"b" * 32, 0, 4, 1)
    assert frame is not None and codec.decode_delta(frame, new.nbytes, base.tobytes(), name="c") == new.tobytes()
    deep = bytearray(frame)
    deep[3] = codec.MAX_DELTA_DEPTH + 1
    with pytest.raises(IntegrityError, match="unknown delta frame"):
        codec.decode_delta(bytes(deep), new.nbytes, base.tobytes(), name="c")
    assert codec.encode_delta(new.tobytes(), base.tobytes(), b"b" * 32, codec.MAX_DELTA_DEPTH, 4, 1
                              ) is None  # no deeper than three


def test_delta_planes_in_the_base_exponent_order_rebuild_and_frames_of_the_first_delta_version_still_read():
    """Differences of 2- and 4-byte floats are stored in the order of the base's exponents (planes frame
    version 2); a delta frame written before that (its planes in element order, version 1) still decodes; a version 2
    planes frame read without its base, or with a plane coder or context this cas does not know, is
    refused by name."""
    rng = np.random.default_rng(7)
    for dtype, width, step in ((np.float16, 2, 1e-6), (np.float32, 4, 1e-4)):  # weights moved by small steps
        base = (rng.standard_normal(40_000) * 0.02).astype(dtype)
        new = (base - rng.standard_normal(40_000) * step).astype(dtype)
        frame = codec.encode_delta(new.tobytes(), base.tobytes(), b"b" * 32, 0, width, 1)
        assert frame is not None and frame[37] == codec.CONTEXT_VERSION
        assert codec.decode_delta(frame, new.nbytes, base.tobytes(), name="c") == new.tobytes()
        # the first delta version: the same head around a planes frame of the zigzag differences, version 1
        uint, signed = {4: (np.uint32, np.int32), 2: (np.uint16, np.int16)}[width]
        diff = new.view(uint) - base.view(uint)
        zigzag = (diff << uint(1)) ^ (diff.view(signed) >> signed(8 * width - 1)).view(uint)
        inner_codec, inner = codec.compress_planes(zigzag.tobytes(), width, 1)
        assert inner_codec == codec.PLANES and inner[0] == codec.PLANES_VERSION
        old = frame[:36] + bytes([inner_codec]) + inner
        assert codec.decode_delta(old, new.nbytes, base.tobytes(), name="c") == new.tobytes()
    inner = frame[37:]
    with pytest.raises(IntegrityError, match="delta base it was not given"):
        codec.decompress(codec.PLANES, inner, new.nbytes, name="c")
    for offset, value, message in ((3, 7, "unknown plane frame .*context 7"), (0, 9, "unknown plane frame .version 9"),
                                   (4, 5, "coder 5, which this cas cannot decode")):
        damaged = bytearray(frame)
        damaged[37 + offset] = value
        with pytest.raises(IntegrityError, match=message):
            codec.decode_delta(bytes(damaged), new.nbytes, base.tobytes(), name="c")
    first = bytearray(old)  # a version 1 planes frame has no context
    first[37 + 3] = codec.BASE_CONTEXT
    with pytest.raises(IntegrityError, match="unknown plane frame .version 1, width 4, transform ., context 1"):
        codec.decode_delta(bytes(first), new.nbytes, base.tobytes(), name="c")


def test_a_delta_is_not_even_tried_where_a_sample_shows_moves_as_large_as_the_mantissa():
    """4-byte floats that move by a share of their value (Adam's exp_avg two steps on) get no delta frame:
    a sample of their differences says none could pay, so the chunk is stored alone without encoding
    a delta first; weights moved by small steps still get one, and so does a chunk too small to sample."""
    rng = np.random.default_rng(11)
    base = (rng.standard_normal(65_536) * 1e-3).astype(np.float32)
    moment = (0.8 * base + rng.standard_normal(base.size) * 5e-4).astype(np.float32)
    weights = (base + rng.standard_normal(base.size) * 1e-7).astype(np.float32)
    assert codec.encode_delta(moment.tobytes(), base.tobytes(), b"b" * 32, 0, 4, 1) is None
    frame = codec.encode_delta(weights.tobytes(), base.tobytes(), b"b" * 32, 0, 4, 1)
    assert frame is not None and codec.decode_delta(frame, base.nbytes, base.tobytes(), name="c") == weights.tobytes()
    few, few_base = moment[:1000].tobytes(), base[:1000].tobytes()
    small = codec.encode_delta(few, few_base, b"b" * 32, 0, 4, 1)
    assert small is not None and codec.decode_delta(small, len(few), few_base, name="c") == few
    # the sample was right: the delta it spared would not have paid
    plain = codec.compress_planes(moment.tobytes(), 4, 1)[1]
    skipped = codec.LARGE_MOVE_BITS.pop(4)
    try:
        spared = codec.encode_delta(moment.tobytes(), base.tobytes(), b"b" * 32, 0, 4, 1)
    finally:
        codec.LARGE_MOVE_BITS[4] = skipped
    assert spared is not None and not codec.delta_pays(len(spared), len(plain))


def test_a_parent_of_another_layout_is_matched_tensor_by_tensor(store_dir, tmp_path):
    """A tensor added at the front moves every other one: the parent's header is read and its tensors
    are matched by name, so the moved tensors are still stored as deltas of theirs."""
    from safetensors.numpy import save_file
    rng = np.random.default_rng(5)
    weights = {f"w{i}": (rng.standard_normal(200_000) * 0.02).astype(np.float32) for i in range(3)}
    save_file(weights, str(tmp_path / "v1.safetensors"))
    moved = {name: w + (rng.standard_normal(w.size) * 1e-6).astype(np.float32) for name, w in weights.items()}
    save_file({"a.new": np.ones(70_000, dtype=np.float32), **moved}, str(tmp_path / "v2.safetensors"))
    store = Store.open(store_dir)
    store.put_file(tmp_path / "v1.safetensors", pin="m")
    child = store.put_file(tmp_path / "v2.safetensors", parent="m")
    deltas = _delta_chunks(store)
    assert len(deltas) >= 6  # the three moved tensors' chunks (three each, at 800 KB)
    fresh = Store.open(store_dir, cache_dir=str(tmp_path / "fresh"))
    assert fresh.read_bytes(child.digest) == (tmp_path / "v2.safetensors").read_bytes()


def test_forgetting_all_but_the_last_version_gives_its_space_back(store_dir, tmp_path):
    """Four versions under one label, each a delta of the one before: once only the last is pinned,
    gc stores alone the deltas whose bases nothing else lists, and the store falls to what the last
    version costs alone (<= 1.5x); it restores from an empty cache and verifies."""
    paths = _versions(str(tmp_path), 4)
    store = Store.open(store_dir)
    for k, path in enumerate(paths):
        store.put_file(path, pin="model", parent="model" if k else None)
    assert _delta_chunks(store)
    report = execute_gc(Store.open(store_dir), grace=0)
    assert report["rewritten_chunks"] > 0 and report["deleted_packs"] > 0
    fresh = Store.open(store_dir, cache_dir=str(tmp_path / "empty"))
    assert fresh.read_bytes("model") == open(paths[-1], "rb").read()
    assert fresh.verify(read_data=True).ok
    alone = Store.open(str(tmp_path / "alone"), cache_dir=str(tmp_path / "alone-cache"))
    alone.put_file(paths[-1])
    assert fresh.stats()["stored_bytes"] <= 1.5 * alone.stats()["stored_bytes"]


def test_bases_are_read_from_the_parents_file_while_it_is_as_it_was_stored(store_dir, tmp_path, monkeypatch):
    """The parent's file, still on disk unchanged, gives the bases (no stored chunk is decoded); once
    it is touched it is no longer trusted and the bases come from the store. Both ways the child is
    stored as deltas and restores byte for byte."""
    paths = _versions(str(tmp_path), 3)
    store = Store.open(store_dir)
    first = store.put_file(paths[0]).digest
    from_store: list[bytes] = []
    as_base = ChunkReader.as_base
    monkeypatch.setattr(ChunkReader, "as_base", lambda self, chunk_id: from_store.append(chunk_id) or
                        as_base(self, chunk_id))
    second = store.put_file(paths[1], parent=first).digest
    deltas = _delta_chunks(store)
    assert deltas and from_store == []
    os.utime(paths[0])  # same bytes, but no longer the file as it was stored: only a hint, not used
    store.put_file(paths[2], parent=first)
    assert len(_delta_chunks(store)) > len(deltas) and from_store
    for path, digest in ((paths[1], second), (paths[2], store.put_file(paths[2]).digest)):
        fresh = Store.open(store_dir, cache_dir=str(tmp_path / f"cache-{digest[:8]}"))
        assert fresh.read_bytes(digest) == open(path, "rb").read()


def test_a_depth_the_chunk_cache_understates_never_makes_a_child_unreadable(s3_store, tmp_path):
    """A child's depth comes from its base's chain in the index, never from a frame head the chunk
    cache serves: with the cache's copies of the parent's deepest delta frames claiming depth 1
    (their files' checks redone, as a forger would), the child, whose bases come from the parent's
    file, is still a delta no deeper than readers follow, and restores from an empty cache."""
    paths = _versions(str(tmp_path), 5)
    store = Store.open(s3_store, cache_dir=str(tmp_path / "cache"))
    digests = [store.put_file(paths[0]).digest]
    for path in paths[1:4]:
        digests.append(store.put_file(path, parent=digests[-1]).digest)
    assert store.read_bytes(digests[3]) == open(paths[3], "rb").read()  # the cache holds the parent's blobs now
    reader, cache = store.chunk_reader(), store.chunk_cache()
    deepest = [loc for loc in _delta_chunks(store) if loc.key in _chunk_ids(store, digests[3])
               and reader.base_facts(loc.key)[0] == codec.MAX_DELTA_DEPTH]
    assert deepest and cache is not None
    for loc in deepest:
        forged = bytearray(cache.get(loc.pack_id, loc.offset, loc.offset + loc.stored_len))
        assert forged[3] == codec.MAX_DELTA_DEPTH  # the frame's depth byte (docs/format.md)
        forged[3] = 1
        cache.put(loc.pack_id, loc.offset, forged)
        assert cache.get(loc.pack_id, loc.offset, loc.offset + loc.stored_len) == forged
    child = store.put_file(paths[4], parent=digests[3]).digest
    child_ids = _chunk_ids(store, child)
    assert [loc for loc in _delta_chunks(store) if loc.key in child_ids]  # still stored as deltas
    assert all(reader.base_facts(i)[0] <= codec.MAX_DELTA_DEPTH for i in child_ids)
    fresh = Store.open(s3_store, cache_dir=str(tmp_path / "empty-cache"))
    assert fresh.read_bytes(child) == open(paths[4], "rb").read()


def test_a_dead_delta_whose_base_gc_took_is_never_deduplicated_against(store_dir, tmp_path):
    """gc keeps a pack for its live blobs and deletes what only dead ones need, so a dead delta can
    outlive its base. A later put of the same checkpoint must not rely on such a delta: it stores
    the chunks again, and restores from an empty cache."""
    paths = _versions(str(tmp_path), 2)
    v0, v1 = tmp_path / "v0", tmp_path / "v1"
    v0.mkdir()
    v1.mkdir()
    os.replace(paths[0], v0 / "model.pt")
    os.replace(paths[1], v1 / "model.pt")
    (v1 / "x.bin").write_bytes(os.urandom(24 << 20))  # most of the pack the deltas are in, and kept alive
    store = Store.open(store_dir)
    first = store.put_file(str(v0), pin="v").digest
    second = store.put_file(str(v1), parent=first, pin="v").digest
    store.put_file(str(v1 / "x.bin"), pin="x")  # deduplicated: the pack stays live through x.bin
    model = next(e.digest for e in store.load_manifest(*store.resolve(second)).entries if e.path == "model.pt")
    model_ids = _chunk_ids(store, model.hex())
    store.unpin("v")
    execute_gc(store, grace=0)
    orphans = [loc for loc in _delta_chunks(store) if store.index.chunk(loc.base) is None]
    assert orphans and all(loc.key in model_ids for loc in orphans)  # the model's deltas, their bases gone
    again = store.put_file(str(v1 / "model.pt"))
    assert again.digest == model.hex() and again.new_bytes >= sum(loc.raw_len for loc in orphans)
    fresh = Store.open(store_dir, cache_dir=str(tmp_path / "fresh"))
    assert fresh.read_bytes(again.digest) == (v1 / "model.pt").read_bytes()


def test_a_base_from_the_parents_file_is_checked_against_its_id(tmp_path):
    """Bytes of the local copy that do not hash to the base's id are never used: the store's are."""
    good = os.urandom(4096)
    copy = tmp_path / "parent.bin"
    copy.write_bytes(bytes([good[0] ^ 1]) + good[1:])  # one bit off
    fd = os.open(copy, os.O_RDONLY)
    try:
        root = b"r" * 32
        bases = ParentCopy(fd, {hash_bytes(good): (0, len(good))}, lambda chunk_id: (lambda: good, 0, 10, root),
                           lambda chunk_id: (0, 10, root))
        read, *facts = bases(hash_bytes(good))
        assert facts == [0, 10, root] and (bases.local, bases.stored) == (0, 0)  # nothing read for the facts
        assert read() == good and (bases.local, bases.stored) == (0, 1)
        copy.write_bytes(good)
        assert bases(hash_bytes(good))[0]() == good and (bases.local, bases.stored) == (1, 1)
    finally:
        os.close(fd)


def test_a_folder_logged_again_stores_its_checkpoints_as_deltas_against_the_same_paths(store_dir, tmp_path):
    """A checkpoint folder (transformers' checkpoint-N) logged as the next version of its name: each
    file's parent is the file at the same path in the version before."""
    folders = _version_folders(tmp_path, "checkpoint-", lambda k: {"config.json": b'{"layers": 3}'})
    with tracker.init("ft", store=store_dir) as run:
        run.log_artifact(folders[0], name="checkpoint", step=1)
        assert _delta_chunks(run.store) == []
        run.log_artifact(folders[1], name="checkpoint", step=2)
        assert _delta_chunks(run.store)
    out = tracker.download("runs:/ft/checkpoint@2", tmp_path / "restored", store=store_dir,
                           force=True)
    assert open(os.path.join(out, "model.pt"), "rb").read() == (folders[1] / "model.pt").read_bytes()


def test_verify_reads_a_kept_pack_whose_dead_delta_lost_its_base(cli, store_dir, tmp_path):
    """gc keeps a pack for its live blobs as it is (little of it dead) and deletes the pack that only the
    dead delta chunks in it needed as bases: verify --read-data still passes (such a chunk is garbage)."""
    # version 1 also holds 4 MiB of other data: live, most of its pack
    folders = _version_folders(tmp_path, "v",
                               lambda k: {"data.bin": np.random.default_rng(k).bytes(4 << 20)} if k else {})
    with tracker.init("ft", store=store_dir) as run:
        run.log_artifact(folders[0], name="ckpt", step=1)
        run.log_artifact(folders[1], name="ckpt", step=2)
        assert _delta_chunks(run.store)
    data = cli("--json", "put", str(folders[1] / "data.bin"), "--label", "data").json()
    assert data["new_bytes"] == 0  # already stored, in the pack of version 2
    assert cli("forget", "ft", "--all").code == 0  # only the label keeps data.bin, in version 2's pack
    report = cli("--json", "gc", "--grace", "0").json()
    assert report["deleted_packs"] >= 1 and report["partly_dead_packs"] >= 1, report
    os.environ["CAS_CACHE_DIR"] = str(tmp_path / "fresh-cache")
    checked = cli("verify", "--read-data")
    assert checked.code == 0, checked.err
    assert Store.open(store_dir).read_bytes("data") == (folders[1] / "data.bin").read_bytes()
