"""The building blocks of bnfold's HTML pages, a report's and the many-model summary's: the stylesheet,
escaping, titled sections and tables.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from typing import Any

CSS = """
body{font:15px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;color:#1f2328;
background:#f6f8fa}
.wrap{max-width:1100px;margin:0 auto;padding:0 20px}main{padding-bottom:40px}
.verdict{color:#fff;padding:16px 0 18px}.verdict h1{margin:0;font-size:32px}
.verdict p{margin:4px 0 0}.verdict .why{font-size:17px;font-weight:600;overflow-wrap:anywhere}
.pass{background:#1a7f37}.fail{background:#cf222e}
.figures{display:grid;grid-template-columns:repeat(auto-fit,minmax(175px,1fr));gap:12px;margin:18px 0 10px}
.figure{background:#fff;border:1px solid #d0d7de;border-top:5px solid #8c959f;border-radius:8px;
padding:10px 16px 12px}
.figure.good{border-top-color:#1a7f37}.figure.bad{border-top-color:#cf222e}
.figure.warn{border-top-color:#bf8700}
.big{font-size:32px;font-weight:700;font-variant-numeric:tabular-nums;white-space:nowrap}
.good .big,.good.tag{color:#116329}.bad .big,.bad.tag{color:#a40e26}.warn .big,.warn.tag{color:#7d4e00}
.label{font-weight:600}.sub,.note,.files{color:#57606a}.sub{font-size:13px;margin-top:2px}
.tag{display:inline-block;padding:0 8px;border-radius:10px;font-size:13px;font-weight:600;white-space:nowrap}
.good.tag{background:#dafbe1}.bad.tag{background:#ffebe9}.warn.tag{background:#fff8c5}
section{background:#fff;border:1px solid #d0d7de;border-radius:8px;padding:2px 18px 14px;margin:16px 0}
h2{font-size:20px;margin:14px 0 8px}.scroll{overflow-x:auto}
table{border-collapse:collapse;width:100%;font-size:14px}
th,td{text-align:left;padding:5px 7px;border-bottom:1px solid #eaeef2;vertical-align:top}
th{background:#f6f8fa;white-space:nowrap}th.n,td.n{text-align:right;white-space:nowrap;
font-variant-numeric:tabular-nums}.nowrap{white-space:nowrap}tr.failed td{background:#fff5f5}
code{font:13px ui-monospace,SFMono-Regular,Menlo,monospace;overflow-wrap:anywhere}
svg{max-width:100%;height:auto}svg text{font:13px system-ui,sans-serif;fill:#1f2328}
svg .faster{fill:#116329}svg .slower{fill:#a40e26}svg text.axis{font-size:12px;fill:#57606a}
.chart{margin:8px 0 16px}h3{font-size:16px;margin:14px 0 4px}
details summary{cursor:pointer;font-weight:600;margin:2px 0 8px}td code{overflow-wrap:break-word}
.env{display:grid;grid-template-columns:repeat(auto-fill,minmax(240px,1fr));gap:6px 20px;margin:0}
.env div{min-width:0}.env dt{color:#57606a;font-size:13px}.env dd{margin:0;overflow-wrap:anywhere}
.env .wide{grid-column:1/-1}
"""


def esc(value: Any) -> str:
    """Report text as HTML text (``None`` as nothing)."""
    return html.escape("" if value is None else str(value))


def esc_name(value: Any) -> str:
    """A module path escaped, free to wrap after each dot (``features.<wbr>denseblock4.<wbr>...``) rather
    than in the middle of a word or not at all."""
    return esc(value).replace(".", ".<wbr>")


def section(title: str, content: str) -> str:
    """A titled section of the page; ``content`` must already be HTML."""
    return f"<section><h2>{esc(title)}</h2>\n{content}\n</section>"


def table(
    header: Sequence[str],
    rows: Sequence[Sequence[str]],
    numeric: set[int] | None = None,
    row_classes: Sequence[str] | None = None,
) -> str:
    """A table that scrolls sideways on a narrow screen; cells must already be escaped HTML.

    Columns in ``numeric`` are right-aligned and never wrap."""
    numeric = numeric or set()

    def cls(i: int) -> str:
        return ' class="n"' if i in numeric else ""

    head = "<tr>" + "".join(f"<th{cls(i)}>{h}</th>" for i, h in enumerate(header)) + "</tr>"
    classes = row_classes or [""] * len(rows)
    body = "".join(
        (f'<tr class="{c}">' if c else "<tr>")
        + "".join(f"<td{cls(i)}>{cell}</td>" for i, cell in enumerate(row))
        + "</tr>"
        for row, c in zip(rows, classes, strict=True)
    )
    return f'<div class="scroll"><table><thead>{head}</thead><tbody>{body}</tbody></table></div>'


def cell_num(value: Any) -> str:
    """A number for a table cell, empty when missing."""
    return "" if value is None else esc(value)
