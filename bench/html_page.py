"""The dashboard as one self-contained HTML page: the markdown of ``results/README.md`` rendered (markdown-it,
tables on), every local image embedded as a ``data:`` URI, every table sortable by a click on its header.

The page needs no server and no network: no external script, style sheet, font or image. Links to the per-run
pages stay relative links to their markdown files. ``#sort=<table>:<column>[:desc]`` in the address opens the page
with table ``<table>`` (0-based, in page order) sorted by column ``<column>``.
"""

from __future__ import annotations

import base64
import html
import re
from pathlib import Path

from bench.io import atomic_write_text

MIME = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".svg": "image/svg+xml",
        ".gif": "image/gif"}

STYLE = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 1.5em auto; max-width: 1400px; padding: 0 1em; color: #222; }
table { border-collapse: collapse; margin: .6em 0 1em; font-size: 13px; }
table { display: block; overflow-x: auto; }
th, td { border: 1px solid #ccc; padding: 3px 7px; text-align: left; white-space: nowrap; }
td.num { text-align: right; }
th { background: #f0f0f0; cursor: pointer; user-select: none; white-space: nowrap; }
th[data-dir="asc"]::after { content: " \\25B2"; } th[data-dir="desc"]::after { content: " \\25BC"; }
img { max-width: 100%; } code { background: #f4f4f4; padding: 0 3px; }
"""

# Sorting: numbers as numbers (a leading number of a cell such as "68.1 (+66.1)"), blanks and dashes last, the
# rest as text; a second click reverses. Every table gets data-table=<n> so tests and addresses can name it.
SCRIPT = r"""
(function () {
  function key(cell) {
    var t = cell.textContent.trim();
    var m = t.match(/^[-+]?\d[\d,]*(\.\d+)?/);
    if (m) return [0, parseFloat(m[0].replace(/,/g, ""))];
    if (t === "" || t === "–" || t === "-" || t === "nan") return [2, 0];
    return [1, t.toLowerCase()];
  }
  function sortTable(table, col, dir) {
    var body = table.tBodies[0];
    if (!body) return;
    var rows = Array.prototype.slice.call(body.rows);
    rows.sort(function (a, b) {
      var ka = key(a.cells[col] || a.cells[0]), kb = key(b.cells[col] || b.cells[0]);
      if (ka[0] !== kb[0]) return ka[0] - kb[0];
      var c = ka[1] < kb[1] ? -1 : ka[1] > kb[1] ? 1 : 0;
      return dir === "desc" ? -c : c;
    });
    rows.forEach(function (r) { body.appendChild(r); });
    Array.prototype.forEach.call(table.tHead.rows[0].cells, function (th, i) {
      if (i === col) th.setAttribute("data-dir", dir); else th.removeAttribute("data-dir");
    });
  }
  var tables = document.querySelectorAll("table");
  Array.prototype.forEach.call(tables, function (table, n) {
    table.setAttribute("data-table", n);
    table.classList.add("sortable");
    Array.prototype.forEach.call(table.querySelectorAll("td"), function (td) {
      if (key(td)[0] === 0) td.classList.add("num");
    });
    if (!table.tHead) return;
    Array.prototype.forEach.call(table.tHead.rows[0].cells, function (th, col) {
      th.addEventListener("click", function () {
        sortTable(table, col, th.getAttribute("data-dir") === "asc" ? "desc" : "asc");
      });
    });
  });
  var m = location.hash.match(/^#sort=(\d+):(\d+)(:desc)?$/);
  if (m && tables[+m[1]]) sortTable(tables[+m[1]], +m[2], m[3] ? "desc" : "asc");
  document.body.setAttribute("data-sortable", String(tables.length));
  window.addEventListener("load", function () {
    var ok = 0;
    Array.prototype.forEach.call(document.images, function (img) { if (img.naturalWidth > 0) ok++; });
    document.body.setAttribute("data-images-loaded", ok + "/" + document.images.length);
  });
})();
"""


def _embed(match: re.Match[str], base: Path) -> str:
    src = html.unescape(match.group(2))
    if re.match(r"[a-z]+:", src):
        raise ValueError(f"dashboard image {src!r} is not a local file; the HTML page embeds every image")
    path = base / src
    mime = MIME.get(path.suffix.lower())
    if mime is None:
        raise ValueError(f"{path}: cannot embed an image of type {path.suffix!r} (expected {', '.join(MIME)})")
    try:
        data = base64.b64encode(path.read_bytes()).decode()
    except OSError as e:
        raise ValueError(f"{path}: dashboard image cannot be read ({e.strerror})") from None
    return f'{match.group(1)}"data:{mime};base64,{data}"'


def render_html(markdown: str, base: Path, title: str = "Results") -> str:
    """The page for ``markdown`` whose relative image paths are relative to ``base``."""
    from markdown_it import MarkdownIt

    body = MarkdownIt("commonmark", {"html": False}).enable("table").render(markdown)
    body = re.sub(r'(<img src=)"([^"]+)"', lambda m: _embed(m, base), body)
    return (f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">\n'
            f"<title>{html.escape(title)}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n{body}"
            f"<script>{SCRIPT}</script>\n</body>\n</html>\n")


def write_html(dashboard_md: str | Path, out: str | Path) -> Path:
    """Write ``out`` from the dashboard markdown (images relative to its folder); links to pages are made
    relative to ``out``'s folder."""
    from bench.tables import relink

    dashboard_md, out = Path(dashboard_md), Path(out)
    src = dashboard_md.parent
    # images are embedded from the markdown's folder; only page links move
    text = relink(dashboard_md.read_text(), src, out.parent, images=False)
    atomic_write_text(out, render_html(text, src))
    return out
