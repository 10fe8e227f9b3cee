"""The tools of the peer benchmark, each driven through its own CLI as whole processes: one class per tool.

Every tool gets a fresh repository under its own folder, then `put` one checkpoint at a time, `get`
one back into an empty folder, and may `reput` an unchanged checkpoint. `stored` is the apparent
size of what the tool keeps (its repository, cache or artifact folder; never its local index or
key cache). Where each peer lives comes from `Commands.from_env`: the defaults are what
`benchmarks/run` installs, environment variables override them.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from dataclasses import dataclass, replace
from pathlib import Path

from measure import Proc, cas_command, run, tree_bytes

HERE = Path(__file__).resolve().parent
MLFLOW_SCRIPT = HERE / "mlflow_step.py"
CODEC_SCRIPT = HERE / "codec_step.py"


@dataclass(frozen=True)
class Commands:
    """Executables of the peers. Env: CAS_BENCH_PEERS (folder of the dvc/ and mlflow/ venvs, default
    benchmarks/.peers), CAS_BENCH_ZSTD, CAS_BENCH_RESTIC, CAS_BENCH_BORG, CAS_BENCH_DVC, CAS_BENCH_MLFLOW_PYTHON."""

    zstd: str
    restic: str
    borg: str
    dvc: str
    mlflow_python: str
    cas: tuple[str, ...]

    @classmethod
    def from_env(cls, cas_override: str | None = None) -> Commands:
        peers = Path(os.environ.get("CAS_BENCH_PEERS", HERE / ".peers"))

        def pick(var: str, default) -> str:
            return os.environ.get(var) or str(default)

        return cls(zstd=pick("CAS_BENCH_ZSTD", shutil.which("zstd") or "/usr/bin/zstd"),
                   restic=pick("CAS_BENCH_RESTIC", shutil.which("restic") or "/usr/bin/restic"),
                   borg=pick("CAS_BENCH_BORG", shutil.which("borg") or "/usr/bin/borg"),
                   dvc=pick("CAS_BENCH_DVC", peers / "dvc" / "bin" / "dvc"),
                   mlflow_python=pick("CAS_BENCH_MLFLOW_PYTHON", peers / "mlflow" / "bin" / "python"),
                   cas=tuple(cas_command(cas_override)))


def base_env() -> dict:
    """This process's environment without a default cas store."""
    return {k: v for k, v in os.environ.items() if k != "CAS_STORE"}


def only_file(folder: Path) -> Path:
    """The one file a restore wrote somewhere under folder."""
    found = [p for p in folder.rglob("*") if p.is_file()]
    if len(found) != 1:
        raise RuntimeError(f"expected one restored file under {folder}, found {len(found)}")
    return found[0]


def first_line(text: str) -> str:
    return text.strip().splitlines()[0] if text.strip() else "?"


class Tool:
    """A fresh repository of one tool under root; `setup` (untimed) creates it."""

    name = "?"
    reingest_note = ""  # how `reput` re-ingests, when the tool has one

    def __init__(self, root: Path, cmds: Commands):
        self.root, self.cmds, self.repo = root, cmds, root / "repo"
        self.env = base_env()
        self.steps = 0
        root.mkdir(parents=True)
        self.setup()

    def setup(self) -> None:
        self.repo.mkdir()

    def put(self, src: Path) -> tuple[Proc, str]:
        """Ingest src; returns the process and the key that restores it."""
        raise NotImplementedError

    def get(self, key: str, target: Path) -> tuple[Proc, Path]:
        """Restore key under the empty folder target; returns the process and the restored file."""
        raise NotImplementedError

    def reput(self, src: Path) -> Proc | None:
        """Ingest the unchanged src again (after `get`), or None when the comparison does not apply."""
        return None

    def stored(self) -> int:
        return tree_bytes(self.repo)

    @staticmethod
    def version(cmds: Commands) -> str:
        """The tool's version line; raises when the tool is not usable."""
        raise NotImplementedError


class Cp(Tool):
    name = "cp"

    def put(self, src):
        return run(["cp", src, self.repo / src.name]), str(self.repo / src.name)

    def get(self, key, target):
        dest = target / Path(key).name
        return run(["cp", key, dest]), dest

    @staticmethod
    def version(cmds):
        return first_line(run(["cp", "--version"]).stdout)


class Zstd(Tool):
    name = "zstd -3"

    def put(self, src):
        dest = self.repo / (src.name + ".zst")
        return run([self.cmds.zstd, "-3", "-q", src, "-o", dest]), str(dest)

    def get(self, key, target):
        dest = target / Path(key).stem
        return run([self.cmds.zstd, "-d", "-q", key, "-o", dest]), dest

    @staticmethod
    def version(cmds):
        return first_line(run([cmds.zstd, "--version"]).stdout).strip("* ")


