"""The pages of `cas ui`, rendered on the server: plain HTML, every value from the store escaped."""

from __future__ import annotations

import html
import time
import urllib.parse
from collections import Counter

from ..progress import human

PAGE_SIZE = 500  # entries of a folder shown per page

STYLE = """
body{font:14px/1.45 system-ui,sans-serif;margin:0;color:#1d2433;background:#f6f7f9}
header{background:#1d2433;color:#fff;padding:10px 24px}header a{color:#fff;margin-right:18px;text-decoration:none}
main{padding:18px 24px;max-width:1200px}h1{font-size:20px;margin:6px 0 14px}h2{font-size:16px;margin:22px 0 8px}
table{border-collapse:collapse;background:#fff;width:100%;margin-bottom:12px}
th,td{text-align:left;padding:5px 10px;border-bottom:1px solid #e3e6ea;vertical-align:top}
th{background:#eef0f3;font-weight:600}td.n,th.n{text-align:right;font-variant-numeric:tabular-nums}
code{font:12px ui-monospace,monospace;background:#eef0f3;padding:1px 4px;border-radius:3px}
.tag{background:#dbe8ff;border-radius:3px;padding:0 5px;margin-right:4px;font-size:12px}
input{padding:5px 8px;width:280px;margin-bottom:10px}.muted{color:#6b7385}
pre{background:#fff;padding:10px;overflow:auto}
"""

FILTER = """<script>function filterRows(q){q=q.toLowerCase();for(const r of document.querySelectorAll('tbody tr'))
r.style.display=r.textContent.toLowerCase().includes(q)?'':'none'}
function copyText(t){navigator.clipboard&&navigator.clipboard.writeText(t)}</script>"""


def e(value) -> str:
    return html.escape(str(value), quote=True)


def q(value: str) -> str:
    """A value as one URL path segment (a run name or reference: '/' and '@' escaped too)."""
    return urllib.parse.quote(value, safe="")


def page(title: str, body: str) -> bytes:
    return (f"<!doctype html><html lang=en><head><meta charset=utf-8><title>{e(title)} · cas</title>"
            f"<style>{STYLE}</style>{FILTER}</head><body><header><a href='/'>runs</a><a href='/store'>store</a>"
            f"</header><main><h1>{e(title)}</h1>{body}</main></body></html>").encode()


