"""Property tests: store round trips, chunk boundaries, segmented chunking, and locality of edits.

Small chunker parameters (min/avg/max 256/1024/4096 bytes and a few others) make inputs of tens of
kilobytes span dozens of chunks, so hypothesis explores many-chunk inputs cheaply.
"""

from __future__ import annotations

import io
import random
import secrets

import pytest
from blake3 import blake3
from hypothesis import event, given, settings, strategies as st

from cas import Store, layout
from cas.backends.local import LocalBackend
from cas.backends.memory import MemoryBackend
from cas.chunker import SEGMENT, Chunker
from cas.config import ChunkerParams, StoreConfig

KiB = 1 << 10
SMALL = ChunkerParams(256, 1 * KiB, 4 * KiB)
PARAMS = [SMALL, ChunkerParams(64, 512, 2 * KiB), ChunkerParams(300, 1000, 5000), ChunkerParams()]

PROPS = settings(max_examples=40, deadline=None)


# ---- inputs -----------------------------------------------------------------------------------
def _random(seed: int, n: int) -> bytes:
    return random.Random(seed).randbytes(n)


def payloads(max_size: int) -> st.SearchStrategy[bytes]:
    """Bytes of up to max_size: hypothesis' own (shrinkable), random, periodic, zeros, and mixes."""
    # hypothesis favours small integers: give long inputs (many chunks) their own share
    size = st.one_of(st.integers(0, max_size), st.integers(max_size // 8, max_size),
                     st.integers(max_size // 2, max_size))
    random_bytes = st.builds(_random, st.integers(0, 2**32), size)
    periodic = st.builds(lambda pattern, n: (pattern * (n // len(pattern) + 1))[:n],
                         st.binary(min_size=1, max_size=100), size)
    zeros = st.builds(bytes, size)
    # hypothesis' own bytes stay short: long ones overrun its choice buffer and are discarded
    plain = st.binary(max_size=min(max_size, 1500))
    piece = st.one_of(plain, random_bytes, periodic, zeros)
    mixed = st.lists(piece, min_size=2, max_size=3).map(lambda parts: b"".join(parts)[:max_size])
    return st.one_of(plain, random_bytes, periodic, zeros, mixed)


def note_chunks(count: int) -> None:
    """Label the example for --hypothesis-show-statistics: how many chunks did it span?"""
    event("chunks: " + ("0" if count == 0 else "1" if count == 1 else "2-9" if count < 10 else "10+"))


def spans(lengths: list[int]) -> list[tuple[int, int]]:
    out, pos = [], 0
    for n in lengths:
        out.append((pos, pos + n))
        pos += n
    return out


def chunks(chunker: Chunker, data: bytes) -> list[bytes]:
    return [data[s:e] for s, e in spans(chunker.cut(data))]


class Trickle(io.RawIOBase):
    """A stream whose reads return at most `step` bytes, like a pipe."""

    def __init__(self, data: bytes, step: int):
        self._buf, self._step = io.BytesIO(data), step

    def readable(self):
        return True

    def readinto(self, b):
        view = memoryview(b)[: self._step]
        return self._buf.readinto(view)


# ---- 1. round trips through the store -----------------------------------------------------------
@pytest.fixture(scope="module", params=["memory", "local"])
def small_store(request, tmp_path_factory):
    """One store per backend with small chunks, shared by all examples (so they also dedup across)."""
    root = tmp_path_factory.mktemp(f"props-{request.param}")
    if request.param == "memory":
        backend = MemoryBackend()
    else:
        backend = LocalBackend(str(root / "store"))
    config = StoreConfig.new(chunker=SMALL)
    assert backend.put(layout.CONFIG, config.to_bytes(), create_only=True)
    store = Store(backend, config, cache_dir=str(root / "cache"))
    yield store
    store.close()


@pytest.fixture(scope="module")
def scratch(tmp_path_factory):
    return tmp_path_factory.mktemp("files")


def _check_manifest(store: Store, digest: str, data: bytes) -> None:
    """The file was cut exactly as the store's chunker cuts it (so it spans several chunks)."""
    manifest = store.file_manifest(bytes.fromhex(digest))
    assert list(manifest.sizes) == Chunker(SMALL).cut(data)
    note_chunks(len(manifest))
    assert manifest.size == len(data)


@PROPS
@given(data=payloads(64 * KiB))
def test_put_bytes_round_trip(small_store, data):
    result = small_store.put_bytes(data)
    assert result.digest == blake3(data).hexdigest()
    assert result.size == len(data)
    assert small_store.read_bytes(result.digest) == data
    with small_store.open_file(result.digest) as f:
        assert f.read() == data
    _check_manifest(small_store, result.digest, data)
    assert small_store.put_bytes(data).new_bytes == 0  # stored once


@PROPS
@given(data=payloads(64 * KiB))
def test_put_file_get_file_round_trip(small_store, scratch, data):
    folder = scratch / secrets.token_hex(8)
    folder.mkdir()
    src = folder / "in.bin"
    src.write_bytes(data)
    result = small_store.put_file(src)
    assert result.digest == blake3(data).hexdigest()
    assert result.size == len(data) and result.kind == "file"
    out = small_store.get_file(result.digest, folder / "out.bin")
    assert open(out, "rb").read() == data
    assert small_store.read_bytes(result.digest) == data
    _check_manifest(small_store, result.digest, data)


# ---- 2. chunk boundaries ------------------------------------------------------------------------
@st.composite
def params_and_data(draw):
    params = draw(st.sampled_from(PARAMS))
    return params, draw(payloads(12 * params.max_size))


@PROPS
@given(case=params_and_data())
def test_chunk_sizes_and_concatenation(case):
    params, data = case
    lengths = Chunker(params).cut(data)
    note_chunks(len(lengths))
    assert sum(lengths) == len(data)
    if not data:
        assert lengths == []
        return
    for n in lengths[:-1]:
        assert params.min_size <= n <= params.max_size
    assert 0 < lengths[-1] <= params.max_size
    if len(data) <= params.min_size:
        assert lengths == [len(data)]
    assert b"".join(data[s:e] for s, e in spans(lengths)) == data


@PROPS
@given(data=payloads(48 * KiB), segment_size=st.one_of(st.integers(1, 9000), st.sampled_from([4096, 4097, 65536])),
       step=st.sampled_from([None, 7, 1000, 4096]), size_hint=st.one_of(st.none(), st.integers(0, 60 * KiB)),
       recycle=st.booleans())
def test_segments_cut_like_the_whole_buffer(data, segment_size, step, size_hint, recycle):
    """Segments of any size (even below the chunk sizes), from streams with short reads, with a right or
    wrong size hint, and with each segment's buffer handed back for reuse as soon as it has been read."""
    chunker = Chunker(SMALL)
    stream = io.BytesIO(data) if step is None else Trickle(data, step)
    lengths, seen, fresh = [], [], []
    for seg in chunker.segments(stream, segment_size=segment_size, size_hint=size_hint):
        assert sum(seg.lengths) == len(seg.data)
        lengths += seg.lengths
        seen.append(bytes(seg.data))
        fresh.append(bytes(seg.fresh))
        if recycle:
            chunker.recycle(seg)
    note_chunks(len(lengths))
    assert lengths == chunker.cut(data)
    assert b"".join(seen) == data
    assert b"".join(fresh) == data  # each input byte is fresh once


@pytest.mark.parametrize("size", [2 * SEGMENT + 12345, SEGMENT])
def test_segments_at_real_size_cut_like_the_whole_buffer(size):
    """The real segments (SEGMENT) with the default parameters: chunks carried over a segment's end."""
    data = _random(size, size)
    chunker = Chunker(ChunkerParams())
    segments = list(chunker.segments(io.BytesIO(data)))
    assert len(segments) >= size // SEGMENT
    assert [n for seg in segments for n in seg.lengths] == chunker.cut(data)
    assert b"".join(bytes(seg.fresh) for seg in segments) == data


# ---- 3. an insertion changes only the chunks near it --------------------------------------------
MAX_NEW = 16   # new chunks after one small insertion: 1 in 87% of cases, >3 in 2.6%, 12 at worst in 1e5 runs


@PROPS
@given(seed=st.integers(0, 2**32), size=st.integers(20 * KiB, 60 * KiB), where=st.floats(0, 1),
       at_cut=st.booleans(), inserted=st.one_of(st.binary(min_size=1, max_size=64),
                                                st.builds(_random, st.integers(0, 2**32), st.integers(1, 64))))
def test_insertion_changes_only_nearby_chunks(seed, size, where, at_cut, inserted):
    chunker = Chunker(SMALL)
    data = _random(seed, size)
    old_spans = spans(chunker.cut(data))
    pos = round(where * size)
    if at_cut:  # right at a cut point, half the time
        pos = min((e for _, e in old_spans), key=lambda e: abs(e - pos))
    edited = data[:pos] + inserted + data[pos:]
    new_spans = spans(chunker.cut(edited))

    # every chunk that ends before the insertion point is unchanged (bar the last, cut by EOF). Not one
    # that ends right at it: FastCDC decides a cut on the hash that includes the next chunk's first byte
    for i, (s, e) in enumerate(old_spans[:-1]):
        if e < pos:
            assert new_spans[i] == (s, e)

    # after it the streams resynchronise: the tails are the same chunks (at offsets shifted by k)
    old = [data[s:e] for s, e in old_spans]
    new = [edited[s:e] for s, e in new_spans]
    head = next((i for i, (a, b) in enumerate(zip(old, new)) if a != b), min(len(old), len(new)))
    tail = next((i for i, (a, b) in enumerate(zip(reversed(old), reversed(new))) if a != b),
                min(len(old), len(new)))
    tail = min(tail, len(old) - head, len(new) - head)
    changed_new, changed_old = len(new) - head - tail, len(old) - head - tail
    assert changed_new <= MAX_NEW and changed_old <= MAX_NEW
    assert len(set(new) - set(old)) <= MAX_NEW
    # and the unchanged chunks cover all but a few max-size chunks' worth of bytes around the insertion
    changed_bytes = sum(e - s for s, e in new_spans[head:len(new) - tail])
    assert changed_bytes <= len(inserted) + MAX_NEW * SMALL.max_size


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 2**32))
def test_insertions_resynchronise_within_a_few_chunks(seed):
    """Over many small insertions, most add at most 3 chunks and the mean is near 1."""
    rng = random.Random(seed)
    chunker = Chunker(SMALL)
    data = rng.randbytes(48 * KiB)
    old = set(chunks(chunker, data))
    counts = []
    for _ in range(40):
        pos, k = rng.randint(0, len(data)), rng.randint(1, 64)
        new = set(chunks(chunker, data[:pos] + rng.randbytes(k) + data[pos:]))
        counts.append(len(new - old))
    assert max(counts) <= MAX_NEW
    assert sum(c <= 3 for c in counts) >= 0.75 * len(counts)
    assert sum(counts) / len(counts) <= 2
