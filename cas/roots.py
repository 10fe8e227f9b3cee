"""Roots: what keeps stored objects alive, named by providers behind one small interface.

The core walks the object graph from roots (gc, verify, du, revive) and resolves references, but
never needs to know what a root is. A provider names its live roots (name → digest), reads them
from the store again when asked (gc wants them as they are now), and may own a reference scheme
that `Store.resolve` hands over to it. Two providers come with every store: pins (roots named
`pin:<label>`, resolved by their bare label; this module) and run records (`runs:/<run>/<name>[@<step>]`,
`cas/records.py`). Another kind of root, e.g. a model registry's stages, is one more provider
given to `register_provider`: gc then keeps what it names, verify checks it, references resolve.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Protocol

from . import refs
from .errors import InvalidInput, NotFound


class RootProvider(Protocol):
    scheme: str | None  # the reference prefix it resolves ("runs:/"), or None

    def roots(self, *, on_damaged: Callable[[Exception], None] | None = None) -> dict[str, bytes]:
        """Every live root: a name unique across providers (a URI) → the digest it keeps alive.
        A damaged root object raises, unless on_damaged takes it (verify reports it and goes on)."""
        ...

    def refresh(self) -> None:
        """Read the roots from the store again (they may have changed since they were read)."""
        ...

    def resolve(self, ref: str) -> str:
        """The hex digest a reference with this provider's scheme names; one-line errors otherwise."""
        ...


_registered: list[Callable[[object], RootProvider]] = []


def register_provider(factory: Callable[[object], RootProvider]) -> None:
    """Make every Store opened from now on ask factory(store) for roots too."""
    if factory not in _registered:
        _registered.append(factory)


def unregister_provider(factory: Callable[[object], RootProvider]) -> None:
    if factory in _registered:
        _registered.remove(factory)


def registered(store) -> list[RootProvider]:
    return [factory(store) for factory in _registered]


class PinRoots:
    """Pins: the store's own roots, read from the backend every time (they are few and small)."""

    scheme: str | None = None  # a label may hold any character: labels are what no other reference form matches

    def __init__(self, backend):
        self.backend = backend

    def roots(self, *, on_damaged=None) -> dict[str, bytes]:
        return {f"pin:{p.label}": bytes.fromhex(p.digest)
                for p in refs.list_pins(self.backend, on_damaged=on_damaged) if p.digest}

    def refresh(self) -> None:
        pass  # never cached

    def resolve(self, label: str) -> str:
        """The digest a pin label names."""
        ref = label
        try:
            refs.check_label(label)
        except InvalidInput:
            raise InvalidInput(f"not a reference: {ref!r}", subject=ref) from None
        try:
            digest = refs.get_pin(self.backend, label).digest
            if digest is None:  # get_pin returns live pins only
                raise NotFound(f"no pin labelled {label!r}", subject=label)
            return digest
        except NotFound:
            short = " (a digest prefix needs at least 8 hex characters)" if re.fullmatch(r"[0-9a-fA-F]+", label) else ""
            raise NotFound(f"unknown reference: {ref!r} is not a digest, a runs:/ reference or a pin label"
                           f"{short} (`cas pins` lists the labels)", subject=ref) from None
