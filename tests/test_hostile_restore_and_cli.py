"""Hostile input to restores and the CLI: each test tries to break one promise.

Link chains whose every target looks inside but resolves outside; --force onto a FIFO, socket or device; a get
killed with SIGKILL (its temp is removed by the next get, a live get's never); destinations under a file or in a
folder no one may write; absurd gc durations; malformed S3 endpoints and credentials pasted into a store URI; and
a disk that fills up exactly while a put finishes or cleans up.
"""

from __future__ import annotations

import errno
import glob
import json
import os
import posixpath
import random
import shutil
import signal
import socket
import stat
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from conftest import cas_command, files_under, leftovers, one_error_line, run_cas
from test_bad_input import unprivileged  # noqa: F401 (a fixture: cas as a user that file modes apply to)
from test_crash_and_interrupts import small_disk  # noqa: F401 (a fixture: a 50 MiB tmpfs)
from test_trees import _store_tree

import cas.pack
from cas.errors import IntegrityError
from cas.manifest import DIR, FILE, LINK, TreeEntry, TreeManifest, check_safe
from cas.restore import _temp_sibling, check_links

KiB = 1 << 10
MiB = 1 << 20


def _put(cli, path, *extra) -> str:
    r = cli("--json", "put", str(path), *extra)
    assert r.code == 0, r.err
    return r.json()["digest"]


# ---- 1. link chains: each target looks inside, the chain leads outside ---------------------------------

def _link(path, target):
    return TreeEntry(path, LINK, target=target)


CHAINS = {
    "up-through-a-parent-link": [TreeEntry("sub", DIR), _link("l1", "sub"), _link("sub/l2", ".."),
                                 _link("x", "l1/l2/../../etc")],
    "up-from-a-dot-link": [_link("a", "."), _link("b", "a/../etc")],
    "dot-links-stacked": [_link("a", "."), _link("x", "a/a/a/a/..")],
    "link-to-a-link": [_link("g", "h"), _link("h", "i/.."), _link("i", ".")],
    "deep-link-to-the-top": [TreeEntry("a", DIR), TreeEntry("a/b", DIR), _link("a/b/up", "../.."),
                             _link("esc", "a/b/up/../etc/passwd")],
    "restored-before-the-link-it-uses": [_link("a-esc", "z/../etc"), _link("z", ".")],
}


@pytest.mark.parametrize("chain", sorted(CHAINS))
@pytest.mark.parametrize("dest_kind", ["new", "force-over-folder"])
def test_link_chain_leading_outside_is_refused(cli, store_dir, tmp_path, chain, dest_kind):
    from cas import Store
    tree = TreeManifest(tuple(CHAINS[chain]))
    check_safe(tree, name="t")  # every target passes the lexical check on its own
    with Store.open(store_dir) as store:
        digest = _store_tree(store, CHAINS[chain])
    dest = tmp_path / "out" / "tree"
    if dest_kind == "force-over-folder":
        dest.mkdir(parents=True)
        (dest / "keep.txt").write_bytes(b"precious")
    r = cli("get", digest, "-o", str(dest), "--force")
    assert r.code == 5, r.err
    assert "refusing" in one_error_line(r.err) and "resolves outside" in r.err
    if dest_kind == "new":
        assert not (tmp_path / "out").exists()
    else:
        assert os.listdir(dest) == ["keep.txt"] and (dest / "keep.txt").read_bytes() == b"precious"
    assert leftovers(tmp_path) == []


def test_links_that_stay_inside_are_restored_as_written(cli, store_dir, tmp_path):
    from cas import Store
    with Store.open(store_dir) as store:
        content = bytes.fromhex(store.put_bytes(b"payload").digest)
        entries = [TreeEntry("sub", DIR), TreeEntry("sub/f", FILE, False, content, 7), _link("l1", "sub"),
                   _link("sub/l2", ".."), _link("x", "l1/l2/sub/f"), _link("top", "."), _link("loop1", "loop2"),
                   _link("loop2", "loop1"), _link("self", "self"), _link("dangling", "nowhere/../sub")]
        digest = _store_tree(store, entries)
    dest = tmp_path / "out"
    r = cli("get", digest, "-o", str(dest))
    assert r.code == 0, r.err
    assert (dest / "x").read_bytes() == b"payload"
    assert {e.path: os.readlink(dest / e.path) for e in entries if e.kind == LINK} == \
        {e.path: e.target for e in entries if e.kind == LINK}