class Restic(Tool):
    """Repository format 2 (compression auto), a password from the environment, its cache beside the repo."""

    name = "restic"
    reingest_note = "`restic backup --force` (reads the file again)"

    def setup(self):
        self.env.update(RESTIC_PASSWORD="cas-bench", RESTIC_CACHE_DIR=str(self.root / "cache"))
        self._restic("init", "--repository-version", "2")

    def _restic(self, *args) -> Proc:
        return run([self.cmds.restic, "--repo", self.repo, *args], self.env)

    def put(self, src):
        proc = self._restic("backup", "--json", src)
        return proc, self._snapshot(proc)

    @staticmethod
    def _snapshot(proc: Proc) -> str:
        for line in reversed(proc.stdout.splitlines()):
            message = json.loads(line)
            if message.get("message_type") == "summary":
                return message["snapshot_id"]
        raise RuntimeError("restic backup printed no summary")

    def get(self, key, target):
        return self._restic("restore", key, "--target", target), only_file(target)

    def reput(self, src):
        return self._restic("backup", "--json", "--force", src)

    @staticmethod
    def version(cmds):
        return first_line(run([cmds.restic, "version"]).stdout)


class Borg(Tool):
    """Unencrypted repository, zstd level 3, its cache and config beside the repo."""

    name = "borg"
    reingest_note = "`borg create` as a user runs it (its files cache may skip an unchanged file)"

    def setup(self):
        self.env.update(BORG_BASE_DIR=str(self.root / "home"), BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK="yes",
                        BORG_RELOCATED_REPO_ACCESS_IS_OK="yes")
        run([self.cmds.borg, "init", "-e", "none", self.repo], self.env)

    def _create(self, archive: str, src: Path) -> Proc:
        return run([self.cmds.borg, "create", "-C", "zstd,3", f"{self.repo}::{archive}", src], self.env)

    def put(self, src):
        self.steps += 1
        archive = f"s{self.steps}"
        return self._create(archive, src), archive

    def get(self, key, target):
        return run([self.cmds.borg, "extract", f"{self.repo}::{key}"], self.env, cwd=target), only_file(target)

    def reput(self, src):
        return self._create("again", src)

    @staticmethod
    def version(cmds):
        return first_line(run([cmds.borg, "--version"]).stdout)


class Dvc(Tool):
    """`dvc init --no-scm` workspace with a copy-type cache; each checkpoint keeps its .dvc file."""

    name = "DVC"
    reingest_note = "`dvc add` as a user runs it (its state database may skip an unchanged file)"

    def setup(self):
        self.env.update(DVC_NO_ANALYTICS="1", DVC_SITE_CACHE_DIR=str(self.root / "site"),
                        DVC_GLOBAL_CONFIG_DIR=str(self.root / "global"),
                        DVC_SYSTEM_CONFIG_DIR=str(self.root / "system"))
        self.repo.mkdir()
        self._dvc("init", "--no-scm", "-q")
        self._dvc("config", "cache.type", "copy")

    def _dvc(self, *args) -> Proc:
        return run([self.cmds.dvc, *args], self.env, cwd=self.repo)

    def put(self, src):
        work = self.repo / src.name
        link_or_copy(src, work)  # the checkpoint as the training job wrote it into the workspace (untimed)
        proc = self._dvc("add", "-q", src.name)
        work.unlink()
        return proc, src.name + ".dvc"

    def get(self, key, target):
        return self._dvc("checkout", "-q", key), self.repo / key.removesuffix(".dvc")

    def reput(self, src):
        return self._dvc("add", "-q", src.name)

    def stored(self):
        return tree_bytes(self.repo / ".dvc" / "cache")

    @staticmethod
    def version(cmds):
        return "DVC " + first_line(run([cmds.dvc, "--version"], {**base_env(), "DVC_NO_ANALYTICS": "1"}).stdout)


