"""``report.html``: one self-contained HTML5 file (inline CSS, every figure a ``data:image/png;base64`` URI,
no script, no external URL), readable offline on a laptop screen. Every user string goes through
:func:`html.escape`."""

from __future__ import annotations

import base64
import html
import json
from typing import Any

from topoverify.reports.markdown import HOW_TO_READ, row_cells, section_tables

__all__ = ["render_html"]

_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;background:#f6f7f9;color:#1d232a;
line-height:1.45}
main{max-width:1080px;margin:0 auto;padding:18px 26px 60px;background:#fff}
h1{font-size:1.6em;margin:.3em 0}h2{font-size:1.3em;margin-top:1.8em;border-bottom:2px solid #dde3ea;padding-bottom:4px}
h3{font-size:1.05em;margin:1.2em 0 .4em}
.meta{color:#5b6572;font-size:.85em}
.box{border-radius:6px;padding:8px 14px;margin:10px 0}
.findings{background:#eef6ee;border:1px solid #b9d8b9}.errors{background:#fdeeee;border:1px solid #e4b1b1}
.howto{background:#f1f4f9;border:1px solid #cfd8e6;font-size:.92em}
table{border-collapse:collapse;font-size:.82em;margin:8px 0;display:block;overflow-x:auto;max-width:100%}
th,td{border:1px solid #d5dbe3;padding:3px 6px;text-align:right;white-space:nowrap}
th{background:#eef1f5;white-space:normal;vertical-align:bottom}td.t,th.t{text-align:left}
tr.breakdown-possible td{background:#fff5e6}tr.changed td.topo{color:#b3261e;font-weight:600}
figure{margin:14px 0;padding:0}figure img{max-width:100%;height:auto;border:1px solid #e3e7ec}
figcaption{font-size:.88em;color:#38424d;margin-top:4px}
.note{color:#38424d}.skip{color:#6b7480;font-style:italic;font-size:.88em}
pre{white-space:pre-wrap;font-size:.8em;background:#f6f8fa;padding:8px;border-radius:4px}
"""


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _table(headers: list[str], rows: list[list[str]], classes: list[str] | None = None) -> str:
    if not rows:
        return ""
    head = "".join(f'<th class="t">{_e(h)}</th>' if i == 0 else f"<th>{_e(h)}</th>" for i, h in enumerate(headers))
    body = []
    for j, r in enumerate(rows):
        cls = f' class="{_e(classes[j])}"' if classes else ""
        tds = "".join(f'<td class="t">{_e(c)}</td>' if i == 0 else f"<td>{_e(c)}</td>" for i, c in enumerate(r))
        body.append(f"<tr{cls}>{tds}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _figure(entry: dict, figures: dict[str, bytes]) -> str:
    png = figures.get(entry["file"])
    if png is None:
        return f'<p class="skip">figure {_e(entry["file"])} is missing.</p>'
    uri = "data:image/png;base64," + base64.b64encode(png).decode("ascii")
    return (f'<figure><img src="{uri}" alt="{_e(entry["caption"])}">'
            f"<figcaption>{_e(entry['caption'])}</figcaption></figure>")


def render_html(report: dict, figures: dict[str, bytes]) -> str:
    """The HTML text of ``report`` (a validated ``Report.to_dict()``); ``figures`` maps each figure entry's
    ``file`` to its PNG bytes."""
    m = report["machine"]
    out = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
           '<meta name="viewport" content="width=device-width, initial-scale=1">',
           f"<title>{_e(report['title'])}</title><style>{_CSS}</style></head><body><main>",
           f"<h1>{_e(report['title'])}</h1>"]
    if report["description"]:
        out.append(f'<p class="note">{_e(report["description"])}</p>')
    out.append(f'<p class="meta">created {_e(report["created"])} · topoverify {_e(report["topoverify_version"])} · '
               f'Python {_e(m["python"])}, torch {_e(m["torch"])}, {_e(m["platform"])}, {_e(m["cpu_count"])} CPUs · '
               f'schema {_e(report["schema_version"])}</p>')
    if report["errors"]:
        items = "".join(f"<li><b>{_e(e['where'])}</b>: {_e(e['message'])}</li>" for e in report["errors"])
        out.append(f'<div class="box errors"><b>Errors</b> (the rest of the report was written):<ul>{items}</ul></div>')
    if report["findings"]:
        items = "".join(f"<li>{_e(f)}</li>" for f in report["findings"])
        out.append(f'<div class="box findings"><b>Findings</b><ul>{items}</ul></div>')
    out.append(f'<div class="box howto"><b>How to read this report.</b> {_e(HOW_TO_READ)}</div>')
    if report["summary"]:
        headers, rows = row_cells(report["summary"])
        out.append("<h2>Summary</h2>")
        out.append(_table(headers, rows, [f"{r['phase']} {r['topology']}" for r in report["summary"]]))
    out.append(_contents(report))
    for i, sec in enumerate(report["sections"], 1):
        out.append(f'<h2 id="s{i}">{i}. {_e(sec["title"])} <span class="meta">({_e(sec["kind"])})</span></h2>')
        if sec["note"]:
            out.append(f'<p class="note">{_e(sec["note"])}</p>')
        if sec["data"].get("summary_text"):
            out.append(f"<pre>{_e(sec['data']['summary_text'])}</pre>")
        for title, headers, rows in section_tables(sec):
            out.append(f"<h3>{_e(title)}</h3>")
            out.append(_table(headers, rows))
        for entry in sec["figures"]:
            out.append(_figure(entry, figures))
        for skip in sec["data"].get("not_drawn", []):
            out.append(f'<p class="skip">Not drawn: {_e(skip["figure"])}: {_e(skip["reason"])}</p>')
    if report["config"]:
        out.append("<h2>Configuration</h2>")
        out.append(f"<pre>{_e(json.dumps(report['config'], indent=1))}</pre>")
    out.append("</main></body></html>")
    return "\n".join(out) + "\n"


def _contents(report: dict) -> str:
    if len(report["sections"]) < 2:
        return ""
    items = "".join(f'<li><a href="#s{i}">{_e(s["title"])}</a></li>' for i, s in enumerate(report["sections"], 1))
    return f"<h2>Sections</h2><ol>{items}</ol>"

