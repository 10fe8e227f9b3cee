"""`cas ui`: routes (read-only, loopback, escaped, paged, 404 on bad refs and traversal), downloads that
match the store byte for byte, and what a person sees in a real headless Chromium."""

from __future__ import annotations

import io
import os
import shutil
import tarfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request

import pytest

import tracker
from cas import Store
from cas.ui.server import serve


@pytest.fixture
def site(store_dir, tmp_path):
    """A store with two runs (a checkpoint series with an alias, a folder, HTML in metadata) served."""
    import torch
    weights = {"layer.weight": torch.randn(128, 128), "head.weight": torch.randn(4, 128)}
    with tracker.init("exp-1", store=store_dir, config={"note": "<b id=\"xss\">bold</b>"}) as run:
        for step in (100, 200, 300):
            weights["layer.weight"] += 0.01 * torch.randn(128, 128)
            torch.save(weights, tmp_path / "ckpt.pt")
            run.log_artifact(tmp_path / "ckpt.pt", name="model", step=step, metadata={"html": "<b id=\"xss\">x</b>"})
        (tmp_path / "eval" / "sub").mkdir(parents=True)
        (tmp_path / "eval" / "sub" / "r.txt").write_text("0.93")
        run.log_artifact(tmp_path / "eval")
        run.alias(300, "best", name="model")
    with tracker.init("exp-2", store=store_dir) as other:
        other.use_artifact("runs:/exp-1/model@300")
    store = Store.open(store_dir)
    started = threading.Event()
    holder = {}

    def ready(server):
        holder["server"] = server
        started.set()
    thread = threading.Thread(target=serve, args=(store, "127.0.0.1", 0), kwargs={"ready": ready}, daemon=True)
    thread.start()
    assert started.wait(10)
    server = holder["server"]
    yield f"http://127.0.0.1:{server.server_address[1]}", store, tmp_path
    server.shutdown()


def _get(url: str) -> tuple[int, bytes, dict]:
    try:
        with urllib.request.urlopen(url, timeout=30) as r:
            return r.status, r.read(), dict(r.headers)
    except urllib.error.HTTPError as err:
        return err.code, err.read(), dict(err.headers)


def _q(ref: str) -> str:
    return urllib.parse.quote(ref, safe="")


def test_pages_list_runs_versions_tensors_and_escape_html(site):
    base, store, _ = site
    status, body, _ = _get(base + "/")
    assert status == 200 and b"exp-1" in body and b"exp-2" in body
    status, body, _ = _get(base + "/run/exp-1")
    text = body.decode()
    assert status == 200 and all(f">{step}<" in text for step in (100, 200, 300)) and "@best" in text
    assert "<svg" in text and 'id="xss"' not in text and "&lt;b id=&quot;xss&quot;&gt;" in text
    status, body, _ = _get(base + "/v/" + _q("runs:/exp-1/model@300"))
    text = body.decode()
    assert status == 200 and "layer.weight" in text and "Changed since the previous version" in text
    assert "exp-2" in text  # used by
    status, body, _ = _get(base + "/store")
    assert status == 200 and b"stored_bytes" in body


def test_downloads_match_the_store_and_folders_come_as_tar(site):
    base, store, tmp_path = site
    status, body, headers = _get(base + "/download/" + _q("runs:/exp-1/model@best"))
    assert status == 200 and body == store.read_bytes("runs:/exp-1/model@300")
    assert int(headers["Content-Length"]) == len(body)
    status, body, headers = _get(base + "/download/" + _q("runs:/exp-1/eval"))
    assert status == 200 and headers["Content-Type"] == "application/x-tar"
    with tarfile.open(fileobj=io.BytesIO(body)) as tar:
        assert tar.extractfile("sub/r.txt").read() == b"0.93"
    status, body, _ = _get(base + "/download/" + _q("runs:/exp-1/eval/sub/r.txt"))
    assert (status, body) == (200, b"0.93")


@pytest.mark.parametrize("path", ["/v/..%2F..%2Fetc%2Fpasswd", "/download/%2e%2e%2f%2e%2e%2fetc%2fpasswd",
                                  "/download/../../etc/passwd", "/v/" + "%2e%2e", "/run/nope", "/v/runs%3A%2Fexp-1%2Fx",
                                  "/nothing/here", "/download/runs%3A%2Fexp-1%2Feval%2F..%2F..%2Fsecret"])
