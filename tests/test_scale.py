"""Scale: the synthetic store generator (the `synthetic` fixture, conftest.py) at small sizes, the
cache's counters against a full scan, and the store-wide commands on a generated store."""

from __future__ import annotations

import os
import struct

import pytest

from cas import Store, scratch as scratch_module
from cas.digest import hash_bytes
from cas.index import COUNT_NAMES
from cas.pack import FILE_MANIFEST


def scanned_counts(index) -> dict[str, int]:
    """What the counters must say, from a scan of every location (the way stats worked before them)."""
    out = dict.fromkeys(("chunks", *COUNT_NAMES), 0)
    for _, loc in index.iter_chunks():
        out["chunks"] += 1
        out["unique_bytes"] += loc.raw_len
        if loc.base:
            out["delta_chunks"] += 1
            out["delta_stored_bytes"] += loc.stored_len
    for _, loc in index.iter_manifests():
        if loc.kind == FILE_MANIFEST:
            out["files"] += 1
            out["logical_bytes"] += loc.size
    return out


def kept_counts(index) -> dict[str, int]:
    counts = index.counts()
    return {k: counts[k] for k in ("chunks", *COUNT_NAMES)}


def synthetic_file(f: int, seed: bytes = b"testseed", chunk_size: int = 64, chunks_per_file: int = 1000) -> bytes:
    """The bytes make_store writes for file number f."""
    pad = bytes(chunk_size - 16)
    return b"".join((seed + struct.pack("<Q", f * chunks_per_file + c) + pad)[:chunk_size]
                    for c in range(chunks_per_file))


def test_a_generated_store_is_a_store_every_command_reads(cli, synthetic):
    where, made = synthetic
    assert made["files"] == 20 and made["chunks"] == 20_000 and made["packs"] == 3 and made["index_objects"] == 2
    stats = cli("--json", "stats").json()
    assert (stats["chunks"], stats["files"], stats["packs"]) == (20_000, 20, 3)
    assert stats["logical_bytes"] == stats["unique_bytes"] == 20_000 * 64
    assert cli("verify", "--read-data").code == 0
    pins = {p["label"] for p in cli("--json", "pins").json()}
    assert len(pins) == made["pins"] == 15  # per pack of 8 files, round(8 * 0.25) unpinned; 1 of the last 4
    content = Store.open(where).read_bytes("synth/0")
    assert content == synthetic_file(0) and hash_bytes(content).hex() == Store.open(where).resolve("synth/0")[0].hex()
    report = cli("--json", "gc", "--grace", "0").json()
    assert report["deleted_packs"] + report["repacked_packs"] >= 1, report
    assert cli("verify", "--read-data").code == 0
    after = cli("--json", "stats").json()
    assert after["files"] == 15 and after["chunks"] == 15_000
    for label in sorted(pins):
        f = int(label.split("/")[1])
        assert Store.open(where).read_bytes(label) == synthetic_file(f)


def test_the_counters_agree_with_a_scan_through_puts_deltas_relearning_and_reindex(cli, store_dir, tmp_path):
    np = pytest.importorskip("numpy")
    rng = np.random.default_rng(3)
    weights = rng.standard_normal(300_000).astype(np.float32)
    for step in range(3):
        path = tmp_path / "w.npy"
        np.save(path, weights)
        assert cli("put", str(path), "--label", "w").code == 0
        (tmp_path / f"other{step}.bin").write_bytes(os.urandom(100_000 + step))
        assert cli("put", str(tmp_path / f"other{step}.bin")).code == 0
        weights = weights + rng.standard_normal(weights.size).astype(np.float32) * 1e-4
    store = Store.open(store_dir)
    counts = kept_counts(store.index)
    assert counts == scanned_counts(store.index)
    assert counts["delta_chunks"] > 0 and counts["files"] == 6
    stats = cli("--json", "stats").json()
    assert {k: stats[k] for k in counts} == counts
    store.relearn()  # every pack forgotten and learned again from the index objects
    assert kept_counts(store.index) == scanned_counts(store.index) == counts
    assert cli("reindex").code == 0  # learned from the packs' footers instead
    assert kept_counts(Store.open(store_dir).index) == counts
    assert cli("gc", "--grace", "0").code == 0
    store = Store.open(store_dir)
    store.sync()
    assert kept_counts(store.index) == scanned_counts(store.index)


