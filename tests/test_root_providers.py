"""Roots come from providers behind one hook (cas/roots.py): a provider registered from outside the
core is honoured by gc, verify, du and resolve without any change to them."""

from __future__ import annotations

import os

import pytest

from cas import Store
from cas.errors import NotFound
from cas.gc import execute_gc
from cas.roots import register_provider, unregister_provider


class Stages:
    """A model registry's stages, kept by the test: stage:/<name> → a digest."""

    scheme = "stage:/"
    table: dict[str, str] = {}

    def __init__(self, store):
        self.store = store

    def roots(self, *, on_damaged=None) -> dict[str, bytes]:
        return {f"stage:/{name}": bytes.fromhex(digest) for name, digest in self.table.items()}

    def refresh(self) -> None:
        pass

    def resolve(self, ref: str) -> str:
        name = ref[len(self.scheme):]
        if name not in self.table:
            raise NotFound(f"no stage {name!r}", subject=ref)
        return self.table[name]


@pytest.fixture
def stages():
    register_provider(Stages)
    Stages.table = {}
    yield Stages.table
    unregister_provider(Stages)


def test_a_registered_provider_keeps_its_roots_through_gc_and_resolves_its_scheme(tmp_path, stages, monkeypatch):
    monkeypatch.setenv("CAS_CACHE_DIR", str(tmp_path / "cache"))
    uri = str(tmp_path / "store")
    kept, dropped = os.urandom(300_000), os.urandom(300_000)
    store = Store.open(uri)
    stages["prod"] = store.put_bytes(kept).digest
    gone = store.put_bytes(dropped).digest  # acknowledged, but nothing names it
    assert store.roots() == {"stage:/prod": bytes.fromhex(stages["prod"])}
    assert store.read_bytes("stage:/prod") == kept
    with pytest.raises(NotFound, match="no stage 'dev'"):
        store.resolve("stage:/dev")

    report = execute_gc(Store.open(uri), grace=0)
    assert report["deleted_packs"] == 1, report  # the unnamed put's pack, and only it
    fresh = Store.open(uri, cache_dir=str(tmp_path / "other-cache"))
    assert fresh.read_bytes("stage:/prod") == kept
    with pytest.raises(NotFound):
        fresh.read_bytes(gone)
    assert fresh.verify().ok

    unregister_provider(Stages)  # without the provider, nothing keeps it: gc takes it
    assert execute_gc(Store.open(uri), grace=0)["deleted_packs"] == 1
    with pytest.raises(NotFound):
        Store.open(uri, cache_dir=str(tmp_path / "third-cache")).read_bytes(stages["prod"])
