"""The HTTP side of `cas ui`: routes, downloads (files whole, folders as a tar stream), the server."""

from __future__ import annotations

import sys
import tarfile
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from ..errors import CasError
from ..manifest import DIR, FILE, LINK, TreeManifest
from ..reach import Reach
from ..records import RunEvent
from . import pages

LOOPBACK = ("127.0.0.1", "::1", "localhost")
PREVIEW_MAX = 64 << 10


class Site:
    """What the pages show, read from one store (one request at a time: the store's caches are shared)."""

    def __init__(self, store):
        self.store = store
        self.lock = threading.Lock()

    def runs(self) -> bytes:
        store = self.store
        if not store.exists:
            return pages.runs_page([])
        records = store.records
        records.sync()
        roots = store.roots(fresh=False)
        reach = Reach(store)
        reach.walk.reach(roots)
        only = pages.owners_of(roots, lambda d: reach.footprint(d).chunks)
        out = []
        for name in records.run_names():
            info = self._info(name)
            versions = records.versions(name)
            out.append({"name": name, "status": info["status"], "start": info["start"], "versions": len(versions),
                        "logical_bytes": sum(v.size for v in versions),
                        "only_bytes": reach.stored(only.get(name, set()))})
        return pages.runs_page(out)

    def _info(self, run: str) -> dict:
        state = self.store.records.run_state(run)
        return {"status": state.status, "start": state.start_time, "config": state.config, "metadata": state.metadata}

    def run(self, name: str) -> bytes:
        records = self.store.records
        records.require_run(name)
        return pages.run_page(name, self._info(name), records.versions(name), records.aliases_by_version(name))

    def version(self, ref: str, start: int) -> bytes:
        store = self.store
        digest, loc, manifest = store.lookup(ref)
        if isinstance(manifest, TreeManifest):
            return pages.version_page(ref, digest.hex(), "folder", manifest.size,
                                      [pages.folder_section(ref, list(manifest.entries), max(0, start))])
        extra = [self._tensors(ref, digest), self._preview(ref, digest, manifest.size), self._used_by(ref)]
        return pages.version_page(ref, digest.hex(), "file", manifest.size, [x for x in extra if x])

    def _tensors(self, ref: str, digest: bytes) -> str:
        from ..tensorfiles.stored import open_checkpoint, tensor_diff
        checkpoint = open_checkpoint(self.store, digest.hex())
        if checkpoint.layout is None:
            return ""
        changes = None
        previous = self._previous(ref)
        if previous is not None:
            before = open_checkpoint(self.store, previous)
            if before.layout is not None:
                changes = tensor_diff(before, checkpoint)
        return pages.tensors_section(checkpoint.layout.format, list(checkpoint.tensors), changes)

    def _previous(self, ref: str) -> str | None:
        """The digest of the version logged before this one under the same name, if ref is a version."""
        if not ref.startswith("runs:/"):
            return None
        try:
            version, inside = self.store.records.locate(ref)
        except CasError:
            return None
        earlier = [v for v in self.store.records.versions(version.run, version.name)
                   if v.step < version.step and v.digest]
        return earlier[-1].digest if earlier and not inside else None

    def _preview(self, ref: str, digest: bytes, size: int) -> str:
        name = ref.rsplit("/", 1)[-1].split("@")[0].lower()
        if name.endswith((".png", ".jpg", ".jpeg")):
            return f"<h2>Preview</h2><img alt='preview' style='max-width:100%' src='/download/{pages.q(ref)}'>"
        if size > PREVIEW_MAX:
            return ""
        return pages.preview_section(self.store.read_bytes(digest.hex()), name)

    def _used_by(self, ref: str) -> str:
        if not ref.startswith("runs:/"):
            return ""
        records = self.store.records
        users = [run for run in records.run_names() for ev in records.events(run)
                 if isinstance(ev, RunEvent) and ev.type == "input" and ref in (ev.data.get("ref"), ev.data.get("uri"))]
        return "<h2>Used by</h2>" + "".join(f"<p><a href='/run/{pages.q(r)}'>{pages.e(r)}</a></p>" for r in users) \
            if users else ""

    def overview(self) -> bytes:
        from ..gc import execute_gc
        store = self.store
        if not store.exists:
            return pages.store_page({"store": store.location(), "exists": False}, [], None)
        stats = store.stats()
        try:
            plan = execute_gc(store, dry_run=True, grace=0)
        except CasError:
            plan = None
        return pages.store_page(stats, store.pins(), plan)


