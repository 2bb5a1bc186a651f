"""The HTML report's charts as inline SVG: latency bars on one scale, error histograms against fp64.

No script, no external asset: every chart is plain SVG text sized by ``viewBox``, so it scales with the
page. Every string from the report goes through :func:`html.escape`.
"""

from __future__ import annotations

import html
import math
from collections.abc import Mapping, Sequence
from typing import Any

from bnfold.report.document import SpeedupEntry, noise_label
from bnfold.report.figures import LatencyGroup, ms, num, ratio_text, speedup_verdict, times
from bnfold.verify.report import BASELINE, ParityCheck

ORIGINAL_COLOUR = "#8c959f"
FOLDED_COLOUR = "#0969da"
FAILED_COLOUR = "#cf222e"
GRID_COLOUR = "#d0d7de"
LINEAR_RANGE = 30.0  # past this ratio of the slowest to the fastest time, the latency axis is logarithmic


def esc(value: Any) -> str:
    return html.escape("" if value is None else str(value))


def _svg(width: int, height: int, label: str) -> str:
    return (
        f'<svg width="{width}" height="{height}" viewBox="0 0 {width} {height}" role="img" aria-label="{esc(label)}">'
    )


def _text(x: float, y: float, text: str, anchor: str = "", css: str = "") -> str:
    attrs = (f' text-anchor="{anchor}"' if anchor else "") + (f' class="{css}"' if css else "")
    return f'<text x="{x:.1f}" y="{y:.1f}"{attrs}>{esc(text)}</text>'


def _line(x1: float, y1: float, x2: float, y2: float, colour: str = GRID_COLOUR, dash: str = "") -> str:
    dashes = f' stroke-dasharray="{dash}"' if dash else ""
    return f'<line x1="{x1:.1f}" y1="{y1:.1f}" x2="{x2:.1f}" y2="{y2:.1f}" stroke="{colour}"{dashes}></line>'


class TimeAxis:
    """One scale for every latency bar: linear from 0 ms, or logarithmic (decades) when the times span more
    than :data:`LINEAR_RANGE`, so that a 0.04 ms bar next to a 20 ms one is still visible."""

    def __init__(self, values: Sequence[float], width: float) -> None:
        positive = [v for v in values if v > 0] or [1.0]
        low, high = min(positive), max(positive)
        self.width = width
        self.log = high / low > LINEAR_RANGE
        if self.log:
            first, last = math.floor(math.log10(low)), math.ceil(math.log10(high))
            self.ticks = [10.0**k for k in range(first, max(last, first + 1) + 1)]
        else:
            step = _nice_step(high / 5)
            self.ticks = [step * k for k in range(math.ceil(high / step - 1e-9) + 1)]

    def x(self, value: float | None) -> float:
        """Distance from the axis origin; a bar is never shorter than one pixel."""
        if value is None or value <= 0:
            return 0.0
        if self.log:
            first, last = math.log10(self.ticks[0]), math.log10(self.ticks[-1])
            share = (math.log10(value) - first) / (last - first)
        else:
            share = value / self.ticks[-1]
        return max(1.0, self.width * share)

    def describe(self) -> str:
        return "logarithmic: each gridline is 10× the one before" if self.log else "linear from 0"


def _nice_step(raw: float) -> float:
    """1, 2 or 5 times a power of ten, at least ``raw``."""
    power = 10.0 ** math.floor(math.log10(raw))
    return next(m * power for m in (1, 2, 5, 10) if m * power >= raw * (1 - 1e-9))


def _tick_label(value: float) -> str:
    return f"{value:g} ms"


def latency_chart(groups: Sequence[LatencyGroup]) -> tuple[str, TimeAxis]:
    """An inline SVG bar chart of original and folded p50 per (backend, provider, batch), every bar on one
    time axis labelled in ms; and that axis."""
    label_w, bar_w, row_h, top = 220, 440, 52, 30
    values = [v for g in groups for v in (g.original, g.folded) if v is not None]
    axis = TimeAxis(values, bar_w)
    width, bottom = label_w + bar_w + 250, top + row_h * len(groups)
    parts = [_svg(width, bottom + 26, "p50 latency, original vs folded"), _legend(label_w)]
    for tick in axis.ticks:
        x = label_w + (axis.x(tick) if tick > 0 else 0.0)
        parts.append(_line(x, top - 4, x, bottom))
        parts.append(_text(x, bottom + 18, _tick_label(tick), "middle", "axis"))
    for i, group in enumerate(groups):
        y = top + i * row_h
        provider = str(group.provider).removesuffix("ExecutionProvider")
        parts.append(_text(0, y + 24, f"{group.backend} · {provider} · batch {group.batch}"))
        if i and group.backend != groups[i - 1].backend:
            parts.append(_line(0, y - 5, width, y - 5))
        parts.append(_bar((label_w, y + 4), axis, group.original, ORIGINAL_COLOUR, "original"))
        parts.append(_bar((label_w, y + 24), axis, group.folded, FOLDED_COLOUR, "folded", _bar_note(group.speedup)))
    parts.append("</svg>")
    return "\n".join(parts), axis


