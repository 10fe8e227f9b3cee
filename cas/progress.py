"""A small progress bar on stderr for long work (put, get, verify, reindex); silent unless stderr is a terminal."""

from __future__ import annotations

import sys
import time

WIDTH = 30  # characters of the bar itself


def human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def duration(seconds: float) -> str:
    """A short duration for an ETA: `42s`, `3m05s`, `2h10m`."""
    s = max(0, int(seconds + 0.5))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


class Progress:
    """A callable on_progress(n) hook: counts n units (bytes unless `unit` says otherwise) towards `total`.

    With a total it draws `label [####      ]  40% 400.0 MiB/1000.0 MiB 120.0 MiB/s ETA 5s`; without,
    the count and speed. `phase(text)` names work after the counted part (a put uploading its last
    packs), so a bar at 100 % does not sit silent.
    """

    def __init__(self, label: str, total: int | None, *, enabled: bool | None = None, stream=None,
                 unit: str = "B"):
        self.stream = stream or sys.stderr
        self.enabled = _is_terminal(self.stream) if enabled is None else enabled
        self.label, self.total, self.unit, self.done = label, total, unit, 0
        self.phase_text: str | None = None
        self._start = self._last = time.monotonic()
        self._width = 0  # of the last line drawn, to blank what a shorter line leaves

    def __call__(self, n: int) -> None:
        self.done += n
        now = time.monotonic()
        if self.enabled and now - self._last >= 0.1:
            self._last = now
            self._draw(now)

    def phase(self, text: str) -> None:
        """Say what happens now that the counted work is done (drawn at once)."""
        self.phase_text = text
        if self.enabled:
            self._draw(time.monotonic())

    def line(self, now: float) -> str:
        """The text of the bar at time `now`."""
        rate = self.done / max(now - self._start, 1e-6)
        speed = f"{self._amount(rate)}/s"
        if self.total:
            frac = min(max(self.done / self.total, 0.0), 1.0)
            text = f"{self.label} [{'#' * int(frac * WIDTH):<{WIDTH}}] {frac:4.0%} {self._of_total()} {speed}"
            if 0 < self.done < self.total:
                text += f" ETA {duration((self.total - self.done) / rate)}"
        else:
            text = f"{self.label} {self._amount(self.done)} {speed}"
        return text + (f"; {self.phase_text}" if self.phase_text else "")

    def _amount(self, n: float) -> str:
        return human(n) if self.unit == "B" else f"{n:.0f} {self.unit}"

    def _of_total(self) -> str:
        if self.unit == "B":
            return f"{human(self.done)}/{human(self.total or 0)}"  # called only once total is known
        return f"{self.done}/{self.total} {self.unit}"

    def _draw(self, now: float) -> None:
        text = self.line(now)
        self.stream.write("\r" + text + " " * max(0, self._width - len(text)))
        self._width = len(text)
        self.stream.flush()

    def close(self) -> None:
        if self.enabled and (self.done or self.phase_text):
            self.phase_text = None  # the work it named is over
            self._draw(time.monotonic())
            self.stream.write("\n")
            self.stream.flush()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _is_terminal(stream) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # a replaced or closed stream
        return False
