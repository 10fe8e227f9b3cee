"""Faults against a real S3 server (SeaweedFS on 127.0.0.1): 503 SlowDown, connection resets, timeouts and
truncated bodies, injected with botocore `before-send` hooks (in-process) and a small TCP proxy in front of
the server (in-process and for the CLI).

What every test checks: a put or get either succeeds with the right bytes or fails with one clear line; a
failed put leaves no pin and nothing readable that is wrong; no message carries credentials or signatures.
The random loops (marked slow) run CAS_FAULT_ROUNDS rounds (default 10).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import random
import socket
import struct
import threading
import time
from contextlib import contextmanager

import pytest
from blake3 import blake3
from conftest import run_cas
from s3servers import ACCESS_KEY, SECRET_KEY

from cas import Store
from cas.backends.s3 import READ_ATTEMPTS
from cas.datatype import replace
from cas.errors import CasError, NotFound, StorageError

ROUNDS = int(os.environ.get("CAS_FAULT_ROUNDS", "10"))
BOTO_ATTEMPTS = 5  # retries={"total_max_attempts": 5} in cas/backends/s3.py
KiB, MiB = 1 << 10, 1 << 20
LEAKS = (SECRET_KEY, ACCESS_KEY, "Signature=", "X-Amz-Signature", "X-Amz-Credential", "Credential=",
         "AWS4-HMAC-SHA256")


# ---- checks ----------------------------------------------------------------------------------------

def assert_clean(text: str, *secrets: str) -> None:
    """No credential, signature or presigned-URL part in a message or output."""
    for needle in LEAKS + secrets:
        assert needle not in text, f"{needle!r} leaked into: {text!r}"


def assert_one_line_error(exc: BaseException, *secrets: str) -> str:
    assert isinstance(exc, CasError), f"not a cas error: {exc!r}"
    message = str(exc)
    assert message and "\n" not in message and "Traceback" not in message, message
    assert_clean(message, *secrets)
    return message


def assert_cli_failed_in_one_line(r, code: int = 6, *secrets: str) -> None:
    assert r.returncode == code, (r.returncode, r.stdout, r.stderr)
    assert r.stderr.startswith("cas: error: ") and r.stderr.count("\n") == 1, r.stderr
    assert "Traceback" not in r.stderr and r.stdout == "", (r.stdout, r.stderr)
    assert_clean(r.stdout + r.stderr, *secrets)


def read_or_absent(store: Store, digest: str, data: bytes) -> bool:
    """Whether the digest reads back; if it reads at all it must be exactly `data`."""
    try:
        got = store.read_bytes(digest)
    except NotFound:
        return False
    assert got == data
    return True


@contextmanager
def _endpoint(url: str):
    """S3Backend reads AWS_ENDPOINT_URL when it is made: open stores inside this to point them at `url`."""
    old = os.environ.get("AWS_ENDPOINT_URL")
    os.environ["AWS_ENDPOINT_URL"] = url
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("AWS_ENDPOINT_URL", None)
        else:
            os.environ["AWS_ENDPOINT_URL"] = old


def open_store(uri: str, endpoint: str, cache: str) -> Store:
    with _endpoint(endpoint):
        return Store.open(uri, cache_dir=cache)


class Machines:
    """Stores on one bucket as separate machines: each `clean()` gets a new cache, so it knows only the bucket.

    `observer` is one such machine, reused for checks (it learns new index objects as any machine does)."""

    def __init__(self, tmp_path, uri: str, endpoint: str):
        self.tmp_path, self.uri, self.endpoint = tmp_path, uri, endpoint
        self.n = 0
        self._observer: Store | None = None

    def cache(self) -> str:
        self.n += 1
        return str(self.tmp_path / f"cache-{self.n}")

    def clean(self, endpoint: str | None = None) -> Store:
        return open_store(self.uri, endpoint or self.endpoint, self.cache())

    @property
    def observer(self) -> Store:
        """A machine made once and kept: synced on every use (a store syncs only when its index is first
        used, so a long-lived one must be told to learn the index objects written since)."""
        if self._observer is None:
            self._observer = self.clean()
        elif self._observer.exists:
            self._observer.index  # noqa: B018 (opens the index, syncing once)
            self._observer.sync()
        return self._observer

    def check(self, acknowledged: dict[str, bytes], pins: set[str], *, verify: bool = True) -> None:
        """With no faults: the store verifies, its pins are exactly `pins`, acknowledged puts read back."""
        store = self.observer
        if verify:
            report = store.verify(read_data=True)
            assert report.ok, report.problems
        assert {p.label for p in store.pins()} == pins
        for digest, data in acknowledged.items():
            assert store.read_bytes(digest) == data


@pytest.fixture(autouse=True)
def _fast_backoff(monkeypatch):
    """botocore waits up to 1 s, 2 s, 4 s, 8 s between attempts after SlowDown (50 ms, 100 ms... after
    other errors); shrink both to 10 ms, 20 ms... so many rounds stay quick. The real schedule runs in
    test_slowdown_with_real_backoff and in the CLI subprocesses."""
    from botocore.retries.standard import ExponentialBackoff
    monkeypatch.setitem(ExponentialBackoff._DEFAULT_BACKOFF_CONFIG, "throttling_base_scale", 0.01)
    monkeypatch.setitem(ExponentialBackoff._DEFAULT_BACKOFF_CONFIG, "non_throttling_base_scale", 0.01)


@pytest.fixture(autouse=True, scope="module")
def _shared_botocore_models():
    """Each Store.open makes a boto3 session, which parses botocore's JSON service models anew (~0.1 s);
    let the sessions share one loader, so the many machines these tests open come up quickly."""
    import botocore.loaders
    import botocore.session
    loader = botocore.loaders.create_loader()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(botocore.session.Session, "_register_data_loader",
                   lambda self: self._components.lazy_register_component("data_loader", lambda: loader))
        yield


# ---- botocore hooks --------------------------------------------------------------------------------

def _xml_error(code: str, message: str) -> bytes:
    return (f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code><Message>{message}</Message>'
            f'<RequestId>fault</RequestId></Error>').encode()


class _Raw:
    def __init__(self, data: bytes):
        self.data = data

    def stream(self, **_):
        yield self.data

    def read(self, *_, **__):
        data, self.data = self.data, b""
        return data


def _answer(request, status: int, code: str, message: str):
    from botocore.awsrequest import AWSResponse
    return AWSResponse(request.url, status, {"Content-Type": "application/xml"}, _Raw(_xml_error(code, message)))


def _fault(kind: str, request):
    import botocore.exceptions as bex
    if kind == "slowdown":
        return _answer(request, 503, "SlowDown", "Please reduce your request rate.")
    if kind == "internal":
        return _answer(request, 500, "InternalError", "We encountered an internal error. Please try again.")
    if kind == "reset":
        raise bex.ConnectionClosedError(endpoint_url=request.url)
    if kind == "timeout":
        raise bex.ReadTimeoutError(endpoint_url=request.url)
    if kind == "unreachable":
        raise bex.EndpointConnectionError(endpoint_url=request.url)
    raise AssertionError(kind)


HOOK_FAULTS = ("slowdown", "internal", "reset", "timeout", "unreachable")
# faults a request meets in a row, drawn per request URL: (count, weight); 99 outlasts every retry
WITHIN_BUDGET = ((0, 6), (1, 2), (2, 1), (BOTO_ATTEMPTS - 1, 1))
BEYOND_BUDGET = ((0, 8), (1, 2), (3, 1), (99, 1))


class Injector:
    """A before-send hook on one store's client: the chosen S3 calls fail before they reach the server.

    Deterministic: `times` calls of `ops` (all if empty) whose URL contains `match`, after `skip` such
    calls, fail with `kind`. Random (`budget`): each request URL draws how many of its calls fail, and
    each failure draws its kind from `kinds`.
    """

    def __init__(self, store: Store, kind: str = "reset", *, ops=("PutObject",), match: str = "", times: int = 0,
                 skip: int = 0, budget=None, kinds=HOOK_FAULTS, seed: int = 0):
        self.kind, self.ops, self.match, self.skip, self.times = kind, ops, match, skip, times
        self.budget, self.kinds = budget, kinds
        self.rng = random.Random(seed)
        self.left: dict[tuple[str, str], int] = {}
        self.fired: list[tuple[str, str]] = []
        self.lock = threading.Lock()
        store.backend.client.meta.events.register("before-send.s3", self)

    def __call__(self, request, event_name: str, **_):
        op = event_name.rsplit(".", 1)[-1]
        with self.lock:
            kind = self._choose(op, request)
            if kind is None:
                return None
            self.fired.append((kind, op))
        return _fault(kind, request)

    def _choose(self, op: str, request) -> str | None:
        if (self.ops and op not in self.ops) or self.match not in request.url:
            return None
        if self.budget:
            key = (request.method, request.url)
            if key not in self.left:
                counts, weights = zip(*self.budget)
                self.left[key] = self.rng.choices(counts, weights)[0]
            if self.left[key] <= 0:
                return None
            self.left[key] -= 1
            return self.rng.choice(self.kinds)
        if self.skip > 0:
            self.skip -= 1
            return None
        if self.times <= 0:
            return None
        self.times -= 1
        return self.kind


# ---- a TCP proxy that breaks responses ------------------------------------------------------------

@dataclasses.dataclass
class Rule:
    """What to break for the next `times` requests with this method whose path contains `path`.

    cut: pass the response head and `keep` body bytes, then close (cut_reset: then reset);
    reset: reset the connection before the request reaches the server;
    drop_response: let the server do the work, then reset instead of answering;
    cut_request: pass only `keep` bytes of the request body to the server, then reset both sides;
    delay: hold the response `seconds`; stall: pass head and `keep` body bytes, then hold `seconds`.
    """

    action: str
    times: int
    method: str | None = None
    path: str = ""
    keep: int = 0
    seconds: float = 0.0


class FaultProxy:
    """Forwards 127.0.0.1:port to the S3 server, one request per connection (it adds `Connection: close`,
    which is not signed), so a rule counts requests and can target them by method and path."""

    def __init__(self, upstream: str):
        host, port = upstream.rsplit("/", 1)[-1].rsplit(":", 1)
        self.upstream = (host, int(port))
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.endpoint = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self.rules: list[Rule] = []
        self.fired: list[tuple[str, str, str]] = []
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True, name="fault-proxy").start()

    def fault(self, action: str, times: int, **kw) -> None:
        with self.lock:
            self.rules.append(Rule(action, times, **kw))

    def clear(self) -> None:
        with self.lock:
            self.rules.clear()
            self.fired.clear()

    def close(self) -> None:
        self.listener.close()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _rule(self, method: str, path: str) -> Rule | None:
        with self.lock:
            for rule in self.rules:
                if rule.times > 0 and rule.method in (None, method) and rule.path in path:
                    rule.times -= 1
                    self.fired.append((rule.action, method, path))
                    return rule
        return None

    def _serve(self, client: socket.socket) -> None:
        upstream = None
        try:
            head, rest = _read_head(client)
            if head is None:
                return
            line, _, headers = head.partition(b"\r\n")
            method, path = line.decode("latin-1").split(" ")[:2]
            headers = b"".join(h + b"\r\n" for h in headers.split(b"\r\n")
                               if h and not h.lower().startswith(b"connection:"))
            head = line + b"\r\nConnection: close\r\n" + headers + b"\r\n"
            rule = self._rule(method, path)
            if rule is not None and rule.action == "reset":
                _reset(client)
                return
            upstream = socket.create_connection(self.upstream)
            if rule is not None and rule.action == "cut_request":
                self._cut_request(client, upstream, head, rest, rule.keep)
                return
            upstream.sendall(head + rest)
            sender = threading.Thread(target=_pump, args=(client, upstream), daemon=True)
            sender.start()
            self._respond(upstream, client, rule, sender)
        except OSError:
            pass
        finally:
            for sock in (client, upstream):
                if sock is not None:
                    sock.close()

    def _cut_request(self, client, upstream, head: bytes, rest: bytes, keep: int) -> None:
        receiver = threading.Thread(target=_pump, args=(upstream, client), daemon=True)  # passes 100 Continue on
        receiver.start()
        upstream.sendall(head + rest[:keep])
        sent = len(rest[:keep])
        while sent < keep and (more := client.recv(keep - sent)):
            upstream.sendall(more)
            sent += len(more)
        time.sleep(0.05)
        _reset(client)
        _reset(upstream, receiver)

    def _respond(self, upstream, client, rule: Rule | None, sender: threading.Thread) -> None:
        if rule is None:
            _pump(upstream, client)
            return
        head, rest = _read_head(upstream)
        while head is not None and head.startswith(b"HTTP/1.1 1"):  # 100 Continue: pass it on
            client.sendall(head + b"\r\n\r\n")
            head, rest = _read_head(upstream, rest)
        if head is None:
            return
        if rule.action == "drop_response":
            _reset(client, sender)
            return
        if rule.action == "delay":
            time.sleep(rule.seconds)
            client.sendall(head + b"\r\n\r\n" + rest)
            _pump(upstream, client)
            return
        while len(rest) < rule.keep and (more := upstream.recv(65536)):
            rest += more
        client.sendall(head + b"\r\n\r\n" + rest[:rule.keep])
        if rule.action == "stall":
            time.sleep(rule.seconds)
        if rule.action == "cut_reset":
            _reset(client, sender)
        else:
            client.shutdown(socket.SHUT_RDWR)


def _read_head(sock: socket.socket, buf: bytes = b"") -> tuple[bytes | None, bytes]:
    while b"\r\n\r\n" not in buf:
        data = sock.recv(65536)
        if not data:
            return None, b""
        buf += data
    head, _, rest = buf.partition(b"\r\n\r\n")
    return head, rest


def _pump(src: socket.socket, dst: socket.socket) -> None:
    try:
        while data := src.recv(65536):
            dst.sendall(data)
        dst.shutdown(socket.SHUT_WR)
    except OSError:
        pass


def _reset(sock: socket.socket, reader: threading.Thread | None = None) -> None:
    """Close with an RST; first wake a thread blocked reading the socket, which would keep it open."""
    if reader is not None:
        try:
            sock.shutdown(socket.SHUT_RD)
        except OSError:
            pass
        reader.join(5)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


@pytest.fixture
def proxy(seaweedfs):
    p = FaultProxy(seaweedfs.endpoint)
    yield p
    p.close()


def _short_timeouts(store: Store, seconds: float) -> None:
    """Give a store's client short connect and read timeouts (cas uses 10 s and 60 s)."""
    import boto3
    import botocore.config
    client = store.backend.client
    config = client.meta.config.merge(botocore.config.Config(connect_timeout=seconds, read_timeout=seconds))
    store.backend.client = boto3.session.Session().client("s3", endpoint_url=client.meta.endpoint_url,
                                                          config=config)


