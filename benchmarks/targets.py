"""The targets of the brief (§4) as ratios measured in one benchmark run: a pure function of the results."""

from __future__ import annotations

RSS_LIMIT_MB = 150.0
# the first checkpoint of a float series against zstd -3 (issue 14): byte planes must pay for themselves
FLOAT_FIRST = {"bf16": 0.93, "ft-full-pt": 0.94, "ft-full-st": 0.94, "ft-frozen-pt": 0.94, "ft-frozen-st": 0.94}
TENSOR_READ_LIMIT = 0.25  # `cas cat --tensor` against `cas cat` of the whole big file


def _row(target: str, series: str, value: float, limit: float, detail: str, *, unit: str = "×",
         strict: bool = False) -> dict:
    """One target on one series; unit "×" for a ratio."""
    passed = value < limit if strict else value <= limit
    return {"target": target, "series": series, "value": value, "limit": limit, "unit": unit, "strict": strict,
            "pass": passed, "detail": detail}


def _faster(median: dict, key: str, names=("restic", "borg")) -> tuple[str, float] | None:
    """(name, seconds) of the faster of the named tools on key, or None when none has it."""
    found = [(median[n][key], n) for n in names if n in median and median[n].get(key)]
    return (min(found)[1], min(found)[0]) if found else None


def _time_ratio(target: str, kind: str, cas: dict, key: str, limit: float, against) -> list[dict]:
    if not against or not cas.get(key):
        return []
    name, seconds = against
    return [_row(target, kind, cas[key] / seconds, limit, f"cas {cas[key]:.2f} s / {name} {seconds:.2f} s")]


def _rss(kind: str, run: dict) -> dict:
    rss = max(run["rss_ingest_mb"], run["rss_restore_mb"])
    return _row(f"peak RSS < {RSS_LIMIT_MB:.0f} MB", kind, rss, RSS_LIMIT_MB,
                f"ingest {run['rss_ingest_mb']:.0f} MB, restore {run['rss_restore_mb']:.0f} MB", unit="MB", strict=True)


def series_targets(kind: str, res: dict) -> list[dict]:
    median = res["median"]
    cas = median.get("cas")
    if cas is None:
        return []
    ideal = res["ideal"]["stored_bytes"]
    rows = [_row("stored ≤ 1.05 × ideal", kind, cas["stored_bytes"] / ideal, 1.05,
                 f"cas {cas['stored_bytes'] / 1e6:.2f} MB / ideal {ideal / 1e6:.2f} MB")]
    if "zstd -3" in median:
        one, zstd = cas["cumulative_bytes"][0], median["zstd -3"]["cumulative_bytes"][0]
        limit = FLOAT_FIRST.get(kind, 1.02)
        rows.append(_row(f"one file stored ≤ {limit:g} × zstd -3", kind, one / zstd, limit,
                         f"cas {one / 1e6:.2f} MB / zstd -3 {zstd / 1e6:.2f} MB (first checkpoint)"))
    rows += _time_ratio("first ingest ≤ 0.5 × faster of restic, borg", kind, cas, "first_s", 0.5,
                        _faster(median, "first_s"))
    rows += _time_ratio("later ingest ≤ 0.5 × faster of restic, borg", kind, cas, "later_s", 0.5,
                        _faster(median, "later_s"))
    rows += _time_ratio("re-ingest ≤ 0.33 × restic --force", kind, cas, "reingest_s", 0.33,
                        _faster(median, "reingest_s", ("restic",)))
    rows += _time_ratio("restore ≤ 0.5 × restic", kind, cas, "restore_s", 0.5,
                        _faster(median, "restore_s", ("restic",)))
    codecs = [median[n] for n in ("ZipNN", "z4ai") if n in median]
    if codecs:
        best = min(c["cumulative_bytes"][0] for c in codecs)
        one = cas["cumulative_bytes"][0]
        rows.append(_row("first file ≤ the better of ZipNN, z4ai", kind, one / best, 1.0,
                         f"cas {one / 1e6:.2f} MB / best codec {best / 1e6:.2f} MB"))
    chains = [median[n] for n in ("ZipNN delta chain", "z4ai delta chain") if n in median]
    if chains:
        best = min(c["stored_bytes"] for c in chains)
        rows.append(_row("all versions ≤ 0.95 × the smaller delta chain", kind, cas["stored_bytes"] / best, 0.95,
                         f"cas {cas['stored_bytes'] / 1e6:.2f} MB / best chain {best / 1e6:.2f} MB"))
    # issue 24's speed: the whole cas command against ZipNN's own work in its process (imports excluded)
    for target, key in (("later ingest ≤ 0.6 × ZipNN's delta", "later_s"),
                        ("restore ≤ 0.6 × ZipNN's chain", "restore_s")):
        rows += _time_ratio(target, kind, cas, key, 0.6, _faster(median, key, ("ZipNN delta chain",)))
    read = res.get("tensor_read")
    if read:
        rows.append(_row(f"cat --tensor ≤ {TENSOR_READ_LIMIT:g} × cat of the whole file", kind,
                         read["tensor_s"] / read["whole_s"], TENSOR_READ_LIMIT,
                         f"{read['tensor']}: {read['tensor_s']:.2f} s / whole {read['whole_s']:.2f} s "
                         f"(show {read['show_s']:.2f} s)"))
    return rows + [_rss(kind, cas)]


def evaluate(results: dict) -> list[dict]:
    """One row per (target, series): measured value, limit, pass, and the figures behind the ratio."""
    rows = [row for kind, res in results["series"].items() for row in series_targets(kind, res)]
    big = results.get("big")
    if big and "error" not in big:
        rows.append(_rss(f"one {big['file_bytes'] / 1e9:.1f} GB bf16 file", big))
    return rows