def test_bad_refs_and_traversal_are_one_404_page(site, path):
    base, _, _ = site
    status, body, _ = _get(base + path)
    assert status == 404 and b"Not found" in body and b"root:" not in body


def test_a_huge_folder_is_paged(store_dir, tmp_path):
    folder = tmp_path / "many"
    folder.mkdir()
    for i in range(1200):
        (folder / f"f{i:05d}.txt").write_text(str(i))
    digest = Store.open(store_dir).put_file(folder).digest
    from cas.ui.server import Site
    first = Site(Store.open(store_dir)).version(digest, 0).decode()
    assert first.count("<tr>") == 500 + 1 and "next 500" in first and "f00499.txt" in first
    assert "f01199.txt" in Site(Store.open(store_dir)).version(digest, 1000).decode()


def test_cas_ui_listens_on_loopback_and_warns_for_other_hosts(store_dir, capsys):
    from cas.ui import server as ui_server
    seen = {}

    class Fake:
        def __init__(self, address, handler):
            seen["address"] = address
            self.server_address = address

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def serve_forever(self):
            pass
    real = ui_server.ThreadingHTTPServer
    ui_server.ThreadingHTTPServer = Fake
    try:
        ui_server.serve(Store.open(store_dir))
        assert seen["address"] == ("127.0.0.1", 8765) and capsys.readouterr().err == ""
        ui_server.serve(Store.open(store_dir), "0.0.0.0", 9)
        assert "warning" in capsys.readouterr().err
    finally:
        ui_server.ThreadingHTTPServer = real


CHROMIUM, DRIVER = shutil.which("chromium"), shutil.which("chromedriver")


@pytest.mark.skipif(not (CHROMIUM and DRIVER), reason="needs Debian's chromium and chromium-driver (.ci/run "
                                                      "installs them)")
def test_in_headless_chromium_a_person_finds_a_run_and_downloads_a_version(site, tmp_path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    base, store, _ = site
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    shots = os.environ.get("CAS_UI_SCREENSHOTS") or str(tmp_path / "shots")
    os.makedirs(shots, exist_ok=True)
    options = webdriver.ChromeOptions()
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1280,900"):
        options.add_argument(arg)
    options.binary_location = CHROMIUM
    options.add_experimental_option("prefs", {"download.default_directory": str(downloads),
                                              "download.prompt_for_download": False})
    browser = webdriver.Chrome(service=Service(DRIVER), options=options)
    try:
        browser.get(base + "/")
        assert {a.text for a in browser.find_elements(By.CSS_SELECTOR, "tbody a")} == {"exp-1", "exp-2"}
        browser.save_screenshot(os.path.join(shots, "runs.png"))
        browser.find_element(By.LINK_TEXT, "exp-1").click()
        headings = [h.text for h in browser.find_elements(By.TAG_NAME, "h2")]
        assert {"model", "eval"} <= set(headings)
        steps = [a.text for a in browser.find_elements(By.CSS_SELECTOR, "tbody td:first-child a")]
        assert {"100", "200", "300", "1"} <= set(steps)
        assert browser.find_elements(By.TAG_NAME, "svg") and not browser.find_elements(By.ID, "xss")
        browser.save_screenshot(os.path.join(shots, "run.png"))
        rows = browser.find_elements(By.CSS_SELECTOR, "tbody tr")
        row = next(r for r in rows if r.find_elements(By.LINK_TEXT, "200"))
        row.find_element(By.LINK_TEXT, "download").click()
        want = store.read_bytes("runs:/exp-1/model@200")
        target = None
        deadline = time.monotonic() + 30
        while target is None and time.monotonic() < deadline:  # Chromium writes to a hidden temp name first
            done = [p for p in downloads.iterdir() if not p.name.startswith(".")
                    and not p.name.endswith(".crdownload") and p.stat().st_size == len(want)]
            target = done[0] if done else None
            time.sleep(0.1)
        assert target is not None and target.name == "model" and target.read_bytes() == want
        browser.find_element(By.LINK_TEXT, "300").click()
        assert "layer.weight" in browser.page_source
        browser.save_screenshot(os.path.join(shots, "version.png"))
        browser.get(base + "/store")
        browser.save_screenshot(os.path.join(shots, "store.png"))
    finally:
        browser.quit()