def _seeded_put(store: Store, rng: random.Random, label: str | None, size: int | None = None):
    data = rng.randbytes(size if size is not None else rng.randrange(1, 600 * KiB))
    return data, blake3(data).hexdigest(), (lambda: store.put_bytes(data, pin=label))


# ---- hooks: transient faults are ridden out, persistent ones fail in one line ----------------------

@pytest.mark.slow
def test_transient_faults_on_every_call_are_ridden_out(s3_store, seaweedfs, tmp_path, caplog):
    """SlowDown/500/reset/timeout/unreachable on any S3 call, up to 4 in a row per request: all succeeds."""
    caplog.set_level(logging.WARNING)
    machines = Machines(tmp_path, s3_store, seaweedfs.endpoint)
    acknowledged, pins, fired = {}, set(), 0
    for i in range(ROUNDS):
        rng = random.Random(i)
        writer = machines.clean()
        inj = Injector(writer, ops=(), budget=WITHIN_BUDGET, seed=i)
        data, digest, put = _seeded_put(writer, rng, f"round-{i}")
        assert put().digest == digest
        acknowledged[digest] = data
        pins.add(f"round-{i}")
        reader = machines.clean()
        inj2 = Injector(reader, ops=(), budget=WITHIN_BUDGET, seed=1000 + i)
        out = tmp_path / f"out-{i}.bin"
        reader.get_file(digest, out)
        assert out.read_bytes() == data
        fired += len(inj.fired) + len(inj2.fired)
    assert fired >= ROUNDS  # faults really were injected
    machines.check(acknowledged, pins)
    for record in caplog.records:
        assert_clean(record.getMessage())


