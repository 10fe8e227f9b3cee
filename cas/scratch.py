"""The scratch folder on local disk that spill tables (cas/spill.py) write to, and the row budgets that
decide when they do (CAS_SPILL_ROWS, CAS_GROUP_ROWS). Kept apart from the tables, and free of numpy, so
that a command which never spills (cat, show, put of a text file) does not import numpy to open a store.
"""

from __future__ import annotations

import os
import shutil

from .errors import InvalidInput, StorageError

SPILL_ROWS = 1 << 19  # rows a table holds in memory before it spills (CAS_SPILL_ROWS)
GROUP_ROWS = 1 << 19  # rows of all tables read back at once, about (CAS_GROUP_ROWS)


def _rows(name: str, default: int) -> int:
    text = os.environ.get(name, "")
    if not text:
        return default
    if not (text.isascii() and text.isdigit() and int(text) > 0):
        raise InvalidInput(f"malformed {name} {text!r} (a number of rows, e.g. 524288)", subject=name)
    return int(text)


def spill_rows() -> int:
    return _rows("CAS_SPILL_ROWS", SPILL_ROWS)


def group_rows() -> int:
    return _rows("CAS_GROUP_ROWS", GROUP_ROWS)


class Scratch:
    """A folder of spilled tables, made on first use under root and removed by close(); a folder a killed
    process of this host left (its pid is gone) is removed by the next Scratch of the same root. Folders
    are named <host>-<pid>-<random>: a cache folder another host also sees keeps its folders."""

    def __init__(self, root: str | None):
        self.root = root
        self._folder: str | None = None
        if root is not None:
            spill_rows(), group_rows()  # a malformed budget is said before any work starts

    def folder(self) -> str:
        if self._folder is None:
            if self.root is None:
                raise StorageError("no scratch folder for a table this large", subject="scratch")
            try:
                os.makedirs(self.root, exist_ok=True)
                _remove_orphans(self.root)
                self._folder = os.path.join(self.root, f"{_host()}-{os.getpid()}-{os.urandom(4).hex()}")
                os.mkdir(self._folder)
            except OSError as exc:
                raise StorageError(f"cannot use the scratch folder {self.root}: {exc.strerror or exc}",
                                   subject=self.root) from None
        return self._folder

    def close(self) -> None:
        if self._folder is not None:
            shutil.rmtree(self._folder, ignore_errors=True)
            self._folder = None

    def __enter__(self) -> Scratch:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _host() -> str:
    import socket
    return socket.gethostname().replace("-", "_") or "host"


def _remove_orphans(root: str) -> None:
    me = _host()
    for name in os.listdir(root):
        host, _, rest = name.partition("-")
        pid = rest.partition("-")[0]
        if host != me or not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            shutil.rmtree(os.path.join(root, name), ignore_errors=True)
        except OSError:
            pass


IN_MEMORY = Scratch(None)  # never spills (small tables, tests)
