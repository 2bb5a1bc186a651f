"""A report as Markdown, sized for a CI job summary: the verdict on the first line, then the tables.

Every string from the report is escaped, so a layer name cannot break a table or inject markup.
"""

from __future__ import annotations

import html
import re
from collections.abc import Mapping, Sequence
from typing import Any

from bnfold.report.check import Headline, headline, parity_failure

_MARKDOWN_SPECIAL = re.compile(r"([\\`*_\[\]|#])")


def esc(value: Any) -> str:
    """Report text safe inside Markdown (and a table cell): HTML-escaped, markup characters backslashed."""
    text = html.escape(str(value), quote=False).replace("\n", " ")
    return _MARKDOWN_SPECIAL.sub(r"\\\1", text)


def render_markdown(report: Mapping[str, Any]) -> str:
    """The whole report as Markdown: verdict, headline, BatchNorms, parity, latency, warnings, environment."""
    parts = [
        _verdict(report),
        _figures(report),
        _batchnorms(report.get("fold", {})),
        _parity(report.get("parity", {})),
        _latency(report.get("latency", []), report.get("speedup", [])),
        _warnings(report.get("warnings", [])),
        _environment(report.get("environment", {})),
    ]
    return "\n\n".join(p for p in parts if p) + "\n"


def _verdict(report: Mapping[str, Any]) -> str:
    verdict = report.get("verdict", {})
    mark, word = ("✅", "PASS") if verdict.get("passed") else ("❌", "FAIL")
    line = f"# {mark} bnfold: {word} — {esc(verdict.get('reason', ''))}"
    failure = parity_failure(report.get("parity", {}))
    return f"{line}\n\n**{esc(failure)}**" if failure else line


def _figures(report: Mapping[str, Any]) -> str:
    head = headline(report)
    figures = [f"**{head.batchnorm_folded}/{head.batchnorm_found} BatchNorms folded**",
               f"**max abs error {num(head.max_abs_err)}**{_baseline_note(head)}"]
    if head.speedup_text():
        where = esc(head.speedup_backend)
        figures.append(f"**speedup {head.speedup_text()}** ({where} p50, original / folded)")
    return " · ".join(figures) + "\n\n" + _files(report)


def _baseline_note(head: Headline) -> str:
    return f" (original fp32 itself: {num(head.baseline_max_abs_err)})" if head.baseline_max_abs_err else ""


def _files(report: Mapping[str, Any]) -> str:
    model, onnx = report.get("model", {}), report.get("onnx", {})
    source = f"{esc(model.get('path') or 'in-memory model')} ({esc(model.get('format', '?'))})"
    target = (f"{esc(onnx.get('path', '?'))} (opset {esc(onnx.get('opset', '?'))}, "
              f"{esc(onnx.get('nodes', '?'))} nodes, {esc(onnx.get('batchnorm_nodes', '?'))} "
              f"BatchNormalization nodes, {size(onnx.get('size_bytes'))})")
    return f"{source} → {target}"


def _batchnorms(fold: Mapping[str, Any]) -> str:
    kept_as_is = int(fold.get("batchnorm_kept", 0)) - int(fold.get("batchnorm_affine", 0))
    title = (f"## BatchNorms: {fold.get('batchnorm_found', 0)} found, {fold.get('batchnorm_folded', 0)} "
             f"folded, {fold.get('batchnorm_affine', 0)} frozen affine, {kept_as_is} kept as is")
    if fold.get("recalibrated"):
        title += " (statistics recalibrated)"
    rows = [[esc(layer.get("name")), esc(layer.get("kind", "")), _action(layer), _detail(layer),
             esc(layer.get("channels") if layer.get("channels") is not None else "")]
            for layer in fold.get("layers", [])]
    return title + "\n\n" + table(["BatchNorm", "kind", "result", "into / reason", "channels"], rows)


def _action(layer: Mapping[str, Any]) -> str:
    action = layer.get("action")
    if action == "folded":
        return f"✅ folded ({esc(layer.get('how') or '')})"
    return "⚠️ frozen affine" if action == "affine" else "❌ kept"


def _detail(layer: Mapping[str, Any]) -> str:
    if layer.get("action") == "folded":
        return ", ".join(esc(name) for name in layer.get("into", []))
    return esc(layer.get("reason") or "")


