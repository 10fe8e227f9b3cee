"""The backend contract: every backend passes the same tests, unchanged.

The contract is what an S3 bucket does (a flat map from string keys to byte strings):

* get(key, start, end) returns bytes [start, end) clipped to the object: a range past the end gives the
  bytes that exist, or b"" (never an error); a missing key raises NotFound.
* put(..., create_only=True) on an existing key returns False and leaves the first content; without
  create_only it overwrites. Where conditional_writes is True, create_only is atomic: of racing
  creators exactly one wins. put_file may consume (remove) its source file. Data is bytes or bytearray.
* stat is the size, or None when absent. list(prefix), and list_times (the same keys with modification
  times by the backend's own clock), match keys by plain string prefix (not folder by folder), in no
  promised order, and never show temp objects: partial puts, spool files, and any key under
  layout.TMP ("tmp/"), which can still be put, read and deleted by name.
* delete ignores absent keys. Folders do not exist on their own: a "folder" of a local store (the
  common prefix of some keys) is not an object, so get raises NotFound, stat is None, delete ignores it.

Callers always pass 0 <= start <= end, and keys made by cas.layout (no key is both an object and the
folder of another one); the contract says nothing about other inputs.

To run the contract on another backend, add an entry to BACKENDS: a generator taking pytest's `request`
(for tmp_path or server fixtures: request.getfixturevalue) that yields a fresh, empty backend and cleans
it up afterwards (skip with pytest.importorskip or pytest.skip when its service is unavailable), plus,
if it has temp objects, a function that leaves one behind as an interrupted put would. The fixture calls
create_location() before the tests.
"""

from __future__ import annotations

import os
import secrets
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest

from cas import layout
from cas.backends import Backend
from cas.backends.local import TMP_PREFIX, LocalBackend
from cas.backends.memory import MemoryBackend
from cas.errors import NotFound


# ---- the backends under test ------------------------------------------------------------------
def _memory(request) -> Iterator[Backend]:
    backend = MemoryBackend()
    yield backend
    backend.close()


def _local(request) -> Iterator[Backend]:
    backend = LocalBackend(str(request.getfixturevalue("tmp_path") / "store"))
    yield backend
    backend.close()


def _local_partial_put(backend: LocalBackend, key: str) -> None:
    """What a put killed before its link leaves: a temp file next to where the key would be."""
    folder = os.path.dirname(backend._path(key))
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, TMP_PREFIX + secrets.token_hex(8)), "wb") as f:
        f.write(b"half a pack")


def _s3_on(store_fixture: str):
    def make(request) -> Iterator[Backend]:
        from cas.backends.s3 import S3Backend
        backend = S3Backend(request.getfixturevalue(store_fixture))  # a fresh bucket per test
        yield backend
        backend.close()
    return make


def _s3_partial_put(backend, key: str) -> None:
    """What a put killed mid-upload leaves on S3: a multipart upload never completed."""
    full = backend.prefix + key
    upload = backend.client.create_multipart_upload(Bucket=backend.bucket, Key=full)["UploadId"]
    backend.client.upload_part(Bucket=backend.bucket, Key=full, UploadId=upload, PartNumber=1, Body=b"half a pack")


@dataclass(frozen=True)
class BackendKind:
    make: Callable[..., Iterator[Backend]]
    # leave a temp object behind, as a put interrupted on its way to `key` would; None: puts leave none
    leave_partial_put: Callable[[Backend, str], None] | None = None
    atomic_create: bool = True  # racing create_only puts have exactly one winner


BACKENDS: dict[str, BackendKind] = {
    "memory": BackendKind(_memory),
    "local": BackendKind(_local, _local_partial_put),
    "s3-seaweedfs": BackendKind(_s3_on("s3_store"), _s3_partial_put),
    # moto is a second implementation to catch reliance on one server's quirks; its conditional
    # puts are not atomic under concurrency, so the race is left to the real server
    "s3-moto": BackendKind(_s3_on("moto_store"), _s3_partial_put, atomic_create=False),
}


@pytest.fixture(params=list(BACKENDS))
def kind(request) -> BackendKind:
    return BACKENDS[request.param]


@pytest.fixture
def backend(kind, request) -> Iterator[Backend]:
    for made in kind.make(request):
        made.create_location()
        yield made


