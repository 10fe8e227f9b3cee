"""Reporting of the peer benchmark: Markdown tables, the cumulative-stored plot, the raw JSON, and where they go."""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path

import targets

REPO = Path(__file__).resolve().parent.parent
DOC = REPO / "docs" / "benchmarks.md"
PLOT = REPO / "docs" / "img" / "cumulative-stored.png"
RESULTS_JSON = REPO / "benchmarks" / "results" / "latest.json"
BEGIN, END = "<!-- results:begin -->", "<!-- results:end -->"
IDEAL = "ideal (64 KiB CDC, zstd -3 per unique chunk)"
MB = 1e6

# (title, key, format) of the per-series table; `key` of a tool's median figures
COLUMNS = (("stored MB", "stored_bytes", "mb"), ("× ideal", "x_ideal", ".3f"), ("first ingest s", "first_s", ".2f"),
           ("later ingest s", "later_s", ".2f"), ("restore s", "restore_s", ".2f"),
           ("re-ingest s", "reingest_s", ".2f"), ("peak RSS ingest MB", "rss_ingest_mb", ".0f"),
           ("peak RSS restore MB", "rss_restore_mb", ".0f"))


def cell(value, spec: str) -> str:
    if value is None:
        return "–"
    return f"{value / MB:.2f}" if spec == "mb" else format(value, spec)


def table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = [header, ["---"] * len(header), *rows]
    return ["| " + " | ".join(cells) + " |" for cells in lines] + [""]


def per_kind(values: dict[str, float]) -> str:
    """{"*": 1, "bf16": 4} -> "1 (bf16: 4)"."""
    special = ", ".join(f"{k}: {v:g}" for k, v in values.items() if k != "*")
    return f"{values['*']:g}" + (f" ({special})" if special else "")


# ---- sections ------------------------------------------------------------------------------------------

def run_section(env: dict) -> list[str]:
    m = env["machine"]
    rows = [["date", env["date"]], ["command", f"`{env['command']}`"], ["source commit", env["commit"]],
            ["CPU", f"{m['cpu']}, {m['cores']} cores"], ["RAM", f"{m['ram_bytes'] / 2**30:.1f} GiB"],
            ["system", f"{m['os']}, Python {m['python']}"],
            ["settings", f"{env['mode']}: {per_kind(env['steps'])} checkpoints per series, scale "
                         f"{per_kind(env['scale'])}, median of {env['repeat']} repetition(s), seed {env['seed']}"],
            ["wall time of the run", f"{env['wall_s']:.0f} s"]]
    versions = [[name, f"`{line}`"] for name, line in env["versions"].items()]
    versions += [[name, f"not run: {why}"] for name, why in env["missing_tools"].items()]
    return ["### Run", ""] + table(["", ""], rows) + table(["tool", "version"], versions)


NOTES = """Times are wall-clock seconds of whole CLI processes, interpreter start-up included; peak RSS is the
child's own (`os.wait4`). Stored bytes are the apparent size of what each tool keeps: the folder of
files (cp, zstd), the repository (restic, borg, cas; not their local caches or index), the DVC cache,
the MLflow run folder. "Later ingest" is the median over checkpoints 2…N; "restore" restores the last
checkpoint, checked byte for byte against the source. Re-ingest of the unchanged last checkpoint:
{notes}. Every repetition starts from a fresh repository."""


def series_section(kind: str, res: dict) -> list[str]:
    sizes, ideal = res["file_bytes"], res["ideal"]
    lines = [f"### {kind}: {len(sizes)} checkpoints, {sum(sizes) / MB:.1f} MB raw "
             f"(last {sizes[-1] / MB:.1f} MB, scale {res['scale']:g})", ""]
    rows = []
    for name, fig in res["median"].items():
        fig = {**fig, "x_ideal": fig["stored_bytes"] / ideal["stored_bytes"]}
        rows.append([name, *(cell(fig.get(key), spec) for _, key, spec in COLUMNS)])
    rows.append([IDEAL, cell(ideal["stored_bytes"], "mb"), "1.000", *["–"] * (len(COLUMNS) - 2)])
    rows += [[name, f"failed: {why}", *[""] * (len(COLUMNS) - 1)] for name, why in res["errors"].items()]
    lines += table(["tool", *(title for title, _, _ in COLUMNS)], rows)
    return lines + [f"Ideal: {ideal['unique_chunks']} unique of {ideal['chunks']} chunks, "
                    f"{ideal['unique_bytes'] / MB:.2f} MB before compression.", ""]


CODEC_TOOLS = ("zstd -3", "ZipNN", "z4ai", "ZipNN delta chain", "z4ai delta chain", "cas")


def codecs_section(results: dict) -> list[str]:
    """The float series beside the weight codecs: stored % of raw (all, first file, mean of the later
    ones), and MB/s of raw bytes in (all checkpoints) and out (the last one restored)."""
    rows = []
    for kind, res in results["series"].items():
        sizes = res["file_bytes"]
        for name in CODEC_TOOLS:
            fig = res["median"].get(name)
            if fig is None or not any(n in res["median"] for n in CODEC_TOOLS[1:5]):
                continue
            stored = fig["cumulative_bytes"]
            later = [(stored[i] - stored[i - 1]) / sizes[i] for i in range(1, len(stored))]
            rows.append([kind, name, f"{100 * stored[-1] / sum(sizes):.1f}", f"{100 * stored[0] / sizes[0]:.1f}",
                         f"{100 * sum(later) / len(later):.1f}" if later else "–",
                         f"{sum(sizes) / sum(fig['ingest_s']) / MB:.0f}",
                         f"{sizes[-1] / fig['restore_s'] / MB:.0f}" if fig.get("restore_s") else "–"])
    if not rows:
        return []
    return (["### Float series beside the weight codecs", "",
             "Stored bytes as % of raw (lower is better); MB/s of raw bytes per second of ingest (every "
             "checkpoint) and of restoring the last one (for a delta chain, through the whole chain). cas "
             "and zstd are whole processes; the codecs' seconds are their own work inside their process "
             "(benchmarks/codec_step.py).", ""]
            + table(["series", "tool", "stored %", "first file %", "later files, mean %", "ingest MB/s",
                     "restore MB/s"], rows))


