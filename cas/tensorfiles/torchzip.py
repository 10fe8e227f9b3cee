"""torch.save zip archives (PyTorch >= 1.6): which tensor lives where, from the pickle.

`data.pkl` is read by the C unpickler with every global replaced (`find_class` never imports):
`torch._utils._rebuild_tensor_v2` (and `_rebuild_parameter`) by a stand-in that makes a tensor
record from its arguments, OrderedDict by a dict, and anything else by a name whose calls make an
opaque object; nothing the pickle names is imported or called. Each storage is the zip member
`<archive>/data/<key>`; each tensor is a view of a storage (offset, shape, strides), named by its
key path in the pickled object
(`model.encoder.layer.0.attention.self.query.weight`, `optim.state.3.exp_avg`).
"""

from __future__ import annotations

import io
import pickle

from ..datatype import datatype
from . import zipdir
from .layout import ITEMSIZE, MAX_HEADER, MAX_TENSORS, Layout, NotALayout, Tensor, check_regions, numel

STORAGE_DTYPES = {"FloatStorage": "F32", "HalfStorage": "F16", "BFloat16Storage": "BF16", "DoubleStorage": "F64",
                  "LongStorage": "I64", "IntStorage": "I32", "ShortStorage": "I16", "CharStorage": "I8",
                  "ByteStorage": "U8", "BoolStorage": "BOOL", "ComplexFloatStorage": "C64",
                  "ComplexDoubleStorage": "C128"}
REBUILD_TENSOR = ("torch._utils", "_rebuild_tensor_v2")
REBUILD_PARAMETER = {("torch._utils", "_rebuild_parameter"), ("torch._utils", "_rebuild_parameter_with_state")}
ORDERED_DICT = ("collections", "OrderedDict")
MAX_DEPTH = 1000


@datatype(frozen=True)
class _Global:
    """A global the pickle names: never imported; calling it (REDUCE, NEWOBJ) makes an _Opaque."""

    module: str
    name: str

    def __call__(self, *args, **kwargs):
        return _Opaque()

    def __new__(cls, *args, **kwargs):  # NEWOBJ calls cls.__new__(cls, ...) on what find_class returned
        return object.__new__(cls)


class _Dict(dict):
    """OrderedDict's stand-in: a dict that BUILD may give attributes (a state dict's _metadata)."""


@datatype(frozen=True)
class _Storage:
    key: str
    dtype: str
    numel: int


@datatype
class _TensorRef:
    storage: _Storage
    offset: int
    shape: tuple[int, ...]
    stride: tuple[int, ...]


class _Opaque:
    """An object the pickle would build by a call we never make; its BUILD state is kept (it may hold tensors)."""

    def __init__(self, *args, **kwargs):
        self.state = None

    def __call__(self, *args, **kwargs):
        return _Opaque()

    def __setstate__(self, state):
        self.state = state


def looks_like(head: bytes) -> bool:
    return zipdir.looks_like(head)


def parse(read, size: int) -> Layout:
    members = zipdir.members(read, size)
    pkl = [m for m in members if m.name.endswith("/data.pkl") or m.name == "data.pkl"]
    if len(pkl) != 1 or pkl[0].method != zipdir.STORED or pkl[0].size > MAX_HEADER:
        raise NotALayout("not a torch.save archive")
    prefix = pkl[0].name[: -len("data.pkl")]
    storages = {m.name[len(prefix) + 5:]: m for m in members if m.name.startswith(prefix + "data/")}
    root = _unpickle(bytes(read(pkl[0].offset, pkl[0].offset + pkl[0].size)))
    tensors, regions, seen = [], [], set()
    for name, ref in _tensors(root):
        member = storages.get(ref.storage.key)
        itemsize = ITEMSIZE[ref.storage.dtype]
        if member is None or member.method != zipdir.STORED or member.size != ref.storage.numel * itemsize:
            raise NotALayout(f"storage {ref.storage.key!r:.40} is missing or of the wrong size")
        if ref.storage.key not in seen and member.size:
            seen.add(ref.storage.key)
            regions.append((member.offset, member.offset + member.size, ref.storage.dtype))
        count = numel(ref.shape)
        span = 1 + sum((d - 1) * s for d, s in zip(ref.shape, ref.stride)) if count else 0
        if ref.offset < 0 or any(s < 0 for s in ref.stride) or ref.offset + span > ref.storage.numel:
            raise NotALayout(f"tensor {name!r:.60} lies outside its storage")
        tensors.append(Tensor(name, ref.storage.dtype, ref.shape, member.offset + ref.offset * itemsize,
                              count * itemsize, _contiguous(ref.shape, ref.stride)))
        if len(tensors) > MAX_TENSORS:
            raise NotALayout("too many tensors")
    return Layout("torch", tuple(tensors), check_regions(regions, size))


