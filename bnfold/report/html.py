"""A report as one self-contained HTML page: inline CSS and inline SVG charts, no script, no external assets.

Top to bottom: a green or red verdict banner naming the files (and, on failure, the stage and the reason),
four big numbers (BatchNorms folded, worst error against the fp64 reference in units of the original
model's own fp32 error, speedup, BatchNormalization nodes left), the per-BatchNorm table (closed when every
BatchNorm folded), latency (chart and table), parity (an error histogram per output, then the table; first
when parity failed), warnings and the environment. Every string from the report goes through
:func:`html.escape`.
"""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from pathlib import PurePath
from typing import Any

from bnfold.report.charts import histogram_chart, latency_chart
from bnfold.report.check import headline, parity_failure
from bnfold.report.markdown import (
    error_figure,
    fold_ran,
    histogram_groups,
    latency_groups,
    ms,
    num,
    onnx_details,
    other_speedups,
    parity_notes,
    pct,
    ratio_text,
    speedup_range,
    speedup_tone,
    spread_text,
    times,
    worst_top1,
)

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

TONES = {"faster": "good", "slower": "bad", "unchanged": None}


def esc(value: Any) -> str:
    return html.escape("" if value is None else str(value))


def esc_name(value: Any) -> str:
    """A module path escaped, free to wrap after each dot (``features.<wbr>denseblock4.<wbr>...``) rather
    than in the middle of a word or not at all."""
    return esc(value).replace(".", ".<wbr>")


def render_html(report: Mapping[str, Any]) -> str:
    """The whole report as a standalone HTML document."""
    passed = bool(report.get("verdict", {}).get("passed"))
    title = f"bnfold: {'PASS' if passed else 'FAIL'} — {_file_name(report.get('model', {}).get('path'))}"
    sections = [
        _batchnorms(report.get("fold", {})),
        _latency(report.get("latency", []), report.get("speedup", [])),
        _parity(report.get("parity", {})),
    ]
    if not report.get("parity", {}).get("passed", True):
        sections.insert(0, sections.pop())  # a failed parity is what the reader came for
    body = "\n".join(
        p
        for p in (
            _banner(report),
            '<main class="wrap">',
            _figures(report),
            _files(report),
            *sections,
            _warnings(report.get("warnings", [])),
            _environment(report),
            "</main>",
        )
        if p
    )
    return (
        f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f'<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{esc(title)}</title>\n<style>{CSS}</style>\n</head>\n<body>\n{body}\n</body>\n</html>\n"
    )


def _banner(report: Mapping[str, Any]) -> str:
    verdict, parity = report.get("verdict", {}), report.get("parity", {})
    passed = bool(verdict.get("passed"))
    reason = str(verdict.get("reason", ""))
    failure = parity_failure(parity)
    lines = [reason] if not failure else ([failure] if failure.startswith(reason) else [reason, failure])
    stage = "" if passed or not parity.get("failed_stage") else f" at stage {parity['failed_stage']}"
    what = f"{_file_name(report.get('model', {}).get('path'))} → {_file_name(report.get('onnx', {}).get('path'))}"
    word = "✔ PASS" if passed else f"✘ FAIL{stage}"
    return (
        f'<header class="verdict {"pass" if passed else "fail"}"><div class="wrap">'
        f"<h1>{esc(word)}</h1><p>{esc(what)}</p>"
        + "".join(f'<p class="why">{esc(line)}</p>' for line in lines)
        + "</div></header>"
    )


def _file_name(path: Any) -> str:
    return PurePath(str(path)).name if path else "in-memory model"


def _figures(report: Mapping[str, Any]) -> str:
    head = headline(report)
    name = _file_name(report.get("onnx", {}).get("path"))
    cards = [
        _batchnorm_card(report),
        _error_card(report),
        _speedup_card(report),
        _card(
            str(head.batchnorm_nodes),
            "BatchNormalization nodes left",
            f"in {name}",
            "good" if head.batchnorm_nodes == 0 else "warn",
        ),
    ]
    return '<div class="figures">' + "".join(cards) + "</div>"


def _card(big: str, label: str, sub: str, tone: str | None) -> str:
    """A big-number card with a coloured top edge: ``good``, ``bad``, ``warn`` or neutral (None)."""
    return (
        f'<div class="figure{" " + tone if tone else ""}"><div class="big">{esc(big)}</div>'
        f'<div class="label">{esc(label)}</div><div class="sub">{esc(sub)}</div></div>'
    )


def _batchnorm_card(report: Mapping[str, Any]) -> str:
    if not fold_ran(report):
        return _card("—", "BatchNorms folded", "not part of this run: two given models compared", None)
    fold = report["fold"]
    found, folded = int(fold.get("batchnorm_found", 0)), int(fold.get("batchnorm_folded", 0))
    affine = int(fold.get("batchnorm_affine", 0))
    as_is = int(fold.get("batchnorm_kept", 0)) - affine
    if folded == found:
        sub = "every BatchNorm folded" if found else "the model has no BatchNorm"
    else:
        parts = [f"{affine} frozen as affine" if affine else "", f"{as_is} kept as is" if as_is else ""]
        sub = ", ".join(part for part in parts if part) + ": reasons below"
    return _card(f"{folded}/{found}", "BatchNorms folded", sub, "good" if folded == found else "warn")


