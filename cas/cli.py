"""The `cas` command line: parses arguments, calls the Store, prints results; no logic of its own."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys

from . import __version__
from .errors import CasError, Interrupted


class _ArgParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line."""

    def error(self, message):
        sys.stderr.write(f"cas: error: {message} (see cas --help)\n")
        raise SystemExit(2)


def _parser() -> argparse.ArgumentParser:
    common = _ArgParser(add_help=False)
    common.add_argument("--store", default=argparse.SUPPRESS, metavar="URI",
                        help="store location (default: $CAS_STORE, else ./.cas)")
    common.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="machine-readable output")
    p = _ArgParser(prog="cas", parents=[common], description="Content-addressed artifact store.")
    p.add_argument("--version", action="version", version=f"cas {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    def cmd(name, help_):
        return sub.add_parser(name, parents=[common], help=help_, description=help_)

    cmd("init", "create the store if it does not exist")
    c = cmd("put", "store files or folders, pinned under their path (or --label)")
    c.add_argument("paths", nargs="+", metavar="PATH")
    c.add_argument("--label", help="pin label (one PATH only)")
    c.add_argument("--no-pin", action="store_true", help="store without pinning")
    c = cmd("get", "restore a file or folder")
    c.add_argument("ref", metavar="REF")
    c.add_argument("-o", "--output", required=True, metavar="DEST")
    c.add_argument("--force", action="store_true", help="replace an existing destination")
    c = cmd("cat", "write a stored file to stdout")
    c.add_argument("ref", metavar="REF")
    cmd("stats", "sizes and counts of the store")
    c = cmd("verify", "check the store end to end")
    c.add_argument("--read-data", action="store_true", help="read and check every stored byte")
    cmd("reindex", "rebuild the local index from the store")
    cmd("runs", "list runs with their status, versions and sizes")
    c = cmd("log", "list the live versions of a run")
    c.add_argument("run", metavar="RUN")
    c.add_argument("--name", help="only this artifact name")
    c.add_argument("--kind", help="only this kind")
    c = cmd("du", "what each version costs alone and shares with others")
    c.add_argument("run", nargs="?", metavar="RUN", help="one run (default: every run)")
    c = cmd("diff", "bytes shared and changed between two stored versions")
    c.add_argument("ref_a", metavar="REF")
    c.add_argument("ref_b", metavar="REF")
    c = cmd("forget", "drop versions of runs by policy (records only; cas gc frees the data)")
    c.add_argument("runs", nargs="+", metavar="RUN")
    c.add_argument("--name", help="only this artifact name")
    c.add_argument("--kind", help="only this kind")
    c.add_argument("--keep-last", type=int, metavar="N", help="keep the N highest steps of each (run, name)")
    c.add_argument("--keep-every", type=int, metavar="STEPS", help="keep versions whose step is a multiple")
    c.add_argument("--all", action="store_true", help="forget every matching version (needed without --keep-*)")
    c.add_argument("--dry-run", action="store_true", help="show what would be forgotten; change nothing")
    c = cmd("gc", "delete what no run or pin references, safely beside running writers")
    c.add_argument("--dry-run", action="store_true", help="show the plan; change nothing")
    c.add_argument("--grace", default="24h", metavar="DURATION",
                   help="delete what was condemned at least this long ago: 0, 30s, 15m, 24h, 7d (default 24h)")
    c.add_argument("--repack-threshold", type=float, default=None, metavar="SHARE",
                   help="repack a needed pack once this share of it is dead (default 0.25)")
    c = cmd("pin", "pin a stored object under a label")
    c.add_argument("ref", metavar="REF")
    c.add_argument("--label", required=True)
    cmd("pins", "list pins")
    c = cmd("unpin", "remove a pin")
    c.add_argument("label", metavar="LABEL")
    return p


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse printed usage or --version/--help
        return int(exc.code or 0)
    as_json = getattr(args, "json", False)
    previous = signal.signal(signal.SIGTERM, _on_sigterm) if _main_thread() else None
    try:
        from . import commands
        return getattr(commands, f"cmd_{args.command}")(args, getattr(args, "store", None), as_json)
    except CasError as exc:
        return _fail(str(exc), exc.exit_code)
    except Interrupted as exc:
        return _fail(str(exc), exc.exit_code)
    except KeyboardInterrupt:
        return _fail("interrupted", 130)
    except BrokenPipeError:
        _quiet_stdout()
        return 141
    except MemoryError:
        return _fail("out of memory", 1)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _main_thread() -> bool:
    import threading
    return threading.current_thread() is threading.main_thread()


def _on_sigterm(signum, frame):
    raise Interrupted("terminated", exit_code=143)


def _fail(message: str, code: int) -> int:
    sys.stderr.write(f"cas: error: {message}\n")
    sys.stderr.flush()
    return code


def _quiet_stdout() -> None:
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except OSError:
        pass


def emit(obj, as_json: bool, text: str | None = None) -> None:
    """Print a result: JSON when asked, else the human text."""
    if as_json:
        sys.stdout.write(json.dumps(obj, indent=None, sort_keys=False) + "\n")
    elif text is not None:
        line = text + ("\n" if text and not text.endswith("\n") else "")
        sys.stdout.flush()  # file names from the OS may hold undecodable bytes: write them back as they came
        sys.stdout.buffer.write(line.encode("utf-8", "surrogateescape"))
    sys.stdout.flush()
