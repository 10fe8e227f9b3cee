"""The `cas` command line: parses arguments and runs the command of that name from `cas.commands`; no logic."""

from __future__ import annotations

import argparse
import ctypes
import os
import signal
import sys

from . import __version__
from .commands import COMMANDS
from .errors import CasError, Interrupted, InvalidInput
from .output import emit_error

REF_HELP = ("a digest, a hex prefix (8+), cas://DIGEST, runs:/RUN/NAME[@STEP or @ALIAS], or a pin label; "
            "/PATH after any of them names a file inside a folder (see below)")
REF_FORMS = """\
REF may be:
  e0e84f0928dd61201f63470cc0ea4f2eec9f999fa6ac04e81c6349f4db52f188   a digest (64 hex)
  e0e84f09                  a unique hex prefix of at least 8 characters
  cas://e0e84f09            either of the above as a URI
  runs:/exp-1/model         the latest step of artifact 'model' of run 'exp-1'
  runs:/exp-1/model@200     step 200 of it
  runs:/exp-1/model@best    the step the alias 'best' names (cas alias)
  runs:/exp-1/eval/sub/r.txt  a file inside a logged folder (the longest logged name wins)
  e0e84f09/sub/r.txt        the same inside a stored folder, by its digest
  weights/best              a pin label (cas pins lists them)
A REF that looks like a digest (8 to 64 hex characters, or cas://...) is read as a digest, never
as a label."""


class _ArgParser(argparse.ArgumentParser):
    """argparse, but a usage error is an InvalidInput that points to this command's own help."""

    def error(self, message):
        raise InvalidInput(f"{message} (see {self.prog} --help)", subject=self.prog)


class _CommandParser(_ArgParser):
    """A command's parser: what it does not recognize is its own usage error (argparse leaves it to `cas`)."""

    def parse_known_args(self, args=None, namespace=None):
        namespace, extras = super().parse_known_args(args, namespace)
        if extras:
            self.error(f"unrecognized arguments: {' '.join(extras)}")
        return namespace, extras


def _examples(*lines: str, forms: str = "") -> str:
    return (forms + "\n\n" if forms else "") + "examples:\n" + "\n".join(f"  {line}" for line in lines)


class _Unbuilt:
    """The parser of a command this run does not parse: its arguments are never built (argparse spends
    about 0.5 ms on a parser and its arguments, looking up translations and the terminal's width)."""

    def add_argument(self, *args, **kwargs) -> None:
        pass


GLOBAL_VALUES = ("--store", "--jobs")  # the options before a command that take a value


def _command_in(argv: list[str]) -> str | None:
    """The command argv names, if it plainly names one (None: build every command's parser): the first
    word that is neither an option nor a global option's value, with no help or version asked before it."""
    skip = False
    for word in argv:
        if skip:
            skip = False
        elif word in GLOBAL_VALUES:
            skip = True
        elif word.startswith("-"):
            if word in ("-h", "--help", "--version") or word == "--":
                return None
        else:
            return word if word in COMMANDS else None
    return None


def _parser(only: str | None = None) -> argparse.ArgumentParser:
    """The command line's parser; given `only`, with that command's parser alone (the others unbuilt)."""
    common = _CommandParser(add_help=False)  # only a parent: its arguments are copied into each parser
    common.add_argument("--store", default=argparse.SUPPRESS, metavar="URI",
                        help="the store: a folder, file:///abs/path or s3://bucket/prefix "
                             "(default: $CAS_STORE, else .cas in this folder or a parent)")
    common.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                        help="print the result as JSON on stdout, and errors as a JSON object on stderr")
    common.add_argument("--jobs", type=int, default=argparse.SUPPRESS, metavar="N",
                        help="transfers at once to or from S3 (default: $CAS_S3_JOBS, else 4)")
    p = _ArgParser(prog="cas", parents=[common], description="Content-addressed artifact store.",
                   formatter_class=argparse.RawDescriptionHelpFormatter,
                   epilog="Run `cas COMMAND --help` for a command's arguments and examples.")
    p.add_argument("--version", action="version", version=f"cas {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_CommandParser,
                           help="one of the commands below")
    sub.required = True

    def cmd(name: str, help_: str, epilog: str | None = None):
        if only is not None and name != only:
            return _Unbuilt()
        return sub.add_parser(name, parents=[common], help=help_, description=help_, epilog=epilog,
                              formatter_class=argparse.RawDescriptionHelpFormatter)

    _content_commands(cmd)
    _store_commands(cmd)
    _run_commands(cmd)
    _pin_commands(cmd)
    return p