def _random_tree(rng: random.Random) -> list[TreeEntry]:
    """Links named a, b, c one or two deep (their folders with entries), each target lexically inside."""
    links = {}
    for _ in range(rng.randint(2, 6)):
        path = "/".join(rng.choices("abc", k=rng.randint(1, 2)))
        while True:
            target = "/".join(rng.choices(["a", "b", "c", ".", "..", ".."], k=rng.randint(1, 5)))
            lexical = posixpath.normpath(posixpath.join(posixpath.dirname(path), target))
            if lexical != ".." and not lexical.startswith("../"):
                break
        links[path] = target
    dirs = {p.split("/")[0] for p in links if "/" in p}
    return [TreeEntry(d, DIR) for d in sorted(dirs)] + [_link(p, t) for p, t in links.items() if p not in dirs]


def _kernel_reach(link: str) -> str | None:
    """Where the kernel lands through `link`, for an open or for a create through a dangling link; None: nowhere."""
    path = link
    for _ in range(40):
        try:
            return os.path.realpath(path, strict=True)
        except OSError as exc:
            if exc.errno != errno.ENOENT:
                return None  # a loop, or a file used as a folder
        target = os.path.join(os.path.dirname(path), os.readlink(path))
        try:
            folder = os.path.realpath(os.path.dirname(target), strict=True)
        except OSError:
            return None  # a create needs every folder on the way
        path = os.path.join(folder, os.path.basename(target))
        if not os.path.islink(path):
            return path
    return None


def test_link_check_agrees_with_the_kernel(tmp_path):
    """Random trees of links, built for real: whatever check_links accepts, the kernel resolves inside the tree."""
    rng = random.Random(5)
    refused = accepted = 0
    for n in range(1500):
        entries = _random_tree(rng)
        tree = TreeManifest(tuple(entries))
        check_safe(tree, name="t")
        root = tmp_path / f"t{n}" / "dest"
        root.mkdir(parents=True)
        for e in sorted(entries, key=lambda e: e.path):
            if e.kind == DIR:
                (root / e.path).mkdir()
            else:
                os.symlink(e.target, root / e.path)
        try:
            check_links(tree, name="t")
        except IntegrityError:
            refused += 1
            continue
        accepted += 1
        real_root = os.path.realpath(root)
        for e in entries:
            reach = _kernel_reach(str(root / e.path)) if e.kind == LINK else None
            assert reach is None or os.path.commonpath([reach, real_root]) == real_root, (e, reach, entries)
    assert refused > 10 and accepted > 1000, (refused, accepted)  # both sides were exercised


# ---- 2. --force never replaces a FIFO, socket or device ------------------------------------------------

@pytest.fixture
def stored(cli, tmp_path):
    src = tmp_path / "src"
    (src / "inner").mkdir(parents=True)
    (src / "inner" / "a.txt").write_bytes(b"tree content")
    (tmp_path / "weights.bin").write_bytes(os.urandom(100 * KiB))
    return {"file": _put(cli, tmp_path / "weights.bin", "--label", "models/weights.bin"), "tree": _put(cli, src)}


def _special(kind: str, folder) -> str:
    """A FIFO, socket or device node (a private copy of /dev/null's) named as a restored file would be."""
    path = os.path.join(folder, "weights.bin")
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "socket":
        with socket.socket(socket.AF_UNIX) as sock:
            sock.bind(path)
    else:
        try:
            os.mknod(path, stat.S_IFCHR | 0o666, os.stat(os.devnull).st_rdev)
        except OSError as exc:
            pytest.skip(f"cannot make a device node here: {exc.strerror}")
    return path


@pytest.mark.parametrize("kind", ["fifo", "socket", "device"])
@pytest.mark.parametrize("what", ["file", "tree", "file-into-folder"])
def test_force_never_replaces_a_special_file(cli, tmp_path, stored, kind, what):
    work = tmp_path / "work"
    work.mkdir()
    node = _special(kind, work)
    dest = str(work) + "/" if what == "file-into-folder" else node
    before = os.lstat(node)
    r = cli("get", stored["tree" if what == "tree" else "file"], "-o", dest, "--force")
    assert r.code == 2, r.err
    assert "not a regular file, folder or link" in one_error_line(r.err)
    after = os.lstat(node)
    assert (after.st_ino, after.st_mode, after.st_rdev) == (before.st_ino, before.st_mode, before.st_rdev)
    assert os.listdir(work) == ["weights.bin"]  # no temp sibling left
    r = cli("get", stored["file"], "-o", dest)  # and without --force it exists, as any destination
    assert r.code == 4 and "exists" in one_error_line(r.err)


# ---- 3. a get killed with SIGKILL: the next get removes its temp, never a live get's -----------------------

