"""A report as one self-contained HTML page: inline CSS and inline SVG charts, no script, no external assets.

Top to bottom: a green or red verdict banner naming the files (and, on failure, the stage and the reason),
four big numbers (BatchNorms folded, worst error against the fp64 reference in units of the original
model's own fp32 error, speedup, BatchNormalization nodes left), the per-BatchNorm table (closed when every
BatchNorm folded), latency (chart and table), parity (an error histogram per output, then the table; first
when parity failed), warnings and the environment. Every string from the report goes through
:func:`html.escape`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import PurePath
from typing import Any

from bnfold.bench.timing import LatencyResult
from bnfold.fold.records import BnRecord, muladd_summary
from bnfold.report.charts import histogram_chart, latency_chart
from bnfold.report.check import headline, parity_failure
from bnfold.report.document import FoldSection, ParitySection, Report, SpeedupEntry, as_report
from bnfold.report.figures import (
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
    tolerance_text,
    worst_top1,
)
from bnfold.report.html_blocks import CSS, cell_num, esc, esc_name, section, table
from bnfold.report.merged import merged_html
from bnfold.verify.report import ParityCheck

TONES = {"faster": "good", "slower": "bad", "unchanged": None}


def render_html(report: Report | Mapping[str, Any]) -> str:
    """The whole report as a standalone HTML document."""
    report = as_report(report)
    title = f"bnfold: {'PASS' if report.verdict.passed else 'FAIL'} — {_file_name(report.model.path)}"
    sections = [
        _batchnorms(report.fold),
        merged_html(report.onnx),
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
        own = f"{times(error.ratio)} the {error.baseline_name} model's own error ({num(error.baseline)})"
        parts.append(own + error.limit_text())
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
        return section(
            "BatchNorms", '<p class="note">Not folded in this run: the report compares two given models.</p>'
        )
    rows = [
        [
            f"<code>{esc_name(layer.name)}</code>",
            esc(layer.kind),
            _action(layer),
            esc_name(_detail(layer)),
            cell_num(layer.channels),
        ]
        for layer in fold.layers
    ]
    counts = (
        f"{fold.batchnorm_found} found, {fold.batchnorm_folded} folded, "
        f"{fold.batchnorm_affine} frozen as affine, {fold.kept_as_is} kept as is."
    )
    if fold.recalibrated:
        counts += " Statistics were recalibrated."
    muladds = muladd_summary(fold.layers)
    counts += f" {muladds}." if muladds else ""
    header = ["BatchNorm", "kind", "result", "into / reason", "channels"]
    listing = table(header, rows, numeric={4})
    if fold.layers:  # closed when there is nothing to look into: every BatchNorm folded
        every = all(layer.action == "folded" or layer.as_written for layer in fold.layers)
        summary = f"Each BatchNorm, where it went ({len(fold.layers)})"
        listing = f"<details{'' if every else ' open'}><summary>{esc(summary)}</summary>{listing}</details>"
    return section("BatchNorms", f'<p class="note">{esc(counts)}</p>' + listing)


def _detail(layer: BnRecord) -> str:
    if layer.action == "folded":
        return "into " + ", ".join(str(name) for name in layer.into)
    return str(layer.reason or "")


def _action(layer: BnRecord) -> str:
    if layer.action == "folded":
        return f'<span class="good tag">folded, {esc(layer.how)}</span>'
    if layer.as_written:
        return '<span class="tag">Mul/Add, left as written</span>'
    if layer.action == "affine":
        return '<span class="warn tag">frozen affine</span>'
    return '<span class="bad tag">kept</span>'


def _latency(latency: Sequence[LatencyResult], speedup: Sequence[SpeedupEntry]) -> str:
    if not latency:
        return section("Latency", '<p class="note">Not measured.</p>')
    groups = latency_groups(latency, speedup)
    rows = [
        [
            esc(g.backend),
            esc(g.provider),
            cell_num(g.batch),
            esc(ms(g.original)),
            esc(ms(g.folded)),
            esc(ratio_text(g.speedup.speedup_p50 if g.speedup else None)),
            esc(spread_text(g.speedup)),
        ]
        for g in groups
    ]
    header = ["backend", "provider", "batch", "original p50", "folded p50", "speedup", "paired IQR"]
    listing = table(header, rows, numeric={2, 3, 4, 5, 6})
    counts = sorted({r.threads for r in latency})
    threads = ", ".join(map(str, counts)) + (" thread" if counts == [1] else " threads")
    chart, axis = latency_chart(groups)
    note = (
        f'<p class="note">Original and folded timed interleaved, {esc(threads)}. Every bar '
        f"is on one time scale ({esc(axis.describe())}).</p>"
    )
    return section("Latency", chart + note + listing)


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
        f"× {esc(parity.precision)} err",
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
    listing = table(
        header,
        rows,
        numeric=set(range(first, len(header))),
        row_classes=["" if c.passed else "failed" for c in checks],
    )
    notes = "".join(f'<p class="note">{esc(note)}</p>' for note in parity_notes(parity))
    verdict = "passed" if parity.passed else f"FAILED at stage {parity.failed_stage}"
    return section(f"Parity: {verdict}", _parity_intro(parity, outputs) + _histograms(parity) + listing + notes)


def _histograms(parity: ParitySection) -> str:
    """One chart per output: how the errors of each candidate against fp64 spread over the decades."""
    groups = histogram_groups(parity)
    if not groups:
        return ""
    scale = (
        " The dashed outline is the original model's own: a candidate whose bars sit where the "
        f"outline sits adds no more error than {esc(parity.precision)} arithmetic itself."
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
    tolerance = tolerance_text(parity, num)
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
    return section("Warnings", "<ul>" + "".join(f"<li>{esc(w)}</li>" for w in warnings) + "</ul>")


def _environment(report: Report) -> str:
    env = dict(report.environment)
    items = [(k, ", ".join(map(str, v)) if isinstance(v, list) else v) for k, v in env.items()]
    versions = {"bnfold_version": report.bnfold_version, "created": report.created}
    items += [(k, v) for k, v in versions.items() if v and v != env.get(k.removesuffix("_version"))]
    cells = [f"<div><dt>{esc(k)}</dt><dd>{esc(v)}</dd></div>" for k, v in items]
    for key, sha in (("model sha256", report.model.sha256), ("ONNX sha256", report.onnx.sha256)):
        if sha:
            cells.append(f'<div class="wide"><dt>{key}</dt><dd><code>{esc(sha)}</code></dd></div>')
    return section("Environment", '<dl class="env">' + "".join(cells) + "</dl>")