def _mapped_kib(path: str) -> int:
    """KiB of this process's resident pages of the maps of path (from /proc/self/smaps)."""
    total, inside = 0, False
    target = os.path.realpath(path)
    with open("/proc/self/smaps") as smaps:
        for line in smaps:
            parts = line.split()
            if parts and "-" in parts[0] and not parts[0].endswith(":"):
                inside = line.rstrip().endswith(target)
            elif inside and parts[0] == "Rss:":
                total += int(parts[1])
    return total


@pytest.mark.skipif(not os.path.exists("/proc/self/smaps"), reason="needs /proc/self/smaps")
def test_a_long_scan_of_the_cache_keeps_few_of_its_pages_resident(tmp_path):
    from cas.index import Index
    from cas.pack import CHUNK, Location
    from cas.resident import release
    index = Index(str(tmp_path / "cache"))
    for p in range(40):
        pid = hash_bytes(b"pack%d" % p)
        index.add_pack(pid, 1 << 20, [Location(pid, CHUNK, hash_bytes(b"%d-%d" % (p, i)), 8 + i, 1, 1, 0,
                                               hash_bytes(b"%d-%d" % (p, i))) for i in range(5000)])
    data = os.path.join(index.path, "data.mdb")
    release(index.path)
    assert sum(1 for _ in index.iter_chunks()) == 200_000  # released every RELEASE_EVERY chunks as it goes
    scanned = _mapped_kib(data)
    assert scanned < 0.25 * os.path.getsize(data) / 1024, (scanned, os.path.getsize(data))
    with index._reading() as txn:  # a scan that never releases holds what it touched
        assert sum(1 for _ in txn.cursor(db=index.chunks)) == 200_000
    assert _mapped_kib(data) > 0.5 * os.path.getsize(data) / 1024
    release(index.path)
    assert _mapped_kib(data) < 1024
    assert index.chunk(hash_bytes(b"3-7")).offset == 15  # the pages read back unchanged


def test_ordered_map_keeps_order_and_at_most_a_window_in_flight():
    import threading
    import time

    from cas.parallel import ordered_map
    lock, running, most = threading.Lock(), [0], [0]

    def work(n):
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
        time.sleep(0.002 * (n % 3))
        with lock:
            running[0] -= 1
        return n * n
    consumed = []
    for value in ordered_map(work, range(40), workers=4, window=3):
        consumed.append(value)
    assert consumed == [n * n for n in range(40)] and most[0] <= 3
    assert list(ordered_map(work, range(5), workers=1)) == [0, 1, 4, 9, 16]


def test_writers_merge_only_small_index_objects_into_objects_of_bounded_size():
    from cas import layout, pack_index

    class Listing:
        def __init__(self, sizes):
            self.items = [(layout.index_key(hash_bytes(b"%d" % i)), size) for i, size in enumerate(sizes)]

        def list(self, prefix):
            return list(self.items)
    full, small = pack_index.FULL_OBJECT, pack_index.FULL_OBJECT // 10
    assert pack_index.merge_groups(Listing([small] * pack_index.MERGE_AT + [full] * 50)) == []  # full ones wait
    listing = Listing([small] * 45 + [full] * 3)
    groups = pack_index.merge_groups(listing)
    sizes = dict(listing.items)
    assert [len(g) for g in groups] == [10, 10, 10, 10, 5]
    assert all(sum(sizes[k] for k in g) <= full for g in groups)
    assert all(sizes[k] < full for g in groups for k in g)


def test_a_sync_in_small_transactions_learns_every_pack_and_marks_each_object_read(synthetic, monkeypatch):
    import cas.index
    import cas.store
    where, made = synthetic
    monkeypatch.setattr(cas.index, "SYNC_BATCH", 3000)  # each object (2 packs of 8,008 blobs) in 2 transactions
    monkeypatch.setattr(cas.store, "BULK_SYNC_BYTES", 1 << 40)  # pack by pack, not in bulk
    store = Store.open(where)
    assert store.sync() == made["packs"]
    assert kept_counts(store.index) == scanned_counts(store.index)
    assert store.index.counts()["chunks"] == made["chunks"]
    assert len(store.index.index_objects_read()) == made["index_objects"]
    assert store.sync() == 0  # every object was marked read


