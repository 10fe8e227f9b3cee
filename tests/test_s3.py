"""An S3 store on a real server (SeaweedFS on 127.0.0.1): few objects, dedup against the bucket, several machines.

A "machine" is a `cas` process with its own CAS_CACHE_DIR.
"""

from __future__ import annotations

import filecmp
import json
import os
import subprocess

import boto3
import pytest
from blake3 import blake3
from conftest import cas_command, run_cas, write_checkpoint

MiB = 1 << 20


def _machine(tmp_path, name: str) -> dict[str, str]:
    return {"CAS_CACHE_DIR": str(tmp_path / f"cache-{name}")}


def _cas(store, env, *args):
    r = run_cas("--store", store, "--json", *args, env=env)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout) if r.stdout.strip() else None


def _objects(store: str) -> list[tuple[str, int]]:
    bucket, _, prefix = store[len("s3://"):].partition("/")
    pages = boto3.client("s3").get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix + "/")
    return [(o["Key"], o["Size"]) for page in pages for o in page.get("Contents", ())]


def _packs(store: str) -> list[str]:
    return [k for k, _ in _objects(store) if "/packs/" in k]


def test_checkpoint_becomes_few_objects_and_a_second_put_uploads_nothing(s3_store, tmp_path):
    path = tmp_path / "ckpt.bin"
    data = write_checkpoint(path, 96 * MiB, seed=1)
    one = _machine(tmp_path, "one")
    first = _cas(s3_store, one, "put", str(path))
    assert first["digest"] == blake3(data).hexdigest() and first["new_bytes"] == 96 * MiB
    objects = _objects(s3_store)
    assert len(objects) <= 40, objects
    packs = _packs(s3_store)
    again = _cas(s3_store, one, "put", str(path))
    assert again["new_bytes"] == 0 and again["digest"] == first["digest"]
    assert _packs(s3_store) == packs  # no pack data uploaded
    stats = _cas(s3_store, one, "stats")
    assert stats["stored_bytes"] == sum(size for _, size in _objects(s3_store))
    assert stats["conditional_writes"] is True  # SeaweedFS honours If-None-Match: *


def test_new_machine_dedups_against_the_bucket(s3_store, tmp_path):
    path = tmp_path / "ckpt.bin"
    data = bytearray(write_checkpoint(path, 64 * MiB, seed=2))
    _cas(s3_store, _machine(tmp_path, "one"), "put", str(path))
    data[20 * MiB:21 * MiB] = bytes(reversed(data[20 * MiB:21 * MiB]))
    edited = tmp_path / "ckpt-edited.bin"
    edited.write_bytes(data)
    two = _machine(tmp_path, "two")
    res = _cas(s3_store, two, "put", str(edited))
    assert res["new_bytes"] <= 4 * MiB, res
    out = tmp_path / "out.bin"
    _cas(s3_store, _machine(tmp_path, "three"), "get", res["digest"], "-o", str(out))
    assert filecmp.cmp(out, edited, shallow=False)


def _puts_at_once(store: str, tmp_path, paths, *args: str) -> list[dict]:
    """`cas put PATH ARGS...` of each path at the same time, each from a machine of its own; their JSON."""
    procs = [subprocess.Popen(cas_command() + ["--store", store, "--json", "put", str(p), *args],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env={**os.environ, **_machine(tmp_path, f"w{i}")})
             for i, p in enumerate(paths)]
    results = []
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
        results.append(json.loads(out))
    return results


def test_two_machines_writing_at_once_and_a_third_reads_both(s3_store, tmp_path):
    files = []
    for i in range(2):
        path = tmp_path / f"f{i}.bin"
        write_checkpoint(path, 40 * MiB, seed=10 + i)
        files.append(path)
    _cas(s3_store, _machine(tmp_path, "init"), "init")
    results = _puts_at_once(s3_store, tmp_path, files)
    three = _machine(tmp_path, "three")
    for res, src in zip(results, files):
        dest = tmp_path / f"back-{src.name}"
        _cas(s3_store, three, "get", res["digest"], "-o", str(dest))
        assert filecmp.cmp(dest, src, shallow=False)
    report = _cas(s3_store, three, "verify", "--read-data")
    assert report["ok"] and report["pins"] == 2


