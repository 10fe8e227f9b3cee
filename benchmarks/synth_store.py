"""Large synthetic stores written directly in the store format: millions of chunks in seconds.

Each file is `chunks_per_file` unique chunks of `chunk_size` bytes, stored raw in packs of
`files_per_pack` files, with its file manifest in the same pack; an index object names every
`packs_per_index` packs (by default as many as make an object of the size writers merge small ones
into, pack_index.FULL_OBJECT); each file is pinned (`synth/<n>`) unless it falls in the `garbage` share,
which gc may reclaim. Everything is written through the backend, so the same call makes a local or an
S3 store; the packs, index objects and pins are the ones a real put would write (valid footers,
trailers, checksums), so every command reads them as it reads any store.

    python benchmarks/synth_store.py STORE --chunks 1000000 [--garbage 0.5] [--chunk-size 64]

The scale benchmark (bench_scale.py) and the tests (tests/test_scale.py) use `make_store`.

`make_records` writes run records the same way: many versions over many runs, each record a loose
object sealed and keyed as cas writes it (what a store logged by a cas without record objects holds).

    python benchmarks/synth_store.py STORE --records 100000 --runs 1000
"""

from __future__ import annotations

import argparse
import os
import secrets
import struct
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import msgpack
import zstandard

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from cas import codec, layout, pack_index, records as run_records, refs  # noqa: E402
from cas.digest import hash_bytes  # noqa: E402
from cas.manifest import FileManifest, _u32  # noqa: E402
from cas.pack import CHUNK, FILE_MANIFEST, HEADER, PACK_FORMAT, TRAILER, TRAILER_MAGIC, Location  # noqa: E402
from cas.pack_index import PackRecord  # noqa: E402
from cas.store import Store  # noqa: E402


def _pack(blobs: list[tuple[int, bytes, bytes, bytes, int]]) -> tuple[bytes, bytes, list[Location]]:
    """(pack id, pack bytes, entries) of blobs given as (kind, key, raw, check, size), stored raw
    (chunks) or zstd (manifests), exactly as PackWriter lays them out."""
    parts = [HEADER]
    offset = len(HEADER)
    rows = []
    for kind, key, raw, check, size in blobs:
        codec_id, stored = (codec.RAW, raw) if kind == CHUNK else codec.compress(raw, 3)
        rows.append((kind, key, offset, len(stored), len(raw), codec_id, check, size))
        parts.append(stored)
        offset += len(stored)
    raw_footer = msgpack.packb({"v": PACK_FORMAT, "nonce": secrets.token_bytes(16),
                                "entries": [[k, key, o, s, r, c, b"" if k == CHUNK else chk, z]
                                            for k, key, o, s, r, c, chk, z in rows]}, use_bin_type=True)
    footer = zstandard.ZstdCompressor(level=3).compress(raw_footer)
    parts += [footer, TRAILER.pack(offset, len(footer), len(raw_footer), hash_bytes(footer), TRAILER_MAGIC)]
    data = b"".join(parts)
    pack_id = hash_bytes(data)
    entries = [Location(pack_id, k, key, o, s, r, c, key if k == CHUNK else chk, z) for k, key, o, s, r, c, chk, z
               in rows]
    return pack_id, data, entries