def _parity(parity: Mapping[str, Any]) -> str:
    if not parity:
        return ""
    verdict = "passed" if parity.get("passed") else f"FAILED at stage {esc(parity.get('failed_stage'))}"
    inputs = ", ".join(f"{esc(i.get('source'))} (batch {esc(i.get('batch'))})"
                       for i in parity.get("inputs", []))
    intro = (f"## Parity: {verdict}\n\nEvery candidate against {esc(parity.get('reference'))}, and each "
             f"stage against the one before it. Rule: {esc(parity.get('rule', ''))}, atol "
             f"{num(parity.get('atol'))}, rtol {num(parity.get('rtol'))}. Inputs: {inputs or 'none'}.")
    header = ["", "stage", "candidate", "vs", "output", "max abs err", "× fp32 error", "max rel err",
              "mismatch", "cosine", "top-1"]
    rows = [_parity_row(c) for c in parity.get("checks", [])]
    note = parity.get("cuda", {}).get("note")
    return intro + "\n\n" + table(header, rows) + (f"\n\n> {esc(note)}" if note else "")


def _parity_row(check: Mapping[str, Any]) -> list[str]:
    ratio = check.get("error_ratio")
    error = check.get("max_abs_err")
    return [
        "✅" if check.get("passed") else "❌", esc(check.get("stage")), esc(check.get("candidate")),
        esc(check.get("reference")), esc(check.get("output")),
        esc(check["error"]) if check.get("error") else num(error),
        "" if ratio is None else f"{ratio:.2f}×", num(check.get("max_rel_err")),
        pct(check.get("mismatch_ratio")), _cosine(check.get("cosine")), pct(check.get("top1_agreement")),
    ]


def _latency(latency: Sequence[Mapping[str, Any]], speedup: Sequence[Mapping[str, Any]]) -> str:
    if not latency:
        return "## Latency\n\nNot measured."
    rows = []
    for group in latency_groups(latency, speedup):
        s = group["speedup"] or {}
        rows.append([esc(group["backend"]), esc(group["provider"]), esc(group["batch"]),
                     ms(group["original"]), ms(group["folded"]), ratio_text(s.get("speedup_p50")),
                     _spread(s)])
    threads = sorted({str(r.get("threads")) for r in latency})
    header = ["backend", "provider", "batch", "original p50", "folded p50", "speedup", "IQR of paired ratios"]
    return ("## Latency\n\n" + table(header, rows)
            + f"\n\nThreads: {esc(', '.join(threads))}; runs interleaved, original and folded in turn.")


def latency_groups(latency: Sequence[Mapping[str, Any]],
                   speedup: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Latency entries paired per (backend, provider, batch): original and folded p50 and the speedup."""
    groups: dict[tuple[Any, Any, Any], dict[str, Any]] = {}
    for entry in latency:
        key = (entry.get("backend"), entry.get("provider"), entry.get("batch"))
        group = groups.setdefault(key, {"backend": key[0], "provider": key[1], "batch": key[2],
                                        "original": None, "folded": None, "speedup": None})
        if entry.get("model") in ("original", "folded"):
            group[entry["model"]] = entry.get("p50_ms")
    for item in speedup:
        key = (item.get("backend"), item.get("provider"), item.get("batch"))
        if key in groups:
            groups[key]["speedup"] = item
    return list(groups.values())


def _spread(speedup: Mapping[str, Any]) -> str:
    low, high = speedup.get("speedup_low"), speedup.get("speedup_high")
    return "" if low is None or high is None else f"{low:.2f}–{high:.2f}×"


def _warnings(warnings: Sequence[str]) -> str:
    if not warnings:
        return ""
    return "## Warnings\n\n" + "\n".join(f"- {esc(w)}" for w in warnings)


def _environment(env: Mapping[str, Any]) -> str:
    if not env:
        return ""
    rows = [[esc(k), esc(", ".join(map(str, v)) if isinstance(v, list) else v)] for k, v in env.items()]
    return "<details><summary>Environment</summary>\n\n" + table(["", ""], rows) + "\n\n</details>"


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A Markdown table; cells must already be escaped."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def num(value: Any) -> str:
    """An error or tolerance as ``2.1e-06``; "n/a" when missing."""
    return "n/a" if value is None else f"{float(value):.1e}"


def pct(value: Any) -> str:
    return "" if value is None else f"{100 * float(value):.1f}%"


def ms(value: Any) -> str:
    return "n/a" if value is None else f"{float(value):.3f} ms"


def ratio_text(value: Any) -> str:
    return "n/a" if value is None else f"{float(value):.2f}×"


def size(value: Any) -> str:
    if value is None:
        return "size unknown"
    kib = float(value) / 1024
    return f"{kib:.1f} KiB" if kib < 1024 else f"{kib / 1024:.1f} MiB"


def _cosine(value: Any) -> str:
    return "" if value is None else f"{float(value):.6f}"