def targets_section(rows: list[dict]) -> list[str]:
    """One row per target, one column per series: the measured value, marked pass or FAIL."""
    names = list(dict.fromkeys(r["target"] for r in rows))
    series = list(dict.fromkeys(r["series"] for r in rows))
    found = {(r["target"], r["series"]): r for r in rows}

    def show(r: dict | None) -> str:
        if r is None:
            return "–"
        value = f"{r['value']:.2f}" if r["unit"] == "×" else f"{r['value']:.0f} {r['unit']}"
        return f"{value} pass" if r["pass"] else f"**{value} FAIL**"

    body = [[name, *(show(found.get((name, s))) for s in series)] for name in names]
    passed = sum(r["pass"] for r in rows)
    return (["### Targets (brief §4)", "", f"{passed} of {len(rows)} pass. Ratios are cas over the peer named in "
             "the target, both measured in this run; the figures behind each are in the raw JSON.", ""]
            + table(["target", *series], body))


def markdown(results: dict, image: str) -> str:
    env = results["env"]
    notes = "; ".join(f"{name}: {note}" for name, note in env.get("reingest_notes", {}).items()) or "–"
    lines = ["## Results", "", "Generated by `benchmarks/bench_peers.py`; do not edit by hand.", ""]
    lines += run_section(env) + [NOTES.format(notes=notes), ""]
    for kind, res in results["series"].items():
        lines += series_section(kind, res)
    lines += [f"- **{kind}** not run: {why}" for kind, why in results["skipped_series"].items()]
    if results["skipped_series"]:
        lines.append("")
    lines += codecs_section(results)
    lines += targets_section(results["targets"])
    if "error" in (results.get("big") or {}):
        lines += [f"The one-file memory check failed: {results['big']['error']}", ""]
    lines += [f"![Cumulative stored bytes per checkpoint, per tool and series]({image})", ""]
    if results.get("s3_markdown"):
        lines += [results["s3_markdown"].strip(), ""]
    return "\n".join(lines)


# ---- plot and files ------------------------------------------------------------------------------------

LINE_STYLES = {"DVC": {"linestyle": "--", "marker": "s", "markersize": 4},  # cp, DVC and MLflow keep the raw
               "MLflow": {"linestyle": "-.", "marker": "^", "markersize": 4},  # bytes: their lines overlap
               "cas": {"linewidth": 2.5, "marker": "o", "markersize": 4}}


def plot(results: dict, png: Path) -> None:
    """One subplot per series: cumulative stored MB after each checkpoint, per tool, and the ideal."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    kinds = list(results["series"])
    cols = min(3, len(kinds)) or 1
    rows = math.ceil(len(kinds) / cols) or 1
    fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 3.6 * rows), squeeze=False)
    for ax, kind in zip(axes.flat, kinds):
        res = results["series"][kind]
        steps = range(1, len(res["file_bytes"]) + 1)
        ax.plot(steps, [b / MB for b in res["ideal"]["cumulative_bytes"]], "k:", linewidth=3, label="ideal")
        for name, fig_ in res["median"].items():
            style = LINE_STYLES.get(name, {"marker": "."})
            ax.plot(steps, [b / MB for b in fig_["cumulative_bytes"]], label=name, **style)
        ax.set_title(f"{kind} ({res['file_bytes'][-1] / MB:.0f} MB per checkpoint)", fontsize=10)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylim(bottom=0)
        ax.set_xlabel("checkpoint")
        ax.set_ylabel("stored MB")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(kinds):]:
        ax.axis("off")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(labels), frameon=False)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=110)
    plt.close(fig)


def splice(doc: Path, text: str) -> None:
    """Put text between the result markers of doc, adding the markers at its end when absent."""
    old = doc.read_text() if doc.exists() else ""
    if BEGIN in old and END in old:
        head, rest = old.split(BEGIN, 1)
        tail = rest.split(END, 1)[1]
    else:
        head, tail = old.rstrip("\n") + "\n\n", "\n"
    doc.write_text(f"{head}{BEGIN}\n{text.strip()}\n{END}{tail}")


def write(results: dict, out: Path | None) -> list[Path]:
    """Markdown, JSON and PNG into out, or into the docs and benchmarks/results when out is None."""
    if out:
        out.mkdir(parents=True, exist_ok=True)
        md, raw, png = out / "results.md", out / "latest.json", out / "cumulative-stored.png"
    else:
        md, raw, png = DOC, RESULTS_JSON, PLOT
    raw.parent.mkdir(parents=True, exist_ok=True)
    raw.write_text(json.dumps(results, indent=1) + "\n")
    text = markdown(results, os.path.relpath(png, md.parent))
    if out:
        md.write_text(text + "\n")
    else:
        splice(md, text)
    if results["series"]:
        plot(results, png)
    return [raw, md, png]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Render the report again from a results JSON of bench_peers.py.")
    p.add_argument("results", help="e.g. benchmarks/results/latest.json")
    p.add_argument("--out", help="write into this folder instead of the docs")
    args = p.parse_args(argv)
    results = json.loads(Path(args.results).read_text())
    results["targets"] = targets.evaluate(results)  # a pure function of the figures: the targets as they are now
    print("wrote", ", ".join(map(str, write(results, Path(args.out) if args.out else None))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
