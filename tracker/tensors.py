"""One tensor of a stored checkpoint without restoring the file: `load_tensor`, and `safe_open`, a lazy
reader shaped like safetensors' own. Each fetches only the chunks holding what is asked (and the
file's header), every one verified against its id."""

from __future__ import annotations

from cas.errors import InvalidInput
from cas.tensorfiles.stored import StoredCheckpoint, open_checkpoint

from .run import _open_store

FRAMEWORKS = ("numpy", "np", "pt", "torch")
# safetensors dtype names → numpy dtypes (BF16 has none: numpy gets it as float32, exactly)
_NUMPY = {"BOOL": "bool", "U8": "uint8", "I8": "int8", "I16": "<i2", "U16": "<u2", "F16": "<f2", "I32": "<i4",
          "U32": "<u4", "F32": "<f4", "I64": "<i8", "U64": "<u8", "F64": "<f8", "C64": "<c8", "C128": "<c16"}


def _array(ckpt: StoredCheckpoint, name: str, framework: str):
    if framework not in FRAMEWORKS:
        raise InvalidInput(f"unknown framework {framework!r}: use 'numpy' or 'pt'", subject=str(framework))
    import numpy as np
    t = ckpt.tensor(name)
    raw = ckpt.tensor_bytes(name)
    if framework in ("pt", "torch"):
        import torch
        dtypes = {"BF16": torch.bfloat16, "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2}
        if t.dtype in dtypes:
            kind = dtypes[t.dtype]
            flat = torch.frombuffer(bytearray(raw), dtype=kind) if raw else torch.empty(0, dtype=kind)
            return flat.reshape(t.shape)
        return torch.from_numpy(np.frombuffer(bytearray(raw), dtype=_NUMPY[t.dtype]).reshape(t.shape))
    if t.dtype == "BF16":  # the upper half of a float32: widening is exact
        bits = np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16
        return bits.view(np.float32).reshape(t.shape)
    if t.dtype not in _NUMPY:
        raise InvalidInput(f"tensor {name!r} is {t.dtype}, which numpy has no type for: use framework='pt'",
                           subject=name)
    return np.frombuffer(raw, dtype=_NUMPY[t.dtype]).reshape(t.shape).copy()


def load_tensor(ref: str, name: str, *, framework: str = "numpy", store=None):
    """One tensor of a stored safetensors, torch.save, .npy or .npz file, as a numpy array (BF16 as
    float32, exactly) or, with framework="pt", a torch tensor of its own dtype."""
    return _array(open_checkpoint(_open_store(store), ref), name, framework)


class safe_open:  # noqa: N801 - named like safetensors.safe_open, which it mirrors
    """A lazy reader of a stored checkpoint: keys(), get_tensor(name), metadata(). The header is read on
    opening; each get_tensor fetches that tensor's chunks only."""

    def __init__(self, ref: str, framework: str = "numpy", *, store=None):
        if framework not in FRAMEWORKS:
            raise InvalidInput(f"unknown framework {framework!r}: use 'numpy' or 'pt'", subject=str(framework))
        self._ckpt = open_checkpoint(_open_store(store), ref)
        if self._ckpt.layout is None:
            raise InvalidInput(f"{ref} is not a checkpoint cas reads tensors of", subject=ref)
        self.framework = framework

    def __enter__(self) -> safe_open:
        return self

    def __exit__(self, *exc) -> None:
        self._ckpt.reader.close()

    def keys(self) -> list[str]:
        return [t.name for t in self._ckpt.tensors]

    def get_tensor(self, name: str):
        return _array(self._ckpt, name, self.framework)

    def metadata(self) -> dict[str, str]:
        """The safetensors header's __metadata__ ({} for other formats)."""
        if self._ckpt.layout is None or self._ckpt.layout.format != "safetensors":
            return {}
        from cas.tensorfiles import safetensors
        return safetensors.metadata(self._ckpt.read, self._ckpt.reader.size)
