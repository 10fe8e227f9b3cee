"""Record objects (cas/record_objects.py): many run records in one object, so a new machine learns the runs
in a few reads, trusted no more than the loose records they repeat, which stay the source of truth.

A "machine" is a Store with its own cache folder. GETs are counted by wrapping the backend's get.
"""

from __future__ import annotations

import os
import threading

import pytest
from conftest import one_error_line

from cas import layout, record_objects
from cas.errors import IntegrityError, NotFound
from cas.records import _encode
from cas.store import Store


def machine(uri: str, tmp_path, name: str) -> Store:
    return Store.open(uri, cache_dir=str(tmp_path / f"cache-{name}"))


def counting(store: Store) -> dict[str, int]:
    """Count the store's GETs by top-level folder (runs, records, ...) from now on."""
    counts: dict[str, int] = {}
    get = store.backend.get

    def counted(key, *args, **kw):
        top = key.split("/", 1)[0]
        counts[top] = counts.get(top, 0) + 1
        return get(key, *args, **kw)
    store.backend.get = counted  # type: ignore[method-assign]
    return counts


def write_runs(store: Store, runs: int, per_run: int) -> None:
    """Versions (two names, explicit steps), a tombstone, an alias and a status event in each run."""
    store.init()
    book = store.records
    with store.writing():
        for r in range(runs):
            run = f"run-{r}"
            book.log_event(run, "start", config={"r": r}, metadata={})
            for i in range(per_run):
                book.log_version(run, f"m{i % 2}", kind="checkpoint", digest=None, size=i, new_bytes=0,
                                 step=i // 2, ref_uri=f"s3://x/{run}/{i}", metadata={"i": i})
            first = book.versions(run, "m0")[0]
            book.forget([first])
            book.set_alias(run, "m1", "best", 0)
            book.log_event(run, "status", status="finished")


def view(store: Store, *, objects: bool = True) -> dict:
    """Everything a reader can ask of the records, as plain values."""
    book = store.open_records() if objects else _loose_only(store)
    out = {}
    for run in book.run_names():
        out[run] = {"live": [v.to_dict() for v in book.versions(run)],
                    "all": [v.key for v in book.versions(run, live_only=False)],
                    "events": [(e.type, e.data) for e in book.events(run)],
                    "aliases": book.aliases(run), "status": book.run_state(run).status}
    return out


def _loose_only(store: Store):
    """A book that never reads record objects: what a cas without them learns."""
    from cas.records import RecordBook
    book = RecordBook(store.backend, store.index)
    book.sync()
    return book


def record_object_keys(store: Store) -> list[str]:
    return [k for k, _ in record_objects.list_objects(store.backend)]


@pytest.fixture
def small_thresholds(monkeypatch):
    monkeypatch.setattr(record_objects, "COMPACT_AT", 20)
    monkeypatch.setattr(record_objects, "MERGE_AT", 2)


# ---- a new machine reads few objects and learns the same ------------------------------------------------

def test_a_new_machine_learns_every_record_from_few_objects(store_dir, tmp_path):
    writer = machine(store_dir, tmp_path, "writer")
    write_runs(writer, runs=12, per_run=100)  # 1,260 records: one compaction on the way, at 1,000
    assert len(record_object_keys(writer)) == 1
    writer.open_records().objects.compact()  # the rest, as the next writer past the threshold would
    fresh = machine(store_dir, tmp_path, "fresh")
    gets = counting(fresh)
    seen = view(fresh)
    assert gets.get("runs", 0) == 0 and gets["records"] <= 2, gets
    assert seen == view(machine(store_dir, tmp_path, "loose"), objects=False)
    assert seen == view(writer)
    assert len(seen) == 12 and all(len(r["live"]) == 99 and r["aliases"] == {("m1", "best"): 0}
                                   for r in seen.values())


def test_on_s3_a_new_machine_reads_few_objects(s3_store, tmp_path, small_thresholds):
    writer = machine(s3_store, tmp_path, "writer")
    write_runs(writer, runs=3, per_run=30)
    writer.open_records().objects.compact()
    fresh = machine(s3_store, tmp_path, "fresh")
    gets = counting(fresh)
    seen = view(fresh)
    assert gets.get("runs", 0) == 0 and gets["records"] <= 3, gets
    assert seen == view(machine(s3_store, tmp_path, "loose"), objects=False) == view(writer)


def test_loose_records_stay_and_read_only_commands_write_no_record_object(store_dir, tmp_path, cli,
                                                                           small_thresholds):
    writer = machine(store_dir, tmp_path, "writer")
    write_runs(writer, runs=1, per_run=10)
    loose = sorted(k for k, _ in writer.backend.list(layout.RUNS))
    assert writer.open_records().objects.compact()
    assert sorted(k for k, _ in writer.backend.list(layout.RUNS)) == loose  # nothing loose is deleted
    for i in range(30):  # loose records as an older cas writes them: no record object holds them
        writer.backend.put(layout.version_key("old", "m", i, f"{i + 1:020d}-{i:012x}"),
                           _encode({"t": "version", "run": "old", "name": "m", "step": i, "kind": "k",
                                    "digest": None, "size": 0, "new_bytes": 0, "time": 1.0, "metadata": {}}),
                           create_only=True)
    before = record_object_keys(writer)
    for args in (["runs"], ["log", "old"], ["verify"], ["forget", "old", "--keep-last", "1", "--dry-run"]):
        assert cli(*args, "--json").code == 0, args
    assert record_object_keys(writer) == before  # readers wrote nothing
    writer.open_records().sync()
    writer.records.log_event("old", "status", status="finished")  # a writer past the threshold compacts
    assert len(record_object_keys(writer)) == len(before) + 1


# ---- trusted no more than a loose record --------------------------------------------------------------

def _one_run_compacted(store_dir, tmp_path) -> tuple[Store, str]:
    writer = machine(store_dir, tmp_path, "writer")
    write_runs(writer, runs=1, per_run=6)
    [key] = writer.open_records().objects.compact()
    return writer, key


def _replace(store: Store, key: str, data: bytes) -> str:
    """Put data in place of the record object at key (an attacker or a bad disk)."""
    path = os.path.join(store.backend.local_root(), *key.split("/"))
    with open(path, "wb") as f:
        f.write(data)
    return key


def _forged(store: Store, key: str, change) -> str:
    """A record object sealed and named right, holding the records of key changed by change(items)."""
    items = [(k, raw) for k, raw, _ in record_objects.decode(store.backend.get(key), key=key)]
    new_key, data = record_objects.encode(change(items))
    store.backend.put(new_key, data, create_only=True)
    store.backend.delete([key])
    return new_key


def _flip_last(data: bytes) -> bytes:
    return data[:-1] + bytes([data[-1] ^ 1])


def _foreign_record(items):
    """A record of another run under the first key: its own seal is right, its key is not its folder."""
    other = _encode({"t": "version", "run": "other", "name": "m0", "step": 0, "kind": "k", "digest": None,
                     "size": 0, "new_bytes": 0, "time": 1.0, "metadata": {}})
    return [(items[0][0], other)] + items[1:]


DAMAGE = {
    "bad seal": lambda s, k: _replace(s, k, bytes([s.backend.get(k)[0] ^ 1]) + s.backend.get(k)[1:]),
    "seal not its name": lambda s, k: _replace(s, k, _flip_last(s.backend.get(k))),
    "a record under a key of another run": lambda s, k: _forged(s, k, _foreign_record),
    "a damaged record inside": lambda s, k: _forged(s, k, lambda items: [(items[0][0], _flip_last(items[0][1]))]
                                                    + items[1:]),
    "a key that is not a record key": lambda s, k: _forged(s, k, lambda items: [("runs/x", items[0][1])]),
}


@pytest.mark.parametrize("how", sorted(DAMAGE))
def test_a_damaged_or_forged_record_object_is_refused_or_skipped_never_trusted(store_dir, tmp_path, cli, how):
    writer, key = _one_run_compacted(store_dir, tmp_path)
    bad = DAMAGE[how](writer, key)
    fresh = machine(store_dir, tmp_path, "fresh")
    with pytest.raises(IntegrityError) as raised:
        fresh.open_records()
    assert bad in str(raised.value) and "\n" not in str(raised.value)
    found: list[IntegrityError] = []
    skipping = machine(store_dir, tmp_path, "skipping")
    gets = counting(skipping)
    assert view_with(skipping, found.append) == view(machine(store_dir, tmp_path, "loose"), objects=False)
    loose = [k for k, _ in skipping.backend.list(layout.RUNS)]
    assert [bad in str(e) for e in found] == [True] and gets["runs"] == len(loose)  # learned loose instead
    r = cli("runs", store=store_dir)
    assert r.code != 0 and bad in one_error_line(r.err)
    report = cli("verify", "--json", store=store_dir)
    assert report.code != 0 and any(bad in p for p in report.json()["problems"])


def view_with(store: Store, on_damaged) -> dict:
    book = store.open_records(on_damaged=on_damaged)
    return {run: {"live": [v.to_dict() for v in book.versions(run)],
                  "all": [v.key for v in book.versions(run, live_only=False)],
                  "events": [(e.type, e.data) for e in book.events(run)],
                  "aliases": book.aliases(run), "status": book.run_state(run).status} for run in book.run_names()}


def test_a_record_object_larger_than_the_bound_is_not_fetched(store_dir, tmp_path, monkeypatch):
    writer, key = _one_run_compacted(store_dir, tmp_path)
    size = writer.backend.stat(key)
    monkeypatch.setattr(record_objects, "FULL_OBJECT", size - 1)
    fresh = machine(store_dir, tmp_path, "fresh")
    gets = counting(fresh)
    with pytest.raises(IntegrityError, match=f"record object {key} is damaged: {size} bytes, more than"):
        fresh.open_records()
    assert "records" not in gets
    with pytest.raises(IntegrityError, match="more than"):
        record_objects.decode(writer.backend.get(key), key=key)


def test_a_record_whose_loose_object_is_gone_is_forgotten_though_a_record_object_holds_it(store_dir, tmp_path):
    """A store restored from a copy lacking a loose record: the loose listing decides, on every machine."""
    writer, key = _one_run_compacted(store_dir, tmp_path)
    held = [k for k, _, _ in record_objects.decode(writer.backend.get(key), key=key)]
    lost = next(k for k in held if "/v/" in k)
    writer.backend.delete([lost])
    for who in ("writer", "fresh"):
        book = machine(store_dir, tmp_path, who).open_records()
        keys = [v.key for v in book.versions("run-0", live_only=False)]
        assert lost not in keys and len(keys) == 6, who  # 6 versions + 1 tombstone, one lost
    again = machine(store_dir, tmp_path, "writer")
    again.open_records().sync()
    assert again.index.record_keys(layout.RUNS) == {k for k in held if k != lost}


def test_a_record_object_from_a_stale_cache_does_not_bring_back_a_gone_record(store_dir, tmp_path):
    """A writer whose cache still holds a record the store lost compacts it: readers still go by the listing,
    also one that learns the object while syncing another run."""
    writer = machine(store_dir, tmp_path, "writer")
    for run in ("a", "b"):
        write_runs_named(writer, run, 5)
    stale = machine(store_dir, tmp_path, "stale")
    stale.open_records()
    reader = machine(store_dir, tmp_path, "reader")
    book = reader.records
    lost = sorted(reader.index.record_keys(layout.run_prefix("a")))[2]
    writer.backend.delete([lost])  # the store restored from a copy without it
    book.sync()
    assert lost not in reader.index.record_keys(layout.RUNS)
    [key] = stale.open_records().objects.compact()
    assert lost in [k for k, _, _ in record_objects.decode(stale.backend.get(key), key=key)]
    book.sync(layout.run_prefix("b"))  # learns the object: run a's records come along, unchecked yet
    assert lost not in [v.key for v in reader.records.versions("a", live_only=False)]
    fresh = machine(store_dir, tmp_path, "fresh")
    assert lost not in [v.key for v in fresh.records.versions("a", live_only=False)]
    assert len(fresh.records.versions("a")) == 4


# ---- merging, and readers that meet it ---------------------------------------------------------------

def test_small_record_objects_are_merged_within_the_bound(store_dir, tmp_path, small_thresholds):
    writer = machine(store_dir, tmp_path, "writer")
    for r in range(6):  # compactions every 20 records, merges past 2 small objects
        write_runs_named(writer, f"r{r}", 30)
    objects = record_objects.list_objects(writer.backend)
    assert 1 <= len(objects) <= record_objects.MERGE_AT + 1
    assert all(size <= record_objects.FULL_OBJECT for _, size in objects)
    fresh = machine(store_dir, tmp_path, "fresh")
    assert view(fresh) == view(machine(store_dir, tmp_path, "loose"), objects=False)


def write_runs_named(store: Store, run: str, count: int) -> None:
    with store.writing():
        for i in range(count):
            store.records.log_version(run, "m", kind="k", digest=None, size=0, new_bytes=0, step=i,
                                      ref_uri="s3://x/y")


def test_a_record_object_merged_away_between_list_and_get_does_not_break_a_sync(store_dir, tmp_path,
                                                                                 monkeypatch):
    writer = machine(store_dir, tmp_path, "writer")
    parts = []
    for r in range(3):
        write_runs_named(writer, f"r{r}", 5)
        parts += writer.open_records().objects.compact()
    assert len(record_object_keys(writer)) == 3
    reader = machine(store_dir, tmp_path, "reader")
    gets = counting(reader)
    get = reader.backend.get
    merged: list[str] = []

    def merge_first(key, *args, **kw):  # the reader has listed the parts: a writer merges them now
        if key.startswith(layout.RECORD_OBJECTS) and not merged:
            monkeypatch.setattr(record_objects, "MERGE_AT", 1)
            merged.extend(writer.open_records().objects.merge())
        return get(key, *args, **kw)
    reader.backend.get = merge_first  # type: ignore[method-assign]
    seen = view(reader)
    assert len(merged) == 1 and record_object_keys(writer) == merged
    assert seen == view(machine(store_dir, tmp_path, "loose"), objects=False)
    assert gets.get("runs", 0) == 0 and reader.index.record_objects_read() == set(merged)


def test_a_writer_that_finds_a_part_gone_skips_that_merge(store_dir, tmp_path, small_thresholds):
    writer = machine(store_dir, tmp_path, "writer")
    for r in range(3):
        write_runs_named(writer, f"r{r}", 5)
        writer.open_records().objects.compact()
    objects = writer.open_records().objects
    get = writer.backend.get

    def vanish(key, *args, **kw):
        if key.startswith(layout.RECORD_OBJECTS):
            raise NotFound(f"object not found: {key}", subject=key)
        return get(key, *args, **kw)
    writer.backend.get = vanish  # type: ignore[method-assign]
    assert objects.merge() == []
    assert len(record_object_keys(writer)) == 3


def test_concurrent_compactors_leave_a_consistent_store(store_dir, tmp_path, small_thresholds):
    """Writers on several machines log, compact and merge at once; every record stays learnable, none twice."""
    machine(store_dir, tmp_path, "init").init()
    errors: list[BaseException] = []

    def writer(n: int) -> None:
        try:
            store = machine(store_dir, tmp_path, f"w{n}")
            for round_ in range(4):
                write_runs_named(store, f"w{n}-{round_}", 15)
                store.open_records().sync()  # learn the others' records: compactions overlap
                store.open_records().objects.compact()
        except BaseException as exc:  # noqa: BLE001 - reported by the test thread
            errors.append(exc)
    threads = [threading.Thread(target=writer, args=(n,)) for n in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    fresh = machine(store_dir, tmp_path, "fresh")
    seen = view(fresh)
    assert seen == view(machine(store_dir, tmp_path, "loose"), objects=False)
    assert sum(len(r["live"]) for r in seen.values()) == 3 * 4 * 15
    assert all(size <= record_objects.FULL_OBJECT for _, size in record_objects.list_objects(fresh.backend))


def test_a_compactor_writes_only_records_it_has_checked(store_dir, tmp_path, small_thresholds):
    writer = machine(store_dir, tmp_path, "writer")
    write_runs_named(writer, "r", 5)
    key = layout.version_key("r", "m", 99, f"{1:020d}-{1:012x}")
    writer.index.add_records([(key, b"\x81\xa1v\x02" + bytes(32), None)])  # the local cache damaged
    with pytest.raises(IntegrityError, match="record"):
        writer.open_records().objects.compact()
    assert record_object_keys(writer) == []


# ---- cas log reads one run ---------------------------------------------------------------------------

def test_cas_log_lists_the_run_s_records_only(store_dir, tmp_path):
    import tracker
    writer = machine(store_dir, tmp_path, "writer")
    for r in range(3):
        write_runs_named(writer, f"r{r}", 3)
    reader = machine(store_dir, tmp_path, "reader")
    listed: list[str] = []
    list_ = reader.backend.list
    reader.backend.list = lambda prefix: (listed.append(prefix), list_(prefix))[1]  # type: ignore[method-assign]
    assert [v.step for v in tracker.versions("r1", store=reader)] == [0, 1, 2]
    assert layout.RUNS not in listed and layout.run_prefix("r1") in listed