def test_gc_rewrites_only_the_index_objects_that_named_a_pack_it_deleted(cli, store_dir, tmp_path):
    from cas import layout, pack_index
    for name in ("kept", "dropped"):
        (tmp_path / name).write_bytes(os.urandom(300_000))
        assert cli("put", str(tmp_path / name), "--label", name).code == 0
    store = Store.open(store_dir)
    before = {key: [r.pack_id for r in pack_index.read(store.backend, key)]
              for key in pack_index.list_keys(store.backend)}
    assert len(before) == 2
    assert cli("unpin", "dropped").code == 0
    assert cli("--json", "gc", "--grace", "0").json()["deleted_packs"] == 1
    after = {key: [r.pack_id for r in pack_index.read(store.backend, key)]
             for key in pack_index.list_keys(store.backend)}
    listed = {layout.pack_id_from_key(key) for key, _ in store.backend.list(layout.PACKS)}
    assert set(after) < set(before) and len(after) == 1  # the other object untouched, this one gone (empty)
    assert all(pid in listed for pids in after.values() for pid in pids)
    assert Store.open(store_dir).read_bytes("kept") == (tmp_path / "kept").read_bytes()


def test_a_spill_table_keeps_rows_by_partition_in_the_order_added_and_aligned(tmp_path, monkeypatch):
    np = pytest.importorskip("numpy")
    from cas import spill
    from cas.supply import BASE, ENTRY
    monkeypatch.setattr(scratch_module, "SPILL_ROWS", 100)
    monkeypatch.setattr(scratch_module, "GROUP_ROWS", 250)
    rng = np.random.default_rng(7)
    ids = rng.integers(0, 256, size=(2000, 32), dtype=np.uint8).view("S32").ravel()
    delta = rng.random(2000) < 0.3
    with scratch_module.Scratch(str(tmp_path / "scratch")) as scratch:
        entries, bases = spill.Table(ENTRY, scratch), spill.Table(BASE, scratch)
        for start in range(0, 2000, 37):  # batches of rows, each spilled when 100 pile up
            rows = np.zeros(len(ids[start:start + 37]), ENTRY)
            rows["id"], rows["pack"] = ids[start:start + 37], np.arange(start, start + len(rows))
            rows["delta"] = delta[start:start + 37]
            entries.add(rows)
            b = np.zeros(int(rows["delta"].sum()), BASE)
            b["id"], b["base"] = rows["id"][rows["delta"] == 1], rows["id"][rows["delta"] == 1][::-1]
            bases.add(b)
        files = os.listdir(scratch.folder())
        assert len(files) == 2 and len(entries) == 2000  # both tables spilled, to folders of their own
        groups = spill.groups(entries, bases)
        assert groups[0][0] == 0 and groups[-1][1] == spill.PARTS and len(groups) > 4
        assert all(a[1] == b[0] for a, b in zip(groups, groups[1:]))
        seen = []
        for lo, hi in groups:
            rows = entries.load(lo, hi)
            parts = spill.parts_of(rows)
            assert ((parts >= lo) & (parts < hi)).all() and (np.diff(parts.astype(int)) >= 0).all()
            for p in range(lo, hi):  # within a partition, in the order added (pack numbers ascend)
                assert (np.diff(rows["pack"][parts == p].astype(np.int64)) > 0).all()
            assert np.array_equal(bases.load(lo, hi)["id"], rows["id"][rows["delta"] == 1])  # aligned
            seen.append(rows["pack"])
        assert sorted(np.concatenate(seen).tolist()) == list(range(2000))
        folder = scratch.folder()
    assert not os.path.exists(folder)  # removed on close


def test_a_scratch_folder_a_killed_process_left_is_removed(tmp_path):
    root = tmp_path / "scratch"
    host = scratch_module._host()
    (root / f"{host}-999999999-dead").mkdir(parents=True)
    (root / f"{host}-999999999-dead" / "x").write_bytes(b"x")
    (root / f"{host}-{os.getpid()}-mine").mkdir()
    (root / "otherhost-999999999-theirs").mkdir()  # another host's: its pid means nothing here
    with scratch_module.Scratch(str(root)) as scratch:
        scratch.folder()
        assert not (root / f"{host}-999999999-dead").exists() and (root / f"{host}-{os.getpid()}-mine").exists()
        assert (root / "otherhost-999999999-theirs").exists()