def _error_card(report: Mapping[str, Any]) -> str:
    error, top1 = error_figure(report), worst_top1(report)
    parts = []
    if error.ratio is not None and error.baseline:
        parts.append(f"{times(error.ratio)} the original fp32 model's own error ({num(error.baseline)})")
    elif error.baseline:
        parts.append(f"original fp32 model's own: {num(error.baseline)}")
    if top1 is not None:
        parts.append(f"top-1 agreement {pct(top1)}")
    passed = bool(report.get("parity", {}).get("passed"))
    return _card(
        num(error.max_abs_err), "max abs error vs fp64 reference", "; ".join(parts), "good" if passed else "bad"
    )


def _speedup_card(report: Mapping[str, Any]) -> str:
    head = headline(report)
    if head.speedup_text() is None:
        return _card("—", "speedup", "latency not measured", None)
    tone = speedup_tone(report) or "unchanged"
    sub = {
        "faster": "faster beyond timing noise",
        "slower": "slower beyond timing noise",
        "unchanged": "no change beyond timing noise",
    }[tone]
    sub += "".join(f"; {name} {text}" for name, text in other_speedups(report))
    return _card(speedup_range(head), f"{head.speedup_backend} speedup (p50 original ÷ folded)", sub, TONES[tone])


def _files(report: Mapping[str, Any]) -> str:
    model, onnx = report.get("model", {}), report.get("onnx", {})
    source = f"<code>{esc(model.get('path') or 'in-memory model')}</code> ({esc(model.get('format'))})"
    details = ", ".join(onnx_details(onnx))
    target = f"<code>{esc(onnx.get('path'))}</code>" + (f" ({esc(details)})" if details else "")
    notes = "".join(f"<li>{esc(note)}</li>" for note in model.get("notes") or [])
    return f'<p class="files">{source} → {target}</p>' + (f'<ul class="note">{notes}</ul>' if notes else "")


def _batchnorms(fold: Mapping[str, Any]) -> str:
    if "batchnorm_found" not in fold:
        return _section(
            "BatchNorms", '<p class="note">Not folded in this run: the report compares two given models.</p>'
        )
    layers = fold.get("layers", [])
    rows = [
        [
            f"<code>{esc_name(layer.get('name'))}</code>",
            esc(layer.get("kind")),
            _action(layer),
            esc_name(_detail(layer)),
            _cell_num(layer.get("channels")),
        ]
        for layer in layers
    ]
    kept = int(fold.get("batchnorm_kept", 0)) - int(fold.get("batchnorm_affine", 0))
    counts = (
        f"{fold.get('batchnorm_found', 0)} found, {fold.get('batchnorm_folded', 0)} folded, "
        f"{fold.get('batchnorm_affine', 0)} frozen as affine, {kept} kept as is."
    )
    if fold.get("recalibrated"):
        counts += " Statistics were recalibrated."
    header = ["BatchNorm", "kind", "result", "into / reason", "channels"]
    table = _table(header, rows, numeric={4})
    if layers:  # closed when there is nothing to look into: every BatchNorm folded
        every = all(layer.get("action") == "folded" for layer in layers)
        summary = f"Each BatchNorm, where it went ({len(layers)})"
        table = f"<details{'' if every else ' open'}><summary>{esc(summary)}</summary>{table}</details>"
    return _section("BatchNorms", f'<p class="note">{esc(counts)}</p>' + table)


def _detail(layer: Mapping[str, Any]) -> str:
    if layer.get("action") == "folded":
        return "into " + ", ".join(str(name) for name in layer.get("into") or [])
    return str(layer.get("reason") or "")


def _action(layer: Mapping[str, Any]) -> str:
    action = layer.get("action")
    if action == "folded":
        return f'<span class="good tag">folded, {esc(layer.get("how"))}</span>'
    if action == "affine":
        return '<span class="warn tag">frozen affine</span>'
    return '<span class="bad tag">kept</span>'


def _latency(latency: Sequence[Mapping[str, Any]], speedup: Sequence[Mapping[str, Any]]) -> str:
    if not latency:
        return _section("Latency", '<p class="note">Not measured.</p>')
    groups = latency_groups(latency, speedup)
    rows = [
        [
            esc(g["backend"]),
            esc(g["provider"]),
            _cell_num(g["batch"]),
            esc(ms(g["original"])),
            esc(ms(g["folded"])),
            esc(ratio_text((g["speedup"] or {}).get("speedup_p50"))),
            esc(spread_text(g["speedup"] or {})),
        ]
        for g in groups
    ]
    header = ["backend", "provider", "batch", "original p50", "folded p50", "speedup", "paired IQR"]
    table = _table(header, rows, numeric={2, 3, 4, 5, 6})
    threads = ", ".join(sorted({str(r.get("threads")) for r in latency}))
    chart, axis = latency_chart(groups)
    note = (
        f'<p class="note">Original and folded timed interleaved, {esc(threads)} thread(s). Every bar '
        f"is on one time scale ({esc(axis.describe())}).</p>"
    )
    return _section("Latency", chart + note + table)


