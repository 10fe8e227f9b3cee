"""Every decoder of stored objects, fuzzed: it decodes or raises IntegrityError (FormatError for the config).

Inputs are random bytes and mutations of valid objects made by the real encoders: bit flips,
truncations, splices, and fields replaced with wrong types, huge or negative numbers. Framing an
attacker can recompute (a pack's trailer and footer hash, an index object's name, a pin's check)
is recomputed, so the mutation reaches the parser behind it. No decode may allocate more than a
small multiple of its input: sizes an object declares are refused before anything is allocated.

CAS_FUZZ_EXAMPLES sets the examples per decoder (default 200; a soak run sets e.g. 20000).
Also here: the end-to-end refusals under a memory limit (a chunk declaring 4 GiB, a 10,000-deep
tree), the old formats that still read, and what verify, gc and get do with damaged pins,
records and gc lists.
"""

from __future__ import annotations

import copy
import json
import os
import resource
import subprocess
import tempfile
import tracemalloc
from array import array
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import msgpack
import pytest
import zstandard
from conftest import byte_change, cas_command, one_error_line
from hypothesis import HealthCheck, given, settings, strategies as st

from cas import Store, codec, framing, layout, pack_index, records, refs
from cas.backends.memory import MemoryBackend
from cas.config import StoreConfig
from cas.digest import hash_bytes, tree_digest
from cas.errors import FormatError, IntegrityError
from cas.gc_lists import decode_list, decode_sessions, encode_list, encode_sessions
from cas.layout import pack_key
from cas.manifest import DIR, FILE, LINK, MAX_DEPTH, FileManifest, TreeEntry, TreeManifest, check_safe
from cas.pack import CHUNK, FILE_MANIFEST, TRAILER, TREE_MANIFEST, PackWriter, read_pack_entries

