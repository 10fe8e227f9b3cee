"""`cas forget`: the pure retention policy on tables of cases, and the command on a real store."""

from __future__ import annotations

import os

import pytest

import tracker
from cas import Store
from cas.errors import InvalidInput
from cas.records import Version
from tracker.retention import Policy, to_forget


def _v(run, name, step, digest=None, kind="checkpoint"):
    return Version(run, name, step, kind, digest or f"{hash((run, name, step)) & (2**256 - 1):064x}", 1, 1, 0.0)


SERIES = [_v("r", "model", s) for s in (1, 2, 3, 4, 5, 6)] + [_v("r", "eval", s, kind="eval") for s in (10, 20, 30)]


@pytest.mark.parametrize("policy, pinned_steps, expected", [
    (Policy(keep_last=2), set(), {("model", 1), ("model", 2), ("model", 3), ("model", 4), ("eval", 10)}),
    (Policy(keep_last=0, keep_every=2), set(), {("model", 1), ("model", 3), ("model", 5)}),
    (Policy(keep_every=20), set(), {("model", s) for s in range(1, 6)} | {("eval", 10)}),  # the latest stays
    (Policy(keep_every=20, drop_all=True), set(), {("model", s) for s in range(1, 7)} | {("eval", 10), ("eval", 30)}),
    (Policy(keep_last=1, keep_every=3), set(), {("model", 1), ("model", 2), ("model", 4), ("model", 5),
                                                 ("eval", 10), ("eval", 20)}),
    (Policy(name="model", keep_last=3), set(), {("model", 1), ("model", 2), ("model", 3)}),
    (Policy(kind="eval", keep_last=1), set(), {("eval", 10), ("eval", 20)}),
    (Policy(drop_all=True), set(), {("model", s) for s in range(1, 7)} | {("eval", 10), ("eval", 20), ("eval", 30)}),
    (Policy(keep_last=2), {("model", 1)}, {("model", 2), ("model", 3), ("model", 4), ("eval", 10)}),
    (Policy(name="model", drop_all=True), {("model", 6)}, {("model", s) for s in range(1, 6)}),
    (Policy(keep_last=100), set(), set()),
])
def test_policy_table(policy, pinned_steps, expected):
    pinned = {v.digest for v in SERIES if (v.name, v.step) in pinned_steps}
    dropped = to_forget(SERIES, policy, pinned)
    assert {(v.name, v.step) for v in dropped} == expected


STEPS_1000_TO_5000 = [_v("r", "model", s) for s in (1000, 2000, 3000, 4000, 5000)]


def _kept(versions, policy):
    dropped = {id(v) for v in to_forget(versions, policy, set())}
    return [v.step for v in versions if id(v) not in dropped]


def test_keep_every_keeps_the_latest():
    assert _kept(STEPS_1000_TO_5000, Policy(keep_every=2000)) == [2000, 4000, 5000]


def test_keep_last_0_drops_the_latest():
    assert _kept(STEPS_1000_TO_5000, Policy(keep_last=0, keep_every=2000)) == [2000, 4000]


def test_all_drops_everything():
    assert _kept(STEPS_1000_TO_5000, Policy(drop_all=True)) == []
    assert _kept(STEPS_1000_TO_5000, Policy(keep_every=2000, drop_all=True)) == [2000, 4000]


def test_the_latest_is_kept_per_run_and_name():
    versions = STEPS_1000_TO_5000 + [_v("r", "eval", 3), _v("r", "eval", 7), _v("s", "model", 1000)]
    dropped = {(v.run, v.name, v.step) for v in to_forget(versions, Policy(keep_every=2000), set())}
    assert dropped == {("r", "model", 1000), ("r", "model", 3000), ("r", "eval", 3)}


def test_keep_last_is_per_run_and_name():
    versions = [_v(run, "m", s) for run in ("a", "b") for s in (1, 2, 3)]
    assert {(v.run, v.step) for v in to_forget(versions, Policy(keep_last=1), set())} == {
        ("a", 1), ("a", 2), ("b", 1), ("b", 2)}


@pytest.mark.parametrize("policy", [Policy(), Policy(keep_last=-1), Policy(keep_every=0), Policy(keep_last=True),
                                    Policy(name="model")])
