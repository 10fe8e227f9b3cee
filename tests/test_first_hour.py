"""What a new user meets first: pin labels as references, the default store found from a subfolder and
announced when it is made, and gc saying what it freed and what it kept."""

from __future__ import annotations

import json
import os

from conftest import run_cas


def _cas(cwd, *args):
    return run_cas(*args, cwd=str(cwd))


def test_a_pin_label_is_a_reference_and_a_digest_looking_label_stays_a_digest(tmp_path):
    (tmp_path / "big-v2.bin").write_bytes(b"weights" * 10_000)
    put = _cas(tmp_path, "--json", "put", "big-v2.bin")
    assert put.returncode == 0, put.stderr
    digest = json.loads(put.stdout)["digest"]
    assert _cas(tmp_path, "get", "big-v2.bin", "-o", "x").returncode == 0
    assert (tmp_path / "x").read_bytes() == b"weights" * 10_000
    assert _cas(tmp_path, "pin", "big-v2.bin", "--label", "deadbeef").returncode == 0
    r = _cas(tmp_path, "get", "deadbeef", "-o", "y")  # looks like a digest prefix: read as one
    assert r.returncode == 3 and "unknown reference" in r.stderr and "cas pins" in r.stderr
    r = _cas(tmp_path, "get", "no-such-label", "-o", "z")
    assert r.returncode == 3 and "pin label" in r.stderr and "cas pins" in r.stderr
    assert _cas(tmp_path, "cat", f"cas://{digest}").stdout.encode() == b"weights" * 10_000


def test_the_default_store_is_found_from_a_subfolder_and_announced_once(tmp_path):
    project = tmp_path / "project"
    (project / "src" / "deep").mkdir(parents=True)
    (project / "a.bin").write_bytes(b"a" * 5000)
    first = _cas(project, "put", "a.bin")
    assert first.returncode == 0
    assert first.stderr == f"cas: created a new store at {project / '.cas'}\n"
    again = _cas(project, "put", "a.bin")
    assert again.returncode == 0 and again.stderr == ""
    pins = _cas(project / "src" / "deep", "--json", "pins")
    assert pins.returncode == 0, pins.stderr
    assert [p["label"] for p in json.loads(pins.stdout)] == ["a.bin"]
    (project / "src" / "b.bin").write_bytes(b"b" * 5000)
    assert _cas(project / "src", "put", "b.bin").returncode == 0
    assert not os.path.exists(project / "src" / ".cas")  # no second store
    stats = json.loads(_cas(project / "src", "--json", "stats").stdout)
    assert stats["store"] == str(project / ".cas") and stats["files"] == 2
    assert stats["cache"].startswith(os.environ["CAS_CACHE_DIR"])


def test_gc_says_what_it_kept_partly_dead_and_what_would_free_it(tmp_path):
    import numpy as np
    rng = np.random.default_rng(3)
    base = rng.standard_normal(1 << 20, dtype=np.float32)  # 4 MiB
    (tmp_path / "v1.bin").write_bytes(base.tobytes())
    moved = base.copy()
    moved[: 1 << 15] += 1  # 3 % of the weights move
    (tmp_path / "v2.bin").write_bytes(moved.tobytes())
    assert _cas(tmp_path, "put", "v1.bin", "v2.bin").returncode == 0
    assert _cas(tmp_path, "unpin", "v1.bin").returncode == 0
    text = _cas(tmp_path, "gc", "--grace", "0")
    assert text.returncode == 0
    assert "kept 1 pack" in text.stdout and "below --repack-threshold 0.25" in text.stdout
    report = json.loads(_cas(tmp_path, "--json", "gc", "--grace", "0", "--dry-run").stdout)
    assert report["partly_dead_packs"] == 1 and report["reclaimable_bytes"] > 0
    before = json.loads(_cas(tmp_path, "--json", "stats").stdout)["stored_bytes"]
    freed = json.loads(_cas(tmp_path, "--json", "gc", "--grace", "0", "--repack-threshold",
                            str(report["reclaim_threshold"])).stdout)
    after = json.loads(_cas(tmp_path, "--json", "stats").stdout)["stored_bytes"]
    assert freed["freed_bytes"] == before - after > 0
    assert freed["partly_dead_packs"] == 0
    assert _cas(tmp_path, "verify", "--read-data").returncode == 0
