"""The weight codecs' side of the peer benchmark (ZipNN, z4ai), run by the project venv's python with the
`bench` extra: store one checkpoint, or restore one, timing the work inside the process (imports excluded).

    python codec_step.py put CODEC MODE REPO SRC          (prints {"key": ..., "seconds": ...})
    python codec_step.py get CODEC MODE REPO KEY DEST     (prints {"seconds": ...})

CODEC is zipnn or z4ai, at their best settings; MODE is file (each checkpoint compressed alone) or
chain (the first alone, each later one as a delta against the one before it, which `put` reads from
its original path). Every blob is decompressed and compared with its original when it is stored.
REPO holds one blob per checkpoint and state.json (keys, original paths, dtype).
"""

from __future__ import annotations

import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from cas.tensorfiles import read_layout  # noqa: E402

NAMES = {"F32": ("float32", "fp32"), "BF16": ("bfloat16", "bf16"), "F16": ("float16", "fp16")}


def file_dtype(path: str) -> str:
    """The float dtype holding most of a checkpoint's bytes (F32 when it has no layout)."""
    data = open(path, "rb").read()
    layout = read_layout(lambda a, b: data[a:b], len(data))
    sizes: dict[str, int] = {}
    for t in layout.tensors if layout else ():
        if t.dtype in NAMES:
            sizes[t.dtype] = sizes.get(t.dtype, 0) + t.size
    return max(sizes, key=sizes.get) if sizes else "F32"


class ZipNN:
    def __init__(self, dtype: str, delta: bool):
        import zipnn
        self.z = zipnn.ZipNN(input_format="byte", bytearray_dtype=NAMES[dtype][0], threads=1)
        self.delta = zipnn.ZipNN(input_format="byte", bytearray_dtype=NAMES[dtype][0], threads=1,
                                 delta_compressed_type="byte")  # wants a reference for every call

    def compress(self, data: bytes, reference: bytes | None) -> bytes:
        # ZipNN 0.5.4 rewrites the buffer it is given, even a bytes object: hand it copies
        if reference is None:
            return bytes(self.z.compress(bytearray(data)))
        return bytes(self.delta.compress(bytearray(data), delta_second_data=bytearray(reference)))

    def decompress(self, blob: bytes, reference: bytes | None) -> bytes:
        if reference is None:
            return bytes(self.z.decompress(bytearray(blob)))
        return bytes(self.delta.decompress(bytearray(blob), delta_second_data=bytearray(reference)))


class Z4ai:
    def __init__(self, dtype: str, delta: bool):
        import z4ai
        self.z4ai, self.dtype = z4ai, NAMES[dtype][1]

    def compress(self, data: bytes, reference: bytes | None) -> bytes:
        if reference is None:
            return self.z4ai.compress(data, dtype=self.dtype, threads=1)
        return self.z4ai.compress_delta(data, reference=reference, dtype=self.dtype, threads=1)

    def decompress(self, blob: bytes, reference: bytes | None) -> bytes:
        if reference is None:
            return bytes(self.z4ai.decompress(blob))
        return bytes(self.z4ai.decompress_delta(blob, reference))


CODECS = {"zipnn": ZipNN, "z4ai": Z4ai}


def _state(repo: str) -> dict:
    path = os.path.join(repo, "state.json")
    return json.load(open(path)) if os.path.exists(path) else {"keys": [], "paths": [], "dtype": None}


def put(codec: str, mode: str, repo: str, src: str) -> dict:
    os.makedirs(repo, exist_ok=True)
    state = _state(repo)
    dtype = state["dtype"] or file_dtype(src)
    coder = CODECS[codec](dtype, mode == "chain")
    previous = state["paths"][-1] if mode == "chain" and state["paths"] else None
    start = time.perf_counter()
    data = open(src, "rb").read()
    reference = open(previous, "rb").read() if previous else None
    blob = coder.compress(data, reference)
    key = f"{len(state['keys']):04d}.bin"
    with open(os.path.join(repo, key), "wb") as f:
        f.write(blob)
    seconds = time.perf_counter() - start
    if coder.decompress(blob, reference) != data:  # untimed: every blob must give back its original
        raise SystemExit(f"{codec} {mode}: {src} does not decompress to itself")
    state["keys"].append(key)
    state["paths"].append(os.path.abspath(src))
    state["dtype"] = dtype
    json.dump(state, open(os.path.join(repo, "state.json"), "w"))
    return {"key": key, "seconds": seconds}


def get(codec: str, mode: str, repo: str, key: str, dest: str) -> dict:
    state = _state(repo)
    coder = CODECS[codec](state["dtype"], mode == "chain")
    start = time.perf_counter()
    upto = state["keys"].index(key)
    chain = state["keys"][:upto + 1] if mode == "chain" else [key]
    data = None
    for k in chain:
        blob = open(os.path.join(repo, k), "rb").read()
        data = coder.decompress(blob, data if mode == "chain" else None)
    os.makedirs(dest, exist_ok=True)
    with open(os.path.join(dest, "restored"), "wb") as f:
        f.write(data)
    return {"seconds": time.perf_counter() - start}


if __name__ == "__main__":
    op, args = sys.argv[1], sys.argv[2:]
    print(json.dumps(put(*args) if op == "put" else get(*args)))
