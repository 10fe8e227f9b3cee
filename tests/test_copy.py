"""`cas copy`: a run, a version, a pin or content to another store (folder or S3), sending only what
the target lacks; records and pins written once their data is there."""

from __future__ import annotations

import json
import os

from conftest import one_error_line, run_cas

import tracker
from cas import Store

MiB = 1 << 20


def _checkpoint(path, data: bytearray) -> None:
    path.write_bytes(bytes(data))


def test_a_run_and_a_label_copied_to_s3_and_copied_again(store_dir, s3_store, tmp_path):
    data = bytearray(os.urandom(64 * MiB))
    ckpt = tmp_path / "ckpt.bin"
    with tracker.init("exp", store=store_dir) as run:
        for step in (1, 2):
            data[step * MiB:(step + 1) * MiB] = os.urandom(MiB)
            _checkpoint(ckpt, data)
            run.log_artifact(ckpt, name="model", step=step)
    second = bytes(data)
    Store.open(store_dir).pin("runs:/exp/model@2", "release")

    def copy(*sources) -> dict:
        r = run_cas("--store", store_dir, "--json", "copy", *sources, "--to", s3_store,
                    env={"CAS_CACHE_DIR": str(tmp_path / "cache-laptop")})
        assert r.returncode == 0, r.stderr
        return json.loads(r.stdout)

    first = copy("exp", "release")
    assert first["sent_bytes"] > 64 * MiB and first["pins"] == ["release"] and first["records"] >= 3
    fresh = {"CAS_CACHE_DIR": str(tmp_path / "cache-new-machine")}
    log = json.loads(run_cas("--store", s3_store, "--json", "log", "exp", env=fresh).stdout)
    assert [v["step"] for v in log] == [1, 2]
    out = tmp_path / "restored.bin"
    assert run_cas("--store", s3_store, "get", "runs:/exp/model@2", "-o", str(out), env=fresh).returncode == 0
    assert out.read_bytes() == second
    pins = json.loads(run_cas("--store", s3_store, "--json", "pins", env=fresh).stdout)
    assert [p["label"] for p in pins] == ["release"]

    again = copy("exp", "release")
    assert again["sent_bytes"] <= 64 * 1024 and again["records"] == 0
    with tracker.init("exp", store=store_dir) as run:
        data[40 * MiB:41 * MiB] = os.urandom(MiB)
        _checkpoint(ckpt, data)
        run.log_artifact(ckpt, name="model", step=3)
    third = copy("exp")
    print(f"[copy] first {first['sent_bytes'] / MiB:.1f} MiB, again {again['sent_bytes']} B, "
          f"after a 1 MiB change {third['sent_bytes'] / MiB:.2f} MiB")
    assert third["sent_bytes"] <= 3 * MiB
    assert run_cas("--store", s3_store, "get", "runs:/exp/model@3", "-o", str(tmp_path / "v3.bin"),
                   env=fresh).returncode == 0
    assert (tmp_path / "v3.bin").read_bytes() == bytes(data)


def test_copy_back_from_another_store_and_bad_sources(cli, store_dir, tmp_path):
    other = str(tmp_path / "other")
    (tmp_path / "f.bin").write_bytes(os.urandom(3 * MiB))
    (tmp_path / "folder").mkdir()
    (tmp_path / "folder" / "a.txt").write_text("a")
    with tracker.init("r", store=other) as run:
        run.log_artifact(tmp_path / "folder", name="eval")
        tracker.alias("runs:/r/eval@1", "best", store=other)
    digest = Store.open(other).put_file(tmp_path / "f.bin").digest
    r = cli("--json", "copy", "r", digest, "--to", store_dir, store=other)
    assert r.code == 0, r.err
    assert r.json()["pins"] == [f"copy/{digest}"]
    store = Store.open(store_dir)
    assert store.read_bytes(digest) == (tmp_path / "f.bin").read_bytes()
    assert store.records.aliases("r") == {("eval", "best"): 1}  # the run's events come along
    assert cli("cat", "runs:/r/eval@best/a.txt").out == "a"
    for bad, code in (("nope-run-or-label", 3), ("runs:/r/nope", 3)):
        r = cli("copy", bad, "--to", store_dir, store=other)
        assert r.code == code and one_error_line(r.err)
    r = cli("copy", "r", "--to", other, store=other)
    assert r.code == 2 and "same store" in one_error_line(r.err)


def test_s3_to_local_and_s3_to_s3(store_dir, s3_store, tmp_path):
    (tmp_path / "w.bin").write_bytes(os.urandom(5 * MiB))
    with tracker.init("cloud", store=s3_store) as run:
        run.log_artifact(tmp_path / "w.bin", name="model")
    other_s3 = s3_store.rsplit("/", 1)[0] + "/second-store"
    for target in (store_dir, other_s3):
        report = tracker.copy("cloud", to=target, store=s3_store)
        assert report["sent_bytes"] >= 5 * MiB and report["records"] >= 2
        fresh = Store.open(target, cache_dir=str(tmp_path / f"fresh-{len(target)}"))
        assert fresh.read_bytes("runs:/cloud/model") == (tmp_path / "w.bin").read_bytes()
        assert tracker.copy("cloud", to=target, store=s3_store)["sent_bytes"] == 0


def test_a_stale_target_cache_never_makes_a_copy_skip_data_that_is_gone(store_dir, tmp_path):
    """The target's index is a hint: packs it names are checked at commit; a gone one is sent again."""
    import glob
    other = str(tmp_path / "other")
    (tmp_path / "w.bin").write_bytes(os.urandom(3 * MiB))
    with tracker.init("r", store=store_dir) as run:
        run.log_artifact(tmp_path / "w.bin", name="model")
    target = Store.open(other)
    assert tracker.copy("r", to=target, store=store_dir)["sent_bytes"] > 0
    for pack in glob.glob(os.path.join(other, "packs", "*", "*")):
        os.unlink(pack)  # gone behind the target's cache (a restored backup, a gc elsewhere)
    again = tracker.copy("r", to=target, store=store_dir)
    assert again["sent_bytes"] > 0
    fresh = Store.open(other, cache_dir=str(tmp_path / "fresh"))
    assert fresh.read_bytes("runs:/r/model") == (tmp_path / "w.bin").read_bytes()