@pytest.mark.parametrize("kind, where", [("slowdown", "/packs/"), ("internal", "/index/"), ("reset", "/pins/"),
                                         ("timeout", "/packs/"), ("unreachable", "/index/")])
def test_a_persistent_put_fault_fails_in_one_line_and_leaves_no_pin(kind, where, s3_store, seaweedfs, tmp_path):
    """Every attempt at the pack, index object or pin fails: one line, after botocore's 5 attempts and no
    more; no pin, the store verifies, earlier puts read back; once the fault clears the put succeeds."""
    machines = Machines(tmp_path, s3_store, seaweedfs.endpoint)
    store = machines.clean()
    rng = random.Random(7)
    before, before_digest, put = _seeded_put(store, rng, "before", 200 * KiB)
    put()
    data, digest, put = _seeded_put(store, rng, "after", 300 * KiB)
    inj = Injector(store, kind, match=where, times=1000)
    with pytest.raises(StorageError) as info:
        put()
    message = assert_one_line_error(info.value)
    assert "writing " + where.strip("/") in message, message
    assert len(inj.fired) == BOTO_ATTEMPTS  # botocore's retries, each call once, no retries on top
    assert {p.label for p in store.pins()} == {"before"}
    read_or_absent(store, digest, data)  # the failed put's own machine reads nothing wrong
    machines.check({before_digest: before}, {"before"})
    assert read_or_absent(machines.observer, digest, data) is False or where == "/pins/"
    inj.times = 0  # the fault clears: the same put now succeeds and every machine reads it
    assert put().digest == digest
    machines.check({before_digest: before, digest: data}, {"before", "after"})


