"""Retention: which versions `cas forget` drops. A pure function of the versions and the policy; no I/O."""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass

from cas.errors import InvalidInput
from cas.records import Version


@dataclass(frozen=True)
class Policy:
    """What to keep. A version kept by any option is kept; pinned digests and aliased versions are
    always kept.

    The latest version (highest step) of each (run, name) is kept too, unless `keep_last=0` or
    `drop_all` says otherwise. With no keep option, `drop_all` must be set: forgetting everything
    that matches is never implied.
    """

    name: str | None = None
    kind: str | None = None
    keep_last: int | None = None  # the N highest steps of each (run, name)
    keep_every: int | None = None  # versions whose step is a multiple of K
    drop_all: bool = False  # the latest version is not kept unless a keep option keeps it
    keep_within: float | None = None  # seconds: versions logged at most this long before now

    def check(self) -> Policy:
        for value, flag in ((self.keep_last, "--keep-last"), (self.keep_every, "--keep-every")):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0
                                      or (flag == "--keep-every" and value == 0)):
                raise InvalidInput(f"{flag} takes a {'positive' if flag == '--keep-every' else 'non-negative'} "
                                   f"integer, not {value!r}", subject=flag)
        if self.keep_within is not None and (isinstance(self.keep_within, bool) or
                                             not isinstance(self.keep_within, (int, float)) or self.keep_within < 0):
            raise InvalidInput(f"--keep-within takes a duration, not {self.keep_within!r}", subject="--keep-within")
        if self.keep_last is None and self.keep_every is None and self.keep_within is None and not self.drop_all:
            raise InvalidInput("say what to keep (--keep-last N, --keep-every STEPS, --keep-within DURATION) or pass "
                               "--all to forget every matching version", subject="policy")
        return self

    @property
    def last_kept(self) -> int:
        """How many of the highest steps of each (run, name) are kept: the latest one unless told otherwise."""
        if self.keep_last is not None:
            return self.keep_last
        return 0 if self.drop_all else 1


def to_forget(versions: list[Version], policy: Policy, pinned: set[str],
              aliased: set[tuple[str, str, int]] | None = None, now: float | None = None) -> list[Version]:
    """The live versions the policy drops, in (run, name, step) order. Pinned digests and aliased
    (run, name, step) are always kept; keep_within counts back from `now` (default: the clock)."""
    policy.check()
    candidates = [v for v in versions if not v.forgotten
                  and (policy.name is None or v.name == policy.name)
                  and (policy.kind is None or v.kind == policy.kind)]
    kept: set[int] = set()
    if policy.last_kept > 0:
        for group in by_series(candidates).values():
            kept.update(id(v) for v in group[-policy.last_kept:])
    if policy.keep_every is not None:
        kept.update(id(v) for v in candidates if v.step % policy.keep_every == 0)
    if policy.keep_within is not None:
        since = (time.time() if now is None else now) - policy.keep_within
        kept.update(id(v) for v in candidates if v.time >= since)
    kept.update(id(v) for v in candidates if v.digest is not None and v.digest in pinned)
    kept.update(id(v) for v in candidates if (v.run, v.name, v.step) in (aliased or set()))
    return sorted((v for v in candidates if id(v) not in kept), key=lambda v: (v.run, v.name, v.step))


def by_series(versions: list[Version]) -> dict[tuple[str, str], list[Version]]:
    """Versions grouped by (run, name), each group in step order, groups in (run, name) order."""
    series: dict[tuple[str, str], list[Version]] = defaultdict(list)
    for v in sorted(versions, key=lambda v: (v.run, v.name, v.step)):
        series[(v.run, v.name)].append(v)
    return dict(series)
