"""Progress bars: total, percent and ETA on every long CLI operation, a finishing phase after a put's
last byte, silence off a terminal and with --json, and on_progress passed through tracker calls."""

from __future__ import annotations

import io
import os

import pytest

import tracker
from cas import Store, progress as progress_mod
from cas.progress import Progress, duration, human


def test_bar_shows_total_percent_speed_and_eta():
    bar = Progress("get", 1000, enabled=True, stream=io.StringIO())
    bar._start = 0.0
    bar(250)
    line = bar.line(now=1.0)  # 250 B/s, 750 B to go
    assert "[#######" in line and " 25% 250 B/1000 B 250 B/s ETA 3s" in line
    bar(750)
    assert bar.line(now=2.0).endswith("100% 1000 B/1000 B 500 B/s")  # no ETA once done


def test_bar_counts_other_units_and_names_a_phase():
    bar = Progress("reindex", 4, enabled=True, stream=io.StringIO(), unit="packs")
    bar(1)
    assert " 25% 1/4 packs " in bar.line(now=bar._start + 1)
    bar(3)
    bar.phase("finishing: storing 2 packs and the index")  # drawn at once
    assert "100% 4/4 packs" in bar.stream.getvalue()
    assert bar.stream.getvalue().endswith("; finishing: storing 2 packs and the index")
    bar.close()
    last = bar.stream.getvalue().split("\r")[-1]
    assert last.endswith("\n") and last.rstrip().endswith("packs/s")  # the last line names no phase: it is over


@pytest.mark.parametrize("seconds, text", [(0, "0s"), (42.4, "42s"), (185, "3m05s"), (7830, "2h10m")])
def test_eta_is_short(seconds, text):
    assert duration(seconds) == text


def test_quiet_when_not_a_terminal():
    stream = io.StringIO()  # isatty() is False
    with Progress("put", 10, stream=stream) as bar:
        bar(10)
        bar.phase("finishing")
    assert stream.getvalue() == ""


@pytest.fixture
def terminal(monkeypatch):
    """Make stderr count as a terminal for the bars."""
    monkeypatch.setattr(progress_mod, "_is_terminal", lambda stream: True)


@pytest.fixture
def small_store(store_dir, tmp_path):
    (tmp_path / "a.bin").write_bytes(os.urandom(300_000))
    (tmp_path / "tree").mkdir()
    (tmp_path / "tree" / "x.bin").write_bytes(os.urandom(70_000))
    (tmp_path / "tree" / "y.txt").write_bytes(b"hello")
    return tmp_path


def test_every_long_command_shows_total_and_percent(cli, store_dir, small_store, terminal, tmp_path):
    a, tree = str(small_store / "a.bin"), str(small_store / "tree")
    put = cli("put", a)
    assert "put a.bin [" in put.err and "100% 293.0 KiB/293.0 KiB" in put.err
    assert "; finishing: storing 1 pack and the index" in put.err  # said after the last byte is read
    assert "100% 68.4 KiB/68.4 KiB" in cli("put", tree).err  # a folder's total: its files' sizes
    digests = {p["label"]: p["digest"] for p in cli("--json", "pins").json()}
    get = cli("get", digests[a], "-o", str(tmp_path / "out.bin"))
    assert get.code == 0 and "get [" in get.err and "100% 293.0 KiB/293.0 KiB" in get.err
    assert "100% 68.4 KiB/68.4 KiB" in cli("get", digests[tree], "-o", str(tmp_path / "out-tree")).err
    packs = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(os.path.join(store_dir, "packs"))
                for f in fs)
    assert f"100% {human(packs)}/{human(packs)}" in cli("verify", "--read-data").err
    assert "reindex [" in cli("reindex").err and "100% 2/2 packs" in cli("reindex").err


def test_no_progress_with_json(cli, small_store, terminal, tmp_path):
    a = str(small_store / "a.bin")
    cli("init")  # its first write would say on stderr that it made the store
    digest = cli("--json", "put", a).json()["digest"]
    for args in (["put", a], ["get", digest, "-o", str(tmp_path / "o.bin")], ["verify", "--read-data"], ["reindex"]):
        r = cli("--json", *args)
        assert r.code == 0 and r.err == "", (args, r.err)


def test_tracker_calls_pass_on_progress_through(store_dir, small_store, tmp_path):
    seen: list[int] = []
    with tracker.init("r", store=store_dir) as run:
        v = run.log_artifact(small_store / "a.bin", name="model", on_progress=seen.append)
        assert sum(seen) == 300_000
        seen.clear()
        run.log_artifact(str(small_store / "tree" / "*"), name="glob", on_progress=seen.append)
        assert sum(seen) == 70_005
    seen.clear()
    tracker.download(v.uri, tmp_path / "restored.bin", store=store_dir, on_progress=seen.append)
    assert sum(seen) == 300_000


def test_a_put_announces_its_finishing_phase(store_dir, small_store):
    stream = io.StringIO()
    bar = Progress("put", 300_000, enabled=True, stream=stream)
    Store.open(store_dir).put_file(small_store / "a.bin", on_progress=bar)
    assert bar.phase_text == "finishing: storing 1 pack and the index"
