"""Filtering versions by their metadata: `cas log RUN --where KEY=VALUE` and `tracker.versions(where=...)`."""

from __future__ import annotations

from cas.errors import InvalidInput


def parse_where(conditions: list[str]) -> dict[str, str]:
    """KEY=VALUE strings → {KEY: VALUE}; InvalidInput for one without '=' or with an empty key."""
    where: dict[str, str] = {}
    for text in conditions:
        key, sep, value = text.partition("=")
        if not sep or not key:
            raise InvalidInput(f"invalid --where {text!r}: use KEY=VALUE, e.g. --where split=val", subject=text)
        where[key] = value
    return where


def _number(value) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return None
    return None


def same(actual, wanted) -> bool:
    """Whether a metadata value equals a wanted one: as numbers when both read as numbers (3, 3.0 and
    "3" are the same), else as text (True matches "true" and "True")."""
    a, w = _number(actual), _number(wanted)
    if a is not None and w is not None:
        return a == w
    if isinstance(actual, bool):
        return str(actual).lower() == str(wanted).lower()
    return actual == wanted or (not isinstance(actual, (dict, list)) and str(actual) == str(wanted))


def matches(metadata: dict, where: dict) -> bool:
    return all(key in metadata and same(metadata[key], value) for key, value in where.items())
