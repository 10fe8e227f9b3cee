"""One function per CLI verb, by name: each opens the store, calls it, and hands the result to `emit`.

The modules here import only what the command line itself needs; the store and its dependencies load
when a command runs, so `cas --version` and `cas --help` stay fast.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

from . import gc_command, pin_commands, run_commands, store_commands

Command = Callable[[argparse.Namespace, str | None, bool], int]
"""A command: (parsed arguments, the --store URI or None, whether --json) -> exit code."""

COMMANDS: dict[str, Command] = {
    "init": store_commands.cmd_init,
    "put": store_commands.cmd_put,
    "get": store_commands.cmd_get,
    "cat": store_commands.cmd_cat,
    "show": store_commands.cmd_show,
    "stats": store_commands.cmd_stats,
    "verify": store_commands.cmd_verify,
    "reindex": store_commands.cmd_reindex,
    "pin": pin_commands.cmd_pin,
    "pins": pin_commands.cmd_pins,
    "unpin": pin_commands.cmd_unpin,
    "runs": run_commands.cmd_runs,
    "log": run_commands.cmd_log,
    "du": run_commands.cmd_du,
    "diff": run_commands.cmd_diff,
    "forget": run_commands.cmd_forget,
    "alias": run_commands.cmd_alias,
    "lineage": run_commands.cmd_lineage,
    "ls": store_commands.cmd_ls,
    "copy": store_commands.cmd_copy,
    "cache": store_commands.cmd_cache,
    "completion": store_commands.cmd_completion,
    "ui": store_commands.cmd_ui,
    "gc": gc_command.cmd_gc,
}