def _bar_note(speedup: SpeedupEntry | None) -> tuple[str, str]:
    """`` (1.32×, faster)`` and its tone: faster or slower beyond the paired ratios' spread, else noise."""
    p50 = speedup.speedup_p50 if speedup else None
    if speedup is None or p50 is None:
        return "", ""
    if speedup.steady is False:
        return f" ({ratio_text(p50)}, unsteady timings)", ""
    tone = {"faster": "faster", "slower": "slower"}.get(speedup_verdict(speedup), "")
    return f" ({ratio_text(p50)}, {tone or 'within noise'})", tone


def _legend(x: int) -> str:
    return (
        f'<rect x="{x}" y="4" width="13" height="13" fill="{ORIGINAL_COLOUR}"></rect>'
        f'<text x="{x + 19}" y="15">original</text>'
        f'<rect x="{x + 100}" y="4" width="13" height="13" fill="{FOLDED_COLOUR}"></rect>'
        f'<text x="{x + 119}" y="15">folded</text>'
    )


def _bar(
    at: tuple[int, int], axis: TimeAxis, value: float | None, colour: str, name: str, note: tuple[str, str] = ("", "")
) -> str:
    x, y = at
    length = axis.x(value)
    tone = f' class="{note[1]}"' if note[1] else ""
    return (
        f'<rect x="{x}" y="{y}" width="{length:.1f}" height="17" fill="{colour}">'
        f"<title>{esc(name)}: {esc(ms(value))}</title></rect>"
        f'<text x="{x + length + 6:.1f}" y="{y + 13}"{tone}>{esc(ms(value) + note[0])}</text>'
    )


# The histogram's columns, left to right: exactly 0, a gap, below the first edge, one per decade, at or past
# the last edge, a gap, NaN.
COLUMN_W, GAP, HIST_ROW_H, HIST_LABEL_W = 28, 10, 50, 270


def histogram_chart(checks: Sequence[ParityCheck], baseline: ParityCheck | None) -> str:
    """One output's error histograms against the fp64 reference: a row per candidate, the original fp32
    model's own histogram (fp32 noise) as the first row and as an outline behind every other row, bar
    heights the share of elements, on one scale for all rows."""
    rows = ([baseline] if baseline is not None else []) + list(checks)
    edges = _histogram(rows[0])["edges"]
    plot_w = COLUMN_W * (len(edges) + 3) + 2 * GAP
    width, top = HIST_LABEL_W + plot_w + 230, 30
    bottom = top + HIST_ROW_H * len(rows)
    tallest = max(max(_shares(_histogram(row))) for row in rows) or 1.0
    parts = [_svg(width, bottom + 24, "error histograms against the fp64 reference"), _hist_legend(HIST_LABEL_W, rows)]
    parts += _hist_axis(edges, top, bottom)
    parts += _atol_line(rows, edges, top, bottom)
    ghost = _shares(_histogram(baseline)) if baseline is not None else None
    precision = str(baseline.candidate).removeprefix("original ") if baseline is not None else "fp32"
    for i, row in enumerate(rows):
        y = top + i * HIST_ROW_H
        is_baseline = row is baseline
        name = noise_label(str(row.candidate)) if is_baseline else str(row.candidate)
        parts.append(_text(0, y + HIST_ROW_H / 2 + 5, name))
        colour = ORIGINAL_COLOUR if is_baseline else FOLDED_COLOUR if row.passed else FAILED_COLOUR
        parts += _hist_bars(_shares(_histogram(row)), y, tallest, colour, "fill")
        if ghost and not is_baseline:
            parts += _hist_bars(ghost, y, tallest, "#57606a", "outline")
        parts.append(_text(HIST_LABEL_W + plot_w + 12, y + HIST_ROW_H / 2 + 5, _row_note(row, precision)))
    parts.append("</svg>")
    return "\n".join(parts)


