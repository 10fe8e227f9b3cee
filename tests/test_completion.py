"""Shell completion: the bash script asks `cas __complete` for commands, options, runs and labels."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest
from conftest import cas_command

import tracker
from cas import Store


def _complete(store_dir: str, *words: str) -> list[str]:
    """What bash completes for `cas --store STORE <words>`, the last word being typed."""
    line = ["cas", "--store", store_dir, *words]
    cas = " ".join(cas_command())
    script = subprocess.run([*cas_command(), "completion", "bash"], capture_output=True, text=True).stdout
    script = script.replace("$(cas __complete", f"$({cas} __complete")
    words_array = " ".join(f"'{w}'" for w in line)
    program = f'{script}\nCOMP_WORDS=({words_array}); COMP_CWORD={len(line) - 1}; _cas_complete; ' \
              'printf "%s\\n" "${COMPREPLY[@]}"'
    out = subprocess.run(["bash", "-c", program], capture_output=True, text=True, env=os.environ).stdout
    return [w for w in out.splitlines() if w]


@pytest.mark.skipif(shutil.which("bash") is None, reason="no bash on this machine")
def test_bash_completes_commands_options_runs_and_labels(store_dir, tmp_path):
    (tmp_path / "a.bin").write_bytes(b"x" * 1000)
    with tracker.init("exp-1", store=store_dir) as run:
        run.log_artifact(tmp_path / "a.bin", name="model")
    Store.open(store_dir).pin("runs:/exp-1/model", "release/v1")
    assert _complete(store_dir, "ve") == ["verify"]
    assert "--keep-within" in _complete(store_dir, "forget", "--keep")
    assert _complete(store_dir, "log", "ex") == ["exp-1"]
    assert _complete(store_dir, "get", "rel") == ["release/v1"]
    assert _complete(store_dir, "stats", "x") == []
    zsh = subprocess.run([*cas_command(), "completion", "zsh"], capture_output=True, text=True).stdout
    assert "bashcompinit" in zsh and "_cas_complete" in zsh
