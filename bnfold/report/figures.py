"""What a report's Markdown and HTML pages (and their charts) both show, worked out once from the
:class:`~bnfold.report.Report`: the headline error and speedups, the error histograms grouped per output, the
latencies paired per (backend, provider, batch), and numbers as text (``2.1e-06``, ``1.67×``, ``0.412 ms``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bnfold.bench.timing import LatencyResult
from bnfold.report.check import Headline, deployed_speedups, headline
from bnfold.report.document import OnnxSection, ParitySection, Report, SpeedupEntry
from bnfold.verify.report import BASELINE, ParityCheck
from bnfold.verify.tolerance import NOISE_FACTOR


def fold_ran(report: Report) -> bool:
    """Whether this report folded anything (``bnfold verify`` reports compare two given models)."""
    return report.fold is not None


def onnx_details(onnx: OnnxSection) -> list[str]:
    """Opset, node count, size and exporter of the ONNX file, leaving out what the report does not know."""
    parts = [
        f"opset {onnx.opset}" if onnx.opset is not None else "",
        f"{onnx.nodes} nodes" if onnx.nodes is not None else "",
        size(onnx.size_bytes) if onnx.size_bytes is not None else "",
        f"exporter {onnx.exporter}" if onnx.exporter else "",
        f"weights in {Path(onnx.external_data).name}" if onnx.external_data else "",
    ]
    return [part for part in parts if part]


@dataclass(frozen=True)
class ErrorFigure:
    """The worst error of a candidate against the fp64 reference, and in units of the original fp32's own."""

    max_abs_err: float | None
    ratio: float | None
    baseline: float | None
    baseline_name: str = "original fp32"
    limit_ratio: float | None = None  # under default tolerances: a check passes up to this many times the baseline

    def limit_text(self) -> str:
        """``; passes up to 4×`` under default tolerances, else nothing."""
        return f"; passes up to {times(self.limit_ratio)}" if self.limit_ratio is not None else ""


def error_figure(report: Report) -> ErrorFigure:
    """The headline's error (see :func:`~bnfold.report.check.headline`) and the worst ratio to the original
    fp32 model's own error. ``max_abs_err`` is None when a check has no number (NaN or a failed run)."""
    head = headline(report)
    checks = report.parity.against_reference() if report.parity else []
    ratios = [c.error_ratio for c in checks if c.stage != BASELINE and c.error_ratio is not None]
    name = report.parity.baseline_name if report.parity else "original fp32"
    noise_rule = any(c.noise_bound is not None for c in checks)
    limit = NOISE_FACTOR if noise_rule else None
    return ErrorFigure(head.max_abs_err, max(ratios, default=None), head.baseline_max_abs_err, name, limit)


def worst_top1(report: Report) -> float | None:
    checks = report.parity.checks if report.parity else []
    return min((c.top1_agreement for c in checks if c.top1_agreement is not None), default=None)


def speedup_range(head: Headline) -> str:
    return (head.speedup_text() or "").replace("x", "×")


def speedup_tone(report: Report) -> str | None:
    """``faster`` when every headline speedup is (its spread above 1, its timings steady), ``slower`` when
    one is, else ``unchanged`` (within the timing noise); None when nothing was measured."""
    chosen = deployed_speedups(report.speedup)
    if not chosen:
        return None
    tones = [speedup_verdict(s) for s in chosen]
    return "slower" if "slower" in tones else "faster" if set(tones) == {"faster"} else "unchanged"


def speedup_verdict(item: SpeedupEntry) -> str:
    """The entry's ``verdict`` as written, or (an entry without one) from its spread."""
    if item.verdict in ("faster", "slower", "unchanged"):
        return str(item.verdict)
    p50 = item.speedup_p50 or 0.0
    low, high = item.speedup_low or p50, item.speedup_high or p50
    return "faster" if low > 1.0 else "slower" if high < 1.0 else "unchanged"


def other_speedups(report: Report) -> list[tuple[str, str]]:
    """Speedup ranges of the backends the headline leaves out (e.g. torch eager), by backend and provider."""
    shown = [id(s) for s in deployed_speedups(report.speedup)]
    ranges: dict[str, list[float]] = {}
    unsteady: set[str] = set()
    for item in report.speedup:
        if item.speedup_p50 is not None and id(item) not in shown:
            name = f"{item.backend} {item.provider}"
            ranges.setdefault(name, []).append(item.speedup_p50)
            if item.steady is False:
                unsteady.add(name)
    return [
        (name, _range(min(v), max(v)) + (" (unsteady timings)" if name in unsteady else ""))
        for name, v in ranges.items()
    ]


def _range(low: float, high: float) -> str:
    return f"{low:.2f}×" if f"{low:.2f}" == f"{high:.2f}" else f"{low:.2f}-{high:.2f}×"


def parity_notes(parity: ParitySection) -> list[str]:
    """The parity notes (e.g. why CUDA was not checked), each once."""
    notes = [*parity.notes, parity.cuda.note]
    return [str(note) for note in dict.fromkeys(notes) if note]


