"""README.md's five-minute tour runs as pasted: every `$ ` line of its console blocks and every Python
block, in order, in an empty folder, each printing what the README shows (paths of this machine
written as the README writes them)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest

README = os.path.join(os.path.dirname(__file__), os.pardir, "README.md")
PROJECT, CACHE = "/home/you/project", "/home/you/.cache/cas"


def tour_steps(text: str) -> list[tuple[str, str, str]]:
    """(kind, code, expected output) of the tour: `shell` for each `$ ` line, `python` for each block."""
    tour = text.split("\n## A five-minute tour", 1)[1].split("\n## ", 1)[0]
    steps = []
    for lang, body in re.findall(r"```(console|python)\n(.*?)```", tour, flags=re.S):
        if lang == "python":
            steps.append(("python", body, ""))
            continue
        for chunk in re.split(r"^\$ ", body, flags=re.M)[1:]:
            command, _, output = chunk.partition("\n")
            steps.append(("shell", command, output))
    return steps


def _normalized(out: str, cwd: str, cache: str) -> str:
    out = out.replace(cache, CACHE).replace(cwd, PROJECT)
    out = re.sub(r"/[0-9a-f]{32}/[0-9a-f]{16}/index", "/<store id>/<location>/index", out)
    return "\n".join(line.rstrip() for line in out.splitlines())


def test_the_readme_tour_runs_as_pasted(tmp_path):
    with open(README, encoding="utf-8") as f:
        steps = tour_steps(f.read())
    assert len(steps) > 15
    cwd, cache = str(tmp_path / "project"), str(tmp_path / "cache")
    os.makedirs(cwd)
    env = dict(os.environ, CAS_CACHE_DIR=cache, HOME=str(tmp_path / "home"), COLUMNS="120",
               PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""))
    env.pop("CAS_STORE", None)
    stored = []
    for kind, code, expected in steps:
        if kind == "python":
            run = subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True)
        else:
            run = subprocess.run(["bash", "-c", "set -o pipefail; " + code], cwd=cwd, env=env, text=True,
                                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        assert run.returncode == 0, (code, run.stdout, getattr(run, "stderr", ""))
        if kind == "python":
            continue  # what a Python block prints is not shown in the README
        got = _normalized(run.stdout, cwd, cache)
        if os.environ.get("CAS_TOUR_PRINT"):  # to write the README: print what each step shows
            print(f"$ {code}\n{got}")
            continue
        assert got == _normalized(expected, cwd, cache), (code, got)
        if code.startswith("cas gc --grace 0"):  # must show: what gc says it freed is what stats lost
            stored.append(code)
    assert stored, "the tour frees space with gc --grace 0"


def test_the_tours_gc_frees_what_stats_loses(tmp_path):
    """The tour's forget + gc, with stats read around gc: the freed figure is the drop in stored_bytes."""
    with open(README, encoding="utf-8") as f:
        steps = tour_steps(f.read())
    cwd, cache = str(tmp_path / "project"), str(tmp_path / "cache")
    os.makedirs(cwd)
    env = dict(os.environ, CAS_CACHE_DIR=cache, HOME=str(tmp_path / "home"),
               PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""))
    env.pop("CAS_STORE", None)

    def stored_bytes() -> int:
        out = subprocess.run(["cas", "stats", "--json"], cwd=cwd, env=env, capture_output=True, text=True, check=True)
        return json.loads(out.stdout)["stored_bytes"]
    for kind, code, _ in steps:
        if code.startswith("cas gc --grace 0"):
            before = stored_bytes()
            report = json.loads(subprocess.run(code + " --json", shell=True, cwd=cwd, env=env, capture_output=True,
                                               text=True, check=True).stdout)
            assert report["deleted_packs"] >= 1 and report["freed_bytes"] > 0
            assert report["freed_bytes"] == before - stored_bytes()
            return
        argv = [sys.executable, "-c", code] if kind == "python" else ["bash", "-c", code]
        subprocess.run(argv, cwd=cwd, env=env, capture_output=True, check=True)
    pytest.fail("the tour has no `cas gc --grace 0`")