def test_deleted_cache_gives_the_same_answers(s3_store, tmp_path):
    import shutil
    one = _machine(tmp_path, "one")
    for i in range(3):
        path = tmp_path / f"f{i}.bin"
        write_checkpoint(path, 5 * MiB, seed=20 + i)
        _cas(s3_store, one, "put", str(path))
    before = _cas(s3_store, one, "stats"), _cas(s3_store, one, "pins")
    shutil.rmtree(one["CAS_CACHE_DIR"])
    assert (_cas(s3_store, one, "stats"), _cas(s3_store, one, "pins")) == before  # the next command syncs
    shutil.rmtree(one["CAS_CACHE_DIR"])
    counts = _cas(s3_store, one, "reindex")
    assert counts["packs"] == before[0]["packs"] and counts["chunks"] == before[0]["chunks"]
    assert _cas(s3_store, one, "stats") == before[0]
    for pin in before[1]:
        out = tmp_path / "out.bin"
        _cas(s3_store, one, "get", pin["digest"], "-o", str(out), "--force")
        assert filecmp.cmp(out, pin["label"], shallow=False)


def test_many_puts_are_merged_into_few_index_objects(s3_store, tmp_path):
    from cas import Store, pack_index
    store = Store.open(s3_store, cache_dir=str(tmp_path / "cache"))
    blobs = [bytes([i]) * 1000 + i.to_bytes(4, "little") for i in range(pack_index.MERGE_AT + 5)]
    digests = [store.put_bytes(b).digest for b in blobs]
    assert len(pack_index.list_keys(store.backend)) <= pack_index.MERGE_AT
    fresh = Store.open(s3_store, cache_dir=str(tmp_path / "cache-fresh"))
    assert [fresh.read_bytes(d) for d in digests] == blobs