def _content_commands(cmd) -> None:
    cmd("init", "create the store if it does not exist", _examples("cas init", "cas --store s3://bucket/team-a init"))
    c = cmd("put", "store files or folders, pinned under their path (or --label)",
            _examples("cas put model.safetensors          # pinned as model.safetensors",
                      "cas put ckpt/ --label best         # a folder, pinned as best",
                      "cas --json put a.bin b.bin         # a JSON list: one object per PATH"))
    c.add_argument("paths", nargs="+", metavar="PATH", help="a file or folder to store, e.g. model.bin or ckpt/")
    c.add_argument("--label", metavar="L", help="pin under L instead of the path as typed (one PATH only), "
                                                "e.g. --label weights/best")
    c.add_argument("--no-pin", action="store_true", help="store without pinning (gc deletes what nothing references)")
    c.add_argument("--parent", metavar="REF", help="an earlier version of the checkpoint: its tensor chunks may "
                                                   "be stored as deltas against the parent's (default: the "
                                                   "version the label pins now)")
    c.add_argument("--no-delta", action="store_true", help="store without deltas")
    c = cmd("get", "restore a stored file or folder",
            _examples("cas get e0e84f09 -o model.bin", "cas get runs:/exp-1/model@200 -o restored/   # into restored/",
                      "cas get weights/best -o model.bin --force", forms=REF_FORMS))
    c.add_argument("ref", metavar="REF", help=f"what to restore: {REF_HELP}")
    c.add_argument("-o", "--output", required=True, metavar="DEST",
                   help="where to restore: a path, or a folder to restore into (existing, or ending in /), "
                        "e.g. -o restored/")
    c.add_argument("--force", action="store_true", help="replace what exists at DEST")
    c = cmd("cat", "write a stored file, or one tensor of a stored checkpoint, to stdout",
            _examples("cas cat runs:/exp-1/notes.md", "cas cat e0e84f09 > model.bin",
                      "cas cat ckpt.pt --tensor model.lm_head.weight > head.bin   # its raw bytes",
                      forms=REF_FORMS))
    c.add_argument("ref", metavar="REF", help=f"the file to write (not a folder): {REF_HELP}")
    c.add_argument("--tensor", metavar="NAME", help="write only this tensor's raw bytes (names: `cas show REF`)")
    c = cmd("show", "the format and tensors of a stored checkpoint (safetensors, torch.save, .npy, .npz)",
            _examples("cas show model.safetensors", "cas --json show runs:/exp-1/model@300", forms=REF_FORMS))
    c.add_argument("ref", metavar="REF", help=f"the stored file: {REF_HELP}")
    c = cmd("ls", "list a stored folder's entries, or a run's artifact names",
            _examples("cas ls runs:/exp-1/eval          # path, kind, size, digest of each entry",
                      "cas ls exp-1                     # the run's artifact names", forms=REF_FORMS))
    c.add_argument("ref", metavar="REF", help=f"a run name, or a stored folder or file: {REF_HELP}")
    c = cmd("diff", "bytes shared and changed between two stored files or folders; tensors changed between "
                    "two checkpoints",
            _examples("cas diff runs:/exp-1/model@100 runs:/exp-1/model@300", forms=REF_FORMS))
    c.add_argument("ref_a", metavar="REF", help="the first file or folder, e.g. runs:/exp-1/model@100")
    c.add_argument("ref_b", metavar="REF", help="the second, e.g. runs:/exp-1/model@300")


