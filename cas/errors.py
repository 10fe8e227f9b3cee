"""The one exception tree of cas, grouped by what the caller should do; each class knows its exit code."""

from __future__ import annotations


class CasError(Exception):
    """Base of every error cas raises on purpose; the CLI prints it as one line."""

    exit_code = 1

    def __init__(self, message: str, *, subject: str | None = None):
        super().__init__(message)
        self.subject = subject


class InvalidInput(CasError):
    """The caller asked for something malformed: a bad URI, a bad reference, a bad option."""

    exit_code = 2


class NotFound(CasError):
    """The named object, path, reference or store does not exist."""

    exit_code = 3


class AmbiguousReference(InvalidInput):
    """A hex prefix matches more than one object."""


class AlreadyExists(CasError):
    """The destination exists and the caller did not ask to overwrite it."""

    exit_code = 4


class IntegrityError(CasError):
    """Stored bytes do not match their hash or their recorded shape; never swallowed."""

    exit_code = 5


class PackMissing(IntegrityError):
    """A pack the local index names is gone from the store (gc deleted it, or it was lost)."""


class StorageError(CasError):
    """The backend or local disk failed: I/O error, disk full, permission denied."""

    exit_code = 6


class FormatError(CasError):
    """The store was written by a newer or unknown format version."""

    exit_code = 7


class ChangedWhileReading(CasError):
    """A source file changed while it was being stored; nothing was recorded."""

    exit_code = 8


class LeaseExpired(CasError):
    """A writer was paused or cut off longer than its lease: gc may have run, so nothing was committed."""

    exit_code = 9


class Interrupted(BaseException):
    """A signal (SIGTERM) stopped the operation; partial work was cleaned up.

    Like KeyboardInterrupt it is not an Exception: code that handles errors with `except Exception`
    or `except CasError` (the standard library's thread start, verify's per-pack checks) must not
    swallow it.
    """

    def __init__(self, message: str, *, exit_code: int = 130):
        super().__init__(message)
        self.exit_code = exit_code