def test_slowdown_with_real_backoff(s3_store, seaweedfs, tmp_path, monkeypatch):
    """Two SlowDowns in a row with botocore's own backoff (up to 1 s, then 2 s): the put just succeeds."""
    from botocore.retries.standard import ExponentialBackoff
    monkeypatch.setitem(ExponentialBackoff._DEFAULT_BACKOFF_CONFIG, "throttling_base_scale", 1)
    started = time.monotonic()
    machines = Machines(tmp_path, s3_store, seaweedfs.endpoint)
    store = machines.clean()
    data, digest, put = _seeded_put(store, random.Random(3), "slow", 100 * KiB)
    inj = Injector(store, "slowdown", match="/packs/", times=2)
    assert put().digest == digest and len(inj.fired) == 2
    print(f"\nput after 2 SlowDowns: {time.monotonic() - started:.1f} s")
    machines.check({digest: data}, {"slow"})


@pytest.mark.slow
def test_random_faults_beyond_the_retry_budget(s3_store, seaweedfs, tmp_path, caplog):
    """Some requests fail every attempt: each put or get succeeds with the right bytes or fails in one line."""
    caplog.set_level(logging.WARNING)
    machines = Machines(tmp_path, s3_store, seaweedfs.endpoint)
    machines.observer.init()  # the store exists before any fault
    acknowledged, pins, outcomes = {}, set(), {"ok": 0, "failed": 0}
    for i in range(ROUNDS):
        rng = random.Random(100 + i)
        store = machines.clean()
        Injector(store, ops=(), budget=BEYOND_BUDGET, seed=100 + i)
        label = f"round-{i}"
        data, digest, put = _seeded_put(store, rng, label)
        try:
            assert put().digest == digest
            acknowledged[digest] = data
            pins.add(label)
            outcomes["ok"] += 1
        except CasError as exc:
            assert_one_line_error(exc)
            outcomes["failed"] += 1
        assert read_or_absent(machines.observer, digest, data) or digest not in acknowledged
        if acknowledged:  # a get under the same faults: the right bytes, or one line and nothing at dest
            want = rng.choice(sorted(acknowledged))
            reader = machines.clean()
            Injector(reader, ops=(), budget=BEYOND_BUDGET, seed=200 + i)
            dest = tmp_path / f"get-{i}" / "out.bin"
            try:
                reader.get_file(want, dest)
                assert dest.read_bytes() == acknowledged[want]
            except CasError as exc:
                assert_one_line_error(exc)
                assert not (tmp_path / f"get-{i}").exists()
        machines.check(acknowledged, pins, verify=False)  # pins only for acknowledged puts: faults strike
    machines.check(acknowledged, pins)                    # before sending, so no answer is ever lost
    print(f"\n{ROUNDS} rounds: {outcomes}")
    for record in caplog.records:
        assert_clean(record.getMessage())


