"""A report as one self-contained HTML page: inline CSS and an inline SVG chart, no external assets.

Top to bottom: a green or red verdict banner, the big numbers (BatchNorms folded, worst error, speedup,
BatchNormalization nodes left), the per-BatchNorm table, latency (chart and table), parity, warnings and
the environment. Every string from the report goes through :func:`html.escape`.
"""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from typing import Any

from bnfold.report.check import headline, parity_failure
from bnfold.report.markdown import latency_groups, ms, num, pct, ratio_text, size

CSS = """
body{font:15px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;color:#1f2328;
background:#f6f8fa}
main{max-width:1100px;margin:0 auto;padding:0 20px 40px}
.verdict{padding:22px 28px;color:#fff}.verdict h1{margin:0;font-size:30px}.verdict p{margin:6px 0 0}
.pass{background:#1a7f37}.fail{background:#cf222e}
.figures{display:flex;flex-wrap:wrap;gap:14px;margin:20px 0}
.figure{flex:1 1 200px;background:#fff;border:1px solid #d0d7de;border-radius:8px;padding:14px 18px}
.big{font-size:32px;font-weight:700}.label{color:#57606a}.bad{color:#cf222e}.good{color:#1a7f37}
.warn{color:#9a6700}
section{background:#fff;border:1px solid #d0d7de;border-radius:8px;padding:4px 18px 14px;margin:16px 0}
table{border-collapse:collapse;width:100%;font-size:14px}
th,td{text-align:left;padding:5px 8px;border-bottom:1px solid #eaeef2;vertical-align:top}
th{background:#f6f8fa}
.files,.note{color:#57606a}code{font:13px ui-monospace,SFMono-Regular,Menlo,monospace}
svg text{font:12px system-ui,sans-serif;fill:#1f2328}
"""

ORIGINAL_COLOUR = "#8c959f"
FOLDED_COLOUR = "#1a7f37"


def esc(value: Any) -> str:
    return html.escape("" if value is None else str(value))


def render_html(report: Mapping[str, Any]) -> str:
    """The whole report as a standalone HTML document."""
    passed = bool(report.get("verdict", {}).get("passed"))
    title = f"bnfold: {'PASS' if passed else 'FAIL'} — {report.get('model', {}).get('path') or 'model'}"
    body = "\n".join(p for p in (
        _banner(report), "<main>", _figures(report), _files(report), _batchnorms(report.get("fold", {})),
        _latency(report.get("latency", []), report.get("speedup", [])), _parity(report.get("parity", {})),
        _warnings(report.get("warnings", [])), _environment(report), "</main>",
    ) if p)
    return (f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">\n'
            f"<title>{esc(title)}</title>\n<style>{CSS}</style>\n</head>\n<body>\n{body}\n</body>\n</html>\n")


def _banner(report: Mapping[str, Any]) -> str:
    verdict = report.get("verdict", {})
    passed = bool(verdict.get("passed"))
    reason = str(verdict.get("reason", ""))
    failure = parity_failure(report.get("parity", {}))
    lines = [reason] if not failure else ([failure] if failure.startswith(reason) else [reason, failure])
    word = "✅ PASS" if passed else "❌ FAIL"
    return (f'<header class="verdict {"pass" if passed else "fail"}"><h1>{word}</h1>'
            + "".join(f"<p>{esc(line)}</p>" for line in lines) + "</header>")


def _figures(report: Mapping[str, Any]) -> str:
    head = headline(report)
    base = head.baseline_max_abs_err
    error_label = "max abs error vs fp64 reference" + (f"; original fp32 itself: {num(base)}" if base else "")
    speed = head.speedup_text()
    speed_label = f"speedup, p50 original / folded ({esc(head.speedup_backend)})" if speed else "not measured"
    cards = [
        _card(f"{head.batchnorm_folded}/{head.batchnorm_found}", "BatchNorms folded",
              head.batchnorm_folded == head.batchnorm_found or "warn"),
        _card(num(head.max_abs_err), error_label, bool(report.get("parity", {}).get("passed"))),
        _card(speed.replace("x", "×") if speed else "—", speed_label,
              None if head.speedup_min is None else head.speedup_min >= 1.0),
        _card(str(head.batchnorm_nodes), "BatchNormalization nodes left in the ONNX file",
              head.batchnorm_nodes == 0),
    ]
    return '<div class="figures">' + "".join(cards) + "</div>"


