"""``--report FILE.html``: one self-contained page for a batch, to look at a cohort at once.

One row per case: a preview thumbnail, volumes per task (mL), modality and detection confidence,
warnings (out-of-distribution ones first), seconds and the failure reason. Columns sort by a
click on their header (numbers numerically; empty cells last), and a filter shows only failed,
warned, or failed-or-warned cases. The page needs nothing from the network: its CSS and script
are inline, and the thumbnails are PNG files in ``<FILE stem>_files/`` beside it (lazy-loaded,
with their sizes given, so that a 1,000-case page stays quick).
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import numpy as np

from hermes_model.errors import ConfigError, OptionError
from hermes_model.io import write_bytes_atomically

if TYPE_CHECKING:
    from hermes_model.batch.outcome import BatchReport, CaseReport

__all__ = ["THUMBNAIL_HEIGHT", "check_report_path", "images_dir", "thumbnail_png", "write_report"]

THUMBNAIL_HEIGHT = 96  # pixels (the PNG's panels; the legend lines add to it)


def images_dir(page: Path) -> Path:
    """Where the page's thumbnails go: ``<stem>_files/`` beside it."""
    return page.parent / f"{page.stem}_files"


def check_report_path(page: Path) -> None:
    """OptionError/ConfigError/OutputError before any work for a report path that cannot be
    written."""
    if page.suffix.lower() not in (".html", ".htm"):
        raise OptionError(f"{page}: the report is an HTML page; name it *.html")
    if page.is_dir():
        raise ConfigError(
            f"{page}: is a folder; give the report a file name, e.g. {page / 'report.html'}"
        )
    probe = write_bytes_atomically(page.parent / ".hermes-write-test", b"")
    probe.unlink()


def thumbnail_png(image: np.ndarray, labels: np.ndarray, result: Any) -> bytes:
    """A small preview (three slices with overlays and the legend) for the report's rows."""
    from hermes_model.pipeline.preview import preview_png

    return preview_png(image, result.meta.affine, labels, result, height=THUMBNAIL_HEIGHT)


def _png_size(path: Path) -> tuple[int, int] | None:
    try:
        head = path.read_bytes()[:24]
    except OSError:
        return None
    if len(head) < 24 or head[:8] != b"\x89PNG\r\n\x1a\n":
        return None
    return int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")


def _cell(text: str, sort: str | float | None = None, cls: str = "") -> str:
    attributes = f' class="{cls}"' if cls else ""
    if sort is not None:
        attributes += f' data-sort="{html.escape(str(sort), quote=True)}"'
    return f"<td{attributes}>{text}</td>"


def _row(case: CaseReport, tasks: Sequence[str], page: Path) -> str:
    first = case.rows[0] if case.rows else {}
    modality = str(first.get("modality") or "")
    confidence = first.get("modality_confidence")
    warned = bool(case.warnings or case.out_of_distribution)
    image = images_dir(page) / f"{case.case}.png"
    size = _png_size(image) if case.status != "failed" else None
    if size is not None:
        src = f"{quote(images_dir(page).name)}/{quote(case.case)}.png"
        thumb = (
            f'<img src="{src}" width="{size[0]}" height="{size[1]}" loading="lazy" '
            f'alt="preview of {html.escape(case.case, quote=True)}">'
        )
    else:
        thumb = '<span class="none">no preview</span>'
    cells = [
        _cell(thumb, cls="thumb"),
        _cell(html.escape(case.case), case.case),
        _cell(f'<span class="status {case.status}">{case.status}</span>', case.status),
    ]
    for task in tasks:
        value = case.volumes_ml.get(task)
        cells.append(_cell("" if value is None else f"{value:.2f}", value, "num"))
    cells.append(_cell(html.escape(modality), modality))
    cells.append(_cell("" if confidence is None else f"{float(confidence):.2f}", confidence, "num"))
    lines = list(case.out_of_distribution) + [
        w for w in case.warnings if w not in case.out_of_distribution
    ]
    prefix = f"{case.input}: "  # the row names the case already
    shown = [w[len(prefix) :] if w.startswith(prefix) else w for w in lines]
    warning_html = "".join(f"<div>{html.escape(w)}</div>" for w in shown)
    cells.append(_cell(warning_html, len(lines), "warn"))
    cells.append(_cell(f"{case.seconds:.1f}", round(case.seconds, 3), "num"))
    reason = case.message if case.status == "failed" else ""
    cells.append(_cell(html.escape(reason), reason, "reason"))
    return (
        f'<tr data-status="{case.status}" data-warned="{int(warned)}" '
        f'data-case="{html.escape(case.case.lower(), quote=True)}">' + "".join(cells) + "</tr>"
    )


def _task_columns(cases: Sequence[CaseReport]) -> list[str]:
    return list(dict.fromkeys(task for case in cases for task in case.volumes_ml))


