"""Deterministic checkpoint-like file series (bf16 safetensors, growing CSV, append-only JSONL, and, with torch,
training checkpoints from torch_series.py as .pt or fp32 safetensors) for benchmarks."""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import math
import sys
from pathlib import Path

import numpy as np

FT_KINDS = ("ft-full-pt", "ft-full-st", "ft-frozen-pt", "ft-frozen-st")  # need torch (torch_series.py)
KINDS = ("bf16", "csv", "jsonl") + FT_KINDS
TEXT_KINDS = ("csv", "jsonl")  # the rest are float checkpoints
SUFFIX = {"bf16": ".safetensors", "csv": ".csv", "jsonl": ".jsonl"}
SUFFIX.update({k: ".pt" if k.endswith("-pt") else ".safetensors" for k in FT_KINDS})

# Reference shape (scale 4, ~249 MB): GPT-2 small; 12 layers x 12 tensors + 4 = 148 tensors.
REF_SCALE = 4.0
REF_DIM, REF_VOCAB, REF_CTX, LAYERS = 768, 50257, 1024, 12
CHANGED_PER_STEP = 15  # tensors perturbed per step (~10 % of 148)
INIT_STD = 0.02
ROWS_PER_STEP = 20_000  # CSV rows / JSONL lines appended per step at scale 1


def step_path(outdir: Path, kind: str, step: int) -> Path:
    return Path(outdir) / f"step-{step:04d}{SUFFIX[kind]}"


# ---- bf16 safetensors -------------------------------------------------------------------------

def model_shapes(scale: float) -> dict[str, tuple[int, ...]]:
    """Tensor name -> shape of a GPT-2-like model whose bf16 size is ~scale/4 of the reference."""
    f = math.sqrt(scale / REF_SCALE)
    d = max(16, round(REF_DIM * f / 16) * 16)
    vocab, ctx = max(16, round(REF_VOCAB * f)), max(16, round(REF_CTX * f))
    shapes: dict[str, tuple[int, ...]] = {"wte.weight": (vocab, d), "wpe.weight": (ctx, d)}
    for i in range(LAYERS):
        p = f"h.{i}."
        shapes.update({
            p + "ln_1.weight": (d,), p + "ln_1.bias": (d,),
            p + "attn.c_attn.weight": (d, 3 * d), p + "attn.c_attn.bias": (3 * d,),
            p + "attn.c_proj.weight": (d, d), p + "attn.c_proj.bias": (d,),
            p + "ln_2.weight": (d,), p + "ln_2.bias": (d,),
            p + "mlp.c_fc.weight": (d, 4 * d), p + "mlp.c_fc.bias": (4 * d,),
            p + "mlp.c_proj.weight": (4 * d, d), p + "mlp.c_proj.bias": (d,),
        })
    shapes.update({"ln_f.weight": (d,), "ln_f.bias": (d,)})
    return shapes


def to_bf16(x: np.ndarray) -> np.ndarray:
    """float32 -> bf16 bit patterns (uint16) by keeping the upper 16 bits (truncation)."""
    return (np.ascontiguousarray(x, dtype=np.float32).view(np.uint32) >> 16).astype(np.uint16)


def from_bf16(b: np.ndarray) -> np.ndarray:
    return (b.astype(np.uint32) << 16).view(np.float32)


def init_tensor(rng: np.random.Generator, name: str, shape: tuple[int, ...]) -> np.ndarray:
    """Layer-norm weights near 1, everything else small normal values."""
    x = rng.standard_normal(shape, dtype=np.float32) * np.float32(INIT_STD)
    if "ln_" in name and name.endswith(".weight"):
        x += np.float32(1.0)
    return to_bf16(x)


def perturb(rng: np.random.Generator, tensors: dict[str, np.ndarray]) -> None:
    """Add small noise (1 % of the init std) to a fixed-size random subset of tensors, in place."""
    names = sorted(tensors)
    for i in sorted(rng.choice(len(names), size=min(CHANGED_PER_STEP, len(names)), replace=False)):
        t = tensors[names[i]]
        noise = rng.standard_normal(t.shape, dtype=np.float32) * np.float32(INIT_STD * 0.01)
        tensors[names[i]] = to_bf16(from_bf16(t) + noise)


ST_DTYPES = {np.dtype(np.uint16): "BF16", np.dtype(np.float32): "F32"}  # uint16 arrays hold bf16 bit patterns


def safetensors_header(tensors: dict[str, np.ndarray]) -> bytes:
    """The 8-byte length plus the JSON header (space-padded to 8 bytes); tensors laid out in name order."""
    meta: dict[str, object] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name in sorted(tensors):
        t = tensors[name]
        meta[name] = {"dtype": ST_DTYPES[t.dtype], "shape": list(t.shape),
                      "data_offsets": [offset, offset + t.nbytes]}
        offset += t.nbytes
    header = json.dumps(meta, separators=(",", ":")).encode()
    header += b" " * (-len(header) % 8)
    return len(header).to_bytes(8, "little") + header


def write_safetensors(path: Path, tensors: dict[str, np.ndarray]) -> None:
    with open(path, "wb") as f:
        f.write(safetensors_header(tensors))
        for name in sorted(tensors):
            t = tensors[name]
            f.write(memoryview(np.ascontiguousarray(t, dtype=t.dtype.newbyteorder("<"))).cast("B"))