def _card(big: str, label: str, good: bool | str | None) -> str:
    """A big-number card, green if ``good``, red if not, or the CSS class given; ``label`` is escaped."""
    tone = "" if good is None else " " + (good if isinstance(good, str) else ("good" if good else "bad"))
    return (f'<div class="figure"><div class="big{tone}">{esc(big)}</div>'
            f'<div class="label">{label}</div></div>')


def _files(report: Mapping[str, Any]) -> str:
    model, onnx = report.get("model", {}), report.get("onnx", {})
    source = f'<code>{esc(model.get("path") or "in-memory model")}</code> ({esc(model.get("format"))})'
    details = (f'opset {onnx.get("opset")}, {onnx.get("nodes")} nodes, {size(onnx.get("size_bytes"))}, '
               f'exporter {onnx.get("exporter")}')
    return f'<p class="files">{source} → <code>{esc(onnx.get("path"))}</code> ({esc(details)})</p>'


def _batchnorms(fold: Mapping[str, Any]) -> str:
    rows = [[esc(layer.get("name")), esc(layer.get("kind")), _action(layer), esc(_detail(layer)),
             _cell_num(layer.get("channels"))]
            for layer in fold.get("layers", [])]
    kept = int(fold.get("batchnorm_kept", 0)) - int(fold.get("batchnorm_affine", 0))
    counts = (f'{fold.get("batchnorm_found", 0)} found, {fold.get("batchnorm_folded", 0)} folded, '
              f'{fold.get("batchnorm_affine", 0)} frozen as affine, {kept} kept as is.')
    if fold.get("recalibrated"):
        counts += " Statistics were recalibrated."
    header = ["BatchNorm", "kind", "result", "into / reason", "channels"]
    return _section("BatchNorms", f'<p class="note">{esc(counts)}</p>' + _table(header, rows))


def _detail(layer: Mapping[str, Any]) -> str:
    if layer.get("action") == "folded":
        return ", ".join(str(name) for name in layer.get("into") or [])
    return str(layer.get("reason") or "")


def _action(layer: Mapping[str, Any]) -> str:
    action = layer.get("action")
    if action == "folded":
        return f'<span class="good">folded</span> ({esc(layer.get("how"))})'
    return '<span class="bad">frozen affine</span>' if action == "affine" else '<span class="bad">kept</span>'


def _latency(latency: Sequence[Mapping[str, Any]], speedup: Sequence[Mapping[str, Any]]) -> str:
    if not latency:
        return _section("Latency", '<p class="note">Not measured.</p>')
    groups = latency_groups(latency, speedup)
    rows = [[esc(g["backend"]), esc(g["provider"]), _cell_num(g["batch"]), esc(ms(g["original"])),
             esc(ms(g["folded"])), esc(ratio_text((g["speedup"] or {}).get("speedup_p50")))] for g in groups]
    table = _table(["backend", "provider", "batch", "original p50", "folded p50", "speedup"], rows)
    note = '<p class="note">Original and folded timed interleaved; bars scaled within each row pair.</p>'
    return _section("Latency", latency_chart(groups) + note + table)


def latency_chart(groups: Sequence[Mapping[str, Any]]) -> str:
    """An inline SVG bar chart: original and folded p50 per (backend, provider, batch)."""
    label_w, bar_w, row_h, top = 260, 360, 46, 28
    height = top + row_h * len(groups) + 6
    parts = [f'<svg width="{label_w + bar_w + 170}" height="{height}" role="img" '
             f'aria-label="p50 latency, original vs folded">', _legend(label_w)]
    for i, group in enumerate(groups):
        y = top + i * row_h
        provider = str(group["provider"]).removesuffix("ExecutionProvider")
        label = f"{group['backend']} · {provider} · batch {group['batch']}"
        parts.append(f'<text x="0" y="{y + 22}">{esc(label)}</text>')
        scale = max(v for v in (group["original"], group["folded"], 1e-12) if v is not None)
        speedup = (group["speedup"] or {}).get("speedup_p50")
        note = f" ({ratio_text(speedup)}, {'faster' if speedup >= 1 else 'slower'})" if speedup else ""
        parts.append(_bar(label_w, y + 4, bar_w, group["original"], scale, ORIGINAL_COLOUR, "original"))
        parts.append(_bar(label_w, y + 22, bar_w, group["folded"], scale, FOLDED_COLOUR, "folded", note))
    parts.append("</svg>")
    return "\n".join(parts)


