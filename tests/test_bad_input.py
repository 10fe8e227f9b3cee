"""Bad input: one clear line on stderr, a non-zero exit, and nothing half-written left behind.

Covered: a missing path, an unreadable file, an unknown or ambiguous reference, a malformed reference or store URI,
a store of a newer format version, an existing destination without --force, and read commands on a missing store.
"Nothing half-written" means: no temp files in the store (its tmp/ folder included) or next to the destination, no
file at the destination, no new object or pin in the store, and the store still verifies.
"""

from __future__ import annotations

import ctypes
import json
import os
import pwd
import shutil
import subprocess
import sys
import tempfile

import pytest
from conftest import files_under, leftovers, one_error_line, run_cas, write_checkpoint

from cas import Store
from cas.config import FORMAT_VERSION
from cas.errors import AmbiguousReference
from cas.index import Index

KiB = 1 << 10


# ---- helpers --------------------------------------------------------------------------------------






def _spool_files(store_dir) -> list[str]:
    tmp = os.path.join(store_dir, "tmp")
    return sorted(os.listdir(tmp)) if os.path.isdir(tmp) else []


def _assert_untouched(cli, store_dir, before: dict[str, bytes]) -> None:
    """The store holds exactly what it held before, no temp file, and still verifies end to end."""
    assert files_under(store_dir) == before
    assert _spool_files(store_dir) == []
    assert leftovers(store_dir) == []
    v = cli("verify", "--read-data")
    assert v.code == 0, v.err
    assert v.out.startswith("ok:"), v.out


def _pins(cli) -> dict[str, str]:
    r = cli("--json", "pins")
    assert r.code == 0, r.err
    return {p["label"]: p["digest"] for p in r.json()}


@pytest.fixture
def stored(cli, tmp_path):
    """A store holding a pinned file (label: its path) and a pinned folder; returns their digests and paths."""
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    write_checkpoint(src / "weights.bin", 300 * KiB, seed=1)
    (src / "sub" / "notes.txt").write_text("hello\n")
    f = cli("--json", "put", str(src / "weights.bin"))
    assert f.code == 0, f.err
    t = cli("--json", "put", str(src))
    assert t.code == 0, t.err
    return {"file": f.json()["digest"], "tree": t.json()["digest"], "file_path": str(src / "weights.bin"),
            "tree_path": str(src)}


# ---- a missing path ----------------------------------------------------------------------------

def test_put_of_a_missing_path_fails_and_stores_nothing(cli, store_dir, tmp_path, stored):
    before, pins = files_under(store_dir), _pins(cli)
    missing = str(tmp_path / "no-such-file.bin")
    r = cli("put", missing)
    assert r.code == 3
    line = one_error_line(r.err)
    assert "no such file or folder" in line and missing in line
    assert r.out == ""
    assert _pins(cli) == pins
    _assert_untouched(cli, store_dir, before)


def test_put_of_a_missing_path_does_not_create_the_store(cli, store_dir, tmp_path):
    r = cli("put", str(tmp_path / "nope"))
    assert r.code == 3
    assert "no such file or folder" in one_error_line(r.err)
    assert not os.path.exists(store_dir)


@pytest.mark.parametrize("where", ["first", "middle", "last"])
def test_put_of_several_paths_with_one_missing_stores_nothing(cli, store_dir, tmp_path, stored, where):
    """All paths are checked before anything is stored: a typo must not leave half a batch pinned."""
    a, b = tmp_path / "a.bin", tmp_path / "b.bin"
    write_checkpoint(a, 100 * KiB, seed=11)
    write_checkpoint(b, 100 * KiB, seed=12)
    missing = str(tmp_path / "typo.bin")
    paths = {"first": [missing, str(a), str(b)], "middle": [str(a), missing, str(b)],
             "last": [str(a), str(b), missing]}[where]
    before, pins = files_under(store_dir), _pins(cli)
    r = cli("put", *paths)
    assert r.code == 3
    line = one_error_line(r.err)
    assert missing in line
    assert r.out == ""
    assert _pins(cli) == pins  # neither the missing path nor the good ones were pinned
    _assert_untouched(cli, store_dir, before)  # and no pack holds their bytes
    # the same batch without the typo works
    ok = cli("put", str(a), str(b))
    assert ok.code == 0, ok.err
    assert set(_pins(cli)) == set(pins) | {str(a), str(b)}


