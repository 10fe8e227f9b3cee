"""cas.datatype, the `@dataclass` subset cas defines its classes with (cheaper at import): the same
behaviour for what cas uses, and no cas command imports `dataclasses` any more."""

import copy
import pickle
import subprocess
import sys

import pytest

from cas.datatype import FrozenInstanceError, asdict, datatype, field, fields, replace


@datatype(frozen=True, slots=True)
class Point:
    x: int
    y: int = 0
    tags: tuple = field(default_factory=tuple)

    def norm1(self) -> int:
        return abs(self.x) + abs(self.y)


@datatype
class Box:
    size: int
    items: list = field(default_factory=list)
    inner: Point | None = None


def test_fields_defaults_and_factories():
    p = Point(3)
    assert (p.x, p.y, p.tags, p.norm1()) == (3, 0, (), 3)
    assert fields(Point) == fields(p) == ("x", "y", "tags")
    a, b = Box(1), Box(1)
    a.items.append(1)
    assert b.items == [] and a.items is not b.items  # a fresh default for each instance
    with pytest.raises(TypeError):
        Point()  # x has no default
    with pytest.raises(TypeError):
        Point(1, 2, (), 4)


def test_equality_hash_and_repr_are_by_value():
    assert Point(1, 2) == Point(1, 2) and Point(1, 2) != Point(2, 1)
    assert Point(1, 2) != (1, 2, ())  # another class is never equal
    assert hash(Point(1, 2)) == hash(Point(1, 2)) and len({Point(1), Point(1), Point(2)}) == 2
    with pytest.raises(TypeError):
        hash(Box(1))  # equal by value and mutable: unhashable
    assert repr(Point(1, 2)) == "Point(x=1, y=2, tags=())"
    assert repr(Box(1)) == "Box(size=1, items=[], inner=None)"


def test_frozen_and_slotted_instances_refuse_changes_but_copy_and_pickle():
    p = Point(1, 2, ("a",))
    with pytest.raises(FrozenInstanceError):
        p.x = 5
    with pytest.raises(AttributeError):  # FrozenInstanceError is one
        del p.y
    assert not hasattr(p, "__dict__") and Point.__slots__ == ("x", "y", "tags")
    for other in (copy.copy(p), copy.deepcopy(p), pickle.loads(pickle.dumps(p))):
        assert other == p and other is not p
    box = Box(2)
    box.size = 3  # not frozen
    assert box.size == 3


def test_replace_and_asdict():
    p = Point(1, 2)
    q = replace(p, y=5)
    assert (q, p) == (Point(1, 5), Point(1, 2))
    with pytest.raises(TypeError, match="no field 'z'"):
        replace(p, z=1)
    assert asdict(Box(1, [Point(1)], Point(2, 3))) == {
        "size": 1, "items": [{"x": 1, "y": 0, "tags": ()}], "inner": {"x": 2, "y": 3, "tags": ()}}
    from typing import NamedTuple

    class Pair(NamedTuple):
        a: object
        b: int
    assert asdict(Box(1, [Pair(Point(1), 2)])) == {"size": 1, "items": [Pair({"x": 1, "y": 0, "tags": ()}, 2)],
                                                    "inner": None}


def test_no_cas_command_imports_dataclasses():
    """It compiled five or six functions for each of ~20 classes: 30 ms of a command's start-up."""
    code = ("import sys\nimport cas.cli, cas.store, cas.ingest, cas.gc, cas.verify, cas.copy, cas.reach, "
            "cas.tensorfiles.stored, cas.commands.store_commands\nprint('dataclasses' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
