"""Aliases: names such as `best` or `production` that point at one version of an artifact and move.

An alias is an event record of the run (cas/records.py: append-only, last write wins by key), so
processes moving one alias at once all agree, once synced, on where it points.
"""

from __future__ import annotations

from cas.records import Version


def set_alias(store, ref: str, alias: str, *, delete: bool = False) -> Version:
    """Point `alias` at the version `ref` names, or remove it from that artifact (delete=True)."""
    with store.writing():
        version = store.records.resolve(ref)
        store.records.set_alias(version.run, version.name, alias, None if delete else version.step)
    return version