def test_put_of_several_paths_with_one_missing_on_a_new_store_creates_nothing(cli, store_dir, tmp_path):
    a = tmp_path / "a.bin"
    a.write_bytes(b"a" * 1000)
    r = cli("put", str(a), str(tmp_path / "typo.bin"))
    assert r.code == 3
    one_error_line(r.err)
    assert not os.path.exists(store_dir)


# ---- an unreadable file ------------------------------------------------------------------------

PR_CAPBSET_DROP, CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH = 24, 1, 2


class _Unprivileged:
    """Runs `cas` as a process that file modes apply to (root ignores chmod 000), in a folder it may use.

    As root: as user nobody if it can run this interpreter, else as root without the two capabilities that
    override file modes (dropped from the bounding set before exec). Not root: just the current user.
    """

    def __init__(self, work: str):
        self.work = work
        self.env = {"CAS_CACHE_DIR": os.path.join(work, "cache")}
        self.preexec = None
        self.how = "current user"
        if os.geteuid() == 0:
            self._pick()

    def _pick(self) -> None:
        secret = os.path.join(self.work, "probe")
        with open(secret, "w") as f:
            f.write("x")
        os.chmod(secret, 0)
        try:
            nobody = pwd.getpwnam("nobody")
        except KeyError:
            nobody = None
        libc = ctypes.CDLL(None, use_errno=True)  # loaded here, not between fork and exec

        def as_nobody():
            os.setgroups([])
            os.setgid(nobody.pw_gid)
            os.setuid(nobody.pw_uid)

        def without_dac_override():
            for cap in (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH):
                if libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
                    raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")

        candidates = ([("user nobody", as_nobody)] if nobody else []) + [("root without CAP_DAC_OVERRIDE",
                                                                          without_dac_override)]
        probe = "import cas.store, sys\ntry:\n    open(sys.argv[1]).read()\nexcept PermissionError:\n    sys.exit(42)"
        reasons = []
        for how, fn in candidates:
            try:
                r = subprocess.run([sys.executable, "-c", probe, secret], preexec_fn=fn, cwd=self.work,
                                   capture_output=True, text=True, env=dict(os.environ, **self.env))
            except (OSError, subprocess.SubprocessError) as exc:
                reasons.append(f"{how}: {exc}")
                continue
            if r.returncode == 42:
                self.preexec, self.how = fn, how
                os.unlink(secret)
                return
            reasons.append(f"{how}: probe exited {r.returncode} {r.stderr.strip()[-200:]}")
        pytest.skip("cannot run cas as a process that file modes apply to: " + "; ".join(reasons))

    def cas(self, *args: str) -> subprocess.CompletedProcess:
        return run_cas(*args, env=self.env, preexec_fn=self.preexec, cwd=self.work)


