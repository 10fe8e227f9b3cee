"""The gc command, and its report in plain words."""

from __future__ import annotations

from ..errors import InvalidInput
from ..output import emit
from ..progress import human
from .common import open_store, progress_bar


def cmd_gc(args, uri, as_json) -> int:
    from ..gc import REPACK_THRESHOLD, execute_gc
    from ..gc_lists import parse_duration
    grace = parse_duration(args.grace)
    threshold = REPACK_THRESHOLD if args.repack_threshold is None else args.repack_threshold
    if not 0 < threshold <= 1:
        raise InvalidInput(f"--repack-threshold takes a share in (0, 1], not {threshold}")
    with progress_bar("gc: repacking", as_json) as bar:  # counts the partly dead packs read; silent if none
        report = execute_gc(open_store(uri), grace=grace, dry_run=args.dry_run, repack_threshold=threshold,
                            on_progress=bar)
    emit(report, as_json, "\n".join(_gc_lines(report, args.grace)))
    return 0


def _packs(n: int) -> str:
    return f"{n} pack" + ("" if n == 1 else "s")


def _gc_lines(r: dict, grace: str) -> list[str]:
    """What gc did, what it left for later, and what it kept and why, in plain words."""
    would = "would " if r["dry_run"] else ""
    freed = r["freed_bytes"]
    head = (f"{would}free {human(freed)}" if r["dry_run"] else f"freed {human(freed)}" if freed >= 0 else
            f"stored {human(-freed)} more for now (live data copied out of partly dead packs)")
    lines = [f"{head}: {would}delete {_packs(r['deleted_packs'])}" if r["dry_run"] else
             f"{head}: deleted {_packs(r['deleted_packs'])}"]
    if r["repacked_packs"]:
        lines[0] += f", repack {_packs(r['repacked_packs'])}" if r["dry_run"] else \
            f", repacked {_packs(r['repacked_packs'])}"
    if r["condemned_packs"] and not (grace in ("0", "0s") and not r["waiting_packs"]):
        lines.append(f"{would}condemn {_packs(r['condemned_packs'])}: deleted by a gc run at least {grace} later "
                     f"(--grace)" if r["dry_run"] else
                     f"condemned {_packs(r['condemned_packs'])}: deleted by a gc run at least {grace} from now "
                     f"(--grace)")
    if r["waiting_packs"]:
        lines.append(f"{_packs(r['waiting_packs'])} condemned earlier still wait for the grace period or for writers "
                     f"that were live when they were condemned")
    if r["partly_dead_packs"]:
        low, high = f"{r['min_dead_share']:.0%}", f"{r['max_dead_share']:.0%}"
        lines.append(f"kept {_packs(r['partly_dead_packs'])} {low if low == high else low + '-' + high} dead as they "
                     f"are (below --repack-threshold {r['repack_threshold']:g}): {human(r['reclaimable_bytes'])} "
                     f"reclaimable with --repack-threshold {r['reclaim_threshold']:g}")
    if r.get("rewritten_chunks"):
        lines.append(f"stored {r['rewritten_chunks']} delta chunks alone: the versions their bases came from are "
                     f"gone, so the bases could go too")
    if r["removed_temp_files"]:
        lines.append(f"{would}remove {r['removed_temp_files']} temp files left by killed writers "
                     f"({human(r['removed_temp_bytes'])})" if r["dry_run"] else
                     f"removed {r['removed_temp_files']} temp files left by killed writers "
                     f"({human(r['removed_temp_bytes'])})")
    return lines
