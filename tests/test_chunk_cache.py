"""The local cache of pack bytes read from a remote store: ranges kept in one file per block of a pack,
served only whole; what it serves is a hint the reader checks, blob by blob."""

from __future__ import annotations

import os

from cas import Store
from cas.chunk_cache import BLOCK, ChunkCache
from cas.restore import ChunkReader, write_file

PACK = bytes(range(32))


def _files(folder) -> list[str]:
    return [os.path.join(p, f) for p, _, fs in os.walk(folder) for f in fs if f != ".lock"]


def test_a_run_is_kept_in_one_file_per_block_and_served_in_any_part(tmp_path):
    cache = ChunkCache(str(tmp_path / "c"), 1 << 30)
    data = os.urandom(3 * BLOCK)
    start = BLOCK // 2  # spans blocks 0..3
    cache.put(PACK, start, data)
    assert len(_files(cache.folder)) == 4  # not one file per blob: one per block the run touches
    assert cache.get(PACK, start, start + len(data)) == data
    assert cache.get(PACK, start + 100, start + 2 * BLOCK) == data[100:2 * BLOCK]
    assert cache.get(PACK, start - 1, start + 10) is None  # a byte before what was read: a miss
    assert cache.get(PACK, start, start + len(data) + 1) is None
    assert cache.get(bytes(32), start, start + 10) is None  # another pack


def test_ranges_that_touch_in_a_block_are_merged_and_one_apart_replaces(tmp_path):
    cache = ChunkCache(str(tmp_path / "c"), 1 << 30)
    data = os.urandom(BLOCK)
    cache.put(PACK, 1000, data[1000:300_000])
    cache.put(PACK, 300_000, data[300_000:700_000])  # touches the first: one range now
    assert cache.get(PACK, 1000, 700_000) == data[1000:700_000]
    cache.put(PACK, 900_000, data[900_000:950_000])  # apart from it: the newer read wins the block's file
    assert cache.get(PACK, 900_000, 950_000) == data[900_000:950_000]
    assert cache.get(PACK, 1000, 2000) is None
    assert len(_files(cache.folder)) == 1


def test_a_cut_file_serves_only_what_it_still_holds_and_one_that_cannot_be_a_block_is_removed(tmp_path):
    cache = ChunkCache(str(tmp_path / "c"), 1 << 30)
    data = os.urandom(200_000)
    cache.put(PACK, 1000, data)
    (path,) = _files(cache.folder)
    with open(path, "rb") as f:
        raw = f.read()
    with open(path, "wb") as f:
        f.write(raw[:-7])
    assert cache.get(PACK, 1000, 1000 + len(data)) is None  # its last bytes are gone: a miss
    assert cache.get(PACK, 1000, 1000 + len(data) - 7) == data[:-7]
    for bad in (raw[:3], (BLOCK - 10).to_bytes(4, "little") + raw[4:]):  # no header; past its block's end
        with open(path, "wb") as f:
            f.write(bad)
        assert cache.get(PACK, 1000, 1010) is None
        assert not os.path.exists(path)


def test_files_of_the_earlier_layout_are_never_read(tmp_path):
    """Files that held a BLAKE3 of their bytes in front: read as this layout, they would be misplaced."""
    from cas.digest import hash_bytes
    cache = ChunkCache(str(tmp_path / "c"), 1 << 30)
    body = os.urandom(5000)
    name = hash_bytes(b"block" + PACK + (0).to_bytes(8, "little")).hex()
    os.makedirs(os.path.join(cache.folder, name[:2]))
    with open(os.path.join(cache.folder, name[:2], name), "wb") as f:
        f.write(hash_bytes((0).to_bytes(4, "little") + body) + (0).to_bytes(4, "little") + body)
    assert cache.get(PACK, 0, 100) is None
    assert cache.stats()["files"] == 1  # counted and evicted as any file


def test_the_folder_stays_under_its_limit(tmp_path):
    limit = 40 * BLOCK
    cache = ChunkCache(str(tmp_path / "c"), limit)
    fullest = 0
    for i in range(50):  # runs of up to 3.5 blocks: the folder is never past its limit, after any of them
        cache.put(os.urandom(32), BLOCK // 3, os.urandom(BLOCK // 2 + i * BLOCK // 16))
        on_disk = sum(os.path.getsize(p) for p in _files(cache.folder))
        assert 0 < on_disk <= limit, (i, on_disk / BLOCK)
        fullest = max(fullest, on_disk)
    assert fullest > limit * 0.9  # it did fill up
    assert cache.put(PACK, 0, os.urandom(limit // 10 + 1)) is None and cache.get(PACK, 0, 10) is None  # too big


def test_threads_writing_neighbouring_runs_lose_none_of_the_block_they_share(tmp_path):
    import threading
    data = os.urandom(2 * BLOCK)
    for round_ in range(60):
        cache = ChunkCache(str(tmp_path / f"c{round_}"), 1 << 30)
        cut = BLOCK // 2 + round_ * 997  # both runs write block 0
        barrier = threading.Barrier(2)

        def put(start, end):
            barrier.wait()
            cache.put(PACK, start, data[start:end])
        threads = [threading.Thread(target=put, args=span) for span in ((0, cut), (cut, BLOCK + 1000))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert cache.get(PACK, 0, BLOCK + 1000) == data[:BLOCK + 1000], round_


def test_the_least_recently_read_go_first(tmp_path):
    cache = ChunkCache(str(tmp_path / "c"), 40 * BLOCK)
    packs = [bytes([i]) * 32 for i in range(30)]
    for i, pack in enumerate(packs):  # 30 blocks, oldest first
        cache.put(pack, 0, os.urandom(BLOCK))
        os.utime(cache._path(pack, 0), (1000 + i, 1000 + i))
    assert cache.get(packs[0], 0, 10) is not None  # the oldest is read: the most recent now
    for _ in range(12):  # past the limit: eviction down to 90 %
        cache.put(os.urandom(32), 0, os.urandom(BLOCK))
    assert cache.get(packs[0], 0, 10) is not None
    assert cache.get(packs[1], 0, 10) is None  # the least recently read went


def test_cached_bytes_that_fail_their_check_are_read_from_the_store_again(store_dir, tmp_path):
    """A cache file whose bytes are wrong (damaged, forged, or written from a bad read) is a hint that
    failed: the read goes to the store, not to an error blaming the pack."""
    store = Store.open(store_dir)
    data = os.urandom(3 << 20)
    (tmp_path / "f.bin").write_bytes(data)
    digest = bytes.fromhex(store.put_file(tmp_path / "f.bin").digest)
    cache = ChunkCache(str(tmp_path / "chunk-cache"), 1 << 30)  # the store's own cache dir is another
    reader = ChunkReader(store.backend, store.index, cache)
    manifest = store.file_manifest(digest)
    write_file(reader, manifest, digest, str(tmp_path / "first"))
    files = _files(cache.folder)
    assert files and (tmp_path / "first").read_bytes() == data
    for path in files:  # one bit off in each
        with open(path, "rb") as f:
            raw = bytearray(f.read())
        raw[-1] ^= 1
        with open(path, "wb") as f:
            f.write(raw)
    first = store.index.chunk(manifest.chunk_id(0))
    assert cache.get(first.pack_id, first.offset, first.offset + first.stored_len) is not None  # forgery served
    write_file(reader, manifest, digest, str(tmp_path / "second"))
    assert (tmp_path / "second").read_bytes() == data
    store.backend.get = None  # the store is gone: what the cache holds now is what the store held
    write_file(reader, manifest, digest, str(tmp_path / "third"))
    assert (tmp_path / "third").read_bytes() == data