def _legend(x: int) -> str:
    return (f'<rect x="{x}" y="4" width="12" height="12" fill="{ORIGINAL_COLOUR}"></rect>'
            f'<text x="{x + 18}" y="14">original</text>'
            f'<rect x="{x + 90}" y="4" width="12" height="12" fill="{FOLDED_COLOUR}"></rect>'
            f'<text x="{x + 108}" y="14">folded</text>')


def _bar(x: int, y: int, width: int, value: float | None, scale: float, colour: str, name: str,
         note: str = "") -> str:
    length = 0.0 if value is None else max(1.0, width * value / scale)
    return (f'<rect x="{x}" y="{y}" width="{length:.1f}" height="14" fill="{colour}">'
            f"<title>{esc(name)}: {esc(ms(value))}</title></rect>"
            f'<text x="{x + length + 6:.1f}" y="{y + 12}">{esc(ms(value) + note)}</text>')


def _parity(parity: Mapping[str, Any]) -> str:
    if not parity:
        return ""
    inputs = ", ".join(f"{i.get('source')} (batch {i.get('batch')})" for i in parity.get("inputs", []))
    tolerance = f"atol {num(parity.get('atol'))}, rtol {num(parity.get('rtol'))}"
    intro = (f'<p class="note">Every candidate against {esc(parity.get("reference"))}, and each stage '
             f'against the one before it. Rule: <code>{esc(parity.get("rule"))}</code>, {esc(tolerance)}. '
             f'Inputs: {esc(inputs or "none")}.</p>')
    cuda = parity.get("cuda", {}).get("note")
    note = f'<p class="note">{esc(cuda)}</p>' if cuda else ""
    header = ["", "stage", "candidate", "vs", "output", "max abs err", "× fp32 error", "max rel err",
              "mismatch", "cosine", "top-1", "top-5"]
    verdict = "passed" if parity.get("passed") else f"FAILED at stage {parity.get('failed_stage')}"
    rows = [_parity_row(c) for c in parity.get("checks", [])]
    return _section(f"Parity: {verdict}", intro + _table(header, rows) + note)


def _parity_row(check: Mapping[str, Any]) -> list[str]:
    ratio, cosine = check.get("error_ratio"), check.get("cosine")
    mark = '<span class="good">✔</span>' if check.get("passed") else '<span class="bad">✘</span>'
    return [mark, esc(check.get("stage")), esc(check.get("candidate")), esc(check.get("reference")),
            esc(check.get("output")), esc(check.get("error") or num(check.get("max_abs_err"))),
            esc("" if ratio is None else f"{ratio:.2f}×"), esc(num(check.get("max_rel_err"))),
            esc(pct(check.get("mismatch_ratio"))), esc("" if cosine is None else f"{cosine:.6f}"),
            esc(pct(check.get("top1_agreement"))), esc(pct(check.get("top5_agreement")))]


def _warnings(warnings: Sequence[str]) -> str:
    if not warnings:
        return ""
    return _section("Warnings", "<ul>" + "".join(f"<li>{esc(w)}</li>" for w in warnings) + "</ul>")


def _environment(report: Mapping[str, Any]) -> str:
    env = dict(report.get("environment", {}))
    rows = [[esc(k), esc(", ".join(map(str, v)) if isinstance(v, list) else v)] for k, v in env.items()]
    rows += [[esc(k), esc(report.get(k))] for k in ("bnfold_version", "created") if report.get(k)]
    sha = report.get("model", {}).get("sha256")
    if sha:
        rows.append(["model sha256", f"<code>{esc(sha)}</code>"])
    return _section("Environment", _table(["", "version / value"], rows))


def _section(title: str, content: str) -> str:
    return f"<section><h2>{esc(title)}</h2>\n{content}\n</section>"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A table; cells must already be escaped HTML."""
    head = "<tr>" + "".join(f"<th>{h}</th>" for h in header) + "</tr>"
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead>{head}</thead><tbody>{body}</tbody></table>"


def _cell_num(value: Any) -> str:
    return "" if value is None else esc(value)