def _store_commands(cmd) -> None:
    cmd("stats", "sizes and counts of the store", _examples("cas stats", "cas --json stats"))
    c = cmd("verify", "check the store end to end (metadata only, unless --read-data)",
            _examples("cas verify", "cas verify --read-data", "cas verify --refs"))
    c.add_argument("--read-data", action="store_true", help="also read every pack and check every stored byte")
    c.add_argument("--refs", action="store_true", help="also look at the targets of references (log_artifact_ref) "
                                                       "and report those that changed or vanished since logged")
    cmd("reindex", "rebuild this machine's index of the store from the packs' footers", _examples("cas reindex"))
    c = cmd("ui", "serve a read-only web page of this store: runs, versions and their cost, folders, tensors",
            _examples("cas ui                      # http://127.0.0.1:8765/", "cas ui --port 9000 --open"))
    c.add_argument("--port", type=int, default=8765, metavar="P", help="the port (default 8765; 0: any free one)")
    c.add_argument("--host", default="127.0.0.1", metavar="H",
                   help="the address to listen on (default 127.0.0.1: this machine only)")
    c.add_argument("--open", action="store_true", help="open it in the default browser")
    c = cmd("completion", "print a shell completion script (commands, options, run names, labels)",
            _examples('eval "$(cas completion bash)"    # in ~/.bashrc',
                      'eval "$(cas completion zsh)"     # in ~/.zshrc'))
    c.add_argument("shell", nargs="?", choices=["bash", "zsh"], help="the shell (default: from $SHELL)")
    c = cmd("cache", "this machine's cache of chunks read from a remote store: its size, or empty it",
            _examples("cas --store s3://team-bucket/cas cache", "cas cache clear",
                      "CAS_CHUNK_CACHE_SIZE=20GiB cas get ...   # its limit (default 10GiB; 0: off)"))
    c.add_argument("action", nargs="?", choices=["stats", "clear"], default="stats",
                   help="stats (default): files and bytes in the cache; clear: remove them")
    c = cmd("copy", "copy runs, versions, pins or content to another store, sending only what it lacks",
            _examples("cas copy exp-1 --to s3://team-bucket/cas        # a run: its versions and records",
                      "cas copy runs:/exp-1/model@300 best --to ./laptop-store   # a version, a pin",
                      "cas --store s3://team-bucket/cas copy exp-1 --to .cas     # pull back"))
    c.add_argument("sources", nargs="+", metavar="SOURCE",
                   help="a run name, a runs:/ reference, a pin label (the pin comes along), or a digest "
                        "(pinned there as copy/<digest>)")
    c.add_argument("--to", required=True, metavar="STORE", help="the target store: a folder or s3://bucket/prefix")
    c = cmd("gc", "delete what no run or pin references, safely beside running writers",
            _examples("cas gc --dry-run", "cas gc --grace 0          # condemn and delete in one run"))
    c.add_argument("--dry-run", action="store_true", help="show the plan; change nothing")
    c.add_argument("--grace", default="24h", metavar="DURATION",
                   help="delete what was condemned at least this long ago: 0, 30s, 15m, 24h, 7d (default 24h)")
    c.add_argument("--repack-threshold", type=float, default=None, metavar="SHARE",
                   help="repack a needed pack once this share of it is dead, in (0, 1], e.g. 0.1 (default 0.25)")