def table(headers: list[str], rows: list[list[str]], numeric: set[int] = frozenset()) -> str:  # type: ignore[assignment]
    head = "".join(f"<th class={'n' if i in numeric else ''}>{e(h)}</th>" for i, h in enumerate(headers))
    body = "".join("<tr>" + "".join(f"<td class={'n' if i in numeric else ''}>{cell}</td>"
                                   for i, cell in enumerate(row)) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def when(t: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(t)) if t else "–"


def runs_page(runs: list[dict]) -> bytes:
    rows = [[f"<a href='/run/{q(r['name'])}'>{e(r['name'])}</a>", e(r["status"]), when(r["start"]),
             str(r["versions"]), e(human(r["logical_bytes"])), e(human(r["only_bytes"]))] for r in runs]
    body = ("<input placeholder='filter runs' oninput='filterRows(this.value)' aria-label='filter runs'>"
            + table(["run", "status", "started", "versions", "logical", "only this run holds"], rows, {3, 4, 5})
            if runs else "<p>No runs in this store yet.</p>")
    return page("Runs", body)


def run_page(name: str, info: dict, versions: list, aliases: dict) -> bytes:
    parts = [f"<p>status <b>{e(info['status'])}</b> · started {when(info['start'])}</p>"]
    for title, values in (("Config", info["config"]), ("Metadata", info["metadata"])):
        if values:
            parts.append(f"<h2>{title}</h2>" + table(["key", "value"], [[e(k), e(v)] for k, v in values.items()]))
    parts.append("<h2>Logical and new bytes over steps</h2>" + growth_svg(versions))
    by_name: dict[str, list] = {}
    for v in versions:
        by_name.setdefault(v.name, []).append(v)
    for artifact, group in sorted(by_name.items()):
        rows = []
        for v in group:
            ref = v.uri
            tags = "".join(f"<span class=tag>@{e(a)}</span>" for a in aliases.get((v.name, v.step), []))
            link = f"<a href='/v/{q(ref)}'>{v.step}</a>"
            download = f"<a href='/download/{q(ref)}'>download</a>" if v.digest else e(v.ref_uri or "")
            rows.append([link, e(v.kind), e(human(v.size)), e(human(v.new_bytes)), tags,
                         e(", ".join(f"{k}={val}" for k, val in v.metadata.items())), download])
        parts.append(f"<h2>{e(artifact)}</h2>" + table(["step", "kind", "size", "new", "aliases", "metadata", ""],
                                                         rows, {2, 3}))
    return page(f"Run {name}", "".join(parts))


def growth_svg(versions: list, width: int = 720, height: int = 220) -> str:
    """Cumulative logical bytes and cumulative new bytes (what dedup left to store) over the log order."""
    ordered = sorted(versions, key=lambda v: (v.time, v.step))
    if not ordered:
        return "<p class=muted>no versions</p>"
    logical, new, xs = [], [], []
    a = b = 0
    for v in ordered:
        a, b = a + v.size, b + v.new_bytes
        logical.append(a)
        new.append(b)
    top = max(logical) or 1
    n = max(1, len(ordered) - 1)

    def line(values: list[int], color: str) -> str:
        pts = " ".join(f"{50 + i * (width - 70) / n:.1f},{height - 30 - v * (height - 50) / top:.1f}"
                       for i, v in enumerate(values))
        return f"<polyline fill=none stroke='{color}' stroke-width=2 points='{pts}'/>"
    xs = [f"<text x=50 y={height - 8} font-size=11>first version</text>",
          f"<text x={width - 20} y={height - 8} font-size=11 text-anchor=end>version {len(ordered)}</text>",
          f"<text x=54 y=32 font-size=11>{e(human(top))}</text>"]
    legend = (f"<text x=60 y=18 font-size=12 fill='#3366cc'>logical {e(human(logical[-1]))}</text>"
              f"<text x=240 y=18 font-size=12 fill='#dd7722'>new chunks (what dedup left to store) "
              f"{e(human(new[-1]))}</text>")
    return (f"<svg role=img aria-label='logical and new bytes' width={width} height={height} "
            f"style='background:#fff'><line x1=50 y1={height - 30} x2={width - 20} y2={height - 30} stroke='#999'/>"
            f"<line x1=50 y1=20 x2=50 y2={height - 30} stroke='#999'/>{line(logical, '#3366cc')}"
            f"{line(new, '#dd7722')}{legend}{''.join(xs)}</svg>")


def version_page(ref: str, digest: str, kind: str, size: int, extra: list[str]) -> bytes:
    body = (f"<p>digest <code id=digest>{e(digest)}</code> <button onclick=\"copyText('{e(digest)}')\">copy</button>"
            f" · {e(kind)} · {e(human(size))} · <a href='/download/{q(ref)}'>download</a></p>" + "".join(extra))
    return page(ref, body)


def folder_section(ref: str, entries: list, start: int) -> str:
    shown = entries[start:start + PAGE_SIZE]
    rows = [[e(x.kind), e(human(x.size)) if x.kind == "file" else "–",
             f"<a href='/v/{q(ref + '/' + x.path)}'>{e(x.path)}</a>" if x.kind == "file" else e(x.path)]
            for x in shown]
    more = ""
    if start + PAGE_SIZE < len(entries):
        more = f"<p><a href='/v/{q(ref)}?start={start + PAGE_SIZE}'>next {PAGE_SIZE}</a></p>"
    return (f"<h2>Folder: {len(entries)} entries (showing {start + 1}–{start + len(shown)})</h2>"
            + table(["kind", "size", "path"], rows, {1}) + more)


def tensors_section(fmt: str, tensors: list, changes: list | None) -> str:
    rows = [[e(t.name), e(t.dtype), e("×".join(map(str, t.shape)) or "scalar"), e(human(t.size))] for t in tensors]
    out = f"<h2>Tensors ({e(fmt)}, {len(tensors)})</h2>" + table(["name", "dtype", "shape", "size"], rows, {3})
    if changes is not None:
        rows = [[e(c["name"]), e(c["status"]),
                 e(f"{c['changed_bytes'] / c['size']:.1%}" if c["status"] == "changed" and c["size"] else "–")]
                for c in changes]
        out += ("<h2>Changed since the previous version</h2>"
                + (table(["tensor", "status", "bytes changed"], rows) if rows else "<p>No tensor changed.</p>"))
    return out


def preview_section(data: bytes, name: str) -> str:
    lower = name.lower()
    if lower.endswith((".png", ".jpg", ".jpeg")):
        return ""  # shown as an image by the caller
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return ""
    return f"<h2>Preview</h2><pre>{e(text[:20000])}</pre>"


def store_page(stats: dict, pins: list, gc_plan: dict | None) -> bytes:
    rows = [[e(k), e(human(v)) if k.endswith("bytes") and isinstance(v, int) else e(v)] for k, v in stats.items()]
    body = "<h2>Store</h2>" + table(["", ""], rows)
    body += "<h2>Pins</h2>" + (table(["label", "digest", "size"], [
        [e(p.label), f"<a href='/v/{q(p.digest)}'><code>{e(p.digest[:16])}</code></a>", e(human(p.size))]
        for p in pins], {2}) if pins else "<p>No pins.</p>")
    if gc_plan is not None:
        body += (f"<h2>Garbage collection</h2><p><code>cas gc --dry-run</code> would free about "
                 f"{e(human(gc_plan.get('deleted_bytes', 0) + gc_plan.get('reclaimable_bytes', 0)))} "
                 f"({gc_plan.get('condemned_packs', 0)} packs to condemn, {gc_plan.get('deleted_packs', 0)} to delete)"
                 f"</p>")
    return page("Store", body)


def not_found(message: str) -> bytes:
    return page("Not found", f"<p>{e(message)}</p><p><a href='/'>back to the runs</a></p>")


def owners_of(roots: dict[str, bytes], footprint) -> dict[str, set[bytes]]:
    """For each run (or pin), the chunks only it holds: chunk → owners counted over all roots."""
    per_owner: dict[str, set[bytes]] = {}
    count: Counter = Counter()
    for uri, digest in roots.items():
        owner = uri.split("/")[1] if uri.startswith("runs:/") else uri
        chunks = footprint(digest)
        if chunks - per_owner.get(owner, set()):
            count.update(chunks - per_owner.get(owner, set()))
            per_owner.setdefault(owner, set()).update(chunks)
    return {owner: {c for c in chunks if count[c] == 1} for owner, chunks in per_owner.items()}