def _histogram(check: ParityCheck) -> Mapping[str, Any]:
    return check.error_histogram or {}


def _shares(histogram: Mapping[str, Any]) -> list[float]:
    """The share of elements in each column: 0, below, the decades, above, NaN."""
    total = histogram.get("total") or 1
    counts = [
        histogram.get("zeros", 0),
        histogram.get("below", 0),
        *histogram.get("counts", []),
        histogram.get("above", 0),
        histogram.get("nan", 0),
    ]
    return [int(c or 0) / total for c in counts]


def _column_x(i: int, columns: int) -> float:
    """Left edge of column ``i``; the first and the last column stand apart."""
    gaps = (i > 0) + (i == columns - 1)
    return HIST_LABEL_W + i * COLUMN_W + gaps * GAP


def _hist_bars(shares: Sequence[float], y: float, tallest: float, colour: str, style: str) -> list[str]:
    base, height = y + HIST_ROW_H - 6, HIST_ROW_H - 12
    paint = (
        f'fill="{colour}"'
        if style == "fill"
        else f'fill="none" stroke="{colour}" stroke-width="1.5" stroke-dasharray="3 2"'
    )
    parts = [_line(HIST_LABEL_W, base, _column_x(len(shares), len(shares)), base)] if style == "fill" else []
    for i, share in enumerate(shares):
        if share <= 0:
            continue
        h = max(1.0, height * share / tallest)
        x = _column_x(i, len(shares)) + 2
        parts.append(
            f'<rect x="{x:.1f}" y="{base - h:.1f}" width="{COLUMN_W - 4}" height="{h:.1f}" {paint}>'
            f"<title>{100 * share:.1f}%</title></rect>"
        )
    return parts


def _hist_axis(edges: Sequence[float], top: float, bottom: float) -> list[str]:
    columns = len(edges) + 3
    parts = [
        _text(_column_x(0, columns) + COLUMN_W / 2, bottom + 16, "0", "middle", "axis"),
        _text(_column_x(columns - 1, columns) + COLUMN_W / 2, bottom + 16, "NaN", "middle", "axis"),
    ]
    for k, edge in enumerate(edges):
        x = _column_x(k + 2, columns)  # the left side of the column starting at this edge
        if k % 3 == 0 or k == len(edges) - 1:
            parts.append(_line(x, top - 4, x, bottom))
            parts.append(
                _text(
                    x,
                    bottom + 16,
                    f"{edge:.0e}".replace("e+00", "").replace("e+0", "e").replace("e-0", "e-"),
                    "middle",
                    "axis",
                )
            )
    return parts


def _atol_line(rows: Sequence[ParityCheck], edges: Sequence[float], top: float, bottom: float) -> list[str]:
    """A dashed line at the tolerance's atol, when every row has the same one within the decades."""
    atol = _common_atol(rows)
    if atol is None or not edges[0] <= atol < edges[-1]:
        return []
    decades = math.log10(atol) - math.log10(edges[0])
    x = _column_x(2, len(edges) + 3) + decades * COLUMN_W
    return [_line(x, top - 4, x, bottom, FAILED_COLOUR, "4 3")]


def _common_atol(rows: Sequence[ParityCheck]) -> float | None:
    atols = {row.atol for row in rows}
    atol = atols.pop() if len(atols) == 1 else None
    return float(atol) if isinstance(atol, float | int) and atol > 0 else None


def _hist_legend(x: int, rows: Sequence[ParityCheck]) -> str:
    atol = _common_atol(rows)
    baseline_label = noise_label(str(rows[0].candidate) if rows[0].stage == BASELINE else "original fp32")
    legend = (
        f'<rect x="{x}" y="4" width="13" height="13" fill="{FOLDED_COLOUR}"></rect>'
        f'<text x="{x + 19}" y="15">candidate</text>'
        f'<rect x="{x + 110}" y="4.5" width="12" height="12" fill="none" stroke="#57606a" '
        f'stroke-dasharray="3 2" stroke-width="1.5"></rect>'
        f'<text x="{x + 129}" y="15">{esc(baseline_label)}</text>'
    )
    if atol is not None:
        legend += _line(x + 335, 4, x + 335, 17, FAILED_COLOUR, "4 3") + _text(x + 343, 15, f"atol {num(atol)}")
    return legend


def _row_note(check: ParityCheck, precision: str) -> str:
    text = f"max {num(check.max_abs_err)}"
    ratio = check.error_ratio
    if ratio is not None and check.stage != BASELINE:
        text += f" ({times(ratio)} {esc(precision)})"
    return text