def _run_commands(cmd) -> None:
    cmd("runs", "list runs with their status, versions and sizes", _examples("cas runs"))
    c = cmd("log", "list the live versions of a run",
            _examples("cas log exp-1", "cas log exp-1 --name model --kind checkpoint"))
    c.add_argument("run", metavar="RUN", help="the run name, e.g. exp-1")
    c.add_argument("--name", metavar="N", help="only this artifact name, e.g. --name model")
    c.add_argument("--kind", metavar="K", help="only this kind, e.g. --kind checkpoint")
    c.add_argument("--where", action="append", default=[], metavar="KEY=VALUE",
                   help="only versions whose metadata has KEY equal to VALUE (numbers compare as numbers); "
                        "repeatable, e.g. --where split=val --where epoch=3")
    c = cmd("alias", "point an alias (best, production) at a version of an artifact, or remove it",
            _examples("cas alias runs:/exp-1/model@300 best      # runs:/exp-1/model@best is step 300",
                      "cas alias runs:/exp-1/model@400 best      # moved to step 400",
                      "cas alias --delete runs:/exp-1/model best"))
    c.add_argument("ref", metavar="REF", help="the version, e.g. runs:/exp-1/model@300 (or @another-alias)")
    c.add_argument("alias", metavar="ALIAS", help="letters, digits, '_', '-', '.', starting with a letter, e.g. best")
    c.add_argument("--delete", action="store_true", help="remove the alias from the artifact REF names")
    c = cmd("lineage", "which run produced a version and which runs used it; a run's inputs and outputs",
            _examples("cas lineage runs:/exp-1/model@3", "cas --json lineage exp-2   # a run: inputs, outputs"))
    c.add_argument("ref", metavar="REF", help="a version (runs:/RUN/NAME[@STEP]), a run name, or stored content")
    c = cmd("du", "stored bytes each run version or pin needs alone (only this) and shares with other ones",
            _examples("cas du            # every run version and pin", "cas du exp-1      # the versions of one run"))
    c.add_argument("run", nargs="?", metavar="RUN",
                   help="list only this run's live versions (default: every run version and every pin)")
    c = cmd("forget", "drop versions of runs by policy (records only; cas gc frees the data)",
            "Kept: what a --keep-* option keeps, pinned and aliased versions, and the latest version of\n"
            "each (run, name) unless --keep-last 0 or --all is given.\n\n"
            + _examples("cas forget exp-1 --keep-every 1000 --dry-run",
                        "cas forget exp-1 --name model --keep-last 3", "cas forget exp-2 --all"))
    c.add_argument("runs", nargs="+", metavar="RUN", help="the run(s) to drop versions of, e.g. exp-1")
    c.add_argument("--name", metavar="N", help="only this artifact name (default: every name), e.g. --name model")
    c.add_argument("--kind", metavar="K", help="only this kind, e.g. --kind checkpoint")
    c.add_argument("--keep-last", type=int, metavar="N",
                   help="keep the N highest steps of each (run, name); 0 keeps none, not even the latest")
    c.add_argument("--keep-every", type=int, metavar="STEPS",
                   help="keep the versions whose step is a multiple of STEPS, e.g. --keep-every 1000")
    c.add_argument("--keep-within", metavar="DURATION",
                   help="keep the versions logged within DURATION of now: 30s, 15m, 24h, 7d (as --grace)")
    c.add_argument("--all", action="store_true",
                   help="forget every matching version, the latest included (needed without --keep-*)")
    c.add_argument("--dry-run", action="store_true", help="list what would be forgotten, by name; change nothing")


def _pin_commands(cmd) -> None:
    c = cmd("pin", "pin a stored file or folder under a label (gc keeps what a pin names)",
            _examples("cas pin e0e84f09 --label release/v1", "cas pin runs:/exp-1/model@300 --label best",
                      forms=REF_FORMS))
    c.add_argument("ref", metavar="REF", help=f"what to pin: {REF_HELP}")
    c.add_argument("--label", metavar="L", required=True,
                   help="the label; if it names something already, it now names REF. e.g. --label release/v1")
    cmd("pins", "list pins", _examples("cas pins", "cas --json pins"))
    c = cmd("unpin", "remove a pin (the content stays until gc finds nothing else references it)",
            _examples("cas unpin release/v1"))
    c.add_argument("label", metavar="LABEL", help="the label to remove, as cas pins shows it, e.g. release/v1")