def test_a_scratch_file_gone_or_cut_short_stops_the_command_never_reads_as_fewer_rows(tmp_path, monkeypatch):
    """A spilled partition is rows gc would otherwise not see (reachable ids: packs it would delete):
    a vanished or truncated file is an error, not an empty partition."""
    np = pytest.importorskip("numpy")
    from cas import spill
    from cas.errors import StorageError
    monkeypatch.setattr(scratch_module, "SPILL_ROWS", 10)
    ids = np.random.default_rng(3).integers(0, 256, size=(300, 32), dtype=np.uint8).view("S32").ravel()
    with scratch_module.Scratch(str(tmp_path / "scratch")) as scratch:
        table = spill.Table(np.dtype("S32"), scratch)
        table.add(ids)
        assert len(table.load()) == 300
        files = sorted(os.listdir(os.path.join(scratch.folder(), os.listdir(scratch.folder())[0])))
        folder = os.path.join(scratch.folder(), os.listdir(scratch.folder())[0])
        with open(os.path.join(folder, files[0]), "r+b") as f:
            f.truncate(32 * (os.path.getsize(os.path.join(folder, files[0])) // 32 - 1))
        with pytest.raises(StorageError, match="scratch file is damaged"):
            table.load()
        os.unlink(os.path.join(folder, files[1]))
        with pytest.raises(StorageError, match="gone or damaged"):
            table.load(int(files[1]), int(files[1]) + 1)


def test_a_malformed_spill_budget_is_one_line(cli, synthetic, monkeypatch):
    from conftest import one_error_line
    monkeypatch.setenv("CAS_GROUP_ROWS", "lots")
    where, _ = synthetic
    listed = sorted(os.listdir(os.path.join(where, "packs")))
    for args in (("gc", "--dry-run"), ("gc", "--grace", "0"), ("verify",)):
        result = cli(*args)
        assert result.code == 2 and "CAS_GROUP_ROWS" in one_error_line(result.err), args
    assert sorted(os.listdir(os.path.join(where, "packs"))) == listed  # nothing was changed


def test_gc_and_verify_decide_the_same_with_their_tables_spilled_to_disk(cli, synthetic, monkeypatch):
    """gc's plan (what it keeps, repacks, condemns, and which blobs each kept pack supplies) is the same
    with everything in memory and with its tables spilled to disk and read back a few partitions at a
    time; then a gc and a verify run that way, and every pinned file restores."""
    from cas import gc, spill
    where, _ = synthetic
    store = Store.open(where)

    def plan(scratch):
        seen = gc._Reader(store, scratch).collect(dry_run=True)
        p = gc.plan_gc(seen.packs, seen.reachable, seen.condemnations, seen.live, seen.now, 0.0)
        return p, len(seen.reachable), {pid: (s.stored, s.keys()) for pid, s in p.supplies.items()}
    in_memory = plan(scratch_module.IN_MEMORY)
    spills = []
    monkeypatch.setattr(scratch_module, "SPILL_ROWS", 500)
    monkeypatch.setattr(scratch_module, "GROUP_ROWS", 2000)
    monkeypatch.setattr(spill.Table, "_spill", lambda self, f=spill.Table._spill: spills.append(1) or f(self))
    with store.scratch() as scratch:
        on_disk = plan(scratch)
    assert spills and in_memory[1:] == on_disk[1:] and in_memory[1] == 15_015  # chunks and manifests
    a, b = in_memory[0], on_disk[0]
    assert (a.keep, a.repack, a.condemn, a.delete) == (b.keep, b.repack, b.condemn, b.delete) and a.repack
    pins = {p["label"] for p in cli("--json", "pins").json()}
    assert cli("--json", "gc", "--grace", "0").json()["repacked_packs"] == len(a.repack)
    assert cli("verify", "--read-data").code == 0
    for label in sorted(pins):
        assert Store.open(where).read_bytes(label) == synthetic_file(int(label.split("/")[1]))
    assert os.listdir(os.path.join(store.cache_dir, "scratch")) == []  # nothing left behind


def test_after_a_gc_that_repacks_its_cache_knows_what_a_new_machines_does(cli, synthetic, tmp_path, monkeypatch):
    """gc's confirmation leaves the repack's own index objects to its last sync (docs/design.md, phase
    2): that sync, after the deletions, learns every pack again, so the cache of the machine that ran
    gc ends as a new machine's would, and reads from it."""
    where, _ = synthetic
    learned = []  # (index objects left unlearned, packs learned) of each sync of the gc run
    with monkeypatch.context() as patch:
        patch.setattr(Store, "sync", lambda self, *, forget=False, unlearned=frozenset(), f=Store.sync:
                      learned.append((unlearned, f(self, forget=forget, unlearned=unlearned))) or learned[-1][1])
        report = cli("--json", "gc", "--grace", "0").json()
    assert report["repacked_packs"] and report["deleted_packs"]
    assert [n for left, n in learned if left] == [0]  # the confirmation: the repack is not learned there
    counts = ("chunks", "packs", "files", "unique_bytes", "logical_bytes", "delta_chunks")
    here = Store.open(where)
    assert os.path.dirname(here.cache_dir) == str(tmp_path)  # the gc machine's cache (conftest's)
    with monkeypatch.context() as patch:
        patch.setenv("CAS_CACHE_DIR", str(tmp_path / "new-machine"))
        fresh = Store.open(where).stats()
    assert {k: here.stats()[k] for k in counts} == {k: fresh[k] for k in counts} and fresh["packs"]
    assert cli("verify").code == 0
    for pin in cli("--json", "pins").json():
        assert Store.open(where).read_bytes(pin["label"]) == synthetic_file(int(pin["label"].split("/")[1]))


def test_decoding_pauses_the_cycle_collector_and_leaves_it_as_it_was(synthetic):
    import gc

    from cas import collector
    where, made = synthetic
    assert gc.isenabled()
    with collector.many_objects():
        assert not gc.isenabled()
    assert gc.isenabled()
    assert Store.open(where).sync() == made["packs"]
    assert gc.isenabled()  # a sync (and each decode in it) gives it back
    gc.disable()
    try:
        with collector.many_objects():
            pass
        assert not gc.isenabled()  # paused by someone else: stays paused
    finally:
        gc.enable()


def test_the_repack_finds_each_victims_chunks_for_hundreds_of_batches_in_one_pass(tmp_path, monkeypatch):
    """More batches than partitions (batches share a partition of the table they go to), spilled."""
    import numpy as np

    from cas import spill
    from cas.pack import CHUNK, Location
    from cas.pack_index import PackRecord
    from cas.supply import Catalog, Choice
    monkeypatch.setenv("CAS_SPILL_ROWS", "100")
    monkeypatch.setenv("CAS_GROUP_ROWS", "300")
    records = []
    for p in range(300):
        pid = hash_bytes(b"pack%d" % p)
        keys = [hash_bytes(b"%d-%d" % (p, i)) for i in range(1 + p % 4)]
        records.append(PackRecord(pid, 1000, tuple(Location(pid, CHUNK, k, 16 + 10 * i, 5, 5, 0, k)
                                                   for i, k in enumerate(keys))))
    with scratch_module.Scratch(str(tmp_path / "scratch")) as scratch:
        catalog = Catalog.of(records, scratch)
        choice = Choice(catalog)
        for lo, hi in spill.groups(catalog.entries):  # every entry chosen except each pack's first
            rows = catalog.entries.load(lo, hi)
            firsts = {r.entries[0].key for r in records}
            choice.keep(lo, hi, rows, np.flatnonzero([bytes(i).ljust(32, b"\0") not in firsts for i in rows["id"]]))
        batches = [{n} for n in range(300)]
        got = list(choice.keys_by_batch(batches))
    assert len(got) == 300
    for n, (record, found) in enumerate(zip(records, got)):
        expected = sorted(e.key for e in record.entries[1:])
        assert {k: [bytes(x).ljust(32, b"\0") for x in v] for k, v in found.items()} == \
            ({n: expected} if expected else {})


def test_a_footer_entry_is_refused_by_the_fast_path_whenever_the_checked_path_refuses_it():
    """Location.from_list's one test accepts only what the field-by-field check accepts, the same way."""
    import random

    from cas import codec, framing
    from cas.pack import CHUNK, FILE_MANIFEST, MAX_STORED, Location
    rnd = random.Random(5)
    key, check = bytes(range(32)), bytes(32)
    goods = [[CHUNK, key, 16, 10, 20, codec.ZSTD, b"", 0], [CHUNK, key, 16, 10, 20, codec.DELTA, check, 0],
             [FILE_MANIFEST, key, 16, 10, 20, codec.ZSTD, check, 99], [CHUNK, key, 16, 20, 20, codec.RAW, b"", 0]]
    odd = [None, True, -1, 0, 8, 15, 16, 2**31, MAX_STORED + 1, framing.MAX_INT + 1, 1.5, "x", b"", b"\0" * 31,
           check, 3, 4, 7, 1 << 40]
    agreed = 0
    for _ in range(20_000):
        row = list(rnd.choice(goods))
        for _ in range(rnd.randint(1, 2)):
            row[rnd.randrange(8)] = rnd.choice(odd)
        try:
            checked = Location._checked_from_list(row, b"p" * 32)
        except ValueError:
            checked = None
        try:
            fast = Location.from_list(row, b"p" * 32)
        except ValueError:
            fast = None
        assert fast == checked, row
        agreed += checked is not None
    assert agreed > 100  # both ways of accepting were exercised
