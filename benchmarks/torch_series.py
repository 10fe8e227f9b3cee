"""Training-checkpoint series for series.py (kinds ft-*): owns the small GPT-like model, its sizing from
`scale`, the deterministic AdamW training on synthetic tokens, and turning a checkpoint into flat fp32
tensors for safetensors. File names and the safetensors writer stay in series.py; importing this needs torch.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

# Reference shape (scale 4): ~22.4 M parameters, ~268 MB as fp32 weights + AdamW exp_avg/exp_avg_sq.
REF_SCALE = 4.0
REF_DIM, REF_VOCAB, REF_CTX, LAYERS, FROZEN_LAYERS, HEADS = 384, 8192, 256, 9, 6, 4
BATCH, SEQ = 4, 32  # tiny batches: the point is realistic weight movement, not learning
OPT_STEPS = 2  # optimizer steps between saves
LR, WEIGHT_DECAY, INIT_STD = 1e-4, 0.01, 0.02
THREADS = 2  # float reductions depend on the thread count: fixed for byte-identical output


def model_dims(scale: float) -> tuple[int, int, int]:
    """(width, vocab, context) of the model whose checkpoint is ~scale/4 of the reference."""
    f = math.sqrt(scale / REF_SCALE)
    d = max(HEADS * 4, round(REF_DIM * f / 16) * 16)
    return d, max(16, round(REF_VOCAB * f)), max(SEQ, round(REF_CTX * f))


class Attention(nn.Module):
    def __init__(self, d: int):
        super().__init__()
        self.c_attn, self.c_proj = nn.Linear(d, 3 * d), nn.Linear(d, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.c_attn(x).view(b, t, 3, HEADS, d // HEADS).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.c_proj(y.transpose(1, 2).reshape(b, t, d))


class Block(nn.Module):
    """Pre-LN transformer block: x + attn(ln_1(x)), then x + mlp(ln_2(x))."""

    def __init__(self, d: int):
        super().__init__()
        self.ln_1, self.attn, self.ln_2 = nn.LayerNorm(d), Attention(d), nn.LayerNorm(d)
        self.mlp = nn.Sequential(OrderedDict(c_fc=nn.Linear(d, 4 * d), act=nn.GELU(),
                                             c_proj=nn.Linear(4 * d, d)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    """Token + position embeddings, pre-LN blocks, final LayerNorm, untied LM head."""

    def __init__(self, d: int, vocab: int, ctx: int):
        super().__init__()
        self.wte, self.wpe = nn.Embedding(vocab, d), nn.Embedding(ctx, d)
        self.h = nn.ModuleList(Block(d) for _ in range(LAYERS))
        self.ln_f, self.lm_head = nn.LayerNorm(d), nn.Linear(d, vocab, bias=False)
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.normal_(p, std=INIT_STD)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        x = self.wte(idx) + self.wpe(torch.arange(idx.shape[1]))
        for block in self.h:
            x = block(x)
        return self.lm_head(self.ln_f(x))


@contextmanager
def deterministic(seed: int):
    """Seeded global RNG, fixed thread count, deterministic algorithms; all restored on exit."""
    threads, strict = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        torch.set_num_threads(THREADS)
        torch.use_deterministic_algorithms(True)
        try:
            yield
        finally:
            torch.set_num_threads(threads)
            torch.use_deterministic_algorithms(strict)


def checkpoints(rng: np.random.Generator, steps: int, scale: float, frozen: bool) -> Iterator[dict]:
    """Yield `steps` checkpoints {"model", "optimizer", "step"}, OPT_STEPS AdamW steps apart.

    frozen: the embeddings and the first FROZEN_LAYERS blocks are frozen (not in the optimizer), so their
    bytes never change; only the last blocks, ln_f and the head train.
    """
    with deterministic(int(rng.integers(2**63))):
        d, vocab, ctx = model_dims(scale)
        model = GPT(d, vocab, ctx)
        if frozen:
            for m in (model.wte, model.wpe, *model.h[:FROZEN_LAYERS]):
                m.requires_grad_(False)
        opt = torch.optim.AdamW([(n, p) for n, p in model.named_parameters() if p.requires_grad],
                                lr=LR, weight_decay=WEIGHT_DECAY)
        for step in range(steps):
            for _ in range(OPT_STEPS):
                tokens = torch.randint(vocab, (BATCH, SEQ + 1))
                loss = F.cross_entropy(model(tokens[:, :-1]).flatten(0, 1), tokens[:, 1:].flatten())
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            yield {"model": model.state_dict(), "optimizer": opt.state_dict(), "step": (step + 1) * OPT_STEPS}


def save_pt(ckpt: dict, path) -> None:
    torch.save(ckpt, path)


def flat_tensors(ckpt: dict) -> dict[str, np.ndarray]:
    """Model weights by name plus optimizer.exp_avg.<param> / optimizer.exp_avg_sq.<param>, as numpy fp32."""
    out = {name: t.numpy() for name, t in ckpt["model"].items()}
    opt = ckpt["optimizer"]
    for group in opt["param_groups"]:
        for name, i in zip(group["param_names"], group["params"]):
            for key in ("exp_avg", "exp_avg_sq"):
                out[f"optimizer.{key}.{name}"] = opt["state"][i][key].numpy()
    return out
