"""The bulk load that fills an empty cache (cas/bulk_load.py): the same cache as learning pack by pack,
whatever the copies, spills and batches; a writer learning a pack meanwhile; a load killed halfway;
two machines' first commands at once."""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
import textwrap

import pytest
from test_scale import kept_counts, scanned_counts, synthetic_file

import cas.bulk_load
from cas import Store
from cas.bulk_load import BulkLoad
from cas.codec import DELTA, ZSTD
from cas.index import Index
from cas.pack import CHUNK, FILE_MANIFEST, TREE_MANIFEST, Location
from cas.scratch import Scratch


def _packs(seed: int, n_packs: int = 12, per_pack: int = 60) -> list[tuple[bytes, int, list[Location]]]:
    """Packs whose blobs share ids in every way a store can hold them: a chunk in two packs stored alone,
    alone in one and as a delta in another, as deltas in two; a manifest in two packs."""
    rnd = random.Random(seed)
    ids = [rnd.randbytes(32) for _ in range(n_packs * per_pack // 2)]  # so that about half the blobs repeat
    ids += [bytes(31) + b"\x01", b"\xff" * 32, bytes(32)]  # the extremes of the key order
    packs = []
    for _ in range(n_packs):
        pid = rnd.randbytes(32)
        entries, used = [], set()
        for i in range(per_pack):
            key = rnd.choice(ids)
            if key in used:
                continue
            used.add(key)
            kind = (CHUNK, FILE_MANIFEST, TREE_MANIFEST)[key[0] % 3]  # a digest names one kind of blob
            offset, raw = 16 + i * 100, 40 + key[1]
            if kind == CHUNK and rnd.random() < 0.3:
                entries.append(Location(pid, CHUNK, key, offset, 20, raw, DELTA, key, 0, rnd.choice(ids)))
            elif kind == CHUNK:
                entries.append(Location(pid, CHUNK, key, offset, 30, raw, ZSTD, key))
            else:
                entries.append(Location(pid, kind, key, offset, 30, raw, ZSTD, rnd.randbytes(32), 1000 + key[2]))
        packs.append((pid, 16 + per_pack * 100 + 64, entries))
    return packs


def _contents(index: Index) -> tuple[dict, dict, dict]:
    """Every chunk and manifest location (pack numbers resolved to ids) and the counters."""
    return (dict(index.iter_chunks()), dict(index.iter_manifests()), kept_counts(index))


@pytest.mark.parametrize("spill,known", [(False, 0), (True, 0), (False, 5), (True, 5)])
def test_a_bulk_load_makes_the_cache_that_learning_pack_by_pack_makes(tmp_path, monkeypatch, spill, known):
    """known: packs both caches learned one by one before (a sync of many new index objects into a
    cache that knows packs: its rows cannot be appended, they are learned in key order)."""
    packs = _packs(seed=7)
    one_by_one = Index(str(tmp_path / "one"))
    for pid, size, entries in packs:
        one_by_one.add_pack(pid, size, entries)
    bulk = Index(str(tmp_path / "bulk"))
    for pid, size, entries in packs[:known]:
        bulk.add_pack(pid, size, entries)
    if spill:  # tables on disk, read back a few partitions at a time, written in small transactions
        monkeypatch.setenv("CAS_SPILL_ROWS", "40")
        monkeypatch.setenv("CAS_GROUP_ROWS", "30")
        monkeypatch.setattr(cas.bulk_load, "BATCH", 7)
    with Scratch(str(tmp_path / "scratch")) as scratch:
        load = BulkLoad(bulk, scratch)
        for i, (pid, size, entries) in enumerate(packs):
            assert load.add_pack(pid, size, entries) == (i >= known)  # a pack the cache knows is not learned again
        assert not load.add_pack(*packs[3])  # a pack two index objects name is collected once
        load.commit()
        assert os.listdir(tmp_path / "scratch") if spill else True  # the tables did spill
    expected = _contents(one_by_one)
    assert expected[2]["delta_chunks"] > 0 and expected[2]["files"] > 0
    assert _contents(bulk) == expected
    assert kept_counts(bulk) == scanned_counts(bulk)
    assert bulk.pack_ids() == one_by_one.pack_ids()


def test_a_pack_a_writer_learns_during_a_bulk_load_is_kept_with_the_right_counters(tmp_path, monkeypatch):
    packs = _packs(seed=8, n_packs=6)
    writer_pack = _packs(seed=9, n_packs=1)[0]  # other ids, spread over the whole key order
    monkeypatch.setattr(cas.bulk_load, "BATCH", 10)
    bulk = Index(str(tmp_path / "bulk"))
    appended = []
    real_append = Index.append_blobs

    def append_blobs(self, manifests, pairs, tally):
        appended.append(len(pairs))
        if len(appended) == 2:  # between two batches of the load: its next keys are not past the writer's
            self.add_pack(*writer_pack)
        return real_append(self, manifests, pairs, tally)
    monkeypatch.setattr(Index, "append_blobs", append_blobs)
    load = BulkLoad(bulk, Scratch(None))
    for pack in packs:
        load.add_pack(*pack)
    load.commit()
    reference = Index(str(tmp_path / "reference"))
    for pack in [*packs, writer_pack]:
        reference.add_pack(*pack)
    assert len(appended) > 2
    assert _contents(bulk) == _contents(reference)
    assert kept_counts(bulk) == scanned_counts(bulk)


def _cache_index(cache: str) -> str:
    """The one index folder under a cache folder."""
    found = [os.path.join(d, "index") for d, subdirs, _ in os.walk(cache) if "index" in subdirs]
    assert len(found) == 1
    return found[0]


def test_a_bulk_load_killed_halfway_is_forgotten_and_done_again_by_the_next_command(synthetic, tmp_path):
    where, made = synthetic
    cache = str(tmp_path / "cache")
    env = {**os.environ, "CAS_CACHE_DIR": cache}
    killer = textwrap.dedent(f"""
        import os, sys
        import cas.bulk_load, cas.store
        from cas.index import Index
        cas.store.BULK_SYNC_BYTES = 1  # this store's index objects are under 1 MiB
        cas.bulk_load.BATCH = 1000
        real, calls = Index.append_blobs, []
        def append_blobs(self, *args):
            real(self, *args)
            calls.append(1)
            if len(calls) == 3:
                os._exit(9)  # killed: no cleanup runs
        Index.append_blobs = append_blobs
        from cas.cli import main
        sys.exit(main(["--store", {where!r}, "stats"]))
    """)
    died = subprocess.run([sys.executable, "-c", killer], env=env, capture_output=True, text=True)
    assert died.returncode == 9, died.stderr
    half = Index(_cache_index(cache))
    assert 0 < half.counts()["chunks"] < made["chunks"] and half.counts()["packs"] == 0  # rows, no packs
    assert all(loc.pack_id for _, loc in half.iter_chunks())  # every row's pack number resolves (numbered first)
    done = subprocess.run([sys.executable, "-m", "cas", "--store", where, "stats", "--json"], env=env,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    stats = json.loads(done.stdout)
    assert (stats["chunks"], stats["packs"], stats["files"]) == (made["chunks"], made["packs"], made["files"])
    store = Store.open(where, cache_dir=cache)
    assert kept_counts(store.index) == scanned_counts(store.index)
    assert store.sync() == 0  # every index object was marked read by the load done again
    assert store.read_bytes("synth/3") == synthetic_file(3)


def test_two_first_commands_at_once_on_a_new_machine_both_see_the_whole_store(synthetic, tmp_path):
    where, made = synthetic
    env = {**os.environ, "CAS_CACHE_DIR": str(tmp_path / "cache")}
    in_bulk = ("import sys, cas.store; cas.store.BULK_SYNC_BYTES = 1; from cas.cli import main; "
               f"sys.exit(main(['--store', {where!r}, 'stats', '--json']))")  # its index objects are under 1 MiB
    procs = [subprocess.Popen([sys.executable, "-c", in_bulk], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        stats = json.loads(out)
        assert (stats["chunks"], stats["packs"], stats["files"]) == (made["chunks"], made["packs"], made["files"])
    store = Store.open(where, cache_dir=str(tmp_path / "cache"))
    assert kept_counts(store.index) == scanned_counts(store.index)


def test_a_new_machine_learns_a_small_store_object_by_object_without_numpy(synthetic, tmp_path):
    """Under BULK_SYNC_BYTES of index objects (this store: 20,000 chunks in 2 objects) a new machine's
    first sync learns them one at a time: the bulk load would import numpy, which costs more here."""
    where, made = synthetic
    probe = ("import io, json, sys, contextlib\nfrom cas.cli import main\nout = io.StringIO()\n"
             f"with contextlib.redirect_stdout(out): code = main(['--store', {where!r}, 'stats', '--json'])\n"
             "print(json.dumps([code, 'numpy' in sys.modules, json.loads(out.getvalue())]))")
    r = subprocess.run([sys.executable, "-c", probe], env={**os.environ, "CAS_CACHE_DIR": str(tmp_path / "c")},
                       capture_output=True, text=True)
    code, numpy_imported, stats = json.loads(r.stdout)
    assert code == 0 and not numpy_imported, r.stderr
    assert (stats["chunks"], stats["packs"], stats["files"]) == (made["chunks"], made["packs"], made["files"])


def test_a_machine_that_was_away_learns_what_others_wrote_in_bulk_and_reads_it(store_dir, tmp_path, monkeypatch):
    import cas.store
    machine_a = Store.open(store_dir, cache_dir=str(tmp_path / "a"))
    machine_b = Store.open(store_dir, cache_dir=str(tmp_path / "b"))
    first = os.urandom(3 << 20)
    machine_a.put_bytes(first, pin="first")
    assert machine_b.read_bytes("first") == first  # b's cache now knows packs
    later = {f"later{i}": os.urandom(1 << 20) + first[: 1 << 20] for i in range(4)}  # dedups against first
    for label, data in later.items():
        machine_a.put_bytes(data, pin=label)
    monkeypatch.setattr(cas.store, "BULK_SYNC_BYTES", 1)  # what a's puts wrote is "many": loaded in bulk
    loads = []
    real_commit = BulkLoad.commit
    monkeypatch.setattr(BulkLoad, "commit", lambda self: (loads.append(len(self.packs)), real_commit(self))[1])
    assert machine_b.sync() == 4
    assert loads == [4]
    assert kept_counts(machine_b.index) == scanned_counts(machine_b.index)
    assert kept_counts(machine_b.index) == kept_counts(machine_a.index)
    for label, data in later.items():
        assert machine_b.read_bytes(label) == data


def test_a_store_restored_from_a_backup_is_relearned_whole_when_a_sync_loads_in_bulk(store_dir, tmp_path,
                                                                                    monkeypatch):
    """The cache knew packs the restored store lacks, and another machine wrote since: the bulk sync
    still finds the objects it read gone, forgets every pack, and learns only what the store holds."""
    import cas.store
    monkeypatch.setattr(cas.store, "BULK_SYNC_BYTES", 1)
    machine_a = Store.open(store_dir, cache_dir=str(tmp_path / "a"))
    base = os.urandom(2 << 20)
    machine_a.put_bytes(base, pin="base")
    backup = tmp_path / "backup"
    shutil.copytree(store_dir, backup, symlinks=True)
    lost = os.urandom(2 << 20)
    lost_digest = bytes.fromhex(machine_a.put_bytes(lost).digest)
    assert machine_a.index.manifest(lost_digest) is not None
    shutil.rmtree(store_dir)
    shutil.copytree(backup, store_dir, symlinks=True)
    machine_c = Store.open(store_dir, cache_dir=str(tmp_path / "c"))
    other = os.urandom(2 << 20)
    machine_c.put_bytes(other, pin="other")
    machine_a = Store.open(store_dir, cache_dir=str(tmp_path / "a"))
    machine_a.sync()
    assert machine_a.index.manifest(lost_digest) is None  # never deduplicated against again
    assert kept_counts(machine_a.index) == scanned_counts(machine_a.index) == kept_counts(machine_c.index)
    assert machine_a.read_bytes("base") == base and machine_a.read_bytes("other") == other
    assert machine_a.put_bytes(lost).new_bytes == len(lost)