def make_store(uri: str, chunks: int, *, chunk_size: int = 64, chunks_per_file: int = 1000,
               files_per_pack: int = 8, packs_per_index: int | None = None, garbage: float = 0.0,
               seed: bytes | None = None, cache_dir: str | None = None) -> dict:
    """Write a store of about `chunks` distinct chunks at uri (created if needed); returns what it made.
    A `garbage` share of the files (the last ones of each pack) gets no pin."""
    seed = seed or secrets.token_bytes(8)
    if packs_per_index is None:  # index objects as large as writers merge them (about 45 stored bytes a blob)
        packs_per_index = max(1, pack_index.FULL_OBJECT // (45 * files_per_pack * (chunks_per_file + 1)))
    store = Store.open(uri, cache_dir=cache_dir)
    store.init()
    backend = store.backend
    files = max(1, chunks // chunks_per_file)
    pad = bytes(max(0, chunk_size - 16))
    made = {"files": 0, "chunks": 0, "packs": 0, "index_objects": 0, "pins": 0, "seconds": 0.0}
    start = time.perf_counter()
    records: list[PackRecord] = []
    now = time.time()
    for first in range(0, files, files_per_pack):
        blobs = []
        pins = []
        batch = range(first, min(files, first + files_per_pack))
        for f in batch:
            raws = [(seed + struct.pack("<Q", f * chunks_per_file + c) + pad)[:chunk_size]
                    for c in range(chunks_per_file)]
            ids = [hash_bytes(r) for r in raws]
            blobs += [(CHUNK, i, r, i, 0) for i, r in zip(ids, raws)]
            size = chunk_size * chunks_per_file
            digest = hash_bytes(b"".join(raws))
            raw_manifest = FileManifest(size, b"".join(ids), _u32([chunk_size] * chunks_per_file)).to_bytes()
            blobs.append((FILE_MANIFEST, digest, raw_manifest, hash_bytes(raw_manifest), size))
            if f - first < len(batch) - round(len(batch) * garbage):
                pins.append(refs.Pin(f"synth/{f}", digest.hex(), now, "file", size))
            made["files"] += 1
            made["chunks"] += chunks_per_file
        pack_id, data, entries = _pack(blobs)
        backend.put(layout.pack_key(pack_id), data, create_only=True)
        records.append(PackRecord(pack_id, len(data), tuple(entries)))
        made["packs"] += 1
        if len(records) >= packs_per_index:
            pack_index.write(backend, records)
            made["index_objects"] += 1
            records = []
        for pin in pins:  # after the data is durable and named, as a put writes them
            refs.write_pin(backend, pin)
            made["pins"] += 1
    if records:
        pack_index.write(backend, records)
        made["index_objects"] += 1
    made["seconds"] = round(time.perf_counter() - start, 2)
    store.close()
    return made


def make_records(uri: str, versions: int, runs: int, *, names: int = 2, digests: list[tuple[str, int]] | None = None,
                 cache_dir: str | None = None, workers: int = 8) -> dict:
    """Write `versions` version records over `runs` runs (`names` artifact names each, steps from 1), with a
    start and a finished event per run, as loose record objects (sealed, create-only, checked by
    records.decode before they are written). Versions name the (digest, size) pairs of `digests` in turn,
    files the store holds (e.g. make_store's pins); without them they are reference-only. Returns counts."""
    store = Store.open(uri, cache_dir=cache_dir)
    store.init()
    made = {"runs": runs, "versions": 0, "events": 0, "seconds": 0.0}
    start = time.perf_counter()

    def record(key: str, doc: dict) -> tuple[str, bytes]:
        raw = run_records._encode(doc)
        run_records.decode(raw, key=key)  # valid as cas reads it, or the benchmark stops here
        return key, raw

    def one_run(r: int) -> list[tuple[str, bytes]]:
        run, now = f"run-{r:05d}", time.time()
        out = [record(layout.event_key(run, run_records._stamp(now)),
                      {"t": "start", "run": run, "time": now, "data": {"config": {"lr": 3e-4}, "metadata": {}}})]
        for j, i in enumerate(range(r * versions // runs, (r + 1) * versions // runs)):
            name, step = f"model-{j % names}", 1 + j // names
            doc = {"t": "version", "run": run, "name": name, "step": step, "kind": "checkpoint", "digest": None,
                   "size": 0, "new_bytes": 0, "time": now, "metadata": {"loss": 1.0 / step}, "type": "file"}
            if digests:
                doc["digest"], doc["size"] = digests[i % len(digests)]
            else:
                doc["ref_uri"] = f"s3://elsewhere/{run}/{name}/{step}"
            out.append(record(layout.version_key(run, name, step, run_records._stamp(now)), doc))
        out.append(record(layout.event_key(run, run_records._stamp(time.time())),
                          {"t": "status", "run": run, "time": time.time(), "data": {"status": "finished"}}))
        return out

    with ThreadPoolExecutor(workers) as pool:
        for batch in map(one_run, range(runs)):
            list(pool.map(lambda item: store.backend.put(item[0], item[1], create_only=True), batch))
            made["versions"] += len(batch) - 2
            made["events"] += 2
    made["seconds"] = round(time.perf_counter() - start, 2)
    store.close()
    return made


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("store", help="a folder or s3://bucket/prefix")
    ap.add_argument("--chunks", type=int, default=1_000_000)
    ap.add_argument("--chunk-size", type=int, default=64)
    ap.add_argument("--chunks-per-file", type=int, default=1000)
    ap.add_argument("--garbage", type=float, default=0.0, help="share of files left unpinned (0..1)")
    ap.add_argument("--records", type=int, help="write this many version records instead (reference-only)")
    ap.add_argument("--runs", type=int, default=1000, help="over this many runs (with --records)")
    args = ap.parse_args()
    if args.records:
        print(make_records(args.store, args.records, args.runs))
        return
    print(make_store(args.store, args.chunks, chunk_size=args.chunk_size, chunks_per_file=args.chunks_per_file,
                     garbage=args.garbage))


if __name__ == "__main__":
    main()
