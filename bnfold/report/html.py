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

from bnfold.bench.timing import LatencyResult
from bnfold.fold.records import BnRecord
from bnfold.report.charts import histogram_chart, latency_chart
from bnfold.report.check import headline, parity_failure
from bnfold.report.document import FoldSection, ParitySection, Report, SpeedupEntry, as_report
from bnfold.report.markdown import (
    error_figure,
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
from bnfold.verify.report import ParityCheck

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


def render_html(report: Report | Mapping[str, Any]) -> str:
    """The whole report as a standalone HTML document."""
    report = as_report(report)
    title = f"bnfold: {'PASS' if report.verdict.passed else 'FAIL'} — {_file_name(report.model.path)}"
    sections = [
        _batchnorms(report.fold),
        _latency(report.latency, report.speedup),
        _parity(report.parity),
    ]
    if report.parity is not None and not report.parity.passed:
        sections.insert(0, sections.pop())  # a failed parity is what the reader came for
    body = "\n".join(
        p
        for p in (
            _banner(report),
            '<main class="wrap">',
            _figures(report),
            _files(report),
            *sections,
            _warnings(report.warnings),
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


def _banner(report: Report) -> str:
    passed, reason = report.verdict.passed, str(report.verdict.reason)
    failure = parity_failure(report.parity)
    lines = [reason] if not failure else ([failure] if failure.startswith(reason) else [reason, failure])
    failed_stage = report.parity.failed_stage if report.parity else None
    stage = "" if passed or not failed_stage else f" at stage {failed_stage}"
    what = f"{_file_name(report.model.path)} → {_file_name(report.onnx.path)}"
    word = "✔ PASS" if passed else f"✘ FAIL{stage}"
    return (
        f'<header class="verdict {"pass" if passed else "fail"}"><div class="wrap">'
        f"<h1>{esc(word)}</h1><p>{esc(what)}</p>"
        + "".join(f'<p class="why">{esc(line)}</p>' for line in lines)
        + "</div></header>"
    )


def _file_name(path: Any) -> str:
    return PurePath(str(path)).name if path else "in-memory model"


def _figures(report: Report) -> str:
    head = headline(report)
    name = _file_name(report.onnx.path)
    cards = [
        _batchnorm_card(report.fold),
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


def _batchnorm_card(fold: FoldSection | None) -> str:
    if fold is None:
        return _card("—", "BatchNorms folded", "not part of this run: two given models compared", None)
    found, folded, affine = fold.batchnorm_found, fold.batchnorm_folded, fold.batchnorm_affine
    if folded == found:
        sub = "every BatchNorm folded" if found else "the model has no BatchNorm"
    else:
        parts = [
            f"{affine} frozen as affine" if affine else "",
            f"{fold.kept_as_is} kept as is" if fold.kept_as_is else "",
        ]
        sub = ", ".join(part for part in parts if part) + ": reasons below"
    return _card(f"{folded}/{found}", "BatchNorms folded", sub, "good" if folded == found else "warn")


def _error_card(report: Report) -> str:
    error, top1 = error_figure(report), worst_top1(report)
    parts = []
    if error.ratio is not None and error.baseline:
        parts.append(f"{times(error.ratio)} the {error.baseline_name} model's own error ({num(error.baseline)})")
    elif error.baseline:
        parts.append(f"{error.baseline_name} model's own: {num(error.baseline)}")
    if top1 is not None:
        parts.append(f"top-1 agreement {pct(top1)}")
    passed = report.parity is not None and report.parity.passed
    return _card(
        num(error.max_abs_err), "max abs error vs fp64 reference", "; ".join(parts), "good" if passed else "bad"
    )


def _speedup_card(report: Report) -> str:
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


def _files(report: Report) -> str:
    model, onnx = report.model, report.onnx
    source = f"<code>{esc(model.path or 'in-memory model')}</code> ({esc(model.format)})"
    details = ", ".join(onnx_details(onnx))
    target = f"<code>{esc(onnx.path)}</code>" + (f" ({esc(details)})" if details else "")
    notes = "".join(f"<li>{esc(note)}</li>" for note in model.notes)
    return f'<p class="files">{source} → {target}</p>' + (f'<ul class="note">{notes}</ul>' if notes else "")


def _batchnorms(fold: FoldSection | None) -> str:
    if fold is None:
        return _section(
            "BatchNorms", '<p class="note">Not folded in this run: the report compares two given models.</p>'
        )
    rows = [
        [
            f"<code>{esc_name(layer.name)}</code>",
            esc(layer.kind),
            _action(layer),
            esc_name(_detail(layer)),
            _cell_num(layer.channels),
        ]
        for layer in fold.layers
    ]
    counts = (
        f"{fold.batchnorm_found} found, {fold.batchnorm_folded} folded, "
        f"{fold.batchnorm_affine} frozen as affine, {fold.kept_as_is} kept as is."
    )
    if fold.recalibrated:
        counts += " Statistics were recalibrated."
    header = ["BatchNorm", "kind", "result", "into / reason", "channels"]
    table = _table(header, rows, numeric={4})
    if fold.layers:  # closed when there is nothing to look into: every BatchNorm folded
        every = all(layer.action == "folded" for layer in fold.layers)
        summary = f"Each BatchNorm, where it went ({len(fold.layers)})"
        table = f"<details{'' if every else ' open'}><summary>{esc(summary)}</summary>{table}</details>"
    return _section("BatchNorms", f'<p class="note">{esc(counts)}</p>' + table)


def _detail(layer: BnRecord) -> str:
    if layer.action == "folded":
        return "into " + ", ".join(str(name) for name in layer.into)
    return str(layer.reason or "")


def _action(layer: BnRecord) -> str:
    if layer.action == "folded":
        return f'<span class="good tag">folded, {esc(layer.how)}</span>'
    if layer.action == "affine":
        return '<span class="warn tag">frozen affine</span>'
    return '<span class="bad tag">kept</span>'


def _latency(latency: Sequence[LatencyResult], speedup: Sequence[SpeedupEntry]) -> str:
    if not latency:
        return _section("Latency", '<p class="note">Not measured.</p>')
    groups = latency_groups(latency, speedup)
    rows = [
        [
            esc(g.backend),
            esc(g.provider),
            _cell_num(g.batch),
            esc(ms(g.original)),
            esc(ms(g.folded)),
            esc(ratio_text(g.speedup.speedup_p50 if g.speedup else None)),
            esc(spread_text(g.speedup)),
        ]
        for g in groups
    ]
    header = ["backend", "provider", "batch", "original p50", "folded p50", "speedup", "paired IQR"]
    table = _table(header, rows, numeric={2, 3, 4, 5, 6})
    threads = ", ".join(sorted({str(r.threads) for r in latency}))
    chart, axis = latency_chart(groups)
    note = (
        f'<p class="note">Original and folded timed interleaved, {esc(threads)} thread(s). Every bar '
        f"is on one time scale ({esc(axis.describe())}).</p>"
    )
    return _section("Latency", chart + note + table)


def _parity(parity: ParitySection | None) -> str:
    if parity is None:
        return ""
    checks = parity.checks
    outputs = list(dict.fromkeys(str(c.output) for c in checks))
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
        row_classes=["" if c.passed else "failed" for c in checks],
    )
    notes = "".join(f'<p class="note">{esc(note)}</p>' for note in parity_notes(parity))
    verdict = "passed" if parity.passed else f"FAILED at stage {parity.failed_stage}"
    return _section(f"Parity: {verdict}", _parity_intro(parity, outputs) + _histograms(parity) + table + notes)


def _histograms(parity: ParitySection) -> str:
    """One chart per output: how the errors of each candidate against fp64 spread over the decades."""
    groups = histogram_groups(parity)
    if not groups:
        return ""
    scale = (
        " The dashed outline is the original model's own: a candidate whose bars sit where the "
        "outline sits adds no more error than fp32 arithmetic itself."
        if groups[0].baseline is not None
        else ""
    )
    parts = [
        f'<p class="note">How large the errors against {esc(parity.reference)} are, element by '
        f"element: the share of elements in each decade of |a − b|.{esc(scale)}</p>"
    ]
    for group in groups:
        if len(groups) > 1:
            parts.append(f"<h3>Output {esc(group.output)}</h3>")
        parts.append(f'<div class="chart">{histogram_chart(group.candidates, group.baseline)}</div>')
    return "".join(parts)


def _parity_intro(parity: ParitySection, outputs: Sequence[str]) -> str:
    inputs = ", ".join(f"{i.source} (batch {i.batch})" for i in parity.inputs)
    tolerance = f"atol {num(parity.atol)}, rtol {num(parity.rtol)}"
    output = f" of output {outputs[0]}" if len(outputs) == 1 else ""
    return (
        f'<p class="note">Every candidate{esc(output)} against {esc(parity.reference)}, and '
        f"each stage against the one before it. Passes when <code>{esc(parity.rule)}</code>, "
        f"{esc(tolerance)}. Inputs: {esc(inputs or 'none')}.</p>"
    )


def _parity_row(check: ParityCheck) -> list[str]:
    ratio, cosine = check.error_ratio, check.cosine
    mark = '<span class="good tag">✔</span>' if check.passed else '<span class="bad tag">✘</span>'
    return [
        mark,
        f'<span class="nowrap">{esc(check.stage)}</span>',
        esc(check.candidate),
        esc(check.reference),
        esc(check.output),
        esc(check.error or num(check.max_abs_err)),
        esc("" if ratio is None else times(ratio)),
        esc(num(check.max_rel_err)),
        esc(pct(check.mismatch_ratio)),
        esc("" if cosine is None else f"{cosine:.6f}"),
        esc(pct(check.top1_agreement)),
        esc(pct(check.top5_agreement)),
    ]


def _warnings(warnings: Sequence[str]) -> str:
    if not warnings:
        return ""
    return _section("Warnings", "<ul>" + "".join(f"<li>{esc(w)}</li>" for w in warnings) + "</ul>")


def _environment(report: Report) -> str:
    env = dict(report.environment)
    items = [(k, ", ".join(map(str, v)) if isinstance(v, list) else v) for k, v in env.items()]
    versions = {"bnfold_version": report.bnfold_version, "created": report.created}
    items += [(k, v) for k, v in versions.items() if v and v != env.get(k.removesuffix("_version"))]
    cells = [f"<div><dt>{esc(k)}</dt><dd>{esc(v)}</dd></div>" for k, v in items]
    for key, sha in (("model sha256", report.model.sha256), ("ONNX sha256", report.onnx.sha256)):
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