def test_missing_store_and_racing_initializers(s3_store, tmp_path):
    r = run_cas("--store", s3_store, "stats", env=_machine(tmp_path, "a"))
    assert r.returncode == 3 and r.stderr.startswith("cas: error: no ") and r.stderr.count("\n") == 1
    assert not _bucket_exists(s3_store)  # a read command created nothing
    procs = [subprocess.Popen(cas_command() + ["--store", s3_store, "--json", "init"], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env={**os.environ, **_machine(tmp_path, f"i{i}")})
             for i in range(4)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    ids = {json.loads(out)["store_id"] for out, _ in outs}
    assert len(ids) == 1  # every racer adopted the winner's config
    r = run_cas("--store", s3_store, "stats", env=_machine(tmp_path, "b"))
    assert r.returncode == 0, r.stderr


def _bucket_exists(store: str) -> bool:
    bucket = store[len("s3://"):].partition("/")[0]
    try:
        boto3.client("s3").head_bucket(Bucket=bucket)
        return True
    except Exception:
        return False


@pytest.mark.parametrize("uri", ["s3://", "s3:///x", "s3://a b/c", "s3://bucket//x"])
def test_malformed_s3_uris_are_one_line(uri, tmp_path):
    r = run_cas("--store", uri, "stats", env=_machine(tmp_path, "a"))
    assert r.returncode == 2 and r.stderr.startswith("cas: error: malformed S3 URI") and r.stderr.count("\n") == 1


def test_big_packs_go_up_in_parts_and_stale_uploads_are_aborted(s3_store, tmp_path, monkeypatch):
    import os as _os

    from cas import Store
    from cas.backends import s3 as s3mod
    monkeypatch.setattr(s3mod, "MULTIPART_THRESHOLD", 6 * MiB)
    monkeypatch.setattr(s3mod, "PART_SIZE", 5 * MiB)
    store = Store.open(s3_store, cache_dir=str(tmp_path / "cache"))
    data = _os.urandom(12 * MiB)  # incompressible: one pack of about 12 MiB, above the threshold
    res = store.put_bytes(data)
    (pack_key,) = [k for k, _ in store.backend.list("packs/")]
    assert store.backend.stat(pack_key) > 6 * MiB
    fresh = Store.open(s3_store, cache_dir=str(tmp_path / "cache-2"))
    assert fresh.read_bytes(res.digest) == data
    spool = tmp_path / "again.pack"
    spool.write_bytes(b"not the same bytes" * (400 * 1024))
    assert store.backend.put_file(pack_key, str(spool), create_only=True) is False  # never overwritten
    assert fresh.read_bytes(res.digest) == data
    client, bucket = store.backend.client, store.backend.bucket
    upload = client.create_multipart_upload(Bucket=bucket, Key=store.backend.prefix + "packs/zz/stale")["UploadId"]
    client.upload_part(Bucket=bucket, Key=store.backend.prefix + "packs/zz/stale", UploadId=upload, PartNumber=1,
                       Body=b"x" * 1024)
    assert store.backend.abort_stale_uploads(3600, dry_run=True) == 0  # too young
    assert store.backend.abort_stale_uploads(0, dry_run=True) == 1
    assert store.backend.abort_stale_uploads(0) == 1
    assert client.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []


def test_two_machines_logging_children_of_one_parent_at_once(s3_store, tmp_path):
    """Two writers put checkpoints that are both children of one stored parent, at the same time, from
    machines with their own caches; a third machine restores both from the bucket and verify passes
    (every delta rebuilt through its base). Then the parent is unpinned and gc runs: the bases stay."""
    import numpy as np
    rng = np.random.default_rng(3)
    base = (rng.standard_normal(3 * MiB // 4) * 0.02).astype(np.float32)
    np.save(tmp_path / "parent.npy", base)
    children = []
    for i in range(2):
        path = tmp_path / f"child-{i}.npy"
        np.save(path, base + (rng.standard_normal(base.size) * 1e-6).astype(np.float32))
        children.append(path)
    _cas(s3_store, _machine(tmp_path, "init"), "put", str(tmp_path / "parent.npy"), "--label", "parent")
    results = _puts_at_once(s3_store, tmp_path, children, "--parent", "parent")
    three = _machine(tmp_path, "three")
    assert _cas(s3_store, three, "stats")["delta_chunks"] > 0
    _cas(s3_store, three, "unpin", "parent")
    _cas(s3_store, three, "gc", "--grace", "0")
    four = _machine(tmp_path, "four")
    for res, src in zip(results, children):
        dest = tmp_path / f"back-{src.name}"
        _cas(s3_store, four, "get", res["digest"], "-o", str(dest))
        assert filecmp.cmp(dest, src, shallow=False)
    assert _cas(s3_store, four, "verify", "--read-data")["ok"]


def test_a_reference_to_an_s3_object_notices_an_overwrite_and_a_delete(s3_store, tmp_path):
    """log_artifact_ref records the object's size, ETag and version id; verify --refs compares them."""
    import tracker
    bucket = s3_store[len("s3://"):].partition("/")[0]
    s3 = boto3.client("s3")
    _cas(s3_store, _machine(tmp_path, "a"), "init")
    s3.put_object(Bucket=bucket, Key="data/train.csv", Body=b"a,b\n1,2\n")
    with tracker.init("data", store=s3_store) as run:
        version = run.log_artifact_ref(f"s3://{bucket}/data/train.csv", name="train")
    assert version.ref_state["kind"] == "s3" and version.ref_state["size"] == 8 and version.ref_state["etag"]
    status = lambda: {r["uri"]: r["status"] for r in _cas(s3_store, {}, "verify", "--refs")["refs"]}  # noqa: E731
    assert status() == {"runs:/data/train@1": "unchanged"}
    s3.put_object(Bucket=bucket, Key="data/train.csv", Body=b"a,b\n1,3\n")  # same size, new ETag
    r = run_cas("--store", s3_store, "verify", "--refs")
    assert r.returncode != 0 and "changed since it was logged" in r.stderr
    s3.delete_object(Bucket=bucket, Key="data/train.csv")
    r = run_cas("--store", s3_store, "--json", "verify", "--refs")
    assert json.loads(r.stdout)["refs"][0]["status"] == "vanished"


def test_only_the_cas_command_sets_the_s3_clients_objects_aside_from_the_cycle_collector(s3_store):
    """gc.freeze is for the command's own process; in a user's, their objects' cycles stay collectable."""
    import gc

    from cas.backends import open_backend
    from cas.collector import owning_the_process
    gc.unfreeze()
    try:
        open_backend(s3_store)
        assert gc.get_freeze_count() == 0 and gc.isenabled()
        with owning_the_process():
            open_backend(s3_store)
        assert gc.get_freeze_count() > 10_000 and gc.isenabled()
    finally:
        gc.unfreeze()


def test_a_listing_follows_its_pages_and_one_cut_short_is_an_error(s3_store):
    from cas.backends import open_backend
    from cas.errors import StorageError
    backend = open_backend(s3_store)
    keys = {f"scratch/{i:03d}": i for i in range(23)}
    for key, i in keys.items():
        backend.put(key, bytes(i))
    backend.list_page_size = 5  # five pages
    assert dict(backend.list("scratch/")) == keys
    backend.list_page_size = None
    assert dict(backend.list("scratch/")) == keys

    def no_token(parsed, **_):  # a server that says there is more and gives no way to ask for it
        parsed.pop("NextContinuationToken", None)
    backend.client.meta.events.register("after-call.s3.ListObjectsV2", no_token)
    backend.list_page_size = 5
    with pytest.raises(StorageError, match="cut short a listing"):
        list(backend.list("scratch/"))


def test_the_model_loader_looks_in_s3s_folder_only_and_in_the_same_places_as_botocores(tmp_path, monkeypatch):
    import botocore.loaders
    import botocore.session

    from cas.backends.s3 import _s3_model_loader
    monkeypatch.setenv("AWS_DATA_PATH", str(tmp_path / "models"))
    ours = _s3_model_loader(botocore.session.Session())
    theirs = botocore.loaders.create_loader(str(tmp_path / "models"))
    assert ours.search_paths == theirs.search_paths and str(tmp_path / "models") in ours.search_paths
    for kind in ("service-2", "endpoint-rule-set-1", "paginators-1"):
        assert "s3" in ours.list_available_services(kind) and "sts" in ours.list_available_services(kind)
        assert "no-such-service" not in ours.list_available_services(kind)
        assert sorted(ours.list_available_services(kind)) == sorted(theirs.list_available_services(kind))
        model, same = ours.load_service_model("s3", kind), theirs.load_service_model("s3", kind)
        assert model == same and list(model) == list(same)
    shapes = ours.load_service_model("s3", "service-2")["shapes"]  # plain dicts, in the file's order
    assert type(shapes) is dict and list(shapes) == list(theirs.load_service_model("s3", "service-2")["shapes"])
    assert ours.load_data("endpoints") == theirs.load_data("endpoints")
    none = "no-such-model-1"
    assert list(ours.list_available_services(none)) == theirs.list_available_services(none) == []
    assert ours.load_service_model("sts", "service-2") == theirs.load_service_model("sts", "service-2")


def test_role_and_sso_credentials_can_build_their_clients_from_the_session_that_builds_s3s(monkeypatch):
    """Assume-role, web identity (EKS) and SSO credentials are fetched by an STS or SSO client that
    botocore builds from the S3 client's own session, and so through its model loader."""
    import botocore.session

    from cas.backends.s3 import _s3_model_loader
    session = botocore.session.Session()
    session.register_component("data_loader", _s3_model_loader(session))
    for service in ("sts", "sso", "s3"):
        client = session.create_client(service, region_name="us-east-1", aws_access_key_id="id",
                                       aws_secret_access_key="secret")
        assert client.meta.service_model.service_name == service


def test_server_side_encryption_reaches_every_put_and_bad_settings_are_one_line(s3_store, tmp_path, monkeypatch):
    from conftest import one_error_line

    from cas import Store
    sent = []
    monkeypatch.setenv("CAS_S3_SSE", "AES256")
    store = Store.open(s3_store + "?jobs=2&read_timeout=30")
    assert store.backend.settings["jobs"] == 2 and store.backend.upload_concurrency == 2
    for event in ("before-call.s3.PutObject", "before-call.s3.CreateMultipartUpload"):
        store.backend.client.meta.events.register(event, lambda params, **kw: sent.append(
            (kw["model"].name, params.get("headers", {}).get("x-amz-server-side-encryption"))))
    write_checkpoint(tmp_path / "a.bin", 2 * MiB, seed=3)
    store.put_file(tmp_path / "a.bin")
    assert sent and all(header == "AES256" for _, header in sent), sent
    assert {name for name, _ in sent} >= {"PutObject"}
    monkeypatch.delenv("CAS_S3_SSE")
    for env, uri, words in ((("CAS_S3_SSE", "rot13"), s3_store, "bad server-side encryption"),
                            (("CAS_S3_JOBS", "0"), s3_store, "bad S3 setting jobs"),
                            (None, s3_store + "?bogus=1", "unknown S3 setting"),
                            (("CAS_S3_SSE_KMS_KEY_ID", "k"), s3_store, "needs sse=aws:kms")):
        r = run_cas("--store", uri, "stats", env=dict([env]) if env else None)
        assert r.returncode == 2 and words in one_error_line(r.stderr), r.stderr


def test_a_killed_big_put_is_resumed_and_gc_keeps_then_reclaims_its_packs(s3_store, tmp_path):
    """SIGKILL a 600 MiB put once 400 MiB of packs are on the server: the retry sends at most what the
    killed one had not named in an index object (every 256 MiB); gc with the default grace keeps the
    killed put's packs, and once they are past the grace gc reclaims what the retry did not use."""
    import signal
    import time
    size = int(os.environ.get("CAS_RESUME_MIB", "600")) * MiB
    src = tmp_path / "big.bin"
    with open(src, "wb") as f:
        for start in range(0, size, 64 * MiB):
            f.write(os.urandom(min(64 * MiB, size - start)))
    env = dict(_machine(tmp_path, "a"), CAS_LEASE_SECONDS="3")
    _cas(s3_store, env, "init")
    killed = subprocess.Popen([*cas_command(), "--store", s3_store, "put", str(src), "--label", "big"],
                              env=dict(os.environ, **env), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while sum(size for _, size in _objects_of(s3_store, "packs")) < size * 2 // 3:
        assert killed.poll() is None and time.monotonic() < deadline, "the put ended before it could be killed"
        time.sleep(0.02)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    before = dict(_objects_of(s3_store, "packs"))
    assert _objects_of(s3_store, "index")  # at least one index object named some of it
    done = _cas(s3_store, env, "put", str(src), "--label", "big")
    after = dict(_objects_of(s3_store, "packs"))
    anew = sum(size for key, size in after.items() if key not in before)
    print(f"[resume] killed with {sum(before.values()) / MiB:.0f} MiB of packs on the server; the retry sent "
          f"{anew / MiB:.0f} MiB anew of {size / MiB:.0f} MiB")
    assert anew <= size * 456 // 600, (anew / MiB, sum(before.values()) / MiB)
    out = tmp_path / "restored.bin"
    _cas(s3_store, _machine(tmp_path, "fresh"), "get", "big", "-o", str(out))
    assert filecmp.cmp(src, out, shallow=False) and done["size"] == size
    time.sleep(4)  # the killed writer's lease has expired
    _cas(s3_store, env, "gc")  # default grace: condemns, deletes nothing yet
    assert set(dict(_objects_of(s3_store, "packs"))) == set(after)
    _cas(s3_store, env, "gc", "--grace", "0")  # past the grace: what no retry used goes
    left = dict(_objects_of(s3_store, "packs"))
    assert sum(left.values()) <= size * 1.02 and sum(left.values()) < sum(after.values())
    _cas(s3_store, _machine(tmp_path, "fresh2"), "get", "big", "-o", str(out), "--force")
    assert filecmp.cmp(src, out, shallow=False)


def _objects_of(store: str, folder: str) -> list[tuple[str, int]]:
    return [(k, size) for k, size in _objects(store) if f"/{folder}/" in k]


def test_a_version_read_once_is_read_again_from_the_cache_while_the_server_is_paused(s3_store, seaweedfs, tmp_path,
                                                                                     monkeypatch):
    import signal

    from cas import Store
    monkeypatch.setenv("CAS_CHUNK_CACHE_SIZE", "200MiB")
    monkeypatch.setenv("CAS_S3_READ_TIMEOUT", "2")
    monkeypatch.setenv("CAS_S3_CONNECT_TIMEOUT", "2")
    monkeypatch.setenv("CAS_CACHE_DIR", str(tmp_path / "cache"))
    data = write_checkpoint(tmp_path / "v.bin", 48 * MiB, seed=9)
    digest = Store.open(s3_store).put_file(tmp_path / "v.bin").digest
    reader = Store.open(s3_store)
    assert reader.read_bytes(digest) == data  # read once: fetched, kept
    seaweedfs.process.send_signal(signal.SIGSTOP)
    try:
        assert reader.read_bytes(digest) == data  # no request for its chunks
    finally:
        seaweedfs.process.send_signal(signal.SIGCONT)
    stats = reader.chunk_cache().stats()
    assert 0 < stats["bytes"] <= 200 * MiB
    # a second version fills it past its limit: the least recently used go, the folder stays under it
    more = [write_checkpoint(tmp_path / f"w{k}.bin", 60 * MiB, seed=10 + k) for k in range(3)]
    for k, blob in enumerate(more):
        d = reader.put_file(tmp_path / f"w{k}.bin").digest
        assert reader.read_bytes(d) == blob
    folder = reader.chunk_cache().folder
    on_disk = sum(os.path.getsize(os.path.join(p, f)) for p, _, fs in os.walk(folder) for f in fs)
    assert on_disk <= 200 * MiB + 64 * 1024, on_disk / MiB
    assert _cas(s3_store, {"CAS_CACHE_DIR": str(tmp_path / "cache")}, "cache", "clear")["bytes"] == 0


def test_the_chunk_cache_size_is_read_and_a_malformed_one_is_one_line(s3_store, tmp_path, monkeypatch):
    from conftest import one_error_line

    from cas.chunk_cache import DEFAULT_SIZE, size_from_env
    for text, size in (("", DEFAULT_SIZE), ("20GiB", 20 << 30), ("500MB", 500 * 1000 ** 2), ("0", 0), ("4096", 4096)):
        monkeypatch.setenv("CAS_CHUNK_CACHE_SIZE", text)
        assert size_from_env() == size
    _cas(s3_store, {}, "init")
    r = run_cas("--store", s3_store, "cache", env={"CAS_CHUNK_CACHE_SIZE": "lots"})
    assert r.returncode == 2 and "malformed CAS_CHUNK_CACHE_SIZE" in one_error_line(r.stderr)
    assert _cas(s3_store, {"CAS_CHUNK_CACHE_SIZE": "0"}, "cache")["folder"] is None