def test_a_put_failing_midway_then_retried_is_readable_on_every_machine(s3_store, seaweedfs, tmp_path):
    """Packs made durable before the failure must not let a retried put dedup against chunks no index
    object names (another machine would find the file's chunks missing)."""
    machines = Machines(tmp_path, s3_store, seaweedfs.endpoint)
    store = machines.clean()
    store.config = replace(store.init(), pack_target=256 * KiB)  # many packs for a small file
    data, digest, put = _seeded_put(store, random.Random(5), "big", 3 * MiB)
    inj = Injector(store, "reset", match="/packs/", skip=4, times=1000)  # 4 packs upload, then none
    with pytest.raises(StorageError) as info:
        put()
    assert_one_line_error(info.value)
    assert store.pins() == [] and len(inj.fired) >= BOTO_ATTEMPTS
    inj.times = 0
    assert put().digest == digest
    machines.check({digest: data}, {"big"})


# ---- the proxy: truncated bodies, resets, lost responses, timeouts ---------------------------------

CUTS = [("cut", 0), ("cut", 10), ("cut_reset", 10), ("reset", 0), ("drop_response", 0)]


@pytest.mark.parametrize("action, keep", CUTS)
def test_get_through_broken_responses(action, keep, s3_store, seaweedfs, proxy, tmp_path):
    machines = Machines(tmp_path, s3_store, seaweedfs.endpoint)
    data, digest, put = _seeded_put(machines.observer, random.Random(11), "f", 3 * MiB)
    put()
    proxy.fault(action, 2, method="GET", path="/packs/", keep=keep)
    reader = machines.clean(proxy.endpoint)
    assert reader.read_bytes(digest) == data and len(proxy.fired) == 2
    proxy.clear()
    proxy.fault(action, 1000, method="GET", path="/packs/", keep=keep)
    reader = machines.clean(proxy.endpoint)
    dest = tmp_path / "out" / "f.bin"
    with pytest.raises(StorageError) as info:
        reader.get_file(digest, dest)
    assert "reading packs/" in assert_one_line_error(info.value)
    assert not (tmp_path / "out").exists()
    # retried READ_ATTEMPTS times by cas (a cut body) or BOTO_ATTEMPTS times by botocore, never both
    assert len(proxy.fired) == (READ_ATTEMPTS if action.startswith("cut") else BOTO_ATTEMPTS)