def _dead_pid() -> int:
    p = subprocess.Popen(["true"])
    p.wait()
    return p.pid


def test_a_killed_get_leaves_a_temp_the_next_get_removes(cli, store_dir, tmp_path):
    big = tmp_path / "big.bin"
    with open(big, "wb") as f:
        for _ in range(200):
            f.write(os.urandom(MiB))
    r = run_cas("--store", store_dir, "--json", "put", str(big), "--no-pin")
    assert r.returncode == 0, r.stderr
    digest = json.loads(r.stdout)["digest"]
    small = _put(cli, _small_file(tmp_path), "--no-pin")
    out = tmp_path / "out"
    out.mkdir()
    p = subprocess.Popen(cas_command() + ["--store", store_dir, "get", digest, "-o", str(out / "big.bin")],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not any(os.path.getsize(t) > 0 for t in glob.glob(str(out / ".big.bin.cas-tmp-*"))):
        assert p.poll() is None and time.monotonic() < deadline, "the get ended before it was killed"
        time.sleep(0.002)
    p.send_signal(signal.SIGKILL)
    assert p.wait() == -signal.SIGKILL
    [killed] = glob.glob(str(out / ".big.bin.cas-tmp-*"))
    assert f".cas-tmp-{p.pid}-" in killed  # named after its writer

    live = _temp_sibling(str(out / "live.bin"))  # as a get running in this very process names its temp
    reused = out / f".reused.bin.cas-tmp-{os.getpid()}-1-0123abcd"  # a live pid, but another process's start
    dead_tree = out / f".tree.cas-tmp-{_dead_pid()}-0-89abcdef"  # a killed folder restore
    older = out / ".old.bin.cas-tmp-0123abcd"  # an older version's name: no pid, so it is left alone
    for path in (live, reused, older):
        open(path, "wb").close()
    (dead_tree / "inner").mkdir(parents=True)
    (dead_tree / "inner" / "f").write_bytes(b"x")

    r = cli("get", small, "-o", str(out / "small.bin"))  # a get of something else into that folder
    assert r.code == 0, r.err
    assert not os.path.exists(killed) and not reused.exists() and not dead_tree.exists()
    assert os.path.exists(live) and older.exists()
    os.unlink(live)
    older.unlink()
    assert cli("get", digest, "-o", str(out / "big.bin")).code == 0
    assert leftovers(out) == []
    assert (out / "big.bin").stat().st_size == 200 * MiB


def _small_file(tmp_path):
    path = tmp_path / "small.bin"
    path.write_bytes(os.urandom(10 * KiB))
    return path


# ---- 4. a destination under a file, or in a folder no one may write -----------------------------------

@pytest.mark.parametrize("what", ["file", "tree"])
@pytest.mark.parametrize("under", ["file/x", "file/sub/x", "file/sub/deeper/x"])
def test_destination_under_a_file_is_one_line(cli, tmp_path, stored, what, under):
    work = tmp_path / "work"
    work.mkdir()
    (work / "file").write_bytes(b"precious")
    r = cli("get", stored[what], "-o", str(work / under))
    assert r.code == 2, r.err
    assert "is not a folder" in one_error_line(r.err)
    assert os.listdir(work) == ["file"] and (work / "file").read_bytes() == b"precious"
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("dest", ["/sys/cas-test-x", "/sys/kernel/cas-test-x", "/sys/cas-test-new/x"])
def test_destination_root_cannot_write_is_one_line(cli, tmp_path, stored, dest):
    """Root may write anywhere on a normal filesystem; sysfs refuses even root."""
    if not os.path.isdir("/sys/kernel") or os.access("/sys", os.W_OK) and _can_create("/sys"):
        pytest.skip("no sysfs that refuses new files here")
    r = cli("get", stored["file"], "-o", dest)
    assert r.code == 6, r.err
    assert "permission denied" in one_error_line(r.err)
    assert not os.path.lexists(dest)
    assert not [n for n in os.listdir("/sys") + os.listdir("/sys/kernel") if "cas" in n]


def _can_create(folder: str) -> bool:
    try:
        os.close(os.open(os.path.join(folder, ".cas-probe"), os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except OSError:
        return False
    os.unlink(os.path.join(folder, ".cas-probe"))
    return True


@pytest.mark.parametrize("what", ["file", "tree"])
@pytest.mark.parametrize("under", ["x", "new/x", "new/deeper/x"])
def test_destination_in_a_read_only_folder_is_one_line(unprivileged, what, under):  # noqa: F811
    u = unprivileged
    store = os.path.join(u.work, "store")
    src = os.path.join(u.work, "src")
    os.makedirs(os.path.join(src, "inner"))
    with open(os.path.join(src, "inner", "a.txt"), "wb") as f:
        f.write(os.urandom(50 * KiB))
    for path in (src, os.path.join(src, "inner")):
        os.chmod(path, 0o755)
    r = u.cas("--store", store, "--json", "put", os.path.join(src, "inner", "a.txt") if what == "file" else src)
    assert r.returncode == 0, (u.how, r.stderr)
    digest = json.loads(r.stdout)["digest"]
    locked = os.path.join(u.work, "locked")
    os.mkdir(locked, 0o555)
    os.chmod(locked, 0o555)
    r = u.cas("--store", store, "get", digest, "-o", os.path.join(locked, under))
    assert r.returncode == 6, (u.how, r.stderr)
    assert "permission denied" in one_error_line(r.stderr).lower(), u.how
    assert os.listdir(locked) == []


# ---- 5. absurd gc durations -----------------------------------------------------------------------------

@pytest.mark.parametrize("grace", ["9" * 400, "9" * 5000, "9" * 400 + "d", "36501d", "3153600001"])
def test_huge_grace_is_one_line(cli, grace):
    assert cli("init").code == 0
    r = cli("gc", "--grace", grace, "--dry-run")
    assert r.code == 2, r.err
    assert "at most 100 years" in one_error_line(r.err)
    assert len(r.err) < 200  # the 5000 digits are not repeated


def test_grace_of_100_years_is_accepted(cli):
    assert cli("init").code == 0
    r = cli("gc", "--grace", "36500d", "--dry-run")
    assert r.code == 0, r.err


# ---- 6. S3: malformed endpoints, credentials in the store URI ------------------------------------------

@pytest.mark.parametrize("endpoint", ["http://[::1", "notaurl", "http://host:99999", "http://host:port",
                                      "ftp://host", "http://", "http://user:s3cr3tVALUE@127.0.0.1:1"])
@pytest.mark.parametrize("command", ["init", "stats", "put"])
def test_malformed_endpoint_is_one_line(cli, tmp_path, monkeypatch, endpoint, command):
    monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
    args = {"init": ["init"], "stats": ["stats"], "put": ["put", str(_small_file(tmp_path))]}[command]
    r = cli(*args, store="s3://bucket/prefix")
    assert r.code == 2, r.err
    assert "AWS_ENDPOINT_URL" in one_error_line(r.err)
    assert "s3cr3tVALUE" not in r.err + r.out


def test_malformed_endpoint_in_a_real_process(tmp_path):
    r = run_cas("--store", "s3://bucket/prefix", "stats", env={"AWS_ENDPOINT_URL_S3": "http://[::1"}, cwd=tmp_path)
    assert r.returncode == 2
    assert "AWS_ENDPOINT_URL_S3" in one_error_line(r.stderr)


SECRET_URIS = ["s3://AKIAEXAMPLE:s3cr3tVALUE@bucket/prefix", "s3://s3cr3tVALUE@bucket", "s3://AKIAEXAMPLE:s3cr3tVALUE",
               "s3://AKIAEXAMPLE:s3cr3tVALUE/prefix", "s3:AKIAEXAMPLE:s3cr3tVALUE@bucket/prefix",
               "s3://AKIAEXAMPLE%3As3cr3tVALUE%40bucket/prefix", "file://user:s3cr3tVALUE@/x",
               "http://user:s3cr3tVALUE@host/x"]


@pytest.mark.parametrize("uri", SECRET_URIS)
@pytest.mark.parametrize("command", ["init", "stats", "put", "get", "verify", "pins", "gc"])
def test_secret_in_the_store_uri_is_never_repeated(cli, tmp_path, monkeypatch, uri, command):
    monkeypatch.chdir(tmp_path)
    args = {"init": ["init"], "stats": ["stats"], "put": ["put", str(_small_file(tmp_path))],
            "get": ["get", "0" * 64, "-o", str(tmp_path / "out")], "verify": ["verify"], "pins": ["pins"],
            "gc": ["gc", "--dry-run"]}[command]
    for as_json in ([], ["--json"]):
        r = cli(*as_json, *args, store=uri)
        assert r.code == 2, r.err
        one_error_line(r.err)
        assert "s3cr3tVALUE" not in r.err + r.out
    assert not (tmp_path / "out").exists() and not (tmp_path / ".cas").exists()


def test_secret_in_the_store_uri_from_the_environment(tmp_path):
    r = run_cas("stats", env={"CAS_STORE": SECRET_URIS[0]}, cwd=tmp_path)
    assert r.returncode == 2
    assert "s3cr3tVALUE" not in one_error_line(r.stderr) + r.stdout


# ---- 7. a disk that fills up while a put finishes or cleans up ------------------------------------------

def _fill(folder, leave: int) -> None:
    """Write a filler file so that about `leave` bytes stay free."""
    st = os.statvfs(folder)
    with open(os.path.join(folder, "filler"), "wb") as f:
        block = bytes(MiB)
        todo = st.f_bavail * st.f_frsize - leave
        while todo > 0:
            todo -= f.write(block[:min(todo, MiB)])


def _free(folder) -> int:
    st = os.statvfs(folder)
    return st.f_bavail * st.f_frsize


def test_a_put_that_barely_fits_fails_in_one_line_at_every_step(cli, small_disk, tmp_path):  # noqa: F811
    store = str(small_disk / "store")
    earlier = tmp_path / "earlier.bin"
    earlier.write_bytes(os.urandom(MiB))
    payload = tmp_path / "payload.bin"
    _fill(small_disk, 8 * MiB)
    outcomes = []
    for step in range(28):
        assert cli("init", store=store).code == 0
        r = cli("--json", "put", str(earlier), store=store)
        assert r.code == 0, r.err
        earlier_digest = r.json()["digest"]
        size = _free(small_disk) - 40 * KiB + step * 2 * KiB  # from "fits with room" to "the pack does not fit"
        with open(payload, "wb") as f:
            f.write(os.urandom(size))
        r = cli("--json", "put", str(payload), store=store)
        if r.code == 0:
            outcomes.append("fits")
        else:
            assert r.code == 6, r.err
            line = one_error_line(r.err)
            assert "no space left on device" in line and r.out == ""
            outcomes.append(line.split(" while ")[1].split("/")[0])
        assert leftovers(small_disk) == [], (size, outcomes)
        v = cli("verify", "--read-data", store=store)
        assert v.code == 0 and v.out.startswith("ok:"), v.err
        got = tmp_path / "got.bin"
        assert cli("get", earlier_digest, "-o", str(got), store=store).code == 0
        assert got.read_bytes() == earlier.read_bytes()
        got.unlink()
        shutil.rmtree(store)
    assert "fits" in outcomes and len(set(outcomes)) >= 3, outcomes  # it fit, and failed at more than one step


class _FullDisk:
    """A spool file on a disk that is full: every write fails, and so does the flush in close()."""

    def __init__(self, real):
        self.real = real

    def write(self, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    def close(self):
        self.real.close()
        raise OSError(errno.ENOSPC, "No space left on device")


def test_pack_cleanup_never_raises_over_the_first_error(tmp_path, monkeypatch):
    spool = tmp_path / "spool"
    with ThreadPoolExecutor(max_workers=1) as writer:
        pack = cas.pack.PackWriter(str(spool), writer)
        pack._file = _FullDisk(pack._file)
        pack.add(cas.pack.CHUNK, bytes(32), b"x" * 100, 100, 0, bytes(32))
        with pytest.raises(OSError):
            pack.finish()
        pack.abort()  # the close fails again: abort still does not raise
        assert os.listdir(spool) == []
        pack = cas.pack.PackWriter(str(spool), writer)
        pack._file = _FullDisk(pack._file)
        with monkeypatch.context() as m:
            m.setattr(cas.pack.os, "unlink", _fails)
            pack.abort()  # nor when the spool file cannot be removed
        os.unlink(pack.path)


def _fails(*args, **kwargs):
    raise OSError(errno.EIO, "Input/output error")


def _data_keys(store_dir) -> set[str]:
    return {k for k in files_under(store_dir) if k.startswith(("packs/", "index/", "pins/"))}


def test_full_disk_inside_the_pack_cleanup_is_one_line(cli, store_dir, tmp_path, monkeypatch):
    earlier = _put(cli, _small_file(tmp_path))
    before = _data_keys(store_dir)
    real_init = cas.pack.PackWriter.__init__

    def full_disk_init(self, spool_dir, writer, path=None):
        real_init(self, spool_dir, writer, path)
        self._file = _FullDisk(self._file)
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(6 * MiB))
    with monkeypatch.context() as m:
        m.setattr(cas.pack.PackWriter, "__init__", full_disk_init)
        r = cli("put", str(big))
    assert r.code == 6, r.err
    assert "no space left on device" in one_error_line(r.err)
    assert _data_keys(store_dir) == before and leftovers(store_dir) == []
    assert cli("verify", "--read-data").code == 0
    assert cli("get", earlier, "-o", str(tmp_path / "back.bin")).code == 0