@pytest.fixture
def unprivileged():
    work = tempfile.mkdtemp(prefix="cas-bad-input-")
    os.chmod(work, 0o777)  # user nobody creates the store, its cache and the files there
    try:
        yield _Unprivileged(work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


@pytest.mark.parametrize("what", ["file", "file-in-folder", "folder-in-folder"])
def test_put_of_an_unreadable_file_fails_cleanly(unprivileged, what):
    u = unprivileged
    store = os.path.join(u.work, "store")
    src = os.path.join(u.work, "src")
    assert u.cas("--store", store, "init").returncode == 0
    os.makedirs(os.path.join(src, "inner"))
    write_checkpoint(os.path.join(src, "a.bin"), 200 * KiB, seed=21)
    write_checkpoint(os.path.join(src, "inner", "b.bin"), 200 * KiB, seed=22)
    for dirpath, _dirnames, filenames in os.walk(src):
        os.chmod(dirpath, 0o777)
        for name in filenames:
            os.chmod(os.path.join(dirpath, name), 0o666)
    r = u.cas("--store", store, "put", os.path.join(src, "a.bin"))  # something already in the store
    assert r.returncode == 0, (u.how, r.stderr)
    if what == "folder-in-folder":
        os.chmod(os.path.join(src, "inner"), 0)
        target, bad = src, os.path.join(src, "inner")
    else:
        os.chmod(os.path.join(src, "inner", "b.bin"), 0)
        target = os.path.join(src, "inner", "b.bin") if what == "file" else src
        bad = os.path.join(src, "inner", "b.bin")
    before = files_under(store)
    r = u.cas("--store", store, "put", target)
    assert r.returncode != 0, u.how
    line = one_error_line(r.stderr)
    assert bad in line and "permission denied" in line.lower(), line
    assert r.stdout == ""
    assert files_under(store) == before  # no pack, no pin
    assert _spool_files(store) == [] and leftovers(store) == []
    pins = u.cas("--store", store, "--json", "pins")
    assert [p["label"] for p in json.loads(pins.stdout)] == [os.path.join(src, "a.bin")]
    v = u.cas("--store", store, "verify", "--read-data")
    assert v.returncode == 0 and v.stdout.startswith("ok:"), v.stderr


# ---- unknown, ambiguous and malformed references ------------------------------------------------

def _ref_commands(ref: str, dest: str) -> dict[str, list[str]]:
    return {"cat": ["cat", ref], "get": ["get", ref, "-o", dest], "pin": ["pin", ref, "--label", "new-label"]}


@pytest.mark.parametrize("command", ["cat", "get", "pin"])
@pytest.mark.parametrize("form", ["digest", "cas-uri", "prefix"])
def test_unknown_reference(cli, store_dir, tmp_path, stored, command, form):
    unknown = "0123456789abcdef" * 4
    assert unknown not in (stored["file"], stored["tree"])
    ref = {"digest": unknown, "cas-uri": "cas://" + unknown, "prefix": unknown[:8]}[form]
    dest = tmp_path / "out" / "deeper" / "restored.bin"
    before, pins = files_under(store_dir), _pins(cli)
    r = cli(*_ref_commands(ref, str(dest))[command])
    assert r.code == 3
    line = one_error_line(r.err)
    assert "unknown reference" in line and ref in line
    assert r.out == ""
    assert not (tmp_path / "out").exists()  # not even the destination's parent folders
    assert leftovers(tmp_path) == []
    assert _pins(cli) == pins
    _assert_untouched(cli, store_dir, before)


def _index_of(store_dir) -> Index:
    from cas import Store
    return Store.open(str(store_dir))._open_index()


def _inject_twins(index: Index, digest: str) -> list[bytes]:
    """Add index entries for two made-up manifests sharing the first 16 hex digits of `digest`."""
    real = bytes.fromhex(digest)
    with index.env.begin(write=True) as txn:
        value = txn.get(real, db=index.manifests)
        assert value is not None
        twins = [real[:8] + bytes([b]) * 24 for b in (0x00, 0xFF)]
        for key in twins:
            assert key != real
            txn.put(key, value, db=index.manifests)
    return twins


def _remove(index: Index, keys: list[bytes]) -> None:
    with index.env.begin(write=True) as txn:
        for key in keys:
            txn.delete(key, db=index.manifests)


@pytest.mark.parametrize("command", ["cat", "get", "pin"])
def test_ambiguous_reference(cli, store_dir, tmp_path, stored, command):
    digest = stored["file"]
    before, pins = files_under(store_dir), _pins(cli)
    index = _index_of(store_dir)
    twins = _inject_twins(index, digest)
    dest = tmp_path / "out" / "restored.bin"
    for ref in (digest[:8], digest[:13], digest[:16], "cas://" + digest[:8].upper()):
        r = cli(*_ref_commands(ref, str(dest))[command])
        assert r.code == 2, r.err
        line = one_error_line(r.err)
        assert "ambiguous" in line and ref in line
        assert r.out == ""
        assert not (tmp_path / "out").exists()
        assert leftovers(tmp_path) == []
    # the full digest still names the one object
    assert cli("get", "cas://" + digest, "-o", str(dest)).code == 0
    assert dest.read_bytes() == open(stored["file_path"], "rb").read()
    _remove(index, twins)
    assert _pins(cli) == pins
    _assert_untouched(cli, store_dir, before)


def test_ambiguous_reference_from_the_api(store_dir, tmp_path):
    store = Store.open(store_dir)
    (tmp_path / "f").write_bytes(b"some bytes")
    digest = store.put_file(tmp_path / "f").digest
    _inject_twins(store.index, digest)
    with pytest.raises(AmbiguousReference) as err:
        store.resolve(digest[:8])
    assert "ambiguous" in str(err.value) and err.value.exit_code == 2
    assert store.resolve(digest)[0].hex() == digest


@pytest.mark.parametrize("command", ["cat", "get", "pin"])
@pytest.mark.parametrize("ref, says, code", [
    ("cas://xyz", "not a digest reference", 2),
    ("cas://1234567", "too short", 2),
    ("", "not a reference", 2),
    ("cas://", "not a digest reference", 2),
    # anything else that is not a digest may be a pin label: none of these is one
    ("1234567", "at least 8 hex characters", 3),
    ("ghijklmn", "not a digest, a runs:/ reference or a pin label", 3),
    ("0123456789abcdeX", "not a digest, a runs:/ reference or a pin label", 3),
    ("0" * 65, "not a digest, a runs:/ reference or a pin label", 3),
    ("sha256:" + "0" * 64, "not a digest, a runs:/ reference or a pin label", 3),
])
def test_malformed_reference(cli, store_dir, tmp_path, stored, command, ref, says, code):
    dest = tmp_path / "out" / "restored.bin"
    before, pins = files_under(store_dir), _pins(cli)
    r = cli(*_ref_commands(ref, str(dest))[command])
    assert r.code == code
    line = one_error_line(r.err)
    assert says in line and repr(ref) in line
    assert not (tmp_path / "out").exists()
    assert _pins(cli) == pins
    _assert_untouched(cli, store_dir, before)


# ---- a malformed store URI ---------------------------------------------------------------------

@pytest.mark.parametrize("uri", ["file:relative", "file:/abs/path", "file://relative", "s3:/bucket", "s3:bucket",
                                 "foo://bar", "://nothing", ""])
@pytest.mark.parametrize("command", ["init", "put", "get", "stats", "verify", "pins"])
def test_malformed_store_uri(cli, tmp_path, monkeypatch, uri, command):
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)  # where a fallback ./.cas would appear
    (tmp_path / "f.bin").write_bytes(b"x" * 1000)
    args = {"init": ["init"], "put": ["put", str(tmp_path / "f.bin")],
            "get": ["get", "0" * 64, "-o", str(tmp_path / "out")], "stats": ["stats"],
            "verify": ["verify"], "pins": ["pins"]}[command]
    r = cli("--store", uri, *args, store=None)
    assert r.code == 2, r.err
    line = one_error_line(r.err)
    assert "URI" in line and repr(uri) in line
    assert os.listdir(cwd) == []
    assert not (tmp_path / "out").exists()
    assert not os.path.exists(os.path.join(os.environ["CAS_CACHE_DIR"]))


