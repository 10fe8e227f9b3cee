"""The shape of the package: no import cycle among the modules of cas/ (imports inside functions count),
the CLI's command table matches its parser, and `import cas.cli` loads nothing heavy."""

from __future__ import annotations

import ast
import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "cas"

# Cycles still present in modules being reworked elsewhere (the one reachability walk): this set may only
# shrink. Each cycle is written as the sorted tuple of its modules.
ALLOWED_CYCLES: set[tuple[str, ...]] = set()


def _module_name(path: Path, root: Path = PACKAGE) -> str:
    parts = ("cas",) + path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, modules: set[str], root: Path = PACKAGE) -> set[str]:
    """The cas modules that the file at path imports anywhere in it (top level, functions, TYPE_CHECKING)."""
    name = _module_name(path, root)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                origin = ".".join(base + ([node.module] if node.module else []))
            else:
                origin = node.module or ""
            # `from pkg import mod` imports the module pkg.mod; `from mod import name` imports mod
            targets = [f"{origin}.{alias.name}" if f"{origin}.{alias.name}" in modules else origin
                       for alias in node.names]
        else:
            continue
        for target in targets:
            while target and target not in modules:  # `import cas.a.b` also runs cas.a: count the deepest one
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def import_graph() -> dict[str, set[str]]:
    files = sorted(PACKAGE.rglob("*.py"))
    # a compiled module (cas/_planes.c) is a leaf: it imports no cas module
    modules = {_module_name(f) for f in files} | {_module_name(f) for f in PACKAGE.rglob("*.c")}
    return {_module_name(f): _imports(f, modules) for f in files}


def cycles(graph: dict[str, set[str]]) -> set[tuple[str, ...]]:
    """The strongly connected components of more than one module (Tarjan), each as a sorted tuple."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: set[tuple[str, ...]] = set()

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.add(tuple(sorted(component)))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_cycle_finder_sees_a_cycle_through_a_function_level_import(tmp_path):
    graph = {"cas.a": {"cas.b"}, "cas.b": {"cas.c"}, "cas.c": {"cas.a"}, "cas.d": {"cas.a"}}
    assert cycles(graph) == {("cas.a", "cas.b", "cas.c")}
    assert cycles({"cas.a": {"cas.b"}, "cas.b": set()}) == set()
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "x.py").write_text("import os\ndef f():\n    from ..y import g\n    from . import z\n"
                                           "    import cas.w.v\n")
    modules = {"cas.sub.x", "cas.sub.z", "cas.y", "cas.w"}
    assert _imports(tmp_path / "sub" / "x.py", modules, tmp_path) == {"cas.y", "cas.sub.z", "cas.w"}


def test_relative_imports_resolve_to_cas_modules():
    graph = import_graph()
    assert "cas.output" in graph["cas.cli"] and "cas.commands" in graph["cas.cli"]
    assert "cas.commands.common" in graph["cas.commands.store_commands"]
    assert "cas.store" in graph["cas.commands.common"]  # imported inside a function: counted


def test_no_import_cycle_among_cas_modules():
    found = cycles(import_graph())
    assert found <= ALLOWED_CYCLES, f"new import cycles: {sorted(found - ALLOWED_CYCLES)}"
    assert found == ALLOWED_CYCLES, f"cycles gone, remove them from ALLOWED_CYCLES: {sorted(ALLOWED_CYCLES - found)}"


def test_the_command_table_matches_the_parser():
    import argparse

    from cas.cli import _parser
    from cas.commands import COMMANDS
    sub = next(a for a in _parser()._actions if isinstance(a, argparse._SubParsersAction))
    assert set(sub.choices) == set(COMMANDS)


@pytest.mark.parametrize("argv", [
    ["put", "a.bin", "--label", "m"], ["--json", "put", "a", "b"], ["--store", "put", "get", "x", "-o", "y"],
    ["--jobs", "3", "--store", "s3://b/p", "stats"], ["gc", "--grace", "0", "--dry-run"], ["--json", "pins"],
    ["cat", "m", "--tensor", "w"], ["--sto", "get", "put", "x"], ["copy", "exp-1", "--to", "s3://b/p"]])
def test_a_command_parsed_by_its_own_parser_alone_reads_as_with_every_parser(argv):
    """The CLI builds only the parser of the command argv names (the others' arguments cost start-up
    time): what it parses is what the parser of every command parses."""
    from cas.cli import _parse, _parser
    assert vars(_parse(argv)) == vars(_parser().parse_args(argv))


def test_help_version_and_unclear_command_lines_get_every_parser():
    from cas.cli import _command_in
    for argv in (["--help", "put"], ["-h"], ["--version"], ["nosuch", "x"], ["--", "put"], ["--store"], []):
        assert _command_in(argv) is None, argv
    assert _command_in(["--store", "s", "put", "x"]) == "put"


def test_importing_the_cli_loads_nothing_heavy():
    """`cas --version` and `cas --help` must not pay for boto3, numpy or the store's modules."""
    code = ("import sys, cas.cli\n"
            "print(' '.join(sorted(m for m in sys.modules if m.split('.')[0] in "
            "{'boto3', 'botocore', 'numpy', 'blake3', 'zstandard', 'lmdb', 'msgpack', 'pyfastcdc', 'tracker'} "
            "or m in {'cas.store', 'cas.gc', 'cas.verify', 'cas.reach', 'cas.index', 'cas.records', 'cas.pack'})))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == ""


def _modules_loaded_by(code: str, env: dict | None = None) -> set[str]:
    code += "\nimport sys; print(' '.join(sorted(sys.modules)))"
    return set(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                              env=env).stdout.split())