@pytest.mark.parametrize("action, keep, where", [("cut_request", 10, "/packs/"), ("cut_request", 50 * KiB, "/packs/"),
                                                 ("reset", 0, "/index/"), ("drop_response", 0, "/packs/"),
                                                 ("drop_response", 0, "/index/"), ("drop_response", 0, "/pins/")])
def test_put_through_broken_requests(action, keep, where, s3_store, seaweedfs, proxy, tmp_path):
    """Requests cut short, connections reset, answers lost after the server acted: 2 in a row are ridden
    out (a lost create-only answer comes back 412 on the retry, which is success); 5 fail in one line."""
    machines = Machines(tmp_path, s3_store, seaweedfs.endpoint)
    machines.observer.init()  # the store exists before any fault
    rng = random.Random(13)
    writer = machines.clean(proxy.endpoint)
    proxy.fault(action, 2, method="PUT", path=where, keep=keep)
    data, digest, put = _seeded_put(writer, rng, "ok", 2 * MiB)
    assert put().digest == digest and len(proxy.fired) == 2
    machines.check({digest: data}, {"ok"})
    pin_events = [k for k, _ in machines.observer.backend.list("pins/")]
    assert len(pin_events) == 1  # a retried pin write did not pin twice
    proxy.clear()
    proxy.fault(action, 1000, method="PUT", path=where, keep=keep)
    failed, failed_digest, put = _seeded_put(writer, rng, "failed", 2 * MiB)
    with pytest.raises(StorageError) as info:
        put()
    assert_one_line_error(info.value)
    assert len(proxy.fired) == BOTO_ATTEMPTS
    if where == "/pins/" and action == "drop_response":
        # the server wrote the pin and every answer was lost: the put cannot know, but the pin it left
        # names complete, verified data
        machines.check({digest: data, failed_digest: failed}, {"ok", "failed"})
    else:
        machines.check({digest: data}, {"ok"})
        read_or_absent(machines.observer, failed_digest, failed)


