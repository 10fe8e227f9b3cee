"""The Store is a façade: no module outside cas/store.py reaches into its private members."""

from __future__ import annotations

import ast
import os

ROOT = os.path.join(os.path.dirname(__file__), os.pardir)


def _python_files():
    for top in ("cas", "tracker", "tests"):
        for folder, _, names in os.walk(os.path.join(ROOT, top)):
            for name in names:
                if name.endswith(".py"):
                    yield os.path.join(folder, name)


def test_no_private_member_of_a_store_is_used_outside_its_module():
    found = []
    for path in _python_files():
        if os.path.normpath(path).endswith(os.path.join("cas", "store.py")):
            continue
        with open(path, encoding="utf-8") as f:
            tree = ast.parse(f.read(), filename=path)
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__")
                    and isinstance(node.value, (ast.Name, ast.Attribute))
                    and (node.value.id if isinstance(node.value, ast.Name) else node.value.attr)
                    in ("store", "writer", "reader", "fresh", "gc_store")):
                found.append(f"{os.path.relpath(path, ROOT)}:{node.lineno}: .{node.attr}")
    assert not found, "\n".join(found)