def test_a_store_that_reads_and_shows_needs_no_numpy(tmp_path):
    """numpy costs a command a third of its start-up: opening a store, putting and reading a text file
    and showing a checkpoint's tensors do without it (gc, verify, a bulk sync and float planes import it)."""
    from cas import Store
    store = Store.open(str(tmp_path / "s"))
    (tmp_path / "a.txt").write_text("hello\n" * 1000)
    import numpy as np
    from safetensors.numpy import save_file
    save_file({"w": np.ones((4, 4), np.float32)}, str(tmp_path / "m.safetensors"))
    model = store.put_file(str(tmp_path / "m.safetensors")).digest
    code = (f"from cas import Store\n"
            f"s = Store.open({str(tmp_path / 's')!r})\n"
            f"d = s.put_file({str(tmp_path / 'a.txt')!r}).digest\n"
            f"assert s.read_bytes(d) == b'hello\\n' * 1000\n"
            f"from cas.tensorfiles.stored import open_checkpoint\n"
            f"assert [t.name for t in open_checkpoint(s, {model!r}).tensors] == ['w']\n")
    loaded = _modules_loaded_by(code)
    assert "cas.store" in loaded and "numpy" not in loaded


def test_a_store_that_only_reads_never_imports_the_write_path(tmp_path):
    """Opening a store, reading a file and listing pins leave the put pipeline (cas.ingest, the
    chunker, the tensor-file parsers) unimported: about 20 ms of every read command's start-up."""
    from cas import Store
    store = Store.open(str(tmp_path / "s"))
    digest = store.put_bytes(b"hello\n" * 1000, pin="hello").digest
    code = (f"from cas import Store\n"
            f"s = Store.open({str(tmp_path / 's')!r})\n"
            f"assert s.read_bytes({digest!r}) == b'hello\\n' * 1000\n"
            f"assert s.pins()\n")
    loaded = _modules_loaded_by(code)
    assert "cas.store" in loaded and not loaded & {"cas.ingest", "cas.chunker", "pyfastcdc", "cas.tensorfiles"}


def test_the_cas_command_keeps_numpy_blas_to_one_thread_unless_told(monkeypatch):
    from cas import cli
    monkeypatch.delenv("OPENBLAS_NUM_THREADS", raising=False)
    assert cli.main(["--version"]) == 0 and os.environ["OPENBLAS_NUM_THREADS"] == "1"
    monkeypatch.setenv("OPENBLAS_NUM_THREADS", "2")
    assert cli.main(["--version"]) == 0 and os.environ["OPENBLAS_NUM_THREADS"] == "2"


def _page_faults_of_numpy_churn(setup: str, env: dict | None = None) -> int:
    """Minor page faults of a fresh interpreter making and dropping four 1 MiB numpy temporaries at a time
    (as a chunk's decode does), after `setup`."""
    code = (f"{setup}\n"
            "import numpy as np, resource\n"
            "before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt\n"
            "for _ in range(200):\n"
            "    temporaries = [np.ones(1 << 17) for _ in range(4)]\n"
            "    del temporaries\n"
            "print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, **(env or {})})
    return int(out.stdout.split()[-1])  # after what the setup printed


def test_the_cas_command_keeps_freed_blocks_for_reuse_unless_told():
    """glibc would unmap each freed 1 MiB block and fault the next one in page by page; once the `cas`
    command has run (cli.main) the blocks are reused. The Python API leaves the allocator alone, and
    so does the command when the user set a MALLOC_* threshold."""
    if platform.libc_ver()[0] != "glibc":
        pytest.skip("glibc only")
    command = "from cas import cli; assert cli.main(['--version']) == 0"
    default = _page_faults_of_numpy_churn("from cas import Store")
    kept = _page_faults_of_numpy_churn(command)
    assert default > 200 * 100 and kept < default / 10, (default, kept)
    told = _page_faults_of_numpy_churn(command, env={"MALLOC_TRIM_THRESHOLD_": "131072"})
    assert told > 200 * 100