def keys_of(backend: Backend, prefix: str) -> set[tuple[str, int]]:
    listed = list(backend.list(prefix))
    assert len(listed) == len(set(listed)), "list yielded a key twice"
    return set(listed)


def spool_file(backend: Backend, tmp_path, data: bytes) -> str:
    """A local file to hand to put_file, where the store would spool it."""
    folder = backend.spool_dir() or str(tmp_path / "spool")
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, "spool-" + secrets.token_hex(8))
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    return path


# ---- the contract -----------------------------------------------------------------------------
class BackendContract:
    """Collected by pytest (see __test__) and run once per entry of BACKENDS."""

    __test__ = True

    # get / put
    def test_put_get_round_trip(self, backend):
        data = os.urandom(100_000)
        assert backend.put("packs/ab/one", data) is True
        assert backend.get("packs/ab/one") == data
        assert isinstance(backend.get("packs/ab/one"), bytes)

    def test_put_accepts_a_bytearray(self, backend):
        backend.put("k/array", bytearray(b"abc"))  # bytes or bytearray: boto3 refuses a memoryview body
        assert backend.get("k/array") == b"abc"

    def test_ranged_get(self, backend):
        data = bytes(range(256)) * 4
        backend.put("obj", data)
        assert backend.get("obj", 0, 10) == data[:10]
        assert backend.get("obj", 100, 300) == data[100:300]
        assert backend.get("obj", 1000) == data[1000:]      # end None: to the end of the object
        assert backend.get("obj", 0, None) == data
        assert backend.get("obj", 5, 5) == b""               # empty range (S3 would need no request)
        assert backend.get("obj", len(data) - 1, len(data)) == data[-1:]

    def test_ranged_get_past_the_end_gives_what_exists(self, backend):
        data = b"0123456789"
        backend.put("obj", data)
        assert backend.get("obj", 8, 100) == b"89"           # end past the end: the available bytes
        assert backend.get("obj", 10, 20) == b""             # starting at the end: empty
        assert backend.get("obj", 50, 60) == b""             # starting beyond the end: empty, no error
        assert backend.get("obj", 10) == b""
        assert backend.get("obj", 50) == b""

    def test_get_missing_raises_not_found(self, backend):
        with pytest.raises(NotFound):
            backend.get("packs/00/missing")
        with pytest.raises(NotFound):
            backend.get("packs/00/missing", 0, 10)
        backend.put("config", b"x")
        with pytest.raises(NotFound):
            backend.get("config/below-an-object")        # a local backend's "folder" is a file here
        with pytest.raises(NotFound):
            backend.get("nothing/at/all")

    def test_create_only_keeps_the_first_content(self, backend):
        assert backend.put("config", b"first", create_only=True) is True
        assert backend.put("config", b"second", create_only=True) is False
        assert backend.get("config") == b"first"
        assert backend.stat("config") == len(b"first")
        assert keys_of(backend, "") == {("config", 5)}

    def test_put_overwrites_without_create_only(self, backend):
        assert backend.put("pins/61/stamp", b"first") is True
        assert backend.put("pins/61/stamp", b"second, longer") is True
        assert backend.get("pins/61/stamp") == b"second, longer"
        assert backend.put("pins/61/stamp", b"3") is True    # and shorter again: no stale tail
        assert backend.get("pins/61/stamp") == b"3"
        assert keys_of(backend, "pins/") == {("pins/61/stamp", 1)}

    def test_put_file(self, backend, tmp_path):
        data = os.urandom(70_000)
        path = spool_file(backend, tmp_path, data)
        assert backend.put_file("packs/cd/file", path, create_only=True) is True
        assert backend.get("packs/cd/file") == data
        # the backend may consume the file; if it left it, the file is unchanged
        if os.path.exists(path):
            with open(path, "rb") as f:
                assert f.read() == data
        assert keys_of(backend, "") == {("packs/cd/file", len(data))}  # no spool file listed

    def test_put_file_create_only_conflict(self, backend, tmp_path):
        backend.put("packs/cd/file", b"first")
        path = spool_file(backend, tmp_path, b"second")
        assert backend.put_file("packs/cd/file", path, create_only=True) is False
        assert backend.get("packs/cd/file") == b"first"
        path = spool_file(backend, tmp_path, b"third")
        assert backend.put_file("packs/cd/file", path) is True
        assert backend.get("packs/cd/file") == b"third"
        assert keys_of(backend, "") == {("packs/cd/file", 5)}

    def test_empty_objects(self, backend, tmp_path):
        assert backend.put("empty", b"") is True
        assert backend.get("empty") == b""
        assert backend.get("empty", 0, 0) == b""
        assert backend.get("empty", 0, 10) == b""
        assert backend.get("empty", 3) == b""
        assert backend.stat("empty") == 0
        assert backend.put("empty", b"", create_only=True) is False
        assert backend.put_file("dir/empty", spool_file(backend, tmp_path, b"")) is True
        assert backend.get("dir/empty") == b""
        assert keys_of(backend, "") == {("empty", 0), ("dir/empty", 0)}

    def test_nested_keys(self, backend):
        keys = {"a": b"1", "a1/b": b"22", "x/y/z/w/deep": b"333", "x/y/sibling": b"4444", "x/top": b"5"}
        for key, data in keys.items():
            backend.put(key, data)
        for key, data in keys.items():
            assert backend.get(key) == data
            assert backend.stat(key) == len(data)
        assert keys_of(backend, "") == {(k, len(v)) for k, v in keys.items()}
        assert keys_of(backend, "x/y/") == {("x/y/z/w/deep", 3), ("x/y/sibling", 4)}

    # stat
    def test_stat(self, backend):
        assert backend.stat("packs/ab/x") is None
        backend.put("packs/ab/x", b"12345")
        assert backend.stat("packs/ab/x") == 5
        assert backend.stat("packs/ab/x/below") is None
        assert backend.stat("packs") is None              # a local backend's folder is not an object
        backend.delete(["packs/ab/x"])
        assert backend.stat("packs/ab/x") is None

    # list
    def test_list_by_prefix(self, backend):
        objects = {"config": 3, "packs/ab/ab01": 10, "packs/ab/ab02": 20, "packs/ac/ac01": 30,
                   "pins/61/0001": 4, "pins/6162/0002": 5}
        for key, size in objects.items():
            backend.put(key, os.urandom(size))
        everything = set(objects.items())
        assert keys_of(backend, "") == everything
        assert keys_of(backend, "packs/") == {(k, s) for k, s in everything if k.startswith("packs/")}
        assert keys_of(backend, "packs/ab/") == {("packs/ab/ab01", 10), ("packs/ab/ab02", 20)}
        assert keys_of(backend, "config") == {("config", 3)}
        assert keys_of(backend, "nope/") == set()
        assert keys_of(backend, "config/") == set()
        assert keys_of(backend, "packs/ab/ab01/") == set()

    def test_list_prefix_is_a_plain_string_prefix(self, backend):
        """Prefixes need not end at a '/': they match like str.startswith, as on S3."""
        objects = {"packs/ab/ab01": 1, "packs/abc/x": 2, "packs/ac/ac01": 3, "packs/b/y": 4,
                   "pins/61/0001": 5, "pinsx": 6, "p": 7}
        for key, size in objects.items():
            backend.put(key, os.urandom(size))
        for prefix in ["", "p", "pa", "pin", "pins", "pins/", "pins/6", "packs", "packs/", "packs/a",
                       "packs/ab", "packs/ab/", "packs/ab/a", "packs/ab/ab01", "packs/ab/ab012",
                       "packs/abc/", "packs/b", "q", "packs/a/"]:
            expected = {(k, s) for k, s in objects.items() if k.startswith(prefix)}
            assert keys_of(backend, prefix) == expected, prefix

    def test_list_hides_temp_objects(self, backend, kind, tmp_path):
        backend.put("packs/ab/ab01", b"pack")
        if kind.leave_partial_put is not None:
            kind.leave_partial_put(backend, "packs/ab/ab02")
            kind.leave_partial_put(backend, "config")
        spool_file(backend, tmp_path, b"a pack being written")   # in spool_dir(), when there is one
        expected = {("packs/ab/ab01", 4)}
        assert keys_of(backend, "") == expected
        assert keys_of(backend, "packs/") == expected
        assert keys_of(backend, "packs/ab/") == expected
        assert keys_of(backend, "packs/ab/a") == expected
        assert keys_of(backend, "t") == set()
        # and they do not get in the way of a later put of the same key
        assert backend.put("packs/ab/ab02", b"whole", create_only=True) is True
        assert backend.put("config", b"cfg", create_only=True) is True
        assert keys_of(backend, "") == expected | {("packs/ab/ab02", 5), ("config", 3)}

    def test_list_times_lists_the_same_keys(self, backend, kind, tmp_path):
        backend.put("packs/ab/ab01", b"first")
        backend.put(layout.TMP + "probe", b"temp")
        if kind.leave_partial_put is not None:
            kind.leave_partial_put(backend, "packs/ab/ab02")
        backend.put("packs/ab/ab03", b"second")
        backend.put("pins/61/0001", b"pin")
        for prefix in ("", "packs/", "packs/a", "packs/ab/ab03", "pins", "t", "nope/"):
            times = dict(backend.list_times(prefix))
            assert set(times) == {k for k, _ in backend.list(prefix)}, prefix
            assert all(isinstance(t, (int, float)) and t > 0 for t in times.values())
        times = dict(backend.list_times(""))
        assert times["packs/ab/ab01"] <= times["packs/ab/ab03"] <= times["pins/61/0001"]  # one clock

    # delete
    def test_delete_many_ignores_absent_keys(self, backend):
        for key in ("packs/ab/1", "packs/ab/2", "packs/cd/3", "config"):
            backend.put(key, b"x")
        backend.delete(["packs/ab/1", "packs/zz/absent", "packs/cd/3", "absent", "config/absent"])
        assert keys_of(backend, "") == {("packs/ab/2", 1), ("config", 1)}
        with pytest.raises(NotFound):
            backend.get("packs/ab/1")
        backend.delete([])
        backend.delete(iter(["packs/ab/2"]))               # any iterable
        backend.delete(["packs/ab/2"])                     # twice is fine
        assert keys_of(backend, "") == {("config", 1)}
        assert backend.put("packs/ab/1", b"again", create_only=True) is True   # a deleted key is free

    def test_a_folder_is_not_an_object(self, backend):
        backend.put("packs/ab/ab01", b"pack")
        # (not "packs/ab/": no cas key ends in "/", and SeaweedFS answers for it as an empty object)
        for folder in ("packs", "packs/ab"):
            with pytest.raises(NotFound):
                backend.get(folder)
            assert backend.stat(folder) is None
        backend.delete(["packs", "packs/ab"])   # nothing to delete: ignored
        assert backend.get("packs/ab/ab01") == b"pack"
        assert keys_of(backend, "") == {("packs/ab/ab01", 4)}

    # temp keys, store creation, races
    def test_tmp_keys_are_never_listed(self, backend):
        backend.put(layout.TMP + "probe-1", b"probe")
        backend.put("packs/ab/ab01", b"pack")
        assert backend.get(layout.TMP + "probe-1") == b"probe"
        assert backend.stat(layout.TMP + "probe-1") == 5
        assert keys_of(backend, "") == {("packs/ab/ab01", 4)}
        assert keys_of(backend, layout.TMP) == set()
        assert keys_of(backend, "t") == set()
        backend.delete([layout.TMP + "probe-1"])
        assert backend.stat(layout.TMP + "probe-1") is None

    def test_create_location_and_probe(self, backend):
        backend.create_location()                       # again: harmless
        assert backend.probe_conditional_writes() in (True, False)
        assert keys_of(backend, "") == set()            # the probe leaves nothing behind
        assert backend.put("config", b"x", create_only=True) is True

    def test_racing_creators_one_wins(self, backend, kind):
        if backend.conditional_writes is False or not kind.atomic_create:
            pytest.skip("create_only is check-then-write here")
        results: dict[int, bool] = {}
        start = threading.Barrier(8)

        def create(i: int) -> None:
            start.wait()
            results[i] = backend.put("runs/r/steps/1", b"writer %d" % i, create_only=True)

        threads = [threading.Thread(target=create, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        winners = [i for i, won in results.items() if won]
        assert len(results) == 8 and len(winners) == 1
        assert backend.get("runs/r/steps/1") == b"writer %d" % winners[0]