MALLOC_SETTINGS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_")
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters
KEEP_FREED = 64 << 20  # blocks up to this size are reused from the heap, not mapped afresh


def keep_freed_blocks() -> bool:
    """Have glibc's allocator keep freed blocks for reuse instead of unmapping them (the `cas` command
    only; a user who set any MALLOC_* threshold keeps theirs). numpy's temporaries of 128 KiB and more
    (a chunk's planes, the order of its exponents) would otherwise be fresh mappings, a page fault per
    4 KiB on first touch: about a third of the system time of a put of new float data. True if set."""
    if any(name in os.environ for name in MALLOC_SETTINGS):
        return False
    try:
        libc = ctypes.CDLL(None)
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, KEEP_FREED)) and bool(mallopt(_M_TRIM_THRESHOLD, 4 * KEEP_FREED))


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    # cas does no linear algebra; numpy's BLAS would start a thread per core at import and spin them
    # (60 ms of every command that decodes float planes, on 2 cores). The user's own setting wins.
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    if argv[:1] == ["__complete"]:  # the shell asking what may come next (cas/completion.py)
        from .completion import complete
        return complete(_parser(), argv[1:])
    keep_freed_blocks()  # not for a completion: it decodes nothing, and answers a key press
    as_json = _wants_json(argv)
    try:
        args = _parse(argv)
    except SystemExit as exc:  # argparse printed --help or --version
        return int(exc.code or 0)
    except CasError as exc:  # a usage error
        return _fail(exc, as_json)
    as_json = getattr(args, "json", False)
    previous = signal.signal(signal.SIGTERM, _on_sigterm) if _main_thread() else None
    try:
        command = COMMANDS.get(args.command)
        if command is None:  # a parser entry without a command behind it
            raise InvalidInput(f"unknown command {args.command!r} (see cas --help)", subject=args.command)
        if getattr(args, "jobs", None) is not None:
            os.environ["CAS_S3_JOBS"] = str(args.jobs)  # read when an s3:// store is opened (checked there)
        from .collector import owning_the_process
        with owning_the_process():
            return command(args, getattr(args, "store", None), as_json)
    except CasError as exc:
        return _fail(exc, as_json)
    except Interrupted as exc:
        return _fail(_after_interrupt(exc, args.command), as_json)
    except KeyboardInterrupt:
        return _fail(_after_interrupt(Interrupted("interrupted", exit_code=130), args.command), as_json)
    except BrokenPipeError:
        _quiet_stdout()
        return 141
    except MemoryError:
        return _fail(CasError("out of memory"), as_json)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _parse(argv: list[str]) -> argparse.Namespace:
    """argv parsed by the parser of the command it names alone; a usage error is said by the parser of
    every command (which also parses what _command_in misread, e.g. an abbreviated global option)."""
    try:
        return _parser(_command_in(argv)).parse_args(argv)
    except CasError:
        return _parser().parse_args(argv)


def _after_interrupt(exc: Interrupted, command: str) -> Interrupted:
    """An interrupted put says what it leaves behind: packs already stored, which nothing references."""
    if command != "put":
        return exc
    return Interrupted(f"{exc}: packs this put already stored stay, unreferenced, until `cas gc` removes them",
                       exit_code=exc.exit_code)


def _wants_json(argv: list[str]) -> bool:
    """Whether --json is on the command line, for errors met before (or while) it is parsed."""
    return "--json" in argv[:argv.index("--")] if "--" in argv else "--json" in argv


def _main_thread() -> bool:
    import threading
    return threading.current_thread() is threading.main_thread()


def _on_sigterm(signum, frame):
    raise Interrupted("terminated", exit_code=143)


def _fail(exc: CasError | Interrupted, as_json: bool) -> int:
    """One line on stderr: `cas: error: ...`, or with --json {"error", "exit_code", "type"}."""
    emit_error(str(exc), exc.exit_code, type(exc).__name__, as_json)
    return exc.exit_code


def _quiet_stdout() -> None:
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except OSError:
        pass

