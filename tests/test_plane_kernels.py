"""The compiled plane kernels (cas/_planes.c) against codec.py's numpy code: the same planes, the same
frames, each decoded by the other, on every width, rotation and order, for floats and for any bytes."""

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from cas import codec
from cas.errors import IntegrityError

KERNELS = codec._kernels
WIDTHS = st.sampled_from([2, 4, 8])


def test_the_kernels_were_built():
    """The install compiles them where there is a C compiler, as on every machine this suite runs on."""
    assert KERNELS is not None, "cas._planes was not built: pip install -e . needs a C compiler"


@pytest.fixture
def numpy_only(monkeypatch):
    """Run codec.py as an install without the kernels."""
    def run(fn, *args, **kwargs):
        monkeypatch.setattr(codec, "_kernels", None)
        try:
            return fn(*args, **kwargs)
        finally:
            monkeypatch.setattr(codec, "_kernels", KERNELS)
    return run


def _elements(data: bytes, width: int) -> bytes:
    return data[:len(data) // width * width]


def _weights(seed: int, n: int, width: int, scale: float = 0.02) -> bytes:
    values = np.random.default_rng(seed).standard_normal(n) * scale
    if width == 2:
        return (values.astype(np.float32).view(np.uint32) >> 16).astype(np.uint16).tobytes()
    return values.astype(np.float32 if width == 4 else np.float64).tobytes()


def _moved(base: bytes, width: int, seed: int, ulps: int) -> bytes:
    """base's elements moved by up to `ulps` units of their last place, some not at all."""
    dtype = codec._UINT[width]
    values = np.frombuffer(base, dtype=dtype)
    rng = np.random.default_rng(seed)
    moves = rng.integers(-ulps, ulps + 1, len(values)) * (rng.random(len(values)) < 0.8)
    return (values + moves.astype(values.dtype)).astype(dtype).tobytes()


@settings(max_examples=150, deadline=None)
@given(WIDTHS, st.integers(0, 7), st.binary(max_size=3000))
def test_split_and_join_are_numpys_planes_and_back(width, rotation, data):
    data = _elements(data, width)
    values = np.frombuffer(data, dtype=codec._UINT[width])
    expected = b"".join(plane.tobytes() for plane in codec._rotated_planes(values, width, rotation)) if rotation \
        else np.ascontiguousarray(values.view(np.uint8).reshape(-1, width).T).tobytes()
    planes = KERNELS.split(data, width, rotation)
    assert planes == expected
    n = len(data) // width
    assert KERNELS.join([planes[i * n:(i + 1) * n] for i in range(width)], width, rotation) == data


@settings(max_examples=150, deadline=None)
@given(WIDTHS, st.binary(max_size=3000), st.integers(0, 400), st.integers(1, 50))
def test_gather_takes_every_step_th_element_from_start(width, data, start, step):
    data = _elements(data, width)
    elements = [data[i:i + width] for i in range(0, len(data), width)]
    assert KERNELS.gather(data, width, start, step) == b"".join(elements[start::step])


@settings(max_examples=150, deadline=None)
@given(st.binary(max_size=5000), st.sampled_from([1, 3, 16]))
def test_entropy_is_numpys(data, stride):
    sample = np.frombuffer(data, dtype=np.uint8)[::stride]
    counts = np.bincount(sample, minlength=256)
    p = counts[counts > 0] / max(1, len(sample))
    assert KERNELS.entropy(data, stride) == pytest.approx(float(-(p * np.log2(p)).sum()), abs=1e-9)


@settings(max_examples=150, deadline=None)
@given(WIDTHS, st.booleans(), st.integers(0, 7), st.binary(max_size=4000), st.binary(max_size=4000))
def test_delta_split_and_join_are_numpys_differences_and_back(width, ordered, rotation, a, b):
    size = min(len(_elements(a, width)), len(_elements(b, width)))
    new, base = a[:size], b[:size]
    n = size // width
    uint = np.dtype(codec._UINT[width]).type
    zigzag = codec._zigzag_of(new, base, width)
    keys = codec.top_bytes(base, width)
    if ordered:
        zigzag = zigzag[np.argsort(keys, kind="stable")]
    expected = b"".join(p.tobytes() for p in codec._rotated_planes(zigzag, width, rotation)) if rotation \
        else np.ascontiguousarray(zigzag.view(np.uint8).reshape(-1, width).T).tobytes()
    planes, counts = KERNELS.delta_split(new, base, width, rotation, ordered)
    assert planes == expected
    assert counts == (np.bincount(keys, minlength=256).tolist() if ordered else None)
    split = [planes[i * n:(i + 1) * n] for i in range(width)]
    assert KERNELS.delta_join(split, base, width, rotation, ordered) == new
    sample = codec._zigzag(np.frombuffer(new, uint)[::16] - np.frombuffer(base, uint)[::16], uint)
    bits, small = KERNELS.delta_sample(new, base, width, 16)
    if n:
        assert bits == pytest.approx(codec._mean_bits(sample), rel=1e-12)
        assert small == pytest.approx(float(np.mean(sample >> uint(8 * width - 9) == 0)))


@pytest.mark.parametrize("width", [2, 4, 8])
def test_frames_are_the_same_bytes_either_way_and_each_reads_the_others(width, numpy_only):
    """Weights stored alone (a batch of chunks, the rotation picked on their sample) and as deltas
    against a base, small moves (in the base's exponent order) and large ones: the frames the kernels
    write are numpy's byte for byte, and decode to the chunk both ways."""
    chunks = [_weights(seed, 40_000, width) for seed in range(3)]
    alone = codec.compress_planes_many(chunks, width, 1)
    assert alone == numpy_only(codec.compress_planes_many, chunks, width, 1)
    assert {c for c, _ in alone} == {codec.PLANES}
    for (kind, stored), chunk in zip(alone, chunks):
        assert codec.decompress(kind, stored, len(chunk), name="c") == chunk
        assert numpy_only(codec.decompress, kind, stored, len(chunk), name="c") == chunk
    base = chunks[0]
    for ulps in (3, 1 << (8 * width - 6)):
        new = _moved(base, width, ulps, ulps)
        frame = codec.encode_delta(new, base, b"b" * 32, 0, width, 1)
        assert frame is not None and frame == numpy_only(codec.encode_delta, new, base, b"b" * 32, 0, width, 1)
        assert codec.decode_delta(frame, len(new), base, name="c") == new
        assert numpy_only(codec.decode_delta, frame, len(new), base, name="c") == new


def test_a_delta_frame_whose_planes_name_another_width_is_refused_both_ways(numpy_only):
    base = _weights(1, 8192, 4)
    kind, planes = codec.compress_planes(_weights(2, 16384, 2), 2, 1)  # as many bytes, in 2-byte elements
    assert kind == codec.PLANES
    frame = codec._DELTA_HEAD.pack(codec.DELTA_VERSION, codec.SUB, 4, 1, b"b" * 32, codec.PLANES) + planes
    for decode in (codec.decode_delta, lambda *args, **kwargs: numpy_only(codec.decode_delta, *args, **kwargs)):
        with pytest.raises(IntegrityError, match="2-byte elements"):
            decode(frame, len(base), base, name="c")


def test_bad_arguments_are_errors_not_crashes():
    with pytest.raises(ValueError, match="width 3"):
        KERNELS.split(b"abcdef", 3, 1)
    with pytest.raises(ValueError, match="whole elements"):
        KERNELS.split(b"abc", 2, 1)
    with pytest.raises(ValueError, match="rotation"):
        KERNELS.split(b"abcd", 2, 16)
    with pytest.raises(ValueError, match="plane 1 has"):
        KERNELS.join([b"ab", b"a"], 2, 1)
    with pytest.raises(ValueError, match="3 planes"):
        KERNELS.join([b"a", b"b", b"c"], 2, 1)
    with pytest.raises(ValueError, match="step 0"):
        KERNELS.gather(b"abcd", 2, 0, 0)
    with pytest.raises(ValueError, match="against a base"):
        KERNELS.delta_split(b"abcd", b"ab", 2, 1, True)
    with pytest.raises(ValueError, match="plane 0 has"):
        KERNELS.delta_join([b"a", b"b"], b"abcd", 2, 1, False)
