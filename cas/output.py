"""What the command line prints: a result on stdout (JSON or human text) and an error line on stderr."""

from __future__ import annotations

import json
import sys


def emit(obj, as_json: bool, text: str | None = None) -> None:
    """Print a result: JSON when asked, else the human text."""
    if as_json:
        sys.stdout.write(json.dumps(obj, indent=None, sort_keys=False) + "\n")
    elif text is not None:
        line = text + ("\n" if text and not text.endswith("\n") else "")
        sys.stdout.flush()  # file names from the OS may hold undecodable bytes: write them back as they came
        sys.stdout.buffer.write(line.encode("utf-8", "surrogateescape"))
    sys.stdout.flush()


def emit_error(message: str, exit_code: int, type_name: str, as_json: bool) -> None:
    """One line on stderr: `cas: error: ...`, or with --json {"error", "exit_code", "type"}."""
    if as_json:
        line = json.dumps({"error": message, "exit_code": exit_code, "type": type_name})
    else:
        line = f"cas: error: {message}"
    sys.stderr.write(line + "\n")
    sys.stderr.flush()