def test_malformed_store_uri_from_the_environment(tmp_path):
    r = run_cas("stats", env={"CAS_STORE": "foo://bar"}, cwd=tmp_path)
    assert r.returncode == 2
    assert "foo://bar" in one_error_line(r.stderr)


# ---- a store of a newer format version ---------------------------------------------------------

def _bump_format(store_dir, version: int) -> None:
    path = os.path.join(store_dir, "config")
    with open(path) as f:
        config = json.load(f)
    config["format_version"] = version
    with open(path, "w") as f:
        json.dump(config, f)


@pytest.mark.parametrize("command", ["init", "put", "get", "cat", "stats", "verify", "reindex", "pins", "pin",
                                     "unpin"])
def test_store_of_a_newer_format_version(cli, store_dir, tmp_path, stored, command):
    new = tmp_path / "new.bin"
    new.write_bytes(b"new bytes" * 100)
    dest = tmp_path / "out" / "restored.bin"
    args = {"init": ["init"], "put": ["put", str(new)], "get": ["get", stored["file"], "-o", str(dest)],
            "cat": ["cat", stored["file"]], "stats": ["stats"], "verify": ["verify", "--read-data"],
            "reindex": ["reindex"], "pins": ["pins"], "pin": ["pin", stored["file"], "--label", "x"],
            "unpin": ["unpin", stored["file_path"]]}[command]
    pins = _pins(cli)
    newer = FORMAT_VERSION + 1
    _bump_format(store_dir, newer)
    before = files_under(store_dir)
    r = cli(*args)
    assert r.code == 7
    line = one_error_line(r.err)
    assert f"format version {newer}" in line and "upgrade cas" in line
    assert r.out == ""
    assert files_under(store_dir) == before
    assert not (tmp_path / "out").exists()
    _bump_format(store_dir, FORMAT_VERSION)
    assert _pins(cli) == pins
    _assert_untouched(cli, store_dir, files_under(store_dir))