def _parity(parity: Mapping[str, Any]) -> str:
    if not parity:
        return ""
    checks = parity.get("checks", [])
    outputs = list(dict.fromkeys(str(c.get("output")) for c in checks))
    header = [
        "",
        "stage",
        "candidate",
        "vs",
        "output",
        "abs err",
        "× fp32 err",
        "rel err",
        "mismatch",
        "cosine",
        "top-1",
        "top-5",
    ]
    rows = [_parity_row(c) for c in checks]
    if len(outputs) == 1:
        header.pop(4)
        rows = [row[:4] + row[5:] for row in rows]
    first = len(header) - 7
    table = _table(
        header,
        rows,
        numeric=set(range(first, len(header))),
        row_classes=["" if c.get("passed") else "failed" for c in checks],
    )
    notes = "".join(f'<p class="note">{esc(note)}</p>' for note in parity_notes(parity))
    verdict = "passed" if parity.get("passed") else f"FAILED at stage {parity.get('failed_stage')}"
    return _section(f"Parity: {verdict}", _parity_intro(parity, outputs) + _histograms(parity) + table + notes)


def _histograms(parity: Mapping[str, Any]) -> str:
    """One chart per output: how the errors of each candidate against fp64 spread over the decades."""
    groups = histogram_groups(parity)
    if not groups:
        return ""
    scale = (
        " The dashed outline is the original fp32 model's own: a candidate whose bars sit where the "
        "outline sits adds no more error than fp32 arithmetic itself."
        if groups[0].baseline
        else ""
    )
    parts = [
        f'<p class="note">How large the errors against {esc(parity.get("reference"))} are, element by '
        f"element: the share of elements in each decade of |a − b|.{esc(scale)}</p>"
    ]
    for group in groups:
        if len(groups) > 1:
            parts.append(f"<h3>Output {esc(group.output)}</h3>")
        parts.append(f'<div class="chart">{histogram_chart(group.candidates, group.baseline)}</div>')
    return "".join(parts)


def _parity_intro(parity: Mapping[str, Any], outputs: Sequence[str]) -> str:
    inputs = ", ".join(f"{i.get('source')} (batch {i.get('batch')})" for i in parity.get("inputs", []))
    tolerance = f"atol {num(parity.get('atol'))}, rtol {num(parity.get('rtol'))}"
    output = f" of output {outputs[0]}" if len(outputs) == 1 else ""
    return (
        f'<p class="note">Every candidate{esc(output)} against {esc(parity.get("reference"))}, and '
        f"each stage against the one before it. Passes when <code>{esc(parity.get('rule'))}</code>, "
        f"{esc(tolerance)}. Inputs: {esc(inputs or 'none')}.</p>"
    )


def _parity_row(check: Mapping[str, Any]) -> list[str]:
    ratio, cosine = check.get("error_ratio"), check.get("cosine")
    mark = '<span class="good tag">✔</span>' if check.get("passed") else '<span class="bad tag">✘</span>'
    return [
        mark,
        f'<span class="nowrap">{esc(check.get("stage"))}</span>',
        esc(check.get("candidate")),
        esc(check.get("reference")),
        esc(check.get("output")),
        esc(check.get("error") or num(check.get("max_abs_err"))),
        esc("" if ratio is None else times(ratio)),
        esc(num(check.get("max_rel_err"))),
        esc(pct(check.get("mismatch_ratio"))),
        esc("" if cosine is None else f"{cosine:.6f}"),
        esc(pct(check.get("top1_agreement"))),
        esc(pct(check.get("top5_agreement"))),
    ]


def _warnings(warnings: Sequence[str]) -> str:
    if not warnings:
        return ""
    return _section("Warnings", "<ul>" + "".join(f"<li>{esc(w)}</li>" for w in warnings) + "</ul>")


def _environment(report: Mapping[str, Any]) -> str:
    env = dict(report.get("environment", {}))
    items = [(k, ", ".join(map(str, v)) if isinstance(v, list) else v) for k, v in env.items()]
    items += [
        (k, report[k])
        for k in ("bnfold_version", "created")
        if report.get(k) and report[k] != env.get(k.removesuffix("_version"))
    ]
    cells = [f"<div><dt>{esc(k)}</dt><dd>{esc(v)}</dd></div>" for k, v in items]
    for key, section in (("model sha256", "model"), ("ONNX sha256", "onnx")):
        sha = report.get(section, {}).get("sha256")
        if sha:
            cells.append(f'<div class="wide"><dt>{key}</dt><dd><code>{esc(sha)}</code></dd></div>')
    return _section("Environment", '<dl class="env">' + "".join(cells) + "</dl>")


def _section(title: str, content: str) -> str:
    return f"<section><h2>{esc(title)}</h2>\n{content}\n</section>"


def _table(
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


def _cell_num(value: Any) -> str:
    return "" if value is None else esc(value)
