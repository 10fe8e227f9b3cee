"""Classes of named fields, made at import for a fraction of what `dataclasses` costs.

`@datatype` is the subset of `@dataclass` cas uses: fields from the class's annotations, in order, with
defaults or `field(default_factory=...)`; `__init__`, `__repr__`, `__eq__` (same class, same fields),
`frozen=True` (assignment raises FrozenInstanceError, instances hash by their fields) and
`slots=True`. `replace`, `asdict` and `fields` work as their `dataclasses` namesakes do on these.

Why not `dataclasses`: it compiles five or six functions for every class, and a `cas` command defines
about twenty classes before it does anything: 30 ms of the ~90 ms its imports took, a quarter of a
small put. Here only `__init__` is compiled (a generic one would make each instance slower to create,
and gc makes millions); the other methods are shared.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:  # type checkers: these classes are built as dataclasses are
    from typing_extensions import dataclass_transform
elif sys.version_info >= (3, 11):
    from typing import dataclass_transform
else:  # Python 3.10: the marker only informs type checkers
    def dataclass_transform(**kwargs):
        return lambda decorator: decorator

T = TypeVar("T")

FIELDS = "__datatype_fields__"


class FrozenInstanceError(AttributeError):
    """Assignment to a field of a frozen datatype."""


class _Factory:
    __slots__ = ("make",)

    def __init__(self, make):
        self.make = make


def field(*, default_factory) -> Any:
    """A field whose default is made afresh for each instance, e.g. field(default_factory=list)."""
    return _Factory(default_factory)


@dataclass_transform(field_specifiers=(field,))
def datatype(cls=None, /, *, frozen: bool = False, slots: bool = False):
    """The class with the methods its annotated fields call for (see the module's head)."""
    def wrap(cls):
        return _make(cls, frozen, slots)
    return wrap if cls is None else wrap(cls)


def fields(obj_or_cls) -> tuple[str, ...]:
    """The field names, in order."""
    return getattr(obj_or_cls, FIELDS)


def replace(obj: T, **changes) -> T:
    """A copy of obj with the fields given changed."""
    unknown = set(changes) - set(fields(obj))
    if unknown:
        raise TypeError(f"{type(obj).__name__} has no field {sorted(unknown)[0]!r}")
    return type(obj)(**{name: changes.get(name, getattr(obj, name)) for name in fields(obj)})


def asdict(obj) -> dict:
    """The fields as a dict, datatypes among the values (also in lists, tuples and dicts) as dicts too."""
    return {name: _plain(getattr(obj, name)) for name in fields(obj)}


def _plain(value):
    if hasattr(type(value), FIELDS):
        return asdict(value)
    if isinstance(value, tuple) and hasattr(value, "_fields"):  # a named tuple takes its fields one by one
        return type(value)(*(_plain(v) for v in value))
    if isinstance(value, (list, tuple)):
        return type(value)(_plain(v) for v in value)
    if isinstance(value, dict):
        return {_plain(k): _plain(v) for k, v in value.items()}
    return value


_MISSING = object()


def _make(cls, frozen: bool, slots: bool):
    names = tuple(cls.__dict__.get("__annotations__", {}))
    defaults = {name: cls.__dict__[name] for name in names if name in cls.__dict__}
    namespace: dict[str, Any] = {"_setattr": object.__setattr__}
    params, body = [], []
    for name in names:
        default = defaults.get(name, _MISSING)
        if isinstance(default, _Factory):
            namespace[f"_make_{name}"] = default.make
            params.append(f"{name}=_MISSING")
            value = f"_make_{name}() if {name} is _MISSING else {name}"
            namespace["_MISSING"] = _MISSING
        elif default is not _MISSING:
            namespace[f"_default_{name}"] = default
            params.append(f"{name}=_default_{name}")
            value = name
        else:
            params.append(name)
            value = name
        body.append(f"_setattr(self, {name!r}, {value})" if frozen else f"self.{name} = {value}")
    if "__post_init__" in cls.__dict__:
        body.append("self.__post_init__()")
    source = f"def __init__(self, {', '.join(params)}):\n    " + ("\n    ".join(body) or "pass")
    exec(compile(source, f"<datatype {cls.__qualname__}>", "exec"), namespace)  # noqa: S102 (names are fields)
    generated = {"__init__": namespace["__init__"], "__repr__": _repr, "__eq__": _eq}
    if frozen:
        generated.update(__setattr__=_frozen, __delattr__=_frozen)
    own_hash = cls.__dict__.get("__hash__") is not None
    methods = {key: value for key, value in generated.items() if key not in cls.__dict__}
    methods[FIELDS] = names
    if not own_hash:  # frozen: hashed by value; else equal by value and mutable, so unhashable (as a dataclass)
        methods["__hash__"] = _hash if frozen else None
    if slots:
        body_dict = {k: v for k, v in cls.__dict__.items() if k not in names and k not in ("__dict__", "__weakref__")}
        body_dict["__slots__"] = names
        if frozen:
            methods.update(__getstate__=_getstate, __setstate__=_setstate)
        cls = type(cls)(cls.__name__, cls.__bases__, {**body_dict, **methods})
    else:
        for name, value in defaults.items():
            if isinstance(value, _Factory):
                delattr(cls, name)  # a class attribute the instance's own value always hides
        for key, value in methods.items():
            setattr(cls, key, value)
    init = cls.__init__
    init.__qualname__ = f"{cls.__qualname__}.__init__"
    return cls


def _repr(self) -> str:
    inner = ", ".join(f"{name}={getattr(self, name)!r}" for name in getattr(self, FIELDS))
    return f"{type(self).__qualname__}({inner})"


def _values(self) -> tuple:
    return tuple(getattr(self, name) for name in getattr(self, FIELDS))


def _eq(self, other):
    if other.__class__ is not self.__class__:
        return NotImplemented
    return _values(self) == _values(other)


def _hash(self) -> int:
    return hash(_values(self))


def _frozen(self, name, *value):
    raise FrozenInstanceError(f"cannot assign to field {name!r} of a frozen {type(self).__name__}")


def _getstate(self) -> tuple:
    return _values(self)


def _setstate(self, state) -> None:
    for name, value in zip(getattr(self, FIELDS), state):
        object.__setattr__(self, name, value)