def test_store_of_a_newer_format_version_in_a_real_process(store_dir, tmp_path):
    (tmp_path / "f").write_bytes(b"abc" * 1000)
    assert run_cas("--store", store_dir, "put", str(tmp_path / "f")).returncode == 0
    _bump_format(store_dir, 99)
    for args in (["put", str(tmp_path / "f")], ["stats"], ["verify"], ["get", "cas://" + "0" * 64, "-o", "x"]):
        r = run_cas("--store", store_dir, *args, cwd=tmp_path)
        assert r.returncode == 7, (args, r.stderr)
        assert "format version 99" in one_error_line(r.stderr)
    assert not (tmp_path / "x").exists()


# ---- an existing destination without --force ---------------------------------------------------

@pytest.mark.parametrize("case", ["file-over-file", "file-into-folder", "folder-over-folder", "folder-over-file",
                                  "file-over-link"])
def test_existing_destination_without_force(cli, store_dir, tmp_path, stored, case):
    work = tmp_path / "work"
    work.mkdir()
    if case == "file-over-file":
        ref, dest, existing = stored["file"], work / "out.bin", work / "out.bin"
        existing.write_bytes(b"precious")
    elif case == "file-into-folder":  # the file would be restored as work/weights.bin (its pin's base name)
        ref, dest, existing = stored["file"], work, work / "weights.bin"
        existing.write_bytes(b"precious")
    elif case == "folder-over-folder":
        ref, dest, existing = stored["tree"], work / "model", work / "model" / "keep.txt"
        existing.parent.mkdir()
        existing.write_bytes(b"precious")
    elif case == "folder-over-file":
        ref, dest, existing = stored["tree"], work / "model", work / "model"
        existing.write_bytes(b"precious")
    else:
        ref, dest, existing = stored["file"], work / "link", work / "target"
        existing.write_bytes(b"precious")
        os.symlink("target", dest)
    listing = sorted(os.listdir(work))
    before, pins = files_under(store_dir), _pins(cli)
    r = cli("get", ref, "-o", str(dest))
    assert r.code == 4
    line = one_error_line(r.err)
    assert "exists" in line and "--force" in line
    assert existing.read_bytes() == b"precious"
    assert sorted(os.listdir(work)) == listing  # no temp file next to the destination
    assert leftovers(tmp_path) == []
    assert _pins(cli) == pins
    _assert_untouched(cli, store_dir, before)
    ok = cli("get", ref, "-o", str(dest), "--force")  # and with --force it is replaced
    assert ok.code == 0, ok.err
    assert leftovers(tmp_path) == []