def read_safetensors_header(path: Path) -> tuple[dict, int]:
    """(parsed JSON header, offset of the data section)."""
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        return json.loads(f.read(n)), 8 + n


def gen_bf16(rng: np.random.Generator, outdir: Path, steps: int, scale: float) -> list[Path]:
    tensors = {name: init_tensor(rng, name, shape) for name, shape in model_shapes(scale).items()}
    paths = []
    for step in range(steps):
        if step:
            perturb(rng, tensors)
        paths.append(step_path(outdir, "bf16", step))
        write_safetensors(paths[-1], tensors)
    return paths


# ---- text series ------------------------------------------------------------------------------

CSV_BASE = ("step", "epoch", "loss", "lr", "grad_norm", "tokens_per_s")


def csv_rows(rng: np.random.Generator, first: int, n: int, ncols: int) -> str:
    """n metric rows with ncols columns; step numbers from `first`."""
    steps = np.arange(first, first + n)
    cols = [steps.astype(str), (steps // 1000).astype(str)]
    loss = 4.0 * np.exp(-steps / 50_000) + 0.05 * rng.standard_normal(n)
    rest = [loss, 3e-4 * np.cos(steps / 1e5), np.abs(rng.normal(1, 0.2, n)), rng.normal(9e4, 2e3, n)]
    rest += [rng.random(n) for _ in range(ncols - len(CSV_BASE))]
    cols += [np.char.mod("%.6g", c) for c in rest]
    return "".join(",".join(r) + "\n" for r in zip(*cols))


def gen_csv(rng: np.random.Generator, outdir: Path, steps: int, scale: float) -> list[Path]:
    """Rewritten each step: header gains a column (shifting every byte), new rows appended, old rows kept."""
    n = max(1, round(ROWS_PER_STEP * scale))
    blocks, paths = [], []
    for step in range(steps):
        header = ",".join(CSV_BASE + tuple(f"eval_{i}" for i in range(step + 1))) + "\n"
        blocks.append(csv_rows(rng, step * n, n, len(CSV_BASE) + step + 1))
        paths.append(step_path(outdir, "csv", step))
        paths[-1].write_text(header + "".join(blocks), encoding="ascii")
    return paths


def jsonl_lines(rng: np.random.Generator, first: int, n: int) -> str:
    loss, rate = rng.normal(2.0, 0.1, n), rng.normal(9e4, 2e3, n)
    events = rng.choice(["train", "train", "train", "eval", "ckpt"], n)
    return "".join(
        json.dumps({"step": first + i, "event": str(e), "loss": round(float(lo), 6),
                    "tokens_per_s": round(float(r), 1), "host": f"node-{(first + i) % 8}"}) + "\n"
        for i, (e, lo, r) in enumerate(zip(events, loss, rate)))


def gen_jsonl(rng: np.random.Generator, outdir: Path, steps: int, scale: float) -> list[Path]:
    """Append-only: each step's file is the previous one plus new lines."""
    n = max(1, round(ROWS_PER_STEP * scale))
    text, paths = "", []
    for step in range(steps):
        text += jsonl_lines(rng, step * n, n)
        paths.append(step_path(outdir, "jsonl", step))
        paths[-1].write_text(text, encoding="ascii")
    return paths


# ---- training checkpoints (torch) ------------------------------------------------------------------

def torch_series():
    """torch_series.py, imported only when a torch kind is asked for."""
    if importlib.util.find_spec("torch") is None:
        raise SystemExit("torch is not installed: pip install torch==2.13.0")
    return importlib.import_module(f"{__package__}.torch_series" if __package__ else "torch_series")


def ft_generator(kind: str):
    """ft-{full,frozen}-{pt,st}: one checkpoint per step, as torch.save output or fp32 safetensors."""
    def gen(rng: np.random.Generator, outdir: Path, steps: int, scale: float) -> list[Path]:
        ts, paths = torch_series(), []
        for step, ckpt in enumerate(ts.checkpoints(rng, steps, scale, frozen=kind.startswith("ft-frozen"))):
            paths.append(step_path(outdir, kind, step))
            if kind.endswith("-pt"):
                ts.save_pt(ckpt, paths[-1])
            else:
                write_safetensors(paths[-1], ts.flat_tensors(ckpt))
        return paths
    return gen


GENERATORS = {"bf16": gen_bf16, "csv": gen_csv, "jsonl": gen_jsonl, **{k: ft_generator(k) for k in FT_KINDS}}


def generate(kind: str, outdir, steps: int = 5, scale: float = 1.0, seed: int = 0) -> list[Path]:
    """Write the series `kind` into outdir, one file per step; returns the paths in step order."""
    if kind not in GENERATORS:
        raise ValueError(f"unknown kind {kind!r}; expected one of {', '.join(KINDS)}")
    if steps < 1 or scale <= 0:
        raise ValueError("steps must be >= 1 and scale > 0")
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    # -st and -pt share a random stream: the same training run in two file formats
    rng = np.random.default_rng([seed, KINDS.index(kind.replace("-st", "-pt"))])
    return GENERATORS[kind](rng, outdir, steps, scale)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("kind", choices=KINDS)
    p.add_argument("outdir")
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--scale", type=float, default=1.0,
                   help="size multiplier (4 = ~249 MB per step for bf16, ~268 MB for ft-full-pt)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    for path in generate(args.kind, args.outdir, args.steps, args.scale, args.seed):
        print(f"{path.stat().st_size:>12}  {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
