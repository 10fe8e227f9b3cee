"""Folders: nested trees, empty files and folders, executable bits, links kept as links, unsafe trees refused."""

from __future__ import annotations

import os
import stat

import pytest

from cas import Store
from cas.errors import IntegrityError
from cas.manifest import DIR, FILE, LINK, TreeEntry, TreeManifest
from cas.pack import TREE_MANIFEST


def _snapshot(root):
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            full = os.path.join(dirpath, name)
            rel = os.path.relpath(full, root)
            st = os.lstat(full)
            if stat.S_ISLNK(st.st_mode):
                out[rel] = ("link", os.readlink(full))
            elif stat.S_ISDIR(st.st_mode):
                out[rel] = ("dir",)
            elif stat.S_ISFIFO(st.st_mode):
                out[rel] = ("fifo",)
            else:
                out[rel] = ("file", open(full, "rb").read(), bool(st.st_mode & 0o100))
    return out


@pytest.fixture
def tree(tmp_path):
    root = tmp_path / "src"
    (root / "a" / "b" / "c").mkdir(parents=True)
    (root / "empty-dir" / "inner-empty").mkdir(parents=True)
    (root / "a" / "empty.txt").write_bytes(b"")
    (root / "a" / "b" / "c" / "deep.bin").write_bytes(os.urandom(300_000))
    (root / "run.sh").write_text("#!/bin/sh\necho hi\n")
    os.chmod(root / "run.sh", 0o755)
    (root / "a" / "link-to-deep").symlink_to("b/c/deep.bin")
    (root / "dangling").symlink_to("does-not-exist")
    os.mkfifo(root / "a" / "fifo")
    return root


def test_folder_round_trip(cli, tmp_path, tree):
    put = cli("--json", "put", str(tree))
    assert put.code == 0
    assert "fifo" in put.err and "warning" in put.err  # skipped with a warning
    res = put.json()
    assert res["kind"] == "tree" and res["size"] == 300_000 + len("#!/bin/sh\necho hi\n")
    dest = tmp_path / "restored"
    assert cli("get", res["digest"], "-o", str(dest)).code == 0
    want = _snapshot(tree)
    del want[os.path.join("a", "fifo")]
    assert _snapshot(dest) == want
    assert os.path.islink(dest / "a" / "link-to-deep")


def test_folder_digest_never_equals_a_file_digest(store_dir, tmp_path):
    store = Store.open(store_dir)
    (tmp_path / "d").mkdir()
    tree = store.put_file(tmp_path / "d")
    empty_file = store.put_bytes(b"")
    assert tree.kind == "tree" and tree.digest != empty_file.digest


def test_folder_into_existing_empty_dir_and_refusal_without_force(cli, tmp_path, tree):
    digest = cli("--json", "put", str(tree), "--no-pin").json()["digest"]
    dest = tmp_path / "dest"
    dest.mkdir()
    assert cli("get", digest, "-o", str(dest)).code == 0
    assert (dest / "run.sh").exists()
    again = cli("get", digest, "-o", str(dest))
    assert again.code != 0 and "exists" in again.err
    (dest / "run.sh").write_text("changed")
    assert cli("get", digest, "-o", str(dest), "--force").code == 0
    assert (dest / "run.sh").read_text().startswith("#!/bin/sh")


def _store_tree(store: Store, entries) -> str:
    """Write a hand-made (possibly hostile) tree manifest into the store, as an attacker could."""
    tree = TreeManifest(tuple(entries))
    with store.write_session() as session:
        session.add_manifest(TREE_MANIFEST, tree.digest(), tree.to_bytes(), 0)
    return tree.digest().hex()


@pytest.mark.parametrize("entry", [
    TreeEntry("../escape.txt", FILE),
    TreeEntry("/etc/evil", FILE),
    TreeEntry("a/../../evil", FILE),
    TreeEntry("ok/./x", FILE),
    TreeEntry("up", LINK, target="../outside"),
    TreeEntry("abs", LINK, target="/etc/passwd"),
    TreeEntry("deep/link", LINK, target="../../x"),
])
def test_unsafe_tree_is_refused(store_dir, tmp_path, entry):
    store = Store.open(store_dir)
    content = store.put_bytes(b"payload")
    if entry.kind == FILE:
        entry = TreeEntry(entry.path, FILE, False, bytes.fromhex(content.digest), 7)
    digest = _store_tree(store, [entry])
    dest = tmp_path / "dest" / "inner"
    with pytest.raises(IntegrityError, match="refusing"):
        store.get_file(digest, dest)
    assert not (tmp_path / "dest").exists()
    assert not (tmp_path / "escape.txt").exists()


def test_file_under_a_link_is_refused(store_dir, tmp_path):
    store = Store.open(store_dir)
    content = store.put_bytes(b"payload")
    digest = _store_tree(store, [TreeEntry("d", LINK, target="."),
                                 TreeEntry("d/x", FILE, False, bytes.fromhex(content.digest), 7)])
    with pytest.raises(IntegrityError, match="under a link"):
        store.get_file(digest, tmp_path / "dest")


def test_safe_links_and_dirs_are_accepted(store_dir, tmp_path):
    store = Store.open(store_dir)
    content = store.put_bytes(b"payload")
    digest = _store_tree(store, [TreeEntry("d", DIR), TreeEntry("d/x", FILE, True, bytes.fromhex(content.digest), 7),
                                 TreeEntry("d/y", LINK, target="x"), TreeEntry("top", LINK, target="d/../d/x")])
    dest = tmp_path / "dest"
    store.get_file(digest, dest)
    assert (dest / "top").read_bytes() == b"payload"
    assert os.access(dest / "d" / "x", os.X_OK)
