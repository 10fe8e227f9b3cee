"""What W&B and MLflow users use every day: aliases that move, metadata filters, lineage, paths inside
logged folders, `cas ls`, retention by time; and aliases moved by several processes at once."""

from __future__ import annotations

import os
import subprocess
import sys

from conftest import one_error_line

import tracker
from cas import Store


def _five_versions(store_dir, tmp_path, run_name="r"):
    with tracker.init(run_name, store=store_dir) as run:
        for step in range(1, 6):
            (tmp_path / "m.bin").write_bytes(os.urandom(30_000))
            run.log_artifact(tmp_path / "m.bin", name="model", step=step,
                             metadata={"split": "val" if step % 2 else "train", "epoch": step})
    return run


def test_an_alias_moves_is_shown_once_and_keeps_its_version(cli, store_dir, tmp_path):
    run = _five_versions(store_dir, tmp_path)
    assert cli("alias", "runs:/r/model@3", "best").code == 0
    assert tracker.get_run("r", store=store_dir) and Store.open(store_dir).read_bytes("runs:/r/model@best") == \
        Store.open(store_dir).read_bytes("runs:/r/model@3")
    run.alias(4, "best", name="model")  # moved
    store = Store.open(store_dir)
    assert store.read_bytes("runs:/r/model@best") == store.read_bytes("runs:/r/model@4")
    log = cli("--json", "log", "r").json()
    assert [(v["step"], v["aliases"]) for v in log] == [(1, []), (2, []), (3, []), (4, ["best"]), (5, [])]
    assert "@best" in cli("log", "r").out.splitlines()[3]
    assert cli("forget", "r", "--keep-last", "1").code == 0
    assert [v.step for v in Store.open(store_dir).records.versions("r")] == [4, 5]
    # forgotten anyway (by a path that ignores retention): still a root, still nameable by its alias
    store = Store.open(store_dir)
    store.records.forget(store.records.versions("r", "model")[:1])
    assert cli("gc", "--grace", "0").code == 0
    fresh = Store.open(store_dir, cache_dir=str(tmp_path / "fresh-cache"))
    assert fresh.read_bytes("runs:/r/model@best") == store.read_bytes("runs:/r/model@best")
    assert cli("alias", "--delete", "runs:/r/model", "best").code == 0
    r = cli("get", "runs:/r/model@best", "-o", str(tmp_path / "x"))
    assert r.code == 3 and "unknown alias" in one_error_line(r.err)
    for bad in ("3", "a/b", "_x", "best!"):
        r = cli("alias", "runs:/r/model@5", bad)
        assert r.code == 2 and "invalid alias" in one_error_line(r.err)


def test_log_where_filters_by_metadata(cli, store_dir, tmp_path):
    _five_versions(store_dir, tmp_path)
    val = cli("--json", "log", "r", "--where", "split=val").json()
    assert [v["step"] for v in val] == [1, 3, 5] and all(v["metadata"]["split"] == "val" for v in val)
    assert [v["step"] for v in cli("--json", "log", "r", "--where", "split=val", "--where", "epoch=3.0").json()] == [3]
    assert cli("--json", "log", "r", "--where", "split=test").json() == []
    assert [v.step for v in tracker.versions("r", where={"epoch": 2}, store=store_dir)] == [2]
    r = cli("log", "r", "--where", "split")
    assert r.code == 2 and "KEY=VALUE" in one_error_line(r.err)


def test_lineage_names_the_producing_and_the_consuming_run(cli, store_dir, tmp_path):
    _five_versions(store_dir, tmp_path)
    with tracker.init("eval-1", store=store_dir) as consumer:
        consumer.use_artifact("runs:/r/model@3")
    out = cli("--json", "lineage", "runs:/r/model@3").json()
    assert (out["produced_by"]["run"], out["produced_by"]["step"]) == ("r", 3)
    assert [u["run"] for u in out["used_by"]] == ["eval-1"]
    run = cli("--json", "lineage", "eval-1").json()
    assert [i["ref"] for i in run["inputs"]] == ["runs:/r/model@3"] and run["outputs"] == []
    assert "used by run eval-1" in cli("lineage", "runs:/r/model@3").out
    assert cli("lineage", "runs:/r/model@2").code == 0
    assert cli("lineage", "nope-run").code == 3


def test_a_file_inside_a_logged_folder_is_named_by_its_path(cli, store_dir, tmp_path):
    (tmp_path / "eval" / "sub").mkdir(parents=True)
    (tmp_path / "eval" / "sub" / "r.txt").write_text("0.93")
    (tmp_path / "eval" / "top.json").write_text("{}")
    with tracker.init("r", store=store_dir) as run:
        tree = run.log_artifact(tmp_path / "eval")
    out = tmp_path / "r.txt"
    assert cli("get", "runs:/r/eval/sub/r.txt", "-o", str(out)).code == 0 and out.read_text() == "0.93"
    assert cli("cat", f"cas://{tree.digest}/sub/r.txt").out == "0.93"
    assert cli("get", "runs:/r/eval@1/sub", "-o", str(tmp_path / "sub-copy")).code == 0
    assert (tmp_path / "sub-copy" / "r.txt").read_text() == "0.93"
    listed = cli("--json", "ls", "runs:/r/eval").json()
    assert {(e["path"], e["kind"]) for e in listed["entries"]} >= {("sub/r.txt", "file"), ("top.json", "file")}
    assert "sub/r.txt" in cli("ls", "runs:/r/eval").out
    assert [n["name"] for n in cli("--json", "ls", "r").json()["names"]] == ["eval"]
    r = cli("get", "runs:/r/eval/nope.txt", "-o", str(tmp_path / "n"))
    assert r.code == 3 and "unknown reference" in one_error_line(r.err)