def test_timeouts(s3_store, seaweedfs, proxy, tmp_path):
    """Answers held past the read timeout (before the head or mid-body): 2 are ridden out, also for a put
    the server did finish; a persistent one fails in one line within the retry budget."""
    machines = Machines(tmp_path, s3_store, seaweedfs.endpoint)
    rng = random.Random(17)
    data, digest, put = _seeded_put(machines.observer, rng, "f", 2 * MiB)
    put()
    for action, method in (("delay", "GET"), ("stall", "GET"), ("delay", "PUT")):
        proxy.clear()
        proxy.fault(action, 2, method=method, path="/packs/", keep=10, seconds=1.0)
        store = machines.clean(proxy.endpoint)
        _short_timeouts(store, 0.3)
        if method == "GET":
            assert store.read_bytes(digest) == data
        else:
            new, new_digest, put = _seeded_put(store, rng, "delayed", 1 * MiB)
            assert put().digest == new_digest
            machines.check({digest: data, new_digest: new}, {"f", "delayed"})
        assert len(proxy.fired) == 2
    proxy.clear()
    proxy.fault("delay", 1000, method="GET", path="/packs/", seconds=1.0)
    store = machines.clean(proxy.endpoint)
    _short_timeouts(store, 0.3)
    started = time.monotonic()
    with pytest.raises(StorageError) as info:
        store.read_bytes(digest)
    assert "ReadTimeout" in assert_one_line_error(info.value)
    assert len(proxy.fired) == BOTO_ATTEMPTS and time.monotonic() - started < 10


@pytest.mark.slow
def test_random_proxy_faults_on_put_and_get(s3_store, seaweedfs, proxy, tmp_path):
    """Every kind of break, at random, on any request: each put and get succeeds right or fails in one
    line; only a pin whose answer was lost may outlive a failed put, and it names complete data."""
    machines = Machines(tmp_path, s3_store, seaweedfs.endpoint)
    machines.observer.init()  # the store exists before any fault
    acknowledged, pins, outcomes = {}, set(), {"ok": 0, "failed": 0}
    actions = [("cut", 0, "GET"), ("cut", 10, "GET"), ("cut_reset", 10, None), ("reset", 0, None),
               ("drop_response", 0, None), ("cut_request", 10, "PUT")]
    for i in range(ROUNDS):
        rng = random.Random(300 + i)
        proxy.clear()
        for action, keep, method in actions:
            proxy.fault(action, rng.randrange(0, 3), method=method, keep=keep)
        rng.shuffle(proxy.rules)
        label = f"round-{i}"
        data = rng.randbytes(rng.randrange(1, 600 * KiB))
        digest = blake3(data).hexdigest()
        try:
            writer = machines.clean(proxy.endpoint)  # opening reads the config, under faults too
            assert writer.put_bytes(data, pin=label).digest == digest
            acknowledged[digest] = data
            pins.add(label)
            outcomes["ok"] += 1
        except CasError as exc:
            assert_one_line_error(exc)
            outcomes["failed"] += 1
            if label in {p.label for p in machines.observer.pins()}:  # the pin's answer was lost
                acknowledged[digest] = data
                pins.add(label)
        try:
            assert read_or_absent(machines.clean(proxy.endpoint), digest, data) or digest not in acknowledged
        except CasError as exc:
            assert_one_line_error(exc)
        machines.check(acknowledged, pins, verify=False)
    machines.check(acknowledged, pins)
    print(f"\n{ROUNDS} rounds: {outcomes}")


# ---- the CLI -------------------------------------------------------------------------------------

