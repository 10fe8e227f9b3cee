"""The CLI explains itself and speaks JSON throughout: help on every argument, usage errors that name the
command's own help, errors as JSON objects with --json, and docs/cli.md's key tables equal to what each
command prints."""

from __future__ import annotations

import argparse
import json
import os
import re

import pytest
from conftest import one_error_line

import tracker
from cas.cli import _parser

DOCS = os.path.join(os.path.dirname(__file__), os.pardir, "docs", "cli.md")


def _commands() -> dict[str, argparse.ArgumentParser]:
    parser = _parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return {"cas": parser, **sub.choices}


# ---- help ---------------------------------------------------------------------------------------
def test_every_argument_and_option_has_help():
    for name, parser in _commands().items():
        for action in parser._actions:
            if isinstance(action, (argparse._HelpAction, argparse._VersionAction)):
                continue
            assert action.help and action.help.strip(), (name, action.option_strings or action.dest)


def _help(cli, *command) -> str:
    r = cli(*command, "--help")
    assert r.code == 0 and r.err == ""
    return r.out


def test_get_help_explains_references(cli):
    text = _help(cli, "get")
    for form in ("a digest (64 hex)", "at least 8 characters", "cas://", "runs:/exp-1/model ", "runs:/exp-1/model@200",
                 "pin label", "read as a digest, never"):
        assert form in text, form
    assert "examples:" in text and "-o restored/" in text


def test_du_and_forget_help_say_what_they_do(cli):
    du = " ".join(_help(cli, "du").split())
    assert "every run version and every pin" in du and "only this" in du
    forget = " ".join(_help(cli, "forget").split())
    assert "multiple of STEPS, e.g. --keep-every 1000" in forget
    assert "the latest version of each (run, name) unless --keep-last 0 or --all" in forget


@pytest.mark.parametrize("command", sorted(set(_commands()) - {"cas"}))
def test_usage_errors_name_the_commands_own_help(cli, command):
    r = cli(command, "--no-such-option")
    assert r.code == 2
    assert one_error_line(r.err).endswith(f"(see cas {command} --help)")


@pytest.mark.parametrize("argv, own_help", [
    (["get", "abcdef12"], "cas get --help"),  # a missing -o
    (["forget", "r", "--keep-last", "x"], "cas forget --help"),
    (["diff", "a", "b", "c"], "cas diff --help"),
    (["frob"], "cas --help"),
])
def test_usage_errors_as_json(cli, argv, own_help):
    text = cli(*argv)
    assert one_error_line(text.err).endswith(f"(see {own_help})")
    r = cli(*argv, "--json")
    assert r.code == 2 and r.err.count("\n") == 1 and r.out == ""
    assert json.loads(r.err) == {"error": text.err[len("cas: error: "):].rstrip("\n"), "exit_code": 2,
                                 "type": "InvalidInput"}


def test_errors_are_json_objects_with_json(cli, store_dir):
    assert cli("init").code == 0
    for args, code, kind in [(["cat", "abcdef1234"], 3, "NotFound"), (["log", "nope"], 3, "NotFound"),
                             (["forget", "r"], 2, "InvalidInput"), (["gc", "--grace", "soon"], 2, "InvalidInput")]:
        text = cli(*args)
        assert text.code == code
        message = one_error_line(text.err)[len("cas: error: "):]
        r = cli("--json", *args)
        assert r.code == code and r.err.count("\n") == 1 and "Traceback" not in r.err
        assert json.loads(r.err) == {"error": message, "exit_code": code, "type": kind}


def test_verify_problems_with_json_keep_the_report_on_stdout_and_the_error_on_stderr(cli, store_dir, tmp_path):
    (tmp_path / "a.bin").write_bytes(os.urandom(5000))
    cli("put", str(tmp_path / "a.bin"))
    for folder, _, names in os.walk(os.path.join(store_dir, "packs")):
        for name in names:
            os.remove(os.path.join(folder, name))
    r = cli("--json", "verify")
    assert r.code == 5 and not r.json()["ok"]
    error = json.loads(r.err)
    assert error["type"] == "IntegrityError" and error["exit_code"] == 5 and error["error"].startswith("verify found")


