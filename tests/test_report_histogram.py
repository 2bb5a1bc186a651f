"""The error histograms in the HTML report: one chart per output, a row per candidate against fp64, the
original fp32 model's own errors for scale, bars as tall as the share of elements in each decade."""

from __future__ import annotations

import re
from typing import Any

import pytest
from test_report_render import parse
from test_report_sample import failing_report, sample_report

from bnfold.report.html import render_html

REFERENCE = "original fp64 (torch)"
BAR = re.compile(
    r'<rect x="([\d.]+)" y="([\d.]+)" width="[\d.]+" height="([\d.]+)" fill="(#[0-9a-f]+)">'
    r"<title>([\d.]+)%</title>"
)
OUTLINE = re.compile(r'<rect x="([\d.]+)" y="[\d.]+" width="[\d.]+" height="([\d.]+)" fill="none"')


def histogram_svgs(document: str) -> list[str]:
    return re.findall(r'<svg [^>]*aria-label="error histograms against the fp64 reference">.*?</svg>', document, re.S)


def rows(svg: str) -> dict[str, str]:
    """Each row's SVG by its label: rows start with a label at x=0."""
    chunks = re.split(r'(?=<text x="0.0")', svg)[1:]
    return {re.match(r'<text x="0.0" y="[\d.]+">([^<]+)</text>', c).group(1): c for c in chunks}  # type: ignore[union-attr]


def shares(histogram: dict[str, Any]) -> list[float]:
    """Percent of elements per column, computed from the JSON: 0, below, each decade, above, NaN."""
    counts = [histogram["zeros"], histogram["below"], *histogram["counts"], histogram["above"], histogram["nan"]]
    return [100 * c / histogram["total"] for c in counts]


def test_one_chart_per_output_with_the_fp32_noise_first_and_every_candidate_against_fp64() -> None:
    document = render_html(sample_report())
    parse(document)
    (svg,) = histogram_svgs(document)
    assert list(rows(svg)) == [
        "original fp32 (fp32 noise)",
        "folded fp32 (torch)",
        "onnxruntime CPU (optimizations off)",
        "onnxruntime CPU (optimizations all)",
    ]
    assert "max 2.4e-06 (1.20× fp32)" in rows(svg)["folded fp32 (torch)"]
    assert document.index("error histograms") < document.index("<th>stage</th>")  # above the parity table


def test_bar_heights_are_the_share_of_elements_on_one_scale_for_every_row() -> None:
    report = sample_report()
    document = render_html(report)
    by_candidate = {c["candidate"]: c for c in report["parity"]["checks"] if c["reference"] == REFERENCE}
    ratios = []
    for label, chunk in rows(histogram_svgs(document)[0]).items():
        check = by_candidate[label.removesuffix(" (fp32 noise)")]
        expected = [s for s in shares(check["error_histogram"]) if s > 0]
        bars = BAR.findall(chunk)
        assert [float(title) for *_, title in bars] == pytest.approx(expected, abs=0.05)
        ratios += [float(height) / s for (_, _, height, _, _), s in zip(bars, expected, strict=True) if s > 5]
    assert max(ratios) == pytest.approx(min(ratios), rel=0.01)  # pixels per percent: one scale


def test_every_candidate_row_carries_the_fp32_outline_for_scale() -> None:
    report = sample_report()
    baseline = next(c for c in report["parity"]["checks"] if c["stage"] == "baseline")
    (svg,) = histogram_svgs(render_html(report))
    fp32 = [s for s in shares(baseline["error_histogram"]) if s > 0]
    for label, chunk in rows(svg).items():
        outlines = OUTLINE.findall(chunk)
        assert len(outlines) == (0 if "fp32 noise" in label else len(fp32))


def atol_x(svg: str) -> float:
    """Where the dashed atol line crosses the rows (the legend has a short one too)."""
    lines = re.findall(r'<line x1="([\d.]+)" y1="[\d.]+" x2="\1" y2="([\d.]+)" stroke="#cf222e"', svg)
    (x,) = [float(x) for x, y2 in lines if float(y2) > 100]
    return x


def test_at_a_glance_good_errors_sit_left_of_atol_and_broken_ones_right_of_it() -> None:
    good, bad = (histogram_svgs(render_html(report))[0] for report in (sample_report(), failing_report()))
    for svg, broken in (
        (good, set()),
        (bad, {"onnxruntime CPU (optimizations off)", "onnxruntime CPU (optimizations all)"}),
    ):
        line = atol_x(svg)
        for label, chunk in rows(svg).items():
            xs = [float(x) for x, _, _, _, title in BAR.findall(chunk) if float(title) > 1]
            colours = {colour for *_, colour, _ in BAR.findall(chunk)}
            if label in broken:
                assert min(xs) > line and colours == {"#cf222e"}
            else:
                assert max(xs) < line and colours <= {"#0969da", "#8c959f"}


def test_decades_run_left_to_right_with_zero_and_nan_apart() -> None:
    report = sample_report()
    check = report["parity"]["checks"][1]
    check["error_histogram"] = {
        **check["error_histogram"],
        "zeros": 5,
        "below": 0,
        "above": 3,
        "nan": 2,
        "counts": [0] * 6 + [10] + [0] * 6 + [20],
    }
    check["error_histogram"]["total"] = 40
    (svg,) = histogram_svgs(render_html(report))
    xs = [float(x) for x, *_ in BAR.findall(rows(svg)["folded fp32 (torch)"])]
    titles = [float(t) for *_, t in BAR.findall(rows(svg)["folded fp32 (torch)"])]
    assert titles == [12.5, 25.0, 50.0, 7.5, 5.0]  # 0, [1e-6, 1e-5), [10, 100), >= 100, NaN
    assert xs == sorted(xs)
    ticks = dict(
        (label, float(x))
        for x, label in re.findall(
            r'<text x="([\d.]+)" y="[\d.]+" text-anchor="middle" '
            r'class="axis">([^<]+)</text>',
            svg,
        )
    )
    assert ticks["1e-6"] < xs[1] < ticks["1e-3"] and ticks["1"] < xs[2] < ticks["1e2"] < xs[3] < ticks["NaN"]
    atol = (atol_x(svg) - ticks["1e-6"]) / (ticks["1e-3"] - ticks["1e-6"])
    assert atol == pytest.approx(2 / 3, abs=0.01)  # 1e-4 sits two decades up of three, on a log scale


def test_reports_without_histograms_have_no_chart() -> None:
    report = sample_report()
    for check in report["parity"]["checks"]:
        del check["error_histogram"]
    document = render_html(report)
    assert histogram_svgs(document) == [] and "decade" not in document


def test_several_outputs_get_a_chart_each() -> None:
    report = sample_report()
    extra = [dict(c, output="boxes") for c in report["parity"]["checks"]]
    report["parity"]["checks"] += extra
    document = render_html(report)
    assert len(histogram_svgs(document)) == 2
    assert "<h3>Output logits</h3>" in document and "<h3>Output boxes</h3>" in document