class Handler(BaseHTTPRequestHandler):
    site: Site  # set on the class made by serve()
    server_version = "cas-ui"

    def log_message(self, format, *args):  # noqa: A002 - the base class's name
        pass  # quiet: the terminal shows where it serves, not every request

    def do_GET(self):  # noqa: N802 - http.server's name
        url = urllib.parse.urlsplit(self.path)
        route, _, rest = url.path.lstrip("/").partition("/")
        arg = urllib.parse.unquote(rest)  # one segment: the whole ref, '/' and '@' escaped by the links
        query = urllib.parse.parse_qs(url.query)
        try:
            if route == "download":
                return self._download(arg)
            with self.site.lock:
                if route == "" and not rest:
                    body = self.site.runs()
                elif route == "run" and arg:
                    body = self.site.run(arg)
                elif route == "v" and arg:
                    start = query.get("start", ["0"])[0]
                    body = self.site.version(arg, int(start) if start.isdigit() else 0)
                elif route == "store" and not rest:
                    body = self.site.overview()
                else:
                    return self._send(404, pages.not_found(f"no page at {url.path}"))
        except CasError as exc:
            return self._send(404 if getattr(exc, "exit_code", 0) in (2, 3) else 500,
                              pages.not_found(str(exc).splitlines()[0]))
        self._send(200, body)

    def _send(self, status: int, body: bytes, content_type: str = "text/html; charset=utf-8") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Content-Security-Policy", "default-src 'self'; style-src 'unsafe-inline'; "
                                                    "script-src 'unsafe-inline'; img-src 'self'")
        self.end_headers()
        self.wfile.write(body)

    def _download(self, ref: str) -> None:
        store = self.site.store
        with self.site.lock:
            digest, loc, manifest = store.lookup(ref)
        name = (ref.rsplit("/", 1)[-1].split("@")[0] or digest.hex()[:16]).replace('"', "")
        if isinstance(manifest, TreeManifest):
            self.send_response(200)
            self.send_header("Content-Type", "application/x-tar")
            self.send_header("Content-Disposition", f'attachment; filename="{name}.tar"')
            self.send_header("Connection", "close")
            self.end_headers()
            self.close_connection = True
            self._tar(manifest)
            return
        self.send_response(200)
        kind = "image/png" if name.lower().endswith(".png") else \
            "image/jpeg" if name.lower().endswith((".jpg", ".jpeg")) else "application/octet-stream"
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(manifest.size))
        self.send_header("Content-Disposition", f'attachment; filename="{name}"')
        self.end_headers()
        store.stream(digest.hex(), self.wfile.write)  # verified chunk by chunk, and whole at the end

    def _tar(self, tree: TreeManifest) -> None:
        store = self.site.store
        with tarfile.open(fileobj=self.wfile, mode="w|") as tar:
            for entry in tree.entries:
                info = tarfile.TarInfo(entry.path)
                if entry.kind == DIR:
                    info.type, info.mode = tarfile.DIRTYPE, 0o755
                    tar.addfile(info)
                elif entry.kind == LINK:
                    info.type, info.linkname = tarfile.SYMTYPE, entry.target
                    tar.addfile(info)
                elif entry.kind == FILE:
                    info.size, info.mode = entry.size, 0o755 if entry.executable else 0o644
                    with store.open_file(entry.digest.hex()) as f:
                        tar.addfile(info, f)


def serve(store, host: str = "127.0.0.1", port: int = 8765, *, ready=None) -> None:
    """Serve the site until interrupted; ready(server) is called once it listens (tests, --open)."""
    if host not in LOOPBACK:
        sys.stderr.write(f"cas: warning: serving on {host}: anyone who can reach it can read this store\n")
    handler = type("StoreHandler", (Handler,), {"site": Site(store)})
    with ThreadingHTTPServer((host, port), handler) as server:
        server.daemon_threads = True
        if ready is not None:
            ready(server)
        server.serve_forever()