EXAMPLES = int(os.environ.get("CAS_FUZZ_EXAMPLES", "200"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
MiB = 1 << 20
PACK_ID = bytes(range(32))  # the id the fuzzed pack is read under (its bytes change with every example)
DIGEST = "720df0d9cb0a6dea718d429a6056041a4b3a4c0db0336a03e6c65d56188c8643"
PIN_KEY = layout.pin_key("hello.txt", "01795699815446570752-2398a5ce3179")


# ---- the objects: valid documents, how to frame them, how to decode them ---------------------------------
@dataclass(frozen=True)
class Seed:
    """A valid document and the function that turns a document into stored bytes, as its encoder frames it."""

    doc: object
    wrap: Callable[[object], bytes]


@dataclass(frozen=True)
class Target:
    name: str
    seeds: tuple[Seed, ...]
    decode: Callable[[bytes], object]
    error: type = IntegrityError


def _packb(doc) -> bytes:
    return msgpack.packb(doc, use_bin_type=True)


def _unsealed(data: bytes):
    return msgpack.unpackb(data[:-32] if framing.is_sealed(data) else data, raw=False)


def _seeds(*encoded: bytes) -> tuple[Seed, ...]:
    """Seeds from encoder output: sealed bytes are resealed after a change, bare (format 1) ones are not."""
    return tuple(Seed(_unsealed(b), framing.seal if framing.is_sealed(b) else _packb) for b in encoded)


def _pack_seed() -> tuple[Seed, list]:
    """A pack written by PackWriter (chunks raw and zstd, a file and a tree manifest); its footer doc is the seed."""
    tree = TreeManifest((TreeEntry("d", DIR), TreeEntry("d/x", FILE, True, bytes.fromhex(DIGEST), 80),
                         TreeEntry("d/y", LINK, target="x"))).to_bytes()
    manifest = FileManifest(80, bytes.fromhex(DIGEST), array("I", [80])).to_bytes()
    level, text = 1, b"hello cas\n" * 8
    with ThreadPoolExecutor(1) as writer:
        pack = PackWriter(tempfile.gettempdir(), writer)
        pack.add(CHUNK, hash_bytes(text), codec.compress(text, level)[1], len(text), codec.ZSTD, hash_bytes(text))
        pack.add(CHUNK, hash_bytes(b"xyz"), b"xyz", 3, codec.RAW, hash_bytes(b"xyz"))
        pack.add(FILE_MANIFEST, bytes.fromhex(DIGEST), manifest, len(manifest), codec.RAW, hash_bytes(manifest), 80)
        pack.add(TREE_MANIFEST, hash_bytes(tree), tree, len(tree), codec.RAW, hash_bytes(tree), 80)
        _, path, _ = pack.finish()
    with open(path, "rb") as f:
        data = f.read()
    os.unlink(path)
    offset, slen, rlen, _, _ = TRAILER.unpack(data[-TRAILER.size:])
    blobs = data[:offset]

    def wrap(doc) -> bytes:  # the pack's layout around any footer document, as PackWriter.finish lays it out
        footer = zstandard.ZstdCompressor(level=3).compress(_packb(doc))
        return blobs + footer + TRAILER.pack(len(blobs), len(footer), len(_packb(doc)), hash_bytes(footer), b"CASPEND1")
    doc = msgpack.unpackb(zstandard.ZstdDecompressor().decompress(data[offset:offset + slen]), raw=False)
    assert wrap(doc) == data
    return Seed(doc, wrap), _decode_pack(data)


def _decode_pack(data: bytes):
    backend = MemoryBackend()
    backend.put(pack_key(PACK_ID), data)
    return read_pack_entries(backend, PACK_ID, len(data))


def _index_wrap(doc) -> bytes:
    raw = _packb(doc)
    codec_id, stored = codec.compress(raw, 3)
    return pack_index.HEADER.pack(pack_index.MAGIC, len(raw), codec_id) + stored


def _index_seed(entries) -> Seed:
    packs = [pack_index.PackRecord(bytes(range(32)), 4096, tuple(entries)),
             pack_index.PackRecord(bytes(32), 65536, tuple(entries[:1]))]
    doc = {"v": 1, "packs": [[p.pack_id, p.size, [e.to_list() for e in p.entries]] for p in packs]}
    assert _index_wrap(doc) == pack_index.encode(packs)
    return Seed(doc, _index_wrap)


def _decode_index(data: bytes):
    return pack_index.decode(data, name=hash_bytes(data).hex())


def _decode_tree(data: bytes):
    tree = TreeManifest.from_bytes(data, name="t")
    check_safe(tree, name="t")
    return tree


def _records() -> tuple[bytes, ...]:
    run, name = "train", "model.pt"
    version = {"t": "version", "run": run, "name": name, "step": 3, "kind": "model", "digest": DIGEST, "size": 80,
               "new_bytes": 80, "time": 1.5, "metadata": {"lr": 0.1}, "type": "file"}
    inline = dict(version, digest=hash_bytes(b"note").hex(), size=4, inline=b"note")
    tombstone = dict(version, digest=None, size=0, new_bytes=0, metadata={}, forgotten=True)
    tombstone.pop("type")
    event = {"t": "status", "run": run, "time": 2.5, "data": {"status": "finished"}}
    return tuple(records._encode(doc) for doc in (version, inline, tombstone, event)) + \
        (_packb({"v": 1, **version}), _packb({"v": 1, **event}))


RECORD_KEYS = {"version": layout.version_key("train", "model.pt", 3, "01795699815446570752-2398a5ce3179"),
               "status": layout.event_key("train", "01795699815446570752-2398a5ce3179")}


def _decode_record(data: bytes):
    try:
        kind = "version" if _unsealed(data)["t"] == "version" else "status"
    except Exception:
        kind = "version"
    return records.decode(data, key=RECORD_KEYS[kind])


def _targets() -> dict[str, Target]:
    pack, entries = _pack_seed()
    pin = refs.Pin("hello.txt", DIGEST, 1.5, "file", 80)
    legacy_pin = _packb({"v": 1, "label": "hello.txt", "digest": DIGEST, "time": 1.5, "kind": "file", "size": 80})
    file_manifest = FileManifest(200, bytes(range(32)) * 2, array("I", [120, 80])).to_bytes()
    tree = TreeManifest((TreeEntry("d", DIR), TreeEntry("d/x", FILE, True, bytes.fromhex(DIGEST), 80),
                         TreeEntry("d/y", LINK, target="x"), TreeEntry("top", LINK, target="d/x"))).to_bytes()
    gc_list = encode_list([bytes(32), bytes(range(32))], 1.5)
    sessions = encode_sessions(["sessions/001795699815446-0123456789abcdef"])
    config = json.loads(StoreConfig.new().to_bytes())
    return {t.name: t for t in [
        Target("pack", (pack,), _decode_pack),
        Target("index object", (_index_seed(entries),), _decode_index),
        Target("file manifest", (Seed(msgpack.unpackb(file_manifest), _packb),), lambda d: FileManifest.from_bytes(
            d, name="f")),
        Target("tree manifest", (Seed(msgpack.unpackb(tree), _packb),), _decode_tree),
        Target("pin", _seeds(pin.to_bytes(), refs.Pin("hello.txt", None, 2.0).to_bytes(), legacy_pin),
               lambda d: refs.Pin.from_bytes(d, key=PIN_KEY)),
        Target("record", _seeds(*_records()), _decode_record),
        Target("gc list", _seeds(gc_list, _packb({"v": 1, "time": 1.5, "packs": [bytes(32)]})),
               lambda d: decode_list(d, key="gc/condemned/x")),
        Target("gc sessions list", _seeds(sessions, _packb(["sessions/1"])),
               lambda d: decode_sessions(d, key="gc/sessions/x")),
        Target("config", (Seed(config, lambda doc: json.dumps(doc).encode()),), StoreConfig.from_bytes, FormatError),
    ]}


TARGETS = _targets()


# ---- mutations ------------------------------------------------------------------------------------------
EDGES = [-1, -(1 << 63), (1 << 31), (1 << 32) - 1, 1 << 32, (1 << 63) - 1, (1 << 64) - 1, 16 * MiB, 16 * MiB + 1,
         1 << 30, 0, None, True, False, float("nan"), float("inf"), "", b"", [], {}, "../../x", "a\x00b", b"\x00" * 33]
HOSTILE = st.one_of(st.sampled_from(EDGES), st.integers(-(1 << 63), (1 << 64) - 1), st.floats(), st.text(max_size=12),
                    st.binary(max_size=40), st.lists(st.integers(-1, 3), max_size=9),
                    st.dictionaries(st.text(max_size=4), st.integers(), max_size=2))


def _slots(holder) -> list:
    """(container, key) of every value inside `holder`, breadth first."""
    out, todo = [], [holder]
    while todo and len(out) < 10_000:
        node = todo.pop(0)
        keys = list(node) if isinstance(node, dict) else range(len(node))
        for k in keys:
            out.append((node, k))
            if isinstance(node[k], (dict, list)):
                todo.append(node[k])
    return out


@st.composite
def field_change(draw, seed: Seed) -> bytes:
    """The seed with one value replaced by a hostile one, a key dropped or an array item repeated."""
    holder = [copy.deepcopy(seed.doc)]
    node, key = draw(st.sampled_from(_slots(holder)))
    action = draw(st.sampled_from(["replace", "replace", "drop", "repeat"]))
    if action == "replace" or node is holder:
        node[key] = draw(HOSTILE)
    elif isinstance(node, dict):
        del node[key]
    else:
        node.insert(key, copy.deepcopy(node[key]))
    try:
        return seed.wrap(holder[0])
    except (TypeError, ValueError, OverflowError):  # a value the framing cannot even encode
        return seed.wrap(seed.doc)


@st.composite
def hostile_bytes(draw, target: Target) -> bytes:
    seed = draw(st.sampled_from(target.seeds))
    how = draw(st.sampled_from(["random", "deep", "bytes", "field", "field", "field+bytes"]))
    if how == "random":
        return draw(st.binary(max_size=400))
    if how == "deep":  # nesting far deeper than any stack
        return draw(st.sampled_from([b"\x91" * 100_000 + b"\x00", b"[" * 60_000, b"\xdd\x7f\xff\xff\xff" * 1000]))
    data = draw(field_change(seed)) if how.startswith("field") else seed.wrap(seed.doc)
    return draw(byte_change(data)) if how.endswith("bytes") and data else data


def _decodes_within_bounds(target: Target, data: bytes) -> None:
    """Decode: success or the target's error, nothing else, and never more memory than a multiple of the input."""
    tracemalloc.start()
    try:
        target.decode(data)
    except target.error:
        pass
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    assert peak <= 16 * MiB + 1000 * len(data), f"{target.name}: {peak} bytes for {len(data)} of input"


@pytest.mark.parametrize("name", sorted(TARGETS))
def test_valid_seeds_decode(name):
    for seed in TARGETS[name].seeds:
        TARGETS[name].decode(seed.wrap(seed.doc))


@pytest.mark.parametrize("name", sorted(TARGETS))
def test_hostile_bytes_decode_or_raise_integrity_error(name):
    target = TARGETS[name]

    @FUZZ
    @given(hostile_bytes(target))
    def run(data):
        _decodes_within_bounds(target, data)
    run()


@FUZZ
@given(codec_id=st.sampled_from([codec.RAW, codec.ZSTD, codec.ZSTD, 2, 300, -1]),
       content=st.binary(max_size=3000), raw_len=st.one_of(st.integers(0, 4000), st.sampled_from([16 * MiB, -1])),
       declared=st.one_of(st.none(), st.integers(0, (1 << 64) - 1)), damage=st.binary(max_size=8))
def test_codec_decompresses_within_the_declared_length(codec_id, content, raw_len, declared, damage):
    """A frame declaring any size but raw_len is refused before decoding; nothing allocates beyond raw_len."""
    stored = zstandard.ZstdCompressor(write_content_size=True).compress(content)
    if declared is not None:  # rewrite the frame header to declare 8 bytes of content size
        stored = stored[:4] + bytes([0xE0]) + declared.to_bytes(8, "little") + stored[6:]
    stored = stored[:len(stored) - len(damage)] + damage
    tracemalloc.start()
    try:
        out = codec.decompress(codec_id, stored, raw_len, name="blob")
        assert len(out) == raw_len
    except IntegrityError as exc:
        assert "blob" in str(exc)
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    assert peak <= max(raw_len, 0) + 4 * len(stored) + MiB


def _delta_seed() -> tuple[bytes, bytes, bytes]:
    """A chunk, its base and its delta frame (differences in the base's exponent order, frame version 2)."""
    import numpy as np
    rng = np.random.default_rng(3)
    base = (rng.standard_normal(8192) * 0.02).astype(np.float32)
    new = base - (rng.standard_normal(8192) * 1e-4).astype(np.float32)
    frame = codec.encode_delta(new.tobytes(), base.tobytes(), bytes(32), 0, 4, 1)
    assert frame is not None and frame[37] == codec.CONTEXT_VERSION  # the inner planes frame is in context order
    return new.tobytes(), base.tobytes(), frame


_DELTA_NEW, _DELTA_BASE, _DELTA_FRAME = _delta_seed()


@FUZZ
@given(st.one_of(byte_change(_DELTA_FRAME), st.binary(max_size=600)))
def test_a_damaged_delta_frame_is_refused_or_decodes_to_its_length(data):
    """A delta frame whose planes are in the base's order: decoded or refused, never another length or error."""
    tracemalloc.start()
    try:
        out = codec.decode_delta(data, len(_DELTA_NEW), _DELTA_BASE, name="blob")
        assert len(out) == len(_DELTA_NEW)
    except IntegrityError as exc:
        assert "blob" in str(exc)
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    assert peak <= 16 * len(_DELTA_NEW) + MiB


# ---- the old formats still read; the new ones catch every flipped byte ---------------------------------------
LEGACY_PIN = bytes.fromhex(  # the pin event of docs/format.md's worked example, format 1
    "86a17601a56c6162656ca968656c6c6f2e747874a6646967657374d94037323064663064396362306136646561373138"
    "6434323961363035363034316134623361346330646230333336613033653663363564353631383863383634"
    "33a474696d65cb41dac20d19dc949da46b696e64a466696c65a473697a6550")


def test_objects_of_the_previous_format_still_read():
    pin = refs.Pin.from_bytes(LEGACY_PIN, key=PIN_KEY)
    assert (pin.label, pin.digest, pin.kind, pin.size) == ("hello.txt", DIGEST, "file", 80)
    *_, legacy_version, legacy_event = _records()
    v = records.decode(legacy_version, key=RECORD_KEYS["version"])
    assert (v.run, v.name, v.step, v.digest, v.metadata) == ("train", "model.pt", 3, DIGEST, {"lr": 0.1})
    assert records.decode(legacy_event, key=RECORD_KEYS["status"]).data == {"status": "finished"}
    assert decode_list(_packb({"v": 1, "time": 1.5, "packs": [bytes(32)]}), key="k") == (1.5, [bytes(32)])
    assert decode_sessions(msgpack.packb(["sessions/a", "sessions/b"]), key="k") == ["sessions/a", "sessions/b"]


@pytest.mark.parametrize("name,key", [("pin", PIN_KEY), ("record", RECORD_KEYS["version"]),
                                      ("gc list", "gc/condemned/x"), ("gc sessions list", "gc/sessions/x")])
def test_every_flipped_byte_of_a_sealed_object_is_caught_and_names_its_key(name, key):
    target = TARGETS[name]
    data = target.seeds[0].wrap(target.seeds[0].doc)
    assert framing.is_sealed(data)
    for i in range(len(data)):
        for bit in (0x01, 0x80):
            damaged = data[:i] + bytes([data[i] ^ bit]) + data[i + 1:]
            with pytest.raises(IntegrityError, match=key):
                target.decode(damaged)


def test_a_pin_or_record_under_another_key_is_damaged():
    with pytest.raises(IntegrityError, match="does not match its key"):
        refs.Pin.from_bytes(refs.Pin("other", DIGEST, 1.0, "file", 1).to_bytes(), key=PIN_KEY)
    with pytest.raises(IntegrityError, match="does not match its key"):
        records.decode(_records()[0], key=layout.version_key("train", "model.pt", 4, "0" * 20 + "-" + "0" * 12))


# ---- end to end: one line, bounded memory ------------------------------------------------------------------
def _limited_memory():
    resource.setrlimit(resource.RLIMIT_AS, (1_500_000 * 1024, 1_500_000 * 1024))


def _cas(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(cas_command() + list(args), capture_output=True, text=True, preexec_fn=_limited_memory,
                          env=dict(os.environ), timeout=120)


def _zero_frame(size: int) -> bytes:
    """A valid zstd frame of `size` zero bytes that records its size: RLE blocks of 128 KiB, about 4 bytes each."""
    out = bytearray(b"\x28\xb5\x2f\xfd\xe0" + size.to_bytes(8, "little"))
    left = size
    while left:
        n = min(left, 128 * 1024)
        left -= n
        out += ((n << 3) | (1 << 1) | (left == 0)).to_bytes(3, "little") + b"\x00"
    return bytes(out)


def _publish_pack(store: Store, tmp_path, blobs: list[tuple]) -> None:
    """Write a hand-made pack and an index object naming it, as an attacker with write access could."""
    with ThreadPoolExecutor(1) as writer:
        pack = PackWriter(str(tmp_path), writer)
        for blob in blobs:
            pack.add(*blob)
        pack_id, path, size = pack.finish()
    store.backend.put_file(layout.pack_key(pack_id), path, create_only=True)
    pack_index.write(store.backend, [pack_index.PackRecord(pack_id, size, tuple(pack.entries))])


@pytest.mark.parametrize("raw_len", [(1 << 32) - 1, 1 << 32])
def test_a_chunk_declaring_4_gib_fails_get_with_one_line_under_a_memory_limit(store_dir, tmp_path, raw_len):
    store = Store.open(store_dir)
    store.init()
    frame = _zero_frame((1 << 32) - 1)
    chunk_id = bytes(range(32))
    manifest = FileManifest(raw_len, chunk_id, array("I", [min(raw_len, (1 << 32) - 1)])).to_bytes()
    digest = bytes.fromhex(DIGEST)
    _publish_pack(store, tmp_path, [(CHUNK, chunk_id, frame, raw_len, codec.ZSTD, chunk_id),
                                    (FILE_MANIFEST, digest, manifest, len(manifest), codec.RAW, hash_bytes(manifest),
                                     raw_len)])
    r = _cas("--store", store_dir, "get", DIGEST, "-o", str(tmp_path / "out"))
    line = one_error_line(r.stderr)
    assert r.returncode == 5, line
    assert "raw length" in line and not (tmp_path / "out").exists()


def _store_tree(store: Store, entries) -> str:
    """Store a tree manifest as an attacker could: its canonical bytes, past the encoder's own refusals."""
    raw = _packb({"v": 1, "entries": [e.to_list() for e in sorted(entries, key=lambda e: e.path)]})
    with store.writing(), store.write_session() as session:
        session.add_manifest(TREE_MANIFEST, tree_digest(raw), raw, 0)
    return tree_digest(raw).hex()


@pytest.mark.parametrize("depth,folders", [(10_000, False), (1_500, False), (200, False), (200, True)])
def test_a_deep_tree_fails_get_with_one_line(store_dir, tmp_path, depth, folders):
    """10,000 levels (a path too long to store), 1,500 (deeper than a tree may be), 200 without folder entries:
    refused with one line; 200 with every folder entry restores, one folder at a time."""
    store = Store.open(store_dir)
    content = store.put_bytes(b"deep")
    parts = ["a"] * (depth - 1)
    entries = [TreeEntry("/".join(parts + ["f"]), FILE, False, bytes.fromhex(content.digest), 4)]
    if folders:
        entries += [TreeEntry("/".join(parts[:i]), DIR) for i in range(1, depth)]
    digest = _store_tree(store, entries)
    r = _cas("--store", store_dir, "get", digest, "-o", str(tmp_path / "out"))
    if folders:
        assert r.returncode == 0, r.stderr
        assert (tmp_path / "out").joinpath(*parts, "f").read_bytes() == b"deep"
        return
    line = one_error_line(r.stderr)
    assert r.returncode == 5 and digest in line and not (tmp_path / "out").exists()


def test_a_folder_deeper_than_a_tree_may_be_is_refused_at_put(cli, tmp_path):
    deep = tmp_path.joinpath("src", *["d"] * MAX_DEPTH)
    deep.mkdir(parents=True)
    (deep / "f").write_bytes(b"x")
    r = cli("put", str(tmp_path / "src"))
    assert r.code == 2 and f"{MAX_DEPTH} levels deep" in one_error_line(r.err)
    assert cli("pins").out.strip() == ""


@pytest.mark.parametrize("store_id", ["../../elsewhere", "/tmp/abs", "a\x00b", "ABCDEF0123456789ABCDEF0123456789", 7])
def test_a_store_id_that_is_not_32_hex_is_refused_before_any_write(cli, store_dir, tmp_path, store_id):
    assert cli("put", str(_file(tmp_path)), "--no-pin").code == 0
    path = os.path.join(store_dir, "config")
    config = json.load(open(path))
    config["store_id"] = store_id
    with open(path, "w") as f:
        json.dump(config, f)
    before = sorted(os.listdir(tmp_path.parent)), sorted(os.listdir(tmp_path))
    for command in (["put", str(_file(tmp_path))], ["pins"], ["stats"], ["verify"], ["gc"]):
        r = cli(*command)
        assert r.code == 7 and "store config is damaged: store_id" in one_error_line(r.err), (command, r.err)
    assert (sorted(os.listdir(tmp_path.parent)), sorted(os.listdir(tmp_path))) == before
    assert not os.path.exists("/tmp/abs")


def _file(tmp_path):
    path = tmp_path / "f.txt"
    path.write_bytes(b"content\n")
    return path


# ---- damaged pins, records and gc lists: verify names them, gc stops, reads go on ---------------------------
def _flip_last_byte(store_dir, key: str) -> None:
    with open(os.path.join(store_dir, *key.split("/")), "r+b") as f:
        f.seek(-1, 2)
        last = f.read(1)
        f.seek(-1, 2)
        f.write(bytes([last[0] ^ 1]))


def _damaged_store(cli, store_dir, tmp_path) -> tuple[str, dict]:
    """A store with a pin, a record and a gc sessions list, each with its last byte flipped."""
    digest = cli("--json", "put", str(_file(tmp_path)), "--label", "kept").json()["digest"]
    store = Store.open(store_dir)
    store.records.log_event("train", "status", status="finished")
    keys = {"pin": refs.events(store.backend)[0][0],
            "record": [k for k, _ in store.backend.list(layout.RUNS) if layout.is_record_key(k)][0],
            "gc sessions list": layout.gc_sessions_key("001795699815446-0123abcd")}
    store.backend.put(keys["gc sessions list"], encode_sessions([]), create_only=True)
    for key in keys.values():
        _flip_last_byte(store_dir, key)
    return digest, keys


def test_verify_reports_each_damaged_pin_record_and_gc_list(cli, store_dir, tmp_path):
    _, keys = _damaged_store(cli, store_dir, tmp_path)
    r = cli("--json", "verify")
    assert r.code == 5 and "Traceback" not in r.err
    report = json.loads(r.out)
    for what, key in keys.items():
        assert any(key in p and "checksum mismatch" in p for p in report["problems"]), (what, report["problems"])
    assert report["gc_lists"] == 1


def test_gc_stops_with_one_line_on_a_damaged_gc_list(cli, store_dir, tmp_path):
    cli("put", str(_file(tmp_path)), "--no-pin")
    key = layout.condemned_key("001795699815446-0123abcd")
    Store.open(store_dir).backend.put(key, encode_list([bytes(32)], 1.0)[:-1], create_only=True)
    Store.open(store_dir).backend.put(layout.gc_sessions_key("001795699815446-0123abcd"), encode_sessions([]))
    r = cli("gc", "--grace", "0")
    assert r.code == 5 and key in one_error_line(r.err)


def test_a_damaged_condemnation_does_not_stop_reads_of_intact_data(cli, store_dir, tmp_path):
    digest = cli("--json", "put", str(_file(tmp_path)), "--no-pin").json()["digest"]
    key = layout.condemned_key("001795699815446-0123abcd")
    Store.open(store_dir).backend.put(key, b"\xc1 not a gc list", create_only=True)
    fresh = Store.open(store_dir, cache_dir=str(tmp_path / "fresh-cache"))
    assert fresh.read_bytes(digest) == b"content\n"
    assert fresh.put_bytes(b"content\n").new_bytes == len(b"content\n")  # no dedup against any pack it may name
    assert any(key in p for p in fresh.verify().problems)


def test_an_index_object_of_many_duplicate_packs_is_written_so_readers_accept_it():
    """Racing puts of one file each write a pack with the same entries: merged, they compress far
    beyond the ratio readers accept, so the writer stores such an object uncompressed."""
    from cas import pack_index
    from cas.pack import CHUNK, Location

    def entries(pack_id):
        return tuple(Location(pack_id, CHUNK, bytes([i]) * 32, 8 + 100 * i, 100, 100, 0, bytes([i]) * 32)
                     for i in range(50))
    packs = [pack_index.PackRecord(bytes([n]) * 32, 8 + 100 * 50 + 64, entries(bytes([n]) * 32)) for n in range(200)]
    data = pack_index.encode(packs)
    back = pack_index.decode(data, name=hash_bytes(data).hex())
    assert [(p.pack_id, p.size, [e.key for e in p.entries]) for p in back] == \
        [(p.pack_id, p.size, [e.key for e in p.entries]) for p in packs]


def test_a_chain_of_trees_each_naming_the_next_as_a_file_is_one_line(store_dir, tmp_path):
    """A file entry that names a tree would nest trees as deep as the input wants: gc, du and get refuse
    it with one line, whatever the chain's length (no walk recurses with it)."""
    store = Store.open(store_dir)
    digest = bytes.fromhex(store.put_bytes(b"leaf").digest)
    with store.writing(), store.write_session() as session:  # one session: 3,000 trees in a few packs
        for _ in range(3000):
            raw = _packb({"v": 1, "entries": [TreeEntry("f", FILE, False, digest, 4).to_list()]})
            digest = tree_digest(raw)
            session.add_manifest(TREE_MANIFEST, digest, raw, 0)
    refs.write_pin(store.backend, refs.Pin("chain", digest.hex(), 1.0, "tree", 4))
    for args in (["gc", "--grace", "0"], ["du"], ["get", digest.hex(), "-o", str(tmp_path / "out")]):
        r = _cas("--store", store_dir, *args)
        assert r.returncode == 5, (args, r.stderr)
        assert "names a folder" in one_error_line(r.stderr), r.stderr
    assert not (tmp_path / "out").exists()