def test_policy_refuses_what_is_not_a_policy(policy):
    with pytest.raises(InvalidInput):
        to_forget(SERIES, policy, set())


def _store_files(root):
    return sorted((os.path.relpath(os.path.join(d, f), root), os.path.getsize(os.path.join(d, f)))
                  for d, _, fs in os.walk(root) for f in fs)


def test_forget_command_dry_run_and_pins(cli, store_dir, tmp_path):
    store = Store.open(store_dir)
    with tracker.init("r", store=store) as run:
        for step in range(1, 7):
            run.log_text(f"version {step}", "notes.md", step=step)
    store.pin("runs:/r/notes.md@2", "keep-me")
    before = _store_files(store_dir)
    dry = cli("--json", "forget", "r", "--keep-last", "2", "--dry-run").json()
    assert dry["dry_run"] and dry["forgotten"] == [f"runs:/r/notes.md@{s}" for s in (1, 3, 4)]
    assert _store_files(store_dir) == before  # a dry run writes nothing
    done = cli("--json", "forget", "r", "--keep-last", "2").json()
    assert done["forgotten"] == dry["forgotten"]
    live = [v["step"] for v in cli("--json", "log", "r").json()]
    assert live == [2, 5, 6]
    gone = cli("cat", "runs:/r/notes.md@3")
    assert gone.code == 3 and "unknown reference" in gone.err
    assert cli("cat", "runs:/r/notes.md@5").out == "version 5"
    again = cli("--json", "forget", "r", "--keep-last", "2").json()  # idempotent
    assert again["forgotten"] == []
    fresh = Store.open(store_dir, cache_dir=str(tmp_path / "other-cache"))  # another machine agrees
    assert [v.step for v in fresh.records.versions("r")] == [2, 5, 6]
    with tracker.init("r", store=store) as run:  # steps are never reused
        assert run.log_text("next", "notes.md").step == 7


def test_forget_refusals_are_one_line(cli, store_dir):
    with tracker.init("r", store=store_dir) as run:
        run.log_text("x", "a.txt")
    for args, code in [(["forget", "r"], 2), (["forget", "nope", "--all"], 3),
                       (["forget", "r", "--keep-every", "0"], 2), (["forget", "r", "--keep-last", "x"], 2)]:
        r = cli(*args)
        assert r.code == code and r.err.startswith("cas: error:") and r.err.count("\n") == 1, (args, r.err)
    assert [v["name"] for v in cli("--json", "log", "r").json()] == ["a.txt"]


def _log_steps(store_dir, steps_by_name):
    with tracker.init("r", store=store_dir) as run:
        for name, steps in steps_by_name.items():
            for step in steps:
                run.log_text(f"{name} {step}", name, step=step)


def test_forget_command_keeps_the_latest_and_all_drops_it(cli, store_dir):
    _log_steps(store_dir, {"model": range(1000, 5001, 1000)})
    assert cli("--json", "forget", "r", "--keep-every", "2000").json()["forgotten"] == [
        "runs:/r/model@1000", "runs:/r/model@3000"]
    assert [v["step"] for v in cli("--json", "log", "r").json()] == [2000, 4000, 5000]
    assert cli("--json", "forget", "r", "--keep-last", "0", "--keep-every", "4000").json()["count"] == 2
    assert [v["step"] for v in cli("--json", "log", "r").json()] == [4000]
    assert cli("--json", "forget", "r", "--all").json()["forgotten"] == ["runs:/r/model@4000"]


def test_forget_dry_run_groups_by_name(cli, store_dir):
    _log_steps(store_dir, {"model": (1, 2, 3), "notes.md": (1, 2)})
    out = cli("forget", "r", "--keep-last", "1", "--dry-run").out.splitlines()
    assert out == ["runs:/r/model: would forget 2 versions", "  runs:/r/model@1", "  runs:/r/model@2",
                   "runs:/r/notes.md: would forget 1 version", "  runs:/r/notes.md@1",
                   "would forget 3 versions of 2 names"]
    assert len(cli("--json", "log", "r").json()) == 5  # a dry run forgets nothing