def test_cli_get_through_cut_responses(s3_store, seaweedfs, proxy, tmp_path):
    machines = Machines(tmp_path, s3_store, seaweedfs.endpoint)
    src = tmp_path / "model.bin"
    data = random.Random(19).randbytes(3 * MiB)
    src.write_bytes(data)
    digest = machines.observer.put_file(src, pin="model").digest
    env = {"AWS_ENDPOINT_URL": proxy.endpoint}
    proxy.fault("cut", 2, method="GET", path="/packs/", keep=10)
    dest = tmp_path / "ok" / "model.bin"
    r = run_cas("--store", s3_store, "get", digest, "-o", str(dest), env={**env, "CAS_CACHE_DIR": machines.cache()})
    assert r.returncode == 0, r.stderr
    assert dest.read_bytes() == data and len(proxy.fired) == 2
    assert_clean(r.stdout + r.stderr)
    proxy.clear()
    proxy.fault("cut", 10_000, method="GET", path="/packs/", keep=10)
    dest = tmp_path / "failed" / "model.bin"
    r = run_cas("--store", s3_store, "get", digest, "-o", str(dest), env={**env, "CAS_CACHE_DIR": machines.cache()})
    assert_cli_failed_in_one_line(r)
    assert "reading packs/" in r.stderr
    assert not (tmp_path / "failed").exists()


def test_cli_put_through_cut_requests(s3_store, seaweedfs, proxy, tmp_path):
    machines = Machines(tmp_path, s3_store, seaweedfs.endpoint)
    machines.observer.init()  # the store exists before any fault
    env = {"AWS_ENDPOINT_URL": proxy.endpoint, "CAS_CACHE_DIR": machines.cache()}
    rng = random.Random(23)
    src = tmp_path / "a.bin"
    data = rng.randbytes(2 * MiB)
    src.write_bytes(data)
    proxy.fault("cut_request", 2, method="PUT", path="/packs/", keep=1000)
    r = run_cas("--store", s3_store, "put", str(src), "--label", "a", env=env)
    assert r.returncode == 0 and len(proxy.fired) == 2, r.stderr
    assert_clean(r.stdout + r.stderr)
    proxy.clear()
    proxy.fault("cut_request", 10_000, method="PUT", path="/packs/", keep=1000)
    other = tmp_path / "b.bin"
    other.write_bytes(rng.randbytes(2 * MiB))
    r = run_cas("--store", s3_store, "put", str(other), "--label", "b", env=env)
    assert_cli_failed_in_one_line(r)
    assert "writing packs/" in r.stderr
    machines.check({blake3(data).hexdigest(): data}, {"a"})


def test_cli_put_to_a_dead_endpoint_fails_fast_in_one_line(tmp_path, monkeypatch):
    with socket.create_server(("127.0.0.1", 0)) as s:
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"  # closed once this block ends: connections are refused
    secret, key_id = "dead-endpoint-secret-5f0c2d7e", "AKIADEADENDPOINT0042"
    env = {"AWS_ENDPOINT_URL": dead, "AWS_ACCESS_KEY_ID": key_id, "AWS_SECRET_ACCESS_KEY": secret,
           "AWS_DEFAULT_REGION": "us-east-1", "CAS_CACHE_DIR": str(tmp_path / "cache")}
    src = tmp_path / "a.bin"
    src.write_bytes(b"x" * 1000)
    for args in (("put", str(src)), ("get", "0" * 64, "-o", str(tmp_path / "out")), ("pins",)):
        started = time.monotonic()
        r = run_cas("--store", "s3://dead-bucket/store", *args, env=env)
        elapsed = time.monotonic() - started
        assert_cli_failed_in_one_line(r, 6, secret, key_id)
        assert "cannot reach the S3 endpoint" in r.stderr
        assert elapsed < 15, f"{args[0]} took {elapsed:.1f} s"
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("which", ["secret", "key id"])
def test_cli_wrong_credentials_fail_in_one_line_without_leaking(which, s3_store, seaweedfs, tmp_path):
    machines = Machines(tmp_path, s3_store, seaweedfs.endpoint)
    machines.observer.init()  # the store exists before any fault
    bad = {"secret": {"AWS_SECRET_ACCESS_KEY": "wrong-secret-7d41c9a0b3"},
           "key id": {"AWS_ACCESS_KEY_ID": "AKIAWRONGKEYID000777"}}[which]
    src = tmp_path / "a.bin"
    src.write_bytes(b"y" * 5000)
    for args in (("put", str(src)), ("pins",)):
        r = run_cas("--store", s3_store, *args, env={**bad, "CAS_CACHE_DIR": machines.cache()})
        assert_cli_failed_in_one_line(r, 6, *bad.values())
        assert "check credentials" in r.stderr
    machines.check({}, set())