def render(report: BatchReport, page: Path) -> str:
    """The page's HTML text."""
    from hermes_model import tasks as registry

    known = {t.id: t.name for t in registry.all_tasks()}
    tasks = _task_columns(report.cases)
    headers = ["preview", "case", "status"]
    headers += [f"{known.get(t, t)} (mL)" for t in tasks]
    headers += ["modality", "confidence", "warnings", "seconds", "failure reason"]
    kinds = ["none", "text", "text"] + ["number"] * len(tasks)
    kinds += ["text", "number", "number", "number", "text"]
    head = "".join(
        f'<th data-type="{kind}" title="{html.escape(t, quote=True)}">'
        f'<button type="button">{html.escape(name)}</button></th>'
        if kind != "none"
        else f"<th>{html.escape(name)}</th>"
        for name, kind, t in zip(headers, kinds, ["", "", "", *tasks, *[""] * 5], strict=True)
    )
    rows = "\n".join(_row(case, tasks, page) for case in report.cases)
    failed = len(report.failed)
    warned = sum(bool(c.warnings or c.out_of_distribution) for c in report.cases)
    weights = report.weights
    used = (
        f"weights {html.escape(weights.get('name', ''))} (sha256 "
        f"{html.escape(weights.get('sha256', '')[:12])}…)"
        if weights
        else ""
    )
    runtime = report.runtime
    if runtime:
        used += html.escape(
            f"; {runtime.get('engine', '?')} {runtime.get('precision', '?')} on "
            f"{runtime.get('device', '?')}"
        )
    summary = f"{len(report.cases)} cases, {failed} failed, {warned} with warnings. {used}"
    return _PAGE.format(
        title=html.escape(f"Hermes report: {len(report.cases)} cases"),
        summary=summary,
        head=head,
        rows=rows,
        script=_SCRIPT,
        style=_STYLE,
    )


def write_report(report: BatchReport, page: Path) -> Path:
    """Write the page atomically (thumbnails were written beside it during the batch)."""
    return write_bytes_atomically(page, render(report, page).encode("utf-8"))


_STYLE = """
body{font:14px system-ui,sans-serif;margin:1em;color:#222}
h1{font-size:1.3em;margin:0 0 .3em}
.controls{margin:.6em 0;display:flex;gap:1em;align-items:center}
table{border-collapse:collapse;width:100%}
th,td{border-bottom:1px solid #ddd;padding:4px 6px;vertical-align:top;text-align:left}
th{position:sticky;top:0;background:#f4f4f4;z-index:1}
th button{all:unset;cursor:pointer;font-weight:600}
th[aria-sort=ascending] button::after{content:" \\25B2"}
th[aria-sort=descending] button::after{content:" \\25BC"}
td.num{text-align:right;font-variant-numeric:tabular-nums}
td.thumb img{display:block;background:#000;max-width:260px;height:auto}
td.warn{min-width:18em;max-width:30em}td.warn div{color:#8a5a00}
td.reason{color:#a00;min-width:14em;max-width:30em}
.status.failed{color:#a00;font-weight:600}.status.done{color:#070}.status.skipped{color:#777}
.none{color:#999}
tr.hidden{display:none}
"""

_SCRIPT = """
(function () {
  const table = document.getElementById("cases");
  const body = table.tBodies[0];
  const rows = Array.from(body.rows);
  const filter = document.getElementById("filter");
  const search = document.getElementById("search");
  const count = document.getElementById("count");
  function key(row, index, type) {
    const cell = row.cells[index];
    const raw = cell ? cell.getAttribute("data-sort") : null;
    if (raw === null || raw === "" || raw === "None") return null;
    if (type === "number") { const v = parseFloat(raw); return isNaN(v) ? null : v; }
    return raw.toLowerCase();
  }
  function sortBy(th) {
    const index = Array.from(th.parentNode.children).indexOf(th);
    const type = th.getAttribute("data-type");
    const ascending = th.getAttribute("aria-sort") !== "ascending";
    for (const other of th.parentNode.children) other.removeAttribute("aria-sort");
    th.setAttribute("aria-sort", ascending ? "ascending" : "descending");
    const keyed = rows.map((row, n) => [key(row, index, type), n, row]);
    keyed.sort((a, b) => {
      if (a[0] === null && b[0] === null) return a[1] - b[1];
      if (a[0] === null) return 1;
      if (b[0] === null) return -1;
      if (a[0] < b[0]) return ascending ? -1 : 1;
      if (a[0] > b[0]) return ascending ? 1 : -1;
      return a[1] - b[1];
    });
    const fragment = document.createDocumentFragment();
    for (const item of keyed) fragment.appendChild(item[2]);
    body.appendChild(fragment);
  }
  function apply() {
    const mode = filter.value;
    const text = search.value.trim().toLowerCase();
    let shown = 0;
    for (const row of rows) {
      const failed = row.dataset.status === "failed";
      const warned = row.dataset.warned === "1";
      let keep = mode === "all" || (mode === "failed" && failed) ||
        (mode === "warned" && warned) || (mode === "problems" && (failed || warned));
      if (text && !row.dataset.case.includes(text)) keep = false;
      row.classList.toggle("hidden", !keep);
      if (keep) shown += 1;
    }
    count.textContent = shown + " of " + rows.length + " cases shown";
  }
  for (const th of table.tHead.rows[0].cells) {
    const button = th.querySelector("button");
    if (button) button.addEventListener("click", () => sortBy(th));
  }
  filter.addEventListener("change", apply);
  search.addEventListener("input", apply);
  apply();
})();
"""

_PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<style>{style}</style>
</head>
<body>
<h1>{title}</h1>
<p>{summary}</p>
<div class="controls">
<label>Show <select id="filter">
<option value="all">all cases</option>
<option value="failed">failed cases</option>
<option value="warned">cases with warnings</option>
<option value="problems">failed or with warnings</option>
</select></label>
<label>Case <input id="search" type="search" placeholder="name contains"></label>
<span id="count"></span>
</div>
<table id="cases">
<thead><tr>{head}</tr></thead>
<tbody>
{rows}
</tbody>
</table>
<script>{script}</script>
</body>
</html>
"""