# ---- JSON keys against docs/cli.md ----------------------------------------------------------------
def documented_keys() -> dict[str, set[str]]:
    """For each `### command` of docs/cli.md: the keys named in the first cell of its `| key |` tables."""
    keys: dict[str, set[str]] = {}
    section, in_table = None, False
    with open(DOCS, encoding="utf-8") as f:
        lines = f.read().splitlines()
    for line in lines:
        if line.startswith("#"):
            heading = re.match(r"### (\w+)\s*$", line)
            section, in_table = (heading.group(1) if heading else None), False
        elif section and re.match(r"\|\s*key\s*\|", line):
            in_table = True
        elif in_table and line.startswith("|"):
            if not line.startswith("|---"):
                keys.setdefault(section, set()).update(re.findall(r"`([^`]+)`", line.split("|")[1]))
        else:
            in_table = False
    return keys


def printed_keys(out) -> set[str]:
    """The keys of a JSON result: top level, or those of the objects of an array."""
    items = out if isinstance(out, list) else [out]
    return {k for item in items if isinstance(item, dict) for k in item}


@pytest.fixture
def small_store(cli, store_dir, tmp_path):
    """A store with pins, a folder, two runs of versions (one a reference) and a condemned pack."""
    (tmp_path / "a.bin").write_bytes(os.urandom(200_000))
    (tmp_path / "tree").mkdir()
    (tmp_path / "tree" / "x.txt").write_bytes(b"x" * 5000)
    (tmp_path / "scratch.bin").write_bytes(os.urandom(50_000))
    with tracker.init("r", store=store_dir) as run:
        for step in (1, 2, 3):
            (tmp_path / "ckpt.bin").write_bytes(os.urandom(20_000) * step)
            run.log_artifact(tmp_path / "ckpt.bin", name="model", step=step)
        run.log_artifact_ref("s3://elsewhere/data.csv", name="raw-data")
    assert cli("put", "--no-pin", str(tmp_path / "scratch.bin")).code == 0  # garbage for gc to condemn
    return tmp_path


def test_json_keys_match_the_docs(cli, small_store):
    a, tree = str(small_store / "a.bin"), str(small_store / "tree")
    put_one = cli("--json", "put", a).json()
    digest = put_one["digest"]
    tree_digest = cli("--json", "put", tree).json()["digest"]
    runs = {
        "init": ["init"], "put": ["put", tree, a], "get": ["get", digest, "-o", str(small_store / "out.bin")],
        "stats": ["stats"], "verify": ["verify", "--read-data"], "reindex": ["reindex"], "runs": ["runs"],
        "log": ["log", "r"], "du": ["du"], "diff": ["diff", "runs:/r/model@1", "runs:/r/model@3"],
        "forget": ["forget", "r", "--keep-last", "1", "--dry-run"], "gc": ["gc", "--grace", "0"],
        "pin": ["pin", digest, "--label", "best"], "pins": ["pins"], "unpin": ["unpin", "best"],
        "show": ["show", digest], "alias": ["alias", "runs:/r/model@2", "best"],
        "lineage": ["lineage", "runs:/r/model@2"], "ls": ["ls", tree_digest],
        "copy": ["copy", "r", "--to", str(small_store / "elsewhere")], "cache": ["cache"],
    }
    documented = documented_keys()
    assert set(documented) >= set(runs), "a command has no key table in docs/cli.md"
    assert set(documented) - set(runs) == set(), "a key table for a command the test does not run"
    wrong = {}
    for command, args in runs.items():
        r = cli("--json", *args)
        assert r.code == 0, (command, r.err)
        keys = printed_keys(r.json())
        if command == "put":
            keys |= printed_keys(put_one)
        if keys != documented[command]:
            wrong[command] = {"printed, not documented": sorted(keys - documented[command]),
                              "documented, not printed": sorted(documented[command] - keys)}
    assert not wrong, wrong
