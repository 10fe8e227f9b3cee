"""Retention: which versions `cas forget` drops. A pure function of the versions and the policy; no I/O."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

from cas.errors import InvalidInput
from cas.records import Version


@dataclass(frozen=True)
class Policy:
    """What to keep. A version kept by any option is kept; pinned digests are always kept.

    With no keep option, `drop_all` must be set: forgetting everything that matches is never implied.
    """

    name: str | None = None
    kind: str | None = None
    keep_last: int | None = None  # the N highest steps of each (run, name)
    keep_every: int | None = None  # versions whose step is a multiple of K
    drop_all: bool = False

    def check(self) -> "Policy":
        for value, flag in ((self.keep_last, "--keep-last"), (self.keep_every, "--keep-every")):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0
                                      or (flag == "--keep-every" and value == 0)):
                raise InvalidInput(f"{flag} takes a {'positive' if flag == '--keep-every' else 'non-negative'} "
                                   f"integer, not {value!r}", subject=flag)
        if self.keep_last is None and self.keep_every is None and not self.drop_all:
            raise InvalidInput("say what to keep (--keep-last N, --keep-every STEPS) or pass --all to forget "
                               "every matching version", subject="policy")
        return self


def to_forget(versions: list[Version], policy: Policy, pinned: set[str]) -> list[Version]:
    """The live versions the policy drops, in (run, name, step) order."""
    policy.check()
    candidates = [v for v in versions if not v.forgotten
                  and (policy.name is None or v.name == policy.name)
                  and (policy.kind is None or v.kind == policy.kind)]
    kept: set[int] = set()
    if policy.keep_last is not None and policy.keep_last > 0:
        series: dict[tuple[str, str], list[Version]] = defaultdict(list)
        for v in candidates:
            series[(v.run, v.name)].append(v)
        for group in series.values():
            kept.update(id(v) for v in sorted(group, key=lambda v: v.step)[-policy.keep_last:])
    if policy.keep_every is not None:
        kept.update(id(v) for v in candidates if v.step % policy.keep_every == 0)
    kept.update(id(v) for v in candidates if v.digest is not None and v.digest in pinned)
    return sorted((v for v in candidates if id(v) not in kept), key=lambda v: (v.run, v.name, v.step))
