"""torch.save zip archives (PyTorch >= 1.6): which tensor lives where, from the pickle's opcodes.

`data.pkl` is walked by a small stack machine over `pickletools.genops`, which decodes opcodes and
runs none of them. It builds dicts, lists, tuples and plain values; a GLOBAL is only a name; a
REDUCE of `torch._utils._rebuild_tensor_v2` (or `_rebuild_parameter`) makes a tensor record from
its arguments; a REDUCE of OrderedDict makes a dict; any other call makes an opaque object that
is never called. Each storage is the zip member `<archive>/data/<key>`; each tensor is a view of a
storage (offset, shape, strides), named by its key path in the pickled object
(`model.encoder.layer.0.attention.self.query.weight`, `optim.state.3.exp_avg`).
"""

from __future__ import annotations

import io
import pickletools
from dataclasses import dataclass

from . import zipdir
from .layout import ITEMSIZE, MAX_HEADER, MAX_TENSORS, Layout, NotALayout, Tensor, check_regions, numel

STORAGE_DTYPES = {"FloatStorage": "F32", "HalfStorage": "F16", "BFloat16Storage": "BF16", "DoubleStorage": "F64",
                  "LongStorage": "I64", "IntStorage": "I32", "ShortStorage": "I16", "CharStorage": "I8",
                  "ByteStorage": "U8", "BoolStorage": "BOOL", "ComplexFloatStorage": "C64",
                  "ComplexDoubleStorage": "C128"}
REBUILD_TENSOR = ("torch._utils", "_rebuild_tensor_v2")
REBUILD_PARAMETER = {("torch._utils", "_rebuild_parameter"), ("torch._utils", "_rebuild_parameter_with_state")}
ORDERED_DICT = ("collections", "OrderedDict")
MAX_OPS = 50_000_000
MAX_DEPTH = 1000


@dataclass(frozen=True)
class _Global:
    module: str
    name: str


@dataclass(frozen=True)
class _Storage:
    key: str
    dtype: str
    numel: int


@dataclass
class _TensorRef:
    storage: _Storage
    offset: int
    shape: tuple[int, ...]
    stride: tuple[int, ...]


class _Opaque:
    """An object the pickle would build by a call we never make; its BUILD state is kept (it may hold tensors)."""

    def __init__(self):
        self.state = None


class _Mark:
    pass


_MARK = _Mark()


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


def _unpickle(data: bytes):
    """The object a torch pickle describes, built without running any of it (see the module docstring)."""
    stack: list = []
    memo: dict = {}
    ops = 0
    try:
        for op, arg, _ in pickletools.genops(io.BytesIO(data)):
            ops += 1
            if ops > MAX_OPS:
                raise NotALayout("pickle too long")
            name = op.name
            if name in ("PROTO", "FRAME"):
                continue
            if name == "STOP":
                return stack.pop()
            if name == "MARK":
                stack.append(_MARK)
            elif name in ("EMPTY_DICT",):
                stack.append({})
            elif name in ("EMPTY_LIST",):
                stack.append([])
            elif name == "EMPTY_TUPLE":
                stack.append(())
            elif name in ("BINUNICODE", "SHORT_BINUNICODE", "BINUNICODE8", "UNICODE", "BININT", "BININT1",
                          "BININT2", "LONG1", "LONG4", "BINFLOAT", "BINBYTES", "SHORT_BINBYTES", "BINBYTES8",
                          "INT", "LONG", "FLOAT", "STRING", "BINSTRING", "SHORT_BINSTRING"):
                stack.append(arg)
            elif name == "NONE":
                stack.append(None)
            elif name == "NEWTRUE":
                stack.append(True)
            elif name == "NEWFALSE":
                stack.append(False)
            elif name in ("TUPLE1", "TUPLE2", "TUPLE3"):
                n = int(name[-1])
                items = stack[-n:]
                del stack[-n:]
                stack.append(tuple(items))
            elif name in ("TUPLE", "LIST"):
                items = _pop_mark(stack)
                stack.append(tuple(items) if name == "TUPLE" else list(items))
            elif name == "DICT":
                items = _pop_mark(stack)
                stack.append(dict(zip(items[::2], items[1::2])))
            elif name == "SETITEM":
                value, key = stack.pop(), stack.pop()
                _setitem(stack[-1], key, value)
            elif name == "SETITEMS":
                items = _pop_mark(stack)
                for key, value in zip(items[::2], items[1::2]):
                    _setitem(stack[-1], key, value)
            elif name == "APPEND":
                value = stack.pop()
                _append(stack[-1], [value])
            elif name == "APPENDS":
                _append(stack[-1] if stack else None, _pop_mark(stack))
            elif name in ("BINPUT", "LONG_BINPUT", "PUT"):
                memo[arg] = stack[-1]
            elif name == "MEMOIZE":
                memo[len(memo)] = stack[-1]
            elif name in ("BINGET", "LONG_BINGET", "GET"):
                stack.append(memo[arg])
            elif name == "GLOBAL":
                module, _, attr = str(arg).partition(" ")
                stack.append(_Global(module, attr))
            elif name == "STACK_GLOBAL":
                attr, module = stack.pop(), stack.pop()
                stack.append(_Global(str(module), str(attr)))
            elif name == "BINPERSID":
                stack.append(_storage(stack.pop()))
            elif name == "REDUCE":
                args, func = stack.pop(), stack.pop()
                stack.append(_reduce(func, args))
            elif name in ("NEWOBJ", "NEWOBJ_EX"):
                if name == "NEWOBJ_EX":
                    stack.pop()
                stack.pop()
                stack.pop()
                stack.append(_Opaque())
            elif name == "BUILD":
                state = stack.pop()
                target = stack[-1]
                if isinstance(target, _Opaque):
                    target.state = state
                elif isinstance(target, dict) and isinstance(state, dict):
                    target.update(state)
            elif name == "POP":
                stack.pop()
            elif name == "POP_MARK":
                _pop_mark(stack)
            elif name == "DUP":
                stack.append(stack[-1])
            else:
                raise NotALayout(f"pickle opcode {name} is not read")
    except (IndexError, KeyError, TypeError, ValueError) as exc:
        raise NotALayout(f"not a torch pickle: {exc}") from None
    raise NotALayout("pickle has no STOP")


def _pop_mark(stack: list) -> list:
    for i in range(len(stack) - 1, -1, -1):
        if stack[i] is _MARK:
            items = stack[i + 1:]
            del stack[i:]
            return items
    raise NotALayout("pickle MARK missing")


def _setitem(target, key, value) -> None:
    if isinstance(target, dict):
        try:
            target[key] = value
        except TypeError:  # an unhashable key: not a state dict we name tensors in
            pass


def _append(target, values) -> None:
    if isinstance(target, list):
        target.extend(values)


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


def _reduce(func, args):
    if not isinstance(func, _Global) or not isinstance(args, tuple):
        return _Opaque()
    called = (func.module, func.name)
    if called == REBUILD_TENSOR and len(args) >= 4 and isinstance(args[0], _Storage) and type(args[1]) is int:
        shape, stride = _ints(args[2], "shape"), _ints(args[3], "stride")
        if len(shape) != len(stride):
            raise NotALayout("tensor shape and stride differ in length")
        return _TensorRef(args[0], args[1], shape, stride)
    if called in REBUILD_PARAMETER and args and isinstance(args[0], _TensorRef):
        return args[0]
    if called == ORDERED_DICT:
        return {}
    return _Opaque()