@dataclass(frozen=True)
class HistogramGroup:
    """The checks of one output against the fp64 reference that carry an error histogram: the original fp32
    model's own (``baseline``, None when the run has none) and every other candidate's, in matrix order."""

    output: str
    baseline: ParityCheck | None
    candidates: list[ParityCheck]


def histogram_groups(parity: ParitySection) -> list[HistogramGroup]:
    """One :class:`HistogramGroup` per output (and per batch, for per-batch checks), in report order;
    outputs without a candidate histogram are left out."""
    groups: dict[tuple[str, str], HistogramGroup] = {}
    for check in parity.checks:
        if check.reference != parity.reference or not check.error_histogram:
            continue
        source = str(check.batch_source)
        key = (str(check.output), source)
        label = key[0] if source == "all" else f"{key[0]}, batch {source}"
        group = groups.setdefault(key, HistogramGroup(label, None, []))
        if check.stage == BASELINE and group.baseline is None:
            groups[key] = HistogramGroup(label, check, group.candidates)
        else:
            group.candidates.append(check)
    return [group for group in groups.values() if group.candidates]


def share_below(histogram: Mapping[str, Any], bound: float) -> float | None:
    """The share of elements whose error is under ``bound``, one of the histogram's edges; None when the
    histogram is empty or ``bound`` is not an edge."""
    edges, total = [float(e) for e in histogram.get("edges", [])], int(histogram.get("total") or 0)
    if not total or bound not in edges:
        return None
    counts = [int(c) for c in histogram.get("counts", [])[: edges.index(bound)]]
    return (int(histogram.get("zeros", 0)) + int(histogram.get("below", 0)) + sum(counts)) / total


@dataclass
class LatencyGroup:
    """One (backend, provider, batch): the original's and the folded model's p50, and the speedup."""

    backend: str
    provider: str
    batch: int
    original: float | None = None
    folded: float | None = None
    speedup: SpeedupEntry | None = None


def latency_groups(latency: Sequence[LatencyResult], speedup: Sequence[SpeedupEntry]) -> list[LatencyGroup]:
    """Latency entries paired per (backend, provider, batch): original and folded p50 and the speedup."""
    groups: dict[tuple[str, str, int], LatencyGroup] = {}
    for entry in latency:
        key = (entry.backend, entry.provider, entry.batch)
        group = groups.setdefault(key, LatencyGroup(*key))
        if entry.model == "original":
            group.original = entry.p50_ms
        elif entry.model == "folded":
            group.folded = entry.p50_ms
    for item in speedup:
        key = (item.backend, item.provider, item.batch)
        if key in groups:
            groups[key].speedup = item
    return list(groups.values())


def spread_text(speedup: SpeedupEntry | None) -> str:
    low, high = (speedup.speedup_low, speedup.speedup_high) if speedup else (None, None)
    return "" if low is None or high is None else f"{low:.2f}–{high:.2f}×"


def tolerance_text(parity: ParitySection, number: Callable[[Any], str]) -> str:
    """The tolerances the checks were judged by: ``atol A, rtol R``, then each output given its own (every
    check of it at one tolerance other than the default), ``; output 'y': atol A, rtol R``; an own tolerance
    that every output shares replaces the default."""
    own: dict[str, set[tuple[float, float]]] = {}
    for check in parity.checks:
        own.setdefault(check.output, set()).add((check.atol, check.rtol))
    default = (parity.atol, parity.rtol)
    differ = {out: next(iter(pair)) for out, pair in own.items() if len(pair) == 1 and pair != {default}}
    if differ and len(differ) == len(own) and len(set(differ.values())) == 1:
        default, differ = next(iter(differ.values())), {}
    text = f"atol {number(default[0])}, rtol {number(default[1])}"
    return text + "".join(f"; output '{out}': atol {number(a)}, rtol {number(r)}" for out, (a, r) in differ.items())


def num(value: Any) -> str:
    """An error or tolerance as ``2.1e-06``; "n/a" when missing (None, or NaN: a tolerance an older report's
    check did not record)."""
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{float(value):.1e}"


def pct(value: Any) -> str:
    return "" if value is None else f"{100 * float(value):.1f}%"


def ms(value: Any) -> str:
    return "n/a" if value is None else f"{float(value):.3f} ms"


def ratio_text(value: Any) -> str:
    return "n/a" if value is None else f"{float(value):.2f}×"


def times(value: float) -> str:
    """A ratio as ``1.67×``, ``12.5×`` or ``33,116×``."""
    digits = 2 if value < 10 else 1 if value < 100 else 0
    return f"{value:,.{digits}f}×"


def size(value: Any) -> str:
    if value is None:
        return "size unknown"
    kib = float(value) / 1024
    return f"{kib:.1f} KiB" if kib < 1024 else f"{kib / 1024:.1f} MiB"
