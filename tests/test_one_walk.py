"""One walk of what roots reach (cas/walk.py): du, verify and gc agree on a store missing a pack."""

from __future__ import annotations

import json
import os

import pytest
from conftest import one_error_line, write_checkpoint

import tracker
from cas import Store
from cas.errors import IntegrityError
from cas.walk import RAISE, REPORT, SKIP, Walk

MiB = 1 << 20


def _packs(store_dir) -> set[str]:
    root = os.path.join(store_dir, "packs")
    return {os.path.join(d, f) for d, _, fs in os.walk(root) for f in fs if not f.startswith(".")}


@pytest.fixture
def two_runs(store_dir, tmp_path):
    """Runs a and b, each logged by its own put (so in its own pack); returns their data and packs."""
    out = {}
    for seed, name in enumerate(["a", "b"]):
        path = tmp_path / f"{name}.bin"
        data = write_checkpoint(path, 3 * MiB, seed=40 + seed)
        before = _packs(store_dir)
        with tracker.init(name, store=store_dir) as run:
            run.log_artifact(path, name="model", kind="checkpoint")
        [pack] = _packs(store_dir) - before
        out[name] = (data, pack)
    return out


def test_du_verify_and_gc_agree_on_a_deleted_pack(cli, store_dir, tmp_path, two_runs):
    data_b, _ = two_runs["b"]
    _, pack_a = two_runs["a"]
    os.remove(pack_a)
    pack_id = os.path.basename(pack_a)

    du = cli("du", "a")
    assert du.code == 5
    line = one_error_line(du.err)
    assert "runs:/a/model@1" in line and pack_id in line
    assert cli("--json", "du", "a").code == 5

    other = cli("--json", "du", "b")  # b is whole: measured, with the damage elsewhere listed
    assert other.code == 0, other.err
    [damage] = other.json()["damaged"]
    assert damage["roots"] == ["runs:/a/model@1"] and damage["packs"] == [pack_id]

    v = cli("--json", "verify")
    assert v.code == 5
    problems = v.json()["problems"]
    assert len(problems) == 1, problems  # one line for the pack, not one per chunk
    assert pack_id in problems[0] and "runs:/a/model@1" in problems[0] and "chunks" in problems[0]
    assert "runs:/b" not in problems[0]

    packs = _packs(store_dir)
    gc = cli("gc", "--grace", "0")
    assert gc.code == 5
    assert "nothing was deleted" in one_error_line(gc.err)
    assert _packs(store_dir) == packs
    out = tmp_path / "b.out"
    assert cli("get", "runs:/b/model@1", "-o", str(out)).code == 0
    assert out.read_bytes() == data_b


def test_chunks_in_a_pack_the_store_no_longer_lists_are_damage(store_dir, two_runs):
    store = Store.open(store_dir)
    roots = store.roots()
    pack_b = bytes.fromhex(os.path.basename(two_runs["b"][1]))
    pack_a = bytes.fromhex(os.path.basename(two_runs["a"][1]))
    walk = Walk(store, policy=REPORT, packs={pack_b})  # as if a's pack were gone once its manifest was read
    blobs = walk.reach(roots)
    assert blobs and not walk.reach(roots)  # memoized: a second walk of the same roots reaches nothing new
    [damage] = walk.damaged
    assert damage.roots == ("runs:/a/model@1",) and damage.packs == frozenset([pack_a])
    assert "chunks are in missing pack" in damage.reason

    assert not Walk(store, policy=SKIP, packs={pack_b}).damaged
    skip = Walk(store, policy=SKIP, packs={pack_b})
    assert skip.reach(roots) == blobs and not skip.damaged
    with pytest.raises(IntegrityError):
        Walk(store, policy=RAISE, packs={pack_b}).reach(roots)
    assert Walk(store, policy=RAISE).reach(roots) == blobs  # without a pack list, the index decides
    store.close()


def test_an_unknown_root_is_reported_with_its_name(store_dir, two_runs):
    store = Store.open(store_dir)
    walk = Walk(store, policy=REPORT)
    walk.reach({"pin:ghost": bytes(32), **store.roots()})
    [damage] = walk.damaged
    assert damage.roots == ("pin:ghost",) and "not in the store" in damage.reason
    assert json.dumps(damage.to_dict())
    store.close()