def test_keep_within_keeps_what_is_recent_and_refuses_a_bad_duration(cli, store_dir, tmp_path):
    _five_versions(store_dir, tmp_path)
    assert cli("--json", "forget", "r", "--keep-within", "1h", "--keep-last", "0", "--dry-run").json()["count"] == 0
    dropped = tracker.forget("r", keep_within=0.0, keep_last=0, dry_run=True, store=store_dir)
    assert [v.step for v in dropped] == [1, 2, 3, 4, 5]
    r = cli("forget", "r", "--keep-within", "soon")
    assert r.code == 2 and "invalid duration" in one_error_line(r.err)


MOVER = """
import os, sys, tracker
from cas import Store
who, rounds = int(sys.argv[1]), int(sys.argv[2])
run = tracker.init("race", store=os.environ["CAS_STORE"])
for k in range(rounds):
    v = run.log_text(f"{who}-{k}", f"notes/{who}", step=k + 1)
    run.alias(v, "best")  # each moves the alias of its own name...
    tracker.alias(f"runs:/race/shared@{1 + (who + k) % 3}", "top", store=os.environ["CAS_STORE"])  # ...and one shared
"""


def test_four_processes_moving_one_alias_agree_and_lose_nothing(store_dir, tmp_path):
    rounds = int(os.environ.get("CAS_ALIAS_ROUNDS", "5"))
    with tracker.init("race", store=store_dir) as run:
        for step in (1, 2, 3):
            run.log_text(f"shared {step}", "shared", step=step)
    env = dict(os.environ, CAS_STORE=store_dir, CAS_CACHE_DIR=str(tmp_path / "cache"))
    procs = [subprocess.Popen([sys.executable, "-c", MOVER, str(who), str(rounds)], env=dict(
        env, CAS_CACHE_DIR=str(tmp_path / f"cache-{who}")), stderr=subprocess.PIPE, text=True) for who in range(4)]
    for p in procs:
        assert p.wait(timeout=300) == 0, p.stderr.read() if p.stderr else ""
    views = []
    for who in range(5):  # each writer's cache, and one fresh
        store = Store.open(store_dir, cache_dir=str(tmp_path / f"cache-{who}"))
        store.records.sync()
        views.append(store.records.aliases("race"))
    assert all(view == views[0] for view in views)
    assert views[0][("shared", "top")] in (1, 2, 3)
    assert {name: step for (name, alias), step in views[0].items() if alias == "best"} == \
        {f"notes/{who}": rounds for who in range(4)}
    live = Store.open(store_dir).records.versions("race")
    assert len(live) == 3 + 4 * rounds  # no version lost


def test_verify_refs_reports_a_changed_and_a_vanished_target(cli, store_dir, tmp_path):
    (tmp_path / "train.csv").write_text("a,b\n1,2\n")
    (tmp_path / "gone.csv").write_text("x\n")
    (tmp_path / "shards").mkdir()
    (tmp_path / "shards" / "0.bin").write_bytes(b"0" * 100)
    with tracker.init("data", store=store_dir) as run:
        run.log_artifact_ref(str(tmp_path / "train.csv"), name="train")
        run.log_artifact_ref(str(tmp_path / "gone.csv"), name="gone")
        run.log_artifact_ref(f"file://{tmp_path / 'shards'}", name="shards")
        run.log_artifact_ref("https://example.invalid/data.csv", name="web")
    ok = cli("--json", "verify", "--refs").json()
    assert {r["uri"]: r["status"] for r in ok["refs"]} == {
        "runs:/data/gone@1": "unchanged", "runs:/data/shards@1": "unchanged", "runs:/data/train@1": "unchanged",
        "runs:/data/web@1": "unrecorded"} and ok["ok"]
    (tmp_path / "train.csv").write_text("a,b\n1,3\n")  # same size, other bytes
    (tmp_path / "gone.csv").unlink()
    (tmp_path / "shards" / "1.bin").write_bytes(b"1")
    r = cli("verify", "--refs")
    assert r.code != 0
    problems = [line for line in r.err.splitlines() if line.startswith("cas: reference")]
    assert sorted(problems) == sorted([
        "cas: reference runs:/data/gone@1 (" + str(tmp_path / "gone.csv") + ") vanished since it was logged",
        "cas: reference runs:/data/shards@1 (file://" + str(tmp_path / "shards") + ") changed since it was logged",
        "cas: reference runs:/data/train@1 (" + str(tmp_path / "train.csv") + ") changed since it was logged"])
    assert "unrecorded" in r.err and cli("--json", "verify").json()["refs"] is None
