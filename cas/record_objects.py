"""Record objects: many run records in one object, so a machine learns a store's runs in a few reads.

A record object holds loose run records (`runs/...`) as (key, bytes) pairs, each exactly as stored.
It only speeds up learning: the loose records stay, and a record counts as present only while its
loose key is listed (docs/design.md, "Run records at scale"). A record object is trusted no more than
a loose record: every record in it is decoded and checked against its own key, as a loose one is.
Writers compact the records their cache holds that no record object holds, and merge small record
objects, as they do index objects (cas/pack_index.py).
"""

from __future__ import annotations

import threading
from collections.abc import Iterable

from . import framing, layout
from .digest import DIGEST_SIZE
from .errors import IntegrityError, NotFound
from .pack_index import size_groups
from .parallel import ordered_map
from .records import decode as decode_record, inline_of

RECORD_OBJECT_FORMAT = 1
FULL_OBJECT = 8 << 20  # stored bytes: a writer never writes a larger record object, a reader calls one damaged
SETTLED = FULL_OBJECT // 2  # record objects this large are never merged again
MAX_ITEM = 1 << 20  # a larger record stays loose only (records are rarely over a few KiB)
COMPACT_AT = 1000  # a writer whose cache holds this many records no record object holds compacts them
MERGE_AT = 16  # a writer that lists more small record objects than this merges them
PASSES = 3  # listings of records/ a sync makes while objects vanish under it (merged by a writer)
LOOSE_ONLY = bytes(DIGEST_SIZE)  # the cache's mark of a record too large for a record object
_HEAD = 64  # bytes of a record object besides its items: map, "v", "records", array header, seal
_ITEM = 11  # msgpack headers of one item at most: its array, its key's str and its record's bin
_LIMITS = framing.Limits(bin=MAX_ITEM, str=256, array=FULL_OBJECT // 64, map=2)
Item = tuple[str, bytes, tuple[bytes, bytes] | None]  # record key, its bytes, its inline content if any


def _size(key: str, raw: bytes) -> int:
    return _ITEM + len(key.encode()) + len(raw)


def encode(items: Iterable[tuple[str, bytes]]) -> tuple[str, bytes]:
    """(key, bytes) of the record object holding these records once each, in key order."""
    unique = dict(items)
    data = framing.seal({"v": RECORD_OBJECT_FORMAT, "records": [[k, unique[k]] for k in sorted(unique)]})
    return layout.record_object_key(data[-DIGEST_SIZE:]), data


def decode(data: bytes, *, key: str) -> list[Item]:
    """The records of the record object stored under `key`, every one decoded and checked against its own
    key; IntegrityError naming the object for anything wrong (one bad record spoils the object)."""
    what = f"record object {key}"
    _check_size(key, len(data))
    doc, sealed = framing.open_sealed(data, _LIMITS, what=what, subject=key)
    if not sealed or layout.record_object_seal(key) != bytes(data[-DIGEST_SIZE:]):
        raise framing.damaged(what, key, "checksum mismatch")
    try:
        if type(doc) is not dict or doc.get("v") != RECORD_OBJECT_FORMAT or type(doc["v"]) is not int:
            raise ValueError(f"unknown format {doc.get('v') if type(doc) is dict else None!r}")
        rows = doc["records"]
        if type(rows) is not list:
            raise ValueError("records are not an array")
        out: list[Item] = []
        for row in rows:
            if type(row) is not list or len(row) != 2 or type(row[0]) is not str or type(row[1]) is not bytes:
                raise ValueError("a record is not [key, bytes]")
            rkey, raw = row
            if not layout.is_record_key(rkey) or (out and rkey <= out[-1][0]):
                raise ValueError(f"bad or unordered record key {rkey!r:.160}")
            try:
                out.append((rkey, raw, inline_of(decode_record(raw, key=rkey))))
            except IntegrityError as exc:
                raise ValueError(str(exc)) from None
        return out
    except (ValueError, KeyError) as exc:
        raise framing.damaged(what, key, exc) from None


def _check_size(key: str, size: int) -> None:
    if size > FULL_OBJECT:
        raise framing.damaged(f"record object {key}", key, f"{size} bytes, more than {FULL_OBJECT}")


def read(backend, key: str, size: int) -> list[Item]:
    """The records of a listed record object; one listed larger than FULL_OBJECT is not fetched."""
    _check_size(key, size)
    return decode(backend.get(key), key=key)


def list_objects(backend) -> list[tuple[str, int]]:
    """(key, size) of every record object the store lists."""
    return [(k, size) for k, size in backend.list(layout.RECORD_OBJECTS) if layout.record_object_seal(k)]


class RecordObjects:
    """Learns a store's record objects into its cache, and writes them (compacting and merging)."""

    def __init__(self, backend, index):
        self.backend = backend
        self.index = index
        self._busy = threading.Lock()  # one compaction at a time per process; others skip theirs

    # ---- learning -----------------------------------------------------------------------
    def learn(self, *, on_damaged=None) -> int:
        """Learn the records of every record object this cache has not read; returns how many were new.

        A damaged object raises IntegrityError, or goes to on_damaged(error) and is skipped if given (its
        records are then fetched loose). One deleted after it was listed (merged by a writer) sends us
        to list again; after PASSES listings the loose records fill in what is left.
        """
        learned = 0
        for _ in range(PASSES):
            read = self.index.record_objects_read()  # before listing: one read by now is durable, so listed
            listed = list_objects(self.backend)
            fresh = [(k, size) for k, size in listed if k not in read]
            vanished = False
            for key, data in zip([k for k, _ in fresh], ordered_map(self._fetch, fresh,
                                                                       workers=self.backend.read_concurrency,
                                                                       name="cas-records")):
                if data is None:
                    vanished = True
                    continue
                try:
                    if isinstance(data, IntegrityError):
                        raise data
                    items = decode(data, key=key)
                except IntegrityError as exc:
                    if on_damaged is None:
                        raise
                    on_damaged(exc)
                    continue
                learned += self.index.learn_record_object(key, _seal(key), items)
            gone = read - {k for k, _ in listed}
            if gone:  # merged (their records are in an object read above) or the store was replaced
                self.index.drop_record_objects(gone, {_seal(k) for k in gone})
            if not vanished:
                break
        return learned

    def _fetch(self, item: tuple[str, int]) -> bytes | IntegrityError | None:
        """An object's bytes; None if it vanished since listed; the error if its listed size is too large."""
        key, size = item
        try:
            _check_size(key, size)
            return self.backend.get(key)
        except IntegrityError as exc:
            return exc
        except NotFound:
            return None

    # ---- writing ------------------------------------------------------------------------
    def compact_if_due(self) -> None:
        """Compact once the cache holds COMPACT_AT records that no record object holds, then merge."""
        if self.index.uncovered_count() < COMPACT_AT or not self._busy.acquire(blocking=False):
            return
        try:
            self.compact()
            self.merge()
        finally:
            self._busy.release()

    def compact(self) -> list[str]:
        """Write the cached records no record object holds into record objects of at most FULL_OBJECT bytes,
        each record decoded and checked first; returns their keys. Create-only and named by content, so a
        concurrent compactor of the same records writes nothing new (one of other records overlaps: harmless)."""
        written: list[str] = []
        group: list[tuple[str, bytes]] = []
        loose: list[str] = []
        size = _HEAD
        for key, raw in self._uncovered():
            decode_record(raw, key=key)  # only a record this writer has checked goes into an object
            if len(raw) > MAX_ITEM:
                loose.append(key)
                continue
            if group and size + _size(key, raw) > FULL_OBJECT:
                written.append(self._publish(group))
                group, size = [], _HEAD
            group.append((key, raw))
            size += _size(key, raw)
        if group:
            written.append(self._publish(group))
        if loose:
            self.index.cover_records(loose, LOOSE_ONLY)
        return written

    def _uncovered(self):
        after = ""
        while batch := self.index.uncovered_records(after, FULL_OBJECT):
            yield from batch
            after = batch[-1][0]

    def _publish(self, group: list[tuple[str, bytes]]) -> str:
        key, data = encode(group)
        self.backend.put(key, data, create_only=True)
        self.index.cover_records([k for k, _ in group], _seal(key), object_key=key)
        return key

    def merge(self) -> list[str]:
        """Fold small record objects into objects of at most FULL_OBJECT bytes when more than MERGE_AT are
        listed; the parts are deleted only once the whole is durable. Returns the merged objects' keys."""
        small = [(k, size) for k, size in list_objects(self.backend) if size < SETTLED]
        if len(small) <= MERGE_AT:
            return []
        merged = []
        sizes = dict(small)
        for group in size_groups(small, bound=FULL_OBJECT):
            try:
                parts = [read(self.backend, k, sizes[k]) for k in group]
            except NotFound:
                continue  # another writer is merging them
            items: dict[str, Item] = {}
            for part in parts:
                for item in part:
                    items.setdefault(item[0], item)
            key, data = encode((k, raw) for k, raw, _ in items.values())
            self.backend.put(key, data, create_only=True)
            # read, as far as this cache goes: records it has forgotten (gone) stay so, new ones come loose
            self.index.cover_records(list(items), _seal(key), object_key=key)
            parts_gone = [k for k in group if k != key]
            self.backend.delete(parts_gone)
            self.index.drop_record_objects(set(parts_gone), set())  # their records are all in the merged one
            merged.append(key)
        return merged


def _seal(key: str) -> bytes:
    """The seal a record object key names (keys here come from list_objects or encode: always one)."""
    seal = layout.record_object_seal(key)
    if seal is None:
        raise IntegrityError(f"not a record object key: {key}", subject=key)
    return seal