class Mlflow(Tool):
    """`mlflow.log_artifact` into one run of a local file store (tracking metadata and artifacts both counted)."""

    name = "MLflow"

    def setup(self):
        self.env.update(MLFLOW_ALLOW_FILE_STORE="true")  # MLflow 3 wants an explicit opt-in for a folder store
        self.uri = self.repo.as_uri()
        self.run_id = "-"

    def _script(self, *args) -> Proc:
        return run([self.cmds.mlflow_python, MLFLOW_SCRIPT, *args], self.env)

    def put(self, src):
        self.steps += 1
        artifact_path = f"step-{self.steps}"
        proc = self._script("log", self.uri, self.run_id, artifact_path, src)
        self.run_id = proc.stdout.split()[-1]
        return proc, f"{artifact_path}/{src.name}"

    def get(self, key, target):
        return self._script("download", self.uri, self.run_id, key, target), only_file(target)

    @staticmethod
    def version(cmds):
        code = ("from importlib import metadata as m\n"
                "for d in ('mlflow', 'mlflow-skinny'):\n"
                "    try: print(d, m.version(d)); break\n"
                "    except m.PackageNotFoundError: pass")
        return first_line(run([cmds.mlflow_python, "-c", code]).stdout)


class Cas(Tool):
    """`cas put --label model` into a fresh local store, its LMDB index in a cache folder beside it: each
    checkpoint of a series under one label, as a user stores versions (tensor chunks may then be
    deltas against the version the label pinned)."""

    name = "cas"
    reingest_note = "`cas put` again (reads and hashes the file again)"

    def setup(self):
        self.env["CAS_CACHE_DIR"] = str(self.root / "cache")

    def _cas(self, *args) -> Proc:
        return run([*self.cmds.cas, "--store", self.repo, *args], self.env)

    def put(self, src):
        proc = self._cas("--json", "put", src, "--label", "model")
        out = proc.json()
        if out.get("size") != src.stat().st_size:
            raise RuntimeError(f"cas put reported size {out.get('size')} for {src}")
        return proc, out["digest"]

    def get(self, key, target):
        dest = target / "restored"
        return self._cas("get", key, "-o", dest), dest

    def reput(self, src):
        proc = self._cas("--json", "put", src, "--label", "model")
        if proc.json().get("new_bytes") != 0:
            raise RuntimeError(f"cas put of an unchanged file stored new bytes: {proc.stdout.strip()}")
        return proc

    @staticmethod
    def version(cmds):
        return first_line(run([*cmds.cas, "--version"]).stdout)


class Codec(Tool):
    """A weight codec (ZipNN, z4ai) through benchmarks/codec_step.py in this venv: seconds are the codec's
    own work inside its process (reading, compressing, writing; imports and start-up excluded), as the
    issue that adds them asks. Float series only."""

    codec, mode = "?", "?"
    float_only = True

    def _step(self, *args) -> Proc:
        proc = run([sys.executable, CODEC_SCRIPT, *args], self.env)
        return replace(proc, seconds=proc.json()["seconds"])

    def put(self, src):
        proc = self._step("put", self.codec, self.mode, self.repo, src)
        return proc, proc.json()["key"]

    def get(self, key, target):
        return self._step("get", self.codec, self.mode, self.repo, key, target), target / "restored"

    @classmethod
    def version(cls, cmds):
        from importlib import metadata
        try:
            return f"{cls.codec} {metadata.version(cls.codec)}"
        except metadata.PackageNotFoundError:
            raise RuntimeError(f"{cls.codec} is not installed (pip install -e '.[bench]')") from None


class ZipNNFile(Codec):
    name, codec, mode = "ZipNN", "zipnn", "file"


class ZipNNChain(Codec):
    name, codec, mode = "ZipNN delta chain", "zipnn", "chain"


class Z4aiFile(Codec):
    name, codec, mode = "z4ai", "z4ai", "file"


class Z4aiChain(Codec):
    name, codec, mode = "z4ai delta chain", "z4ai", "chain"


CODECS = (ZipNNFile, ZipNNChain, Z4aiFile, Z4aiChain)


def link_or_copy(src: Path, dest: Path) -> None:
    try:
        os.link(src, dest)
    except OSError:
        shutil.copyfile(src, dest)


TOOLS: dict[str, type[Tool]] = {t.name: t for t in (Cp, Zstd, Restic, Borg, Dvc, Mlflow, *CODECS, Cas)}


def versions(cmds: Commands, names=tuple(TOOLS)) -> tuple[dict[str, str], dict[str, str]]:
    """(tool -> version line, tool -> why it cannot run) for the named tools."""
    found, missing = {}, {}
    for name in names:
        try:
            found[name] = TOOLS[name].version(cmds)
        except (OSError, RuntimeError, ValueError) as exc:
            missing[name] = first_line(str(exc))[:200]
    return found, missing


if __name__ == "__main__":
    for name, line in versions(Commands.from_env(sys.argv[1] if len(sys.argv) > 1 else None))[0].items():
        print(f"{name:8} {line}")