def _contiguous(shape: tuple[int, ...], stride: tuple[int, ...]) -> bool:
    expected = 1
    for d, s in zip(reversed(shape), reversed(stride)):
        if d != 1 and s != expected:
            return False
        expected *= d
    return True


def _tensors(root):
    """(dotted key path, tensor) of every tensor in the unpickled structure, in pickle order."""
    todo = [("", root, 0)]
    while todo:
        path, obj, depth = todo.pop()
        if depth > MAX_DEPTH:
            raise NotALayout("nesting too deep")
        if isinstance(obj, _TensorRef):
            yield path or "tensor", obj
            continue
        if isinstance(obj, _Opaque):
            obj = obj.state
        if isinstance(obj, dict):
            items = list(obj.items())
        elif isinstance(obj, (list, tuple)):
            items = list(enumerate(obj))
        else:
            continue
        for key, value in reversed(items):
            if isinstance(key, (str, int)) and not isinstance(key, bool):
                todo.append((f"{path}.{key}" if path else str(key), value, depth + 1))


class _Unpickler(pickle.Unpickler):
    """The C unpickler with every global replaced: the tensor-rebuild functions and OrderedDict by
    stand-ins of this module that only record their arguments, anything else by _Opaque, which
    accepts any call and any state and does nothing (the pattern of the pickle module's own
    "restricting globals" recipe). Persistent ids become _Storage records."""

    def find_class(self, module, name):
        called = (module, name)
        if called == REBUILD_TENSOR:
            return _rebuild_tensor
        if called in REBUILD_PARAMETER:
            return _rebuild_parameter
        if called == ORDERED_DICT:
            return _Dict
        return _Global(module, name)

    def persistent_load(self, pid):
        return _storage(pid)


def _unpickle(data: bytes):
    """The object a torch pickle describes, built without running any of it (see the module docstring)."""
    try:
        return _Unpickler(io.BytesIO(data)).load()
    except NotALayout:
        raise
    except (pickle.UnpicklingError, EOFError, IndexError, KeyError, TypeError, ValueError, AttributeError,
            OverflowError, MemoryError, RecursionError, UnicodeDecodeError) as exc:
        raise NotALayout(f"not a torch pickle: {type(exc).__name__}") from None


def _storage(pid):
    """A storage from the persistent id ('storage', <storage type>, key, location, numel)."""
    if (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage" and isinstance(pid[1], _Global)
            and pid[1].name in STORAGE_DTYPES and isinstance(pid[2], str) and type(pid[4]) is int and pid[4] >= 0):
        return _Storage(pid[2], STORAGE_DTYPES[pid[1].name], pid[4])
    raise NotALayout("unknown persistent id")


def _ints(value, what: str) -> tuple[int, ...]:
    if not isinstance(value, tuple) or len(value) > 64 or any(type(v) is not int or v < 0 for v in value):
        raise NotALayout(f"bad tensor {what}")
    return value


def _rebuild_tensor(storage=None, offset=None, size=None, stride=None, *rest):
    if not isinstance(storage, _Storage) or type(offset) is not int:
        return _Opaque()
    shape, stride = _ints(size, "shape"), _ints(stride, "stride")
    if len(shape) != len(stride):
        raise NotALayout("tensor shape and stride differ in length")
    return _TensorRef(storage, offset, shape, stride)


def _rebuild_parameter(data=None, *rest):
    return data if isinstance(data, _TensorRef) else _Opaque()