# ---- read commands on a missing store ----------------------------------------------------------

@pytest.mark.parametrize("command", ["stats", "cat", "get", "verify", "pins", "pin", "unpin", "reindex"])
def test_read_commands_on_a_missing_store_create_nothing(cli, store_dir, tmp_path, command):
    digest = "ab" * 32
    dest = tmp_path / "out" / "restored.bin"
    args = {"stats": ["stats"], "cat": ["cat", digest], "get": ["get", digest, "-o", str(dest)],
            "verify": ["verify", "--read-data"], "pins": ["pins"], "pin": ["pin", digest, "--label", "x"],
            "unpin": ["unpin", "x"], "reindex": ["reindex"]}[command]
    r = cli(*args)
    assert r.code == 3
    line = one_error_line(r.err)
    assert "no cas store" in line and store_dir in line
    assert r.out == ""
    assert not os.path.exists(store_dir)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("command", [["stats"], ["verify"], ["pins"], ["cat", "cas://" + "cd" * 32]])
def test_read_commands_on_a_missing_store_in_a_real_process(tmp_path, command):
    store = tmp_path / "nested" / "store"
    r = run_cas("--store", str(store), *command, cwd=tmp_path)
    assert r.returncode == 3
    assert "no cas store" in one_error_line(r.stderr)
    assert r.stdout == ""
    assert not (tmp_path / "nested").exists()
    r = run_cas(*command, cwd=tmp_path)  # the default store, ./.cas
    assert r.returncode == 3
    assert "no cas store" in one_error_line(r.stderr)
    assert not (tmp_path / ".cas").exists()


# ---- the same, end to end in a real process ------------------------------------------------------

def test_bad_input_in_a_real_process_is_one_line(store_dir, tmp_path):
    """A few of the cases above through a real `cas` process: exit code and exactly one stderr line."""
    f = tmp_path / "f.bin"
    write_checkpoint(f, 100 * KiB, seed=31)
    put = run_cas("--store", store_dir, "--json", "put", str(f))
    assert put.returncode == 0, put.stderr
    digest = json.loads(put.stdout)["digest"]
    (tmp_path / "exists.bin").write_bytes(b"precious")
    cases = [
        (["put", str(tmp_path / "missing")], 3, "no such file or folder"),
        (["put", str(f), str(tmp_path / "missing")], 3, "no such file or folder"),
        (["cat", "0" * 64], 3, "unknown reference"),
        (["get", "cas://xyz", "-o", str(tmp_path / "o")], 2, "not a digest reference"),
        (["pin", "1234567", "--label", "x"], 3, "at least 8 hex characters"),
        (["get", digest, "-o", str(tmp_path / "exists.bin")], 4, "exists"),
        (["--store", "s3:/x", "stats"], 2, "URI"),
        (["--store", "", "stats"], 2, "URI"),
    ]
    for args, code, says in cases:
        full = args if args[0] == "--store" else ["--store", store_dir, *args]
        r = run_cas(*full, cwd=tmp_path)
        assert r.returncode == code, (args, r.stderr)
        assert says in one_error_line(r.stderr), args
    assert (tmp_path / "exists.bin").read_bytes() == b"precious"
    assert not (tmp_path / "o").exists() and not (tmp_path / ".cas").exists()
    assert leftovers(tmp_path) == []
    pins = run_cas("--store", store_dir, "--json", "pins")
    assert [p["label"] for p in json.loads(pins.stdout)] == [str(f)]
    v = run_cas("--store", store_dir, "verify", "--read-data")
    assert v.returncode == 0 and v.stdout.startswith("ok:"), v.stderr
