"""The run tracker end to end: checkpoint series, references, sizes, concurrent loggers, bad input, formats, S3.

Everything runs for real (local folder stores, subprocesses, a SeaweedFS server); nothing is mocked except an
optional library made unimportable through sys.modules.
"""

from __future__ import annotations

import importlib.util
import io
import json
import os
import struct
import subprocess
import sys
import time
import zlib

import numpy as np
import pytest
from conftest import files_under

import tracker
from cas import Store
from cas.errors import CasError, InvalidInput, NotFound
from cas.layout import is_record_key
from cas.manifest import TreeManifest

MiB = 1 << 20
CKPT = 32 * MiB
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LOG_KEYS = {"name", "step", "kind", "digest", "size", "new_bytes", "time", "uri", "metadata", "aliases"}


# ---- helpers -------------------------------------------------------------------------------------

def _one_line(err: str) -> str:
    assert err.startswith("cas: error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    return err




def _make_folder(root, files: dict[str, bytes]):
    for rel, data in files.items():
        path = os.path.join(root, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(data)
    return root


def _evolving_checkpoint(path, size: int, steps: int, seed: int = 0):
    """Write a float32 checkpoint `steps` times, a different slice changing each time; yields its bytes."""
    weights = np.random.default_rng(seed).standard_normal(size // 4, dtype=np.float32)
    stride = len(weights) // steps
    for i in range(steps):
        weights[i * stride: i * stride + 4096] += np.float32(0.5)  # 16 KiB of weights move per step
        weights.tofile(path)
        yield weights.tobytes()


def _run_objects(store: Store) -> set[tuple[str, int]]:
    """Every object under runs/ in the backend (records and anything else a log call may write)."""
    return set(store.backend.list("runs/"))


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


# ---- 1. a checkpoint series and other artifacts round-trip; cas log; dedup -------------------------

def test_checkpoint_series_roundtrip_log_and_dedup(store_dir, tmp_path, cli):
    store = Store.open(store_dir)
    ckpt = tmp_path / "ckpt.bin"
    folder = _make_folder(str(tmp_path / "eval"), {"metrics.json": b'{"acc": 0.91}\n', "plots/loss.csv":
                                                   b"step,loss\n1,0.5\n2,0.4\n", "big.bin": os.urandom(300_000)})
    params = {"lr": 3e-4, "layers": [64, 64], "name": "résumé", "nested": {"dropout": 0.1, "ok": True}}
    array = np.random.default_rng(7).standard_normal((64, 50))
    contents = {}
    with tracker.init("series", store=store, config={"lr": 3e-4}) as run:
        models = []
        for step, data in enumerate(_evolving_checkpoint(ckpt, CKPT, 5), start=1):
            models.append(run.log_artifact(ckpt, name="model", kind="checkpoint"))
            contents[step] = data
        note = run.log_text("loss went down\n", "notes/summary.md")
        cfg = run.log_dict(params, "config/params.json")
        arr = run.log_numpy(array, "arrays/probe.npy")
        tree = run.log_artifact(folder, name="eval")

    assert [v.step for v in models] == [1, 2, 3, 4, 5]  # default steps count from 1
    assert len({v.digest for v in models}) == 5
    assert all(v.size == CKPT for v in models)
    assert models[0].new_bytes == CKPT and all(v.new_bytes < CKPT // 20 for v in models[1:])
    assert (note.step, cfg.step, arr.step, tree.step) == (1, 1, 1, 1)

    # references: a step, the latest, and the other kinds
    got = tracker.download("runs:/series/model@3", tmp_path / "m3.bin", store=store_dir)
    assert open(got, "rb").read() == contents[3]
    got = tracker.download("runs:/series/model", tmp_path / "latest.bin", store=store_dir)
    assert open(got, "rb").read() == contents[5]
    with tracker.open("runs:/series/model@2", store=store_dir) as f:
        stride = CKPT // 4 // 5 * 4
        f.seek(stride)
        assert f.read(16384) == contents[2][stride:stride + 16384]
    with tracker.open("runs:/series/notes/summary.md", store=store_dir) as f:
        assert f.read() == b"loss went down\n"
    got = tracker.download("runs:/series/config/params.json", tmp_path / "params.json", store=store_dir)
    assert json.load(open(got)) == params
    got = tracker.download("runs:/series/arrays/probe.npy", tmp_path / "probe.npy", store=store_dir)
    np.testing.assert_array_equal(np.load(got), array)
    got = tracker.download("runs:/series/eval", tmp_path / "eval-copy", store=store_dir)
    assert files_under(got) == files_under(folder)

    # cas log --json: the five model versions, plain JSON integers
    r = cli("log", "series", "--json")
    assert r.code == 0, r.err
    rows = r.json()
    assert all(set(row) == LOG_KEYS for row in rows)
    model_rows = [row for row in rows if row["name"] == "model"]
    assert [row["step"] for row in model_rows] == [1, 2, 3, 4, 5]
    for row, v in zip(model_rows, models):
        assert row["digest"] == v.digest and row["kind"] == "checkpoint"
        assert row["uri"] == f"runs:/series/model@{v.step}"
        assert row["size"] == CKPT and row["new_bytes"] == v.new_bytes
        assert all(_is_int(row[k]) for k in ("step", "size", "new_bytes"))
        assert isinstance(row["time"], float) and abs(row["time"] - time.time()) < 600
    assert sorted(row["name"] for row in rows) == sorted(["model"] * 5 + ["notes/summary.md", "config/params.json",
                                                                          "arrays/probe.npy", "eval"])
    assert cli("log", "series", "--name", "model", "--json").json() == model_rows
    assert [row["name"] for row in cli("log", "series", "--kind", "dict", "--json").json()] == ["config/params.json"]

    # five 32 MiB versions stored in at most 1.5x one
    stats = cli("stats", "--json").json()
    assert stats["stored_bytes"] <= 1.5 * CKPT, stats

    # cas diff between two steps: the changed slice is all that differs
    d = cli("diff", "runs:/series/model@1", "runs:/series/model@2", "--json").json()
    assert d["a"]["digest"] == models[0].digest and d["b"]["digest"] == models[1].digest
    assert d["shared_bytes"] + d["only_b_bytes"] == CKPT  # random weights: no chunk repeats within a file
    assert d["shared_bytes"] + d["only_a_bytes"] == CKPT
    assert 0 < d["only_b_bytes"] < CKPT // 20 and d["only_b_chunks"] >= 1
    assert d["only_b_bytes"] == models[1].new_bytes  # what step 2 had to store is exactly what step 1 lacked
    same = cli("diff", "runs:/series/model@4", models[3].digest, "--json").json()
    assert same["only_a_bytes"] == same["only_b_bytes"] == 0 and same["shared_bytes"] == CKPT

    # cas runs --json
    runs = cli("runs", "--json").json()
    assert [(r["name"], r["status"], r["versions"]) for r in runs] == [("series", "finished", 9)]
    assert _is_int(runs[0]["stored_bytes"]) and runs[0]["stored_bytes"] <= 1.5 * CKPT


# ---- 2. cas du adds up, and matches an independent count of the run's chunks ----------------------

def _footprint(store: Store, digest_hex: str, sizes: dict) -> set:
    """The distinct stored pieces a file or tree references, read from manifests and the index (not cas.reach)."""
    digest = bytes.fromhex(digest_hex)
    loc = store.index.manifest(digest)
    if loc is None:  # small content kept inline in its record
        content = store.index.inline_content(digest)
        assert content is not None, digest_hex
        sizes[("inline", digest)] = len(content)
        return {("inline", digest)} if content else set()
    manifest = store.load_manifest(digest, loc)
    if isinstance(manifest, TreeManifest):
        return set().union(*[_footprint(store, e.digest.hex(), sizes) for e in manifest.entries if e.kind == "file"])
    ids = {manifest.chunk_id(i) for i in range(len(manifest))}
    for chunk_id in ids:
        sizes[("chunk", chunk_id)] = store.index.chunk(chunk_id).stored_len
    return {("chunk", c) for c in ids}


def test_du_adds_up_and_matches_the_runs_chunks(store_dir, tmp_path, cli):
    store = Store.open(store_dir)
    ckpt = tmp_path / "ckpt.bin"
    with tracker.init("a", store=store) as run:
        # the generator writes each version to ckpt; its last bytes (data) are used after the loop
        for data in _evolving_checkpoint(ckpt, 4 * MiB, 3, seed=1):  # noqa: B007
            run.log_artifact(ckpt, name="model")
        run.log_artifact(ckpt, name="model-copy")  # the same digest as model@3 under another name
        run.log_text("a small note", "note.txt")
        run.log_text("", "empty.txt")
        folder = _make_folder(str(tmp_path / "bundle"), {"w.bin": data[: MiB], "x/y.txt": b"y" * 10_000})
        run.log_artifact(folder, name="bundle")  # shares a chunk range with the checkpoints
        run.log_artifact_ref("s3://elsewhere/data.csv", name="dataset")  # nothing stored
        run.log_text("second note", "note.txt", step=1)  # supersedes note.txt@1
    with tracker.init("b", store=store) as other:  # another run sharing chunks with run a
        tail = tmp_path / "tail.bin"
        tail.write_bytes(data[2 * MiB:])
        other.log_artifact(tail, name="tail")
    pinned = tmp_path / "pinned.bin"
    pinned.write_bytes(data[: 2 * MiB])
    assert cli("put", str(pinned), "--label", "head").code == 0

    r = cli("du", "a", "--json")
    assert r.code == 0, r.err
    du = r.json()
    assert du["run"] == "a"
    rows = {row["ref"]: row for row in du["versions"]}
    live = Store.open(store_dir).records.versions("a")
    assert sorted(rows) == sorted(v.uri for v in live if v.digest)  # the reference-only version has no bytes
    assert sum(row["exclusive_bytes"] for row in du["versions"]) + du["shared_bytes"] == du["total_bytes"]
    assert du["exclusive_bytes"] == sum(row["exclusive_bytes"] for row in du["versions"])
    for row in du["versions"]:
        assert row["exclusive_bytes"] + row["shared_bytes"] == row["stored_bytes"]
        assert all(_is_int(row[k]) for k in ("logical_bytes", "stored_bytes", "exclusive_bytes", "shared_bytes"))

    # independently: the distinct chunks (and inline contents) of the run's live versions
    fresh = Store.open(store_dir)
    sizes: dict = {}
    per_version = {v.uri: _footprint(fresh, v.digest, sizes) for v in fresh.records.versions("a") if v.digest}
    union = set().union(*per_version.values())
    assert du["total_bytes"] == sum(sizes[p] for p in union) > 4 * MiB // 2
    # ...and what only one root of the whole store references (roots: every live version of every run, pins)
    roots = [v.digest for v in fresh.records.all_versions() if v.digest] + [p.digest for p in fresh.pins()]
    owners: dict = {}
    for digest in roots:
        for piece in _footprint(fresh, digest, sizes):
            owners[piece] = owners.get(piece, 0) + 1
    for uri, pieces in per_version.items():
        assert rows[uri]["exclusive_bytes"] == sum(sizes[p] for p in pieces if owners[p] == 1), uri
        assert rows[uri]["stored_bytes"] == sum(sizes[p] for p in pieces), uri
    assert rows["runs:/a/model@3"]["exclusive_bytes"] == rows["runs:/a/model-copy@1"]["exclusive_bytes"] == 0
    assert rows["runs:/a/note.txt@1"]["logical_bytes"] == len("second note")
    assert rows["runs:/a/empty.txt@1"]["stored_bytes"] == 0

    runs = {r["name"]: r for r in cli("runs", "--json").json()}
    assert runs["a"]["stored_bytes"] == du["total_bytes"] and runs["a"]["versions"] == len(live)
    everything = cli("du", "--json").json()  # every root of the store
    assert sum(r["exclusive_bytes"] for r in everything["versions"]) + everything["shared_bytes"] == \
        everything["total_bytes"]
    assert {r["ref"] for r in everything["versions"]} == {"pin:head", "runs:/b/tail@1"} | set(rows)


# ---- 3. four processes logging the same name into one run at once -------------------------------

_LOGGER = r"""
import os, sys, time
import tracker
store, run, proc, go = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
r = tracker.init(run, store=store)
deadline = time.time() + 60
while not os.path.exists(go) and time.time() < deadline:
    time.sleep(0.002)
for i in range(25):
    text = f"process {proc} version {i}\n" * (1 if i % 2 else 300)  # odd: inline, even: > 4 KiB, in a pack
    v = r.log_text(text, "shared.txt")
    print(v.step, flush=True)
"""


def _expected_text(proc: int, i: int) -> bytes:
    return (f"process {proc} version {i}\n" * (1 if i % 2 else 300)).encode()


@pytest.mark.parametrize("caches", ["one cache", "a cache each"])
def test_concurrent_loggers_get_distinct_steps(store_dir, tmp_path, caches):
    Store.open(store_dir).init()
    go = tmp_path / "go"
    procs = []
    for proc in range(4):
        cache = tmp_path / ("cache" if caches == "one cache" else f"cache-{proc}")
        env = dict(os.environ, CAS_CACHE_DIR=str(cache), PYTHONPATH=REPO)
        procs.append(subprocess.Popen([sys.executable, "-c", _LOGGER, store_dir, "race", str(proc), str(go)],
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                                      cwd=str(tmp_path)))
    time.sleep(0.3)
    go.touch()
    reported = []
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
        reported += [int(line) for line in out.split()]
    assert sorted(reported) == list(range(1, 101))

    store = Store.open(store_dir, cache_dir=str(tmp_path / "reader"))
    versions = store.records.versions("race", "shared.txt", live_only=False)
    assert len(versions) == 100 and sorted(v.step for v in versions) == list(range(1, 101))
    expected = {_expected_text(proc, i) for proc in range(4) for i in range(25)}
    read = [store.read_bytes(v.uri) for v in versions]
    assert set(read) == expected and len(read) == 100
    assert all(store.read_bytes(v.digest) == data for v, data in zip(versions, read))
    assert store.verify().ok


# ---- 4. bad input: one clear error, nothing half-logged --------------------------------------------

class _Refusals:
    """Calls that must fail with a CasError naming the problem and leave the run's records as they were."""

    def __init__(self, store_dir, tmp_path, run: str):
        self.store = Store.open(store_dir)
        self.observer = Store.open(store_dir, cache_dir=str(tmp_path / "observer"))  # another machine
        self.run = run

    def _state(self):
        self.observer.records.sync()
        return _run_objects(self.store), [v.key for v in self.observer.records.versions(self.run, live_only=False)]

    def __call__(self, fn, error=CasError, *words):
        before = self._state()
        with pytest.raises(error) as info:
            fn()
        message = str(info.value).lower()
        assert "\n" not in message and all(w.lower() in message for w in words), (message, words)
        assert self._state() == before, f"{message!r} left something behind"
        return info.value


BAD_NAMES = ["", "..", "a/../b", "a\x07b", "tab\there", "a@b", "./a", "a//b", "a/", "x" * 513]


def test_bad_names_steps_and_files_are_refused_whole(store_dir, tmp_path):
    refuse = _Refusals(store_dir, tmp_path, "r")
    store = refuse.store
    src = tmp_path / "w.bin"
    src.write_bytes(os.urandom(20_000))
    run = tracker.init("r", store=store)
    run.log_artifact(src, name="model")
    run.log_text("hi", "note.txt")

    for bad in BAD_NAMES + ["a/b", "runs/x"]:
        refuse(lambda: tracker.init(bad, store=store_dir), InvalidInput, "run name")
        refuse(lambda: tracker.get_run(bad, store=store_dir), InvalidInput, "run name")
    for bad in BAD_NAMES:
        refuse(lambda: run.log_artifact(src, name=bad), InvalidInput, "artifact name")
        refuse(lambda: run.log_text("x", bad), InvalidInput, "artifact name")
        refuse(lambda: run.log_dict({"a": 1}, bad), InvalidInput)
        refuse(lambda: run.log_artifact_ref("s3://b/k", name=bad), InvalidInput, "artifact name")
    for bad in (-1, 1.5, 2.0, "3", True, 10 ** 19, [1]):
        refuse(lambda: run.log_artifact(src, name="model", step=bad), InvalidInput, "invalid step")
        refuse(lambda: run.log_text("x", "note.txt", step=bad), InvalidInput, "invalid step")
        refuse(lambda: run.log_numpy(np.zeros(3), "z.npy", step=bad), InvalidInput, "invalid step")

    refuse(lambda: run.log_artifact(tmp_path / "missing.bin"), NotFound, "no such file", "missing.bin")
    refuse(lambda: run.log_artifact(str(tmp_path / "nothing-*.bin")), NotFound, "no files match")
    refuse(lambda: run.log_model(tmp_path / "missing.pt"), NotFound, "missing.pt")
    refuse(lambda: run.log_text(b"bytes", "t.txt"), InvalidInput, "str")
    refuse(lambda: run.log_dict(["not", "a", "dict"], "d.json"), InvalidInput, "dict")
    refuse(lambda: run.log_dict({"f": object()}, "d.json"), InvalidInput, "json")
    refuse(lambda: run.log_table({"a": [1, 2], "b": [1]}, "t.csv"), InvalidInput, "differ in length")
    refuse(lambda: run.log_table({"a": [1]}, "t.xlsx"), InvalidInput, ".parquet")
    refuse(lambda: run.log_image(np.zeros((4, 4, 2), np.uint8), "i.png"), InvalidInput, "image")
    refuse(lambda: run.log_image(np.zeros((4, 4, 3), np.uint8), "i.jpg"), InvalidInput, ".png")
    refuse(lambda: run.log_numpy({"a": np.zeros(2)}, "a.npy"), InvalidInput, ".npz")
    refuse(lambda: run.log_artifact_ref("", name="ref"), InvalidInput, "uri")
    refuse(lambda: run.log_artifact(src, name="m", metadata={"f": object()}), InvalidInput, "metadata")
    refuse(lambda: run.log_artifact(src, name="m", metadata=["not", "a", "dict"]), InvalidInput, "metadata")
    refuse(lambda: tracker.init("r", store=store_dir, config=["x"]), InvalidInput, "config")
    refuse(lambda: tracker.init("r", store=store_dir, config={"f": object()}), InvalidInput, "config")
    refuse(lambda: tracker.init("r", store=store_dir, metadata="x"), InvalidInput, "metadata")
    refuse(lambda: run.use_artifact(None), InvalidInput, "reference")

    assert [v.uri for v in tracker.get_run("r", store=store_dir).versions] == ["runs:/r/model@1",
                                                                               "runs:/r/note.txt@1"]


def test_bad_references_are_refused_whole(store_dir, tmp_path, cli):
    refuse = _Refusals(store_dir, tmp_path, "r")
    src = tmp_path / "w.bin"
    src.write_bytes(os.urandom(20_000))
    run = tracker.init("r", store=refuse.store)
    run.log_artifact(src, name="model")
    run.log_artifact(src, name="model", step=7)
    run.log_artifact_ref("s3://b/data.csv", name="data")
    dest = tmp_path / "out.bin"

    unknown = {"runs:/nope/model": "unknown run", "runs:/r/nope": "unknown reference",
               "runs:/r/model@3": "unknown reference", "runs:/r/model@0": "unknown reference",
               "runs:/r/model/extra": "unknown reference", "runs:/r/model@x": "unknown alias"}
    for ref, words in unknown.items():
        refuse(lambda: tracker.download(ref, dest, store=store_dir), NotFound, words, ref)
        refuse(lambda: tracker.open(ref, store=store_dir), NotFound, ref)
        refuse(lambda: run.use_artifact(ref), NotFound, ref)
    malformed = ["runs:/", "runs:/r", "runs:/r/", "runs://model", "runs:/r/model@", "runs:/r/model@x y",
                 "runs:/r/model@-1", "runs:/r/model@1.5", "runs:/r/model@ 1", "runs:/r/model@1@2",
                 "runs:/r/model@²", "runs:/r/model@٣", "runs:/r/model@" + "9" * 30, "runs:/r/../model",
                 "runs:/r/a/./b", "runs:/r\x07/model", "runs:/a@b/model"]
    for ref in malformed:
        refuse(lambda: tracker.download(ref, dest, store=store_dir), InvalidInput)
        refuse(lambda: run.use_artifact(ref), InvalidInput)
    refuse(lambda: tracker.download("runs:/r/data", dest, store=store_dir), InvalidInput, "nothing is stored")
    refuse(lambda: run.use_artifact("0123456789abcdef" * 4), NotFound, "unknown reference")
    assert not dest.exists()
    assert tracker.get_run("r", store=store_dir).inputs == []

    # the command line: one line, non-zero exit
    out = str(tmp_path / "cli-out")
    for args, code in [(("log", "nope"), 3), (("log", "a@b"), 2), (("log", "a/b"), 2), (("du", ".."), 2),
                       (("du", "nope"), 3), (("get", "runs:/r/nope", "-o", out), 3),
                       (("get", "runs:/r/model@x", "-o", out), 3), (("get", "runs:/r/model@²", "-o", out), 2),
                       (("cat", "runs:/nope/model"), 3), (("cat", "runs:/r/data"), 2),
                       (("diff", "runs:/r/model@1", "runs:/r/model@3"), 3),
                       (("diff", "runs:/r/model@1", "runs:/r"), 2), (("pin", "runs:/r/model@9", "--label", "x"), 3)]:
        before = _run_objects(refuse.store)
        r = cli(*args)
        assert r.code == code, (args, r.code, r.err)
        _one_line(r.err)
        assert _run_objects(refuse.store) == before
    assert not os.path.exists(out)


@pytest.mark.parametrize("module, call, words", [
    ("pyarrow", lambda run: run.log_table({"a": [1, 2]}, "t.parquet"), "pip install pyarrow"),
    ("yaml", lambda run: run.log_dict({"a": 1}, "c.yaml"), "pip install pyyaml"),
    ("yaml", lambda run: run.log_dict({"a": 1}, "c.yml"), "pip install pyyaml"),
    ("numpy", lambda run: run.log_numpy([1, 2, 3], "a.npy"), "pip install numpy"),
    ("numpy", lambda run: run.log_image([[0, 1], [1, 0]], "i.png"), "pip install numpy"),
])
def test_a_missing_optional_library_is_one_clear_error(store_dir, tmp_path, monkeypatch, module, call, words):
    refuse = _Refusals(store_dir, tmp_path, "r")
    run = tracker.init("r", store=refuse.store)
    monkeypatch.setitem(sys.modules, module, None)  # `import module` now raises ImportError
    if module == "pyarrow":
        monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    refuse(lambda: call(run), InvalidInput, words)
    assert tracker.get_run("r", store=store_dir).versions == []


# ---- 5. supersede ------------------------------------------------------------------------------------

def test_logging_an_existing_step_again_supersedes_it(store_dir, tmp_path, cli):
    store = Store.open(store_dir)
    big_a, big_b = os.urandom(100_000), os.urandom(100_000)
    src = tmp_path / "w.bin"
    with tracker.init("sup", store=store) as run:
        assert [run.log_text(t, "notes.txt").step for t in ("first", "second")] == [1, 2]
        run.log_text("explicit A", "notes.txt", step=10)
        run.log_text("explicit B", "notes.txt", step=10)
        run.log_text("again 1", "notes.txt", step=1)  # over an automatically numbered step
        assert run.log_text("next", "notes.txt").step == 11  # automatic steps continue past explicit ones
        src.write_bytes(big_a)
        run.log_artifact(src, name="model", step=7)
        src.write_bytes(big_b)
        later = run.log_artifact(src, name="model", step=7)

    for reader in (store_dir, Store.open(store_dir, cache_dir=str(tmp_path / "other-machine"))):
        def read(ref):
            with tracker.open(ref, store=reader) as f:
                return f.read()
        assert read("runs:/sup/notes.txt@10") == b"explicit B"
        assert read("runs:/sup/notes.txt@1") == b"again 1"
        assert read("runs:/sup/notes.txt@2") == b"second"
        assert read("runs:/sup/notes.txt") == b"next"
        assert read("runs:/sup/model@7") == read("runs:/sup/model") == big_b

    rows = cli("log", "sup", "--json").json()
    assert [(r["name"], r["step"]) for r in rows] == [("model", 7), ("notes.txt", 1), ("notes.txt", 2),
                                                       ("notes.txt", 10), ("notes.txt", 11)]
    assert rows[0]["digest"] == later.digest
    superseded = Store.open(store_dir).records.versions("sup", live_only=False)
    assert len(superseded) == 8  # both records of a superseded step stay in the store
    assert tracker.download("runs:/sup/model@7", tmp_path / "m.bin", store=store_dir)
    assert (tmp_path / "m.bin").read_bytes() == big_b
    assert [r["versions"] for r in cli("runs", "--json").json()] == [5]


# ---- 6. resume, status, config ----------------------------------------------------------------------

def test_resume_status_and_config(store_dir, tmp_path, cli):
    first = tracker.init("same", store=store_dir, config={"lr": 0.1, "batch": 32}, metadata={"host": "a"})
    assert first.log_text("one", "log.txt").step == 1
    assert first.log_text("two", "log.txt").step == 2
    assert tracker.get_run("same", store=store_dir).status == "running"
    first.end("finished")

    second = tracker.init("same", store=store_dir)  # resumes
    info = tracker.get_run("same", store=store_dir)
    assert info.status == "running" and [v.step for v in info.versions] == [1, 2]
    assert second.log_text("three", "log.txt").step == 3
    second.set_metadata(epoch=3)
    second.end()
    info = tracker.get_run("same", store=store_dir)
    assert info.status == "finished" and info.end_time is not None and info.start_time <= info.end_time
    assert info.config == {"lr": 0.1, "batch": 32}
    assert info.metadata == {"host": "a", "epoch": 3}
    assert [v.step for v in info.versions] == [1, 2, 3]

    with tracker.init("ok", store=store_dir) as run:
        run.log_text("fine", "x.txt")
    assert tracker.get_run("ok", store=store_dir).status == "finished"
    with pytest.raises(RuntimeError):
        with tracker.init("boom", store=store_dir, config={"seed": 1}):
            raise RuntimeError("training diverged")
    boom = tracker.get_run("boom", store=store_dir)
    assert boom.status == "failed" and boom.config == {"seed": 1}
    with tracker.init("boom", store=store_dir) as run:  # a failed run resumed and finished
        assert run.log_text("retry", "x.txt").step == 1
    assert tracker.get_run("boom", store=store_dir).status == "finished"

    anonymous = tracker.init(store=store_dir)
    anonymous.end()
    assert tracker.get_run(anonymous.name, store=store_dir).status == "finished"

    # another machine sees the same
    other = Store.open(store_dir, cache_dir=str(tmp_path / "other"))
    assert tracker.get_run("same", store=other).config == {"lr": 0.1, "batch": 32}
    runs = {r["name"]: (r["status"], r["versions"]) for r in cli("runs", "--json").json()}
    assert runs == {"same": ("finished", 3), "ok": ("finished", 1), "boom": ("finished", 1),
                    anonymous.name: ("finished", 0)}
    with pytest.raises(NotFound, match="unknown run"):
        tracker.get_run("never", store=store_dir)


# ---- 7. formats ---------------------------------------------------------------------------------------

def _read_png(data: bytes) -> np.ndarray:
    """Decode an 8-bit, non-interlaced PNG (any filter), checking every chunk's CRC."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, chunks = 8, []
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos:pos + 4])
        tag, body = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length:pos + 12 + length])
        assert zlib.crc32(tag + body) & 0xFFFFFFFF == crc, tag
        chunks.append((tag, body))
        pos += 12 + length
    assert chunks[0][0] == b"IHDR" and chunks[-1][0] == b"IEND"
    width, height, depth, color, _, _, interlace = struct.unpack(">IIBBBBB", chunks[0][1])
    assert depth == 8 and interlace == 0
    channels = {0: 1, 2: 3, 4: 2, 6: 4}[color]
    raw = zlib.decompress(b"".join(body for tag, body in chunks if tag == b"IDAT"))
    stride = width * channels
    rows, prev = [], np.zeros(stride, np.int32)
    for y in range(height):
        ftype, line = raw[y * (stride + 1)], np.frombuffer(raw, np.uint8, stride, y * (stride + 1) + 1).astype(np.int32)
        out = np.zeros(stride, np.int32)
        for x in range(stride):
            a = out[x - channels] if x >= channels else 0
            b, c = prev[x], (prev[x - channels] if x >= channels else 0)
            if ftype == 0:
                pred = 0
            elif ftype == 1:
                pred = a
            elif ftype == 2:
                pred = b
            elif ftype == 3:
                pred = (a + b) // 2
            else:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                pred = a if pa <= pb and pa <= pc else (b if pb <= pc else c)
            out[x] = (line[x] + pred) & 0xFF
        rows.append(out)
        prev = out
    return np.array(rows, np.uint8).reshape(height, width, channels)


def _read(ref, store_dir) -> bytes:
    with tracker.open(ref, store=store_dir) as f:
        return f.read()


@pytest.mark.parametrize("ext", ["json", "csv", "parquet"])
def test_log_table(store_dir, ext):
    if ext == "parquet":
        pytest.importorskip("pyarrow")
    table = {"step": [1, 2, 3], "loss": [0.5, 0.25, 0.125], "tag": ["a", "b", "c"]}
    with tracker.init("t", store=store_dir) as run:
        v = run.log_table(table, f"tables/loss.{ext}")
    assert v.kind == "table" and v.uri == f"runs:/t/tables/loss.{ext}@1"
    data = _read(v.uri, store_dir)
    if ext == "json":  # MLflow's layout
        assert json.loads(data) == {"columns": ["step", "loss", "tag"],
                                    "data": [[1, 0.5, "a"], [2, 0.25, "b"], [3, 0.125, "c"]]}
    elif ext == "csv":
        assert data.decode() == "step,loss,tag\n1,0.5,a\n2,0.25,b\n3,0.125,c\n"
    else:
        import pyarrow.parquet as pq
        assert pq.read_table(io.BytesIO(data)).to_pydict() == table


@pytest.mark.parametrize("shape", [(17, 23, 3), (9, 5), (6, 4, 4)])
def test_log_image_is_a_valid_png(store_dir, shape):
    pixels = np.random.default_rng(3).integers(0, 256, shape, dtype=np.uint8)
    with tracker.init("img", store=store_dir) as run:
        v = run.log_image(pixels, "images/sample.png")
    data = _read(v.uri, store_dir)
    assert v.kind == "image" and data[:8] == b"\x89PNG\r\n\x1a\n"
    np.testing.assert_array_equal(_read_png(data), pixels.reshape(shape[0], shape[1], -1))
    try:
        from PIL import Image
    except ImportError:
        return
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(data))), pixels)


def test_log_image_of_floats_scales_to_bytes(store_dir):
    with tracker.init("img", store=store_dir) as run:
        v = run.log_image(np.array([[0.0, 0.5], [1.0, 2.0]]), "gray.png")
    np.testing.assert_array_equal(_read_png(_read(v.uri, store_dir))[..., 0], [[0, 128], [255, 255]])


def test_log_numpy_npy_and_npz(store_dir, tmp_path):
    small = np.arange(12, dtype=np.int16).reshape(3, 4)
    big = np.random.default_rng(5).standard_normal((200, 100))
    with tracker.init("np", store=store_dir) as run:
        v_small = run.log_numpy(small, "arrays/small.npy")
        v_big = run.log_numpy(big, "arrays/big.npy")
        v_npz = run.log_numpy({"w": big, "b": small}, "arrays/both.npz")
        v_one = run.log_numpy(small, "arrays/one.npz")
    assert v_small.size <= 4096 < v_big.size  # one inline, one in a pack
    for v, expected in ((v_small, small), (v_big, big)):
        loaded = np.load(io.BytesIO(_read(v.uri, store_dir)))
        assert loaded.dtype == expected.dtype
        np.testing.assert_array_equal(loaded, expected)
    path = tracker.download(v_npz.uri, tmp_path / "both.npz", store=store_dir)
    with np.load(path) as npz:
        assert sorted(npz.files) == ["b", "w"]
        np.testing.assert_array_equal(npz["w"], big)
        np.testing.assert_array_equal(npz["b"], small)
    with np.load(io.BytesIO(_read(v_one.uri, store_dir))) as npz:
        np.testing.assert_array_equal(npz["arr_0"], small)


def test_log_artifact_glob_is_a_tree_of_the_matches(store_dir, tmp_path):
    root = _make_folder(str(tmp_path / "outputs"), {"a.csv": b"a\n1\n", "b.csv": b"b\n2\n", "sub/c.csv": b"c\n3\n",
                                                    "sub/deeper/d.csv": b"d\n4\n", "x.txt": b"not a csv",
                                                    "sub/y.json": b"{}"})
    with tracker.init("g", store=store_dir) as run:
        every = run.log_artifact(os.path.join(root, "**", "*.csv"), name="csvs")
        top = run.log_artifact(os.path.join(root, "*.csv"), name="top")
        one = run.log_artifact(os.path.join(root, "sub", "c.cs?"), name="one")
    assert every.object_type == top.object_type == one.object_type == "tree"
    got = tracker.download("runs:/g/csvs", tmp_path / "csvs", store=store_dir)
    assert files_under(got) == {"a.csv": b"a\n1\n", "b.csv": b"b\n2\n", "sub/c.csv": b"c\n3\n",
                                 "sub/deeper/d.csv": b"d\n4\n"}
    got = tracker.download("runs:/g/top", tmp_path / "top", store=store_dir)
    assert files_under(got) == {"a.csv": b"a\n1\n", "b.csv": b"b\n2\n"}
    got = tracker.download("runs:/g/one", tmp_path / "one", store=store_dir)
    assert files_under(got) == {"c.csv": b"c\n3\n"}
    assert every.size == sum(len(b) for b in files_under(tmp_path / "csvs").values())


def test_log_artifact_ref_stores_nothing_and_use_artifact_is_lineage(store_dir, tmp_path, cli):
    src = tmp_path / "w.bin"
    src.write_bytes(os.urandom(50_000))
    with tracker.init("producer", store=store_dir) as run:
        model = run.log_artifact(src, name="model")
    store = Store.open(store_dir)
    packs_before = {k for k, _ in store.backend.list("") if not k.startswith("runs/")}
    with tracker.init("consumer", store=store_dir) as run:
        ref = run.log_artifact_ref("s3://datasets/imagenet/train.csv", name="raw-data", kind="dataset",
                                   summary={"rows": 1281167})
        used = run.use_artifact("runs:/producer/model")
        by_digest = run.use_artifact(model.digest[:12])
        ref_used = run.use_artifact("runs:/consumer/raw-data")
    assert ref.digest is None and ref.size == 0 and ref.kind == "dataset" and ref.metadata == {"rows": 1281167}
    assert {k for k, _ in store.backend.list("") if not k.startswith("runs/")} == packs_before  # nothing stored
    assert used.digest == model.digest and used.uri == "runs:/producer/model@1"
    assert by_digest.digest == model.digest and ref_used.digest is None

    rows = cli("log", "consumer", "--json").json()
    assert rows == [{"name": "raw-data", "step": 1, "kind": "dataset", "digest": None, "size": 0, "new_bytes": 0,
                     "time": rows[0]["time"], "uri": "runs:/consumer/raw-data@1", "metadata": {"rows": 1281167},
                     "aliases": [], "ref_uri": "s3://datasets/imagenet/train.csv"}]
    inputs = tracker.get_run("consumer", store=store_dir).inputs
    assert inputs == [{"ref": "runs:/producer/model", "digest": model.digest, "uri": "runs:/producer/model@1"},
                      {"ref": model.digest[:12], "digest": model.digest},
                      {"ref": "runs:/consumer/raw-data", "uri": "runs:/consumer/raw-data@1"}]
    assert tracker.get_run("producer", store=store_dir).inputs == []
    du = cli("du", "consumer", "--json").json()
    assert du["versions"] == [] and du["total_bytes"] == 0


# ---- 8. nothing left in the working directory ------------------------------------------------------

def test_in_memory_verbs_leave_no_file_behind(store_dir, tmp_path, monkeypatch):
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    with tracker.init("clean", store=store_dir) as run:
        run.log_text("hello", "notes/hello.txt")
        run.log_text("long " * 5000, "notes/long.txt")
        run.log_dict({"a": 1}, "cfg/a.json")
        run.log_dict({"a": list(range(3000))}, "cfg/big." + ("yaml" if importlib.util.find_spec("yaml") else "json"))
        run.log_table({"x": list(range(2000))}, "tables/x.csv")
        run.log_table({"x": [1, 2]}, "tables/x.json")
        run.log_image(np.zeros((64, 64, 3), np.uint8), "images/black.png")
        run.log_image(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8), "images/noise.png")
        run.log_numpy(np.arange(10), "arrays/a.npy")
        run.log_numpy({"w": np.ones((100, 100))}, "arrays/b.npz")
    assert list(os.walk(cwd)) == [(str(cwd), [], [])]
    assert len(tracker.get_run("clean", store=store_dir).versions) == 10


# ---- 9. small content costs one object ---------------------------------------------------------------

def _store_files(store_dir) -> set[str]:
    return {os.path.relpath(os.path.join(d, f), store_dir).replace(os.sep, "/")
            for d, _, files in os.walk(store_dir) for f in files}


def test_small_content_costs_one_object(store_dir):
    store = Store.open(store_dir)
    run = tracker.init("small", store=store)
    for call in (lambda: run.log_text("a short note", "note.txt"),            # a new name, default step
                 lambda: run.log_text("another note", "note.txt"),            # the next default step
                 lambda: run.log_dict({"lr": 0.1}, "params.json"),
                 lambda: run.log_text("explicit", "note.txt", step=100),
                 lambda: run.log_numpy(np.arange(4), "a.npy")):
        before = _store_files(store_dir)
        v = call()
        new = _store_files(store_dir) - before
        assert len(new) == 1, new
        (key,) = new
        assert is_record_key(key) and key == v.key
    assert [v.step for v in store.records.versions("small", "note.txt")] == [1, 2, 100]


# ---- 10. the same flow on S3, read back by another machine -----------------------------------------

def test_s3_flow_and_a_second_machine(s3_store, tmp_path):
    writer = Store.open(s3_store, cache_dir=str(tmp_path / "machine-a"))
    ckpt = tmp_path / "ckpt.bin"
    contents = []
    with tracker.init("remote", store=writer, config={"lr": 0.01}) as run:
        for data in _evolving_checkpoint(ckpt, 4 * MiB, 2, seed=2):
            v = run.log_artifact(ckpt, name="model", kind="checkpoint")
            contents.append(data)
        assert v.step == 2 and v.new_bytes < MiB
        before = set(writer.backend.list(""))
        note = run.log_text("trained on S3", "notes.txt")
        assert len(set(writer.backend.list("")) - before) == 1  # small content: one object, also on S3

    reader = Store.open(s3_store, cache_dir=str(tmp_path / "machine-b"))
    for step, data in enumerate(contents, start=1):
        got = tracker.download(f"runs:/remote/model@{step}", tmp_path / f"m{step}.bin", store=reader)
        assert open(got, "rb").read() == data
    with tracker.open("runs:/remote/notes.txt", store=reader) as f:
        assert f.read() == b"trained on S3"
    info = tracker.get_run("remote", store=reader)
    assert info.status == "finished" and info.config == {"lr": 0.01}
    assert [v.uri for v in info.versions] == ["runs:/remote/model@1", "runs:/remote/model@2", note.uri]


def test_inline_content_resolves_by_digest_on_a_fresh_machine(store_dir, tmp_path, cli):
    with tracker.init("r", store=store_dir) as run:
        v = run.log_text("small note", "notes.md")
    fresh = Store.open(store_dir, cache_dir=str(tmp_path / "fresh-cache"))
    assert fresh.read_bytes(v.digest) == b"small note"
    assert Store.open(store_dir, cache_dir=str(tmp_path / "fresh-2")).read_bytes(v.digest[:10]) == b"small note"
    assert Store.open(store_dir, cache_dir=str(tmp_path / "fresh-3")).stats()["files"] == 1


def test_verify_reports_a_damaged_record_and_checks_live_versions(store_dir, tmp_path, cli):
    with tracker.init("r", store=store_dir) as run:
        run.log_text("a", "a.txt")
        run.log_text("b", "b.txt")
    store = Store.open(store_dir)
    key = [k for k, _ in store.backend.list("runs/") if is_record_key(k) and "/v/" in k][0]
    with open(os.path.join(store_dir, *key.split("/")), "r+b") as f:
        f.write(b"\xc1broken")
    import shutil
    shutil.rmtree(os.environ["CAS_CACHE_DIR"])
    r = cli("--json", "verify")
    assert r.code == 5 and "Traceback" not in r.err
    report = json.loads(r.out)
    assert not report["ok"] and any(key in p for p in report["problems"]) and report["versions"] == 1


def test_a_selection_path_escaping_the_tree_is_refused(store_dir, tmp_path):
    src = tmp_path / "f.txt"
    src.write_text("x")
    store = Store.open(store_dir)
    for rel in ("../evil.txt", "/abs.txt", "a//b.txt", "./a.txt"):
        with pytest.raises(InvalidInput):
            store.put_selection([(rel, str(src))])


def test_every_logging_call_reports_progress_up_to_its_size(store_dir, tmp_path):
    """on_progress(n) adds up to the bytes each call stored or restored, small inline content too."""
    big = np.random.default_rng(0).standard_normal(300_000).astype(np.float32)
    (tmp_path / "w.bin").write_bytes(big.tobytes())
    counted: dict[str, int] = {}

    def counter(key):
        counted[key] = 0
        return lambda n: counted.__setitem__(key, counted[key] + n)
    with tracker.init("progress", store=store_dir) as run:
        sizes = {
            "artifact": run.log_artifact(tmp_path / "w.bin", on_progress=counter("artifact")).size,
            "model": run.log_model(tmp_path / "w.bin", on_progress=counter("model")).size,
            "text": run.log_text("hello", "notes.txt", on_progress=counter("text")).size,
            "dict": run.log_dict({"a": 1}, "c.json", on_progress=counter("dict")).size,
            "numpy": run.log_numpy(big, "big.npy", on_progress=counter("numpy")).size,
        }
    tracker.download("runs:/progress/w.bin", tmp_path / "back.bin", store=store_dir, on_progress=counter("download"))
    sizes["download"] = big.nbytes
    assert counted == sizes and sizes["numpy"] > big.nbytes
