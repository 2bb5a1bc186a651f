"""The HTML page as a reader sees it: verdict and big numbers first, every BatchNorm, a readable chart,
nothing fetched from elsewhere, and report strings that cannot inject markup."""

from __future__ import annotations

import html
import re
from typing import Any

import numpy as np
import pytest
from test_report_render import StrictParser, parse
from test_report_sample import BN_NAMES, failing_report, sample_report

from bnfold.report.html import render_html

HOSTILE = 'evil<script>alert("x")</script>&'


def text_of(parser: StrictParser) -> str:
    return "".join(parser.text)


def cards(document: str) -> list[str]:
    """The text of each big-number card: number, label and the line under it, run together."""
    inner = re.findall(r'<div class="figure[ a-z]*">(.*?)</div></div>', document)
    return [html.unescape(re.sub(r"<[^>]+>", "", card)) for card in inner]


def tones(document: str) -> list[str]:
    return re.findall(r'<div class="figure(?: ([a-z]+))?">', document)


def verify_report() -> dict[str, Any]:
    """What ``bnfold verify`` writes: no fold, no latency, an ONNX section without opset, size or exporter."""
    report = failing_report()
    report.update(fold={}, latency=[], speedup=[], warnings=[])
    report["onnx"] = {"path": "BROKEN.onnx", "sha256": "ef" * 32, "format": "onnx", "batchnorm_nodes": 0, "nodes": 21}
    reason = (
        "parity failed at stage export: onnxruntime CPU (optimizations off) output logits max_abs_err "
        "3.2e-01 > tolerance (atol 1.0e-04, rtol 1.0e-03)"
    )
    report["verdict"] = {"passed": False, "reason": reason}
    return report


def test_the_banner_names_the_files_and_the_verdict() -> None:
    document = render_html(sample_report())
    banner = document[document.index("<header") : document.index("</header>")]
    assert "✔ PASS" in banner and "digits_cnn.pt2 → digits_cnn.onnx" in banner
    assert "parity passed; 3/4 BatchNorms folded" in banner
    assert "<title>bnfold: PASS — digits_cnn.pt2</title>" in document


def test_a_failed_banner_names_the_stage_once_and_parity_comes_first() -> None:
    document = render_html(verify_report())
    parser = parse(document)
    assert next(a for t, a in parser.tags if t == "header")["class"] == "verdict fail"
    banner = document[document.index("<header") : document.index("</header>")]
    assert "✘ FAIL at stage export" in banner and banner.count("max_abs_err 3.2e-01") == 1
    assert document.index("<h2>Parity: FAILED at stage export</h2>") < document.index("<h2>BatchNorms</h2>")
    assert document.count('<tr class="failed">') == 4


def test_big_numbers_cards_and_their_tones() -> None:
    document = render_html(sample_report())
    batchnorms, error, speedup, nodes = cards(document)
    assert batchnorms.startswith("3/4BatchNorms folded") and "1 frozen as affine: reasons below" in batchnorms
    assert error.startswith("2.6e-06") and "1.30× the original fp32 model's own error (2.0e-06)" in error
    assert "top-1 agreement 100.0%" in error
    assert speedup.startswith("1.25-1.32×onnxruntime speedup") and "torch eager 1.67×" in speedup
    assert nodes.startswith("0BatchNormalization nodes left") and "in digits_cnn.onnx" in nodes
    assert tones(document) == ["warn", "good", "good", "good"]


@pytest.mark.parametrize(
    ("low", "high", "tone", "word"),
    [
        (0.97, 1.04, "", "no change beyond timing noise"),
        (0.80, 0.90, "bad", "slower beyond timing noise"),
    ],
)
def test_speedup_card_follows_the_spread_of_paired_ratios(low: float, high: float, tone: str, word: str) -> None:
    report = sample_report()
    for item in report["speedup"][:2]:
        item.update(speedup_low=low, speedup_high=high)
    document = render_html(report)
    assert tones(document)[2] == tone
    assert word in cards(document)[2]


def test_every_batchnorm_with_its_fate_and_reason() -> None:
    document = render_html(sample_report())
    section = document.split("<h2>BatchNorms</h2>")[1].split("</section>")[0]
    assert section.count("<tr>") == 1 + len(BN_NAMES)
    text = text_of(parse(document))
    for name in BN_NAMES:
        assert name in text
    assert "folded, forward" in text and "into features.1.conv" in text
    assert '<span class="warn tag">frozen affine</span>' in section and "input feeds two consumers" in section


def test_the_batchnorm_table_is_closed_when_every_batchnorm_folded() -> None:
    report = sample_report()
    section = render_html(report).split("<h2>BatchNorms</h2>")[1].split("</section>")[0]
    assert section.count("<details open>") == 1 and "<table>" in section.split("<details open>")[1]
    assert "1 frozen as affine" in section.split("<details")[0]  # the counts stay in sight
    layer = report["fold"]["layers"][3]
    layer.update(action="folded", into=["classifier.fc"], how="backward", reason=None)
    report["fold"].update(batchnorm_folded=4, batchnorm_affine=0, batchnorm_kept=0)
    section = render_html(report).split("<h2>BatchNorms</h2>")[1].split("</section>")[0]
    assert "<details>" in section and "<details open>" not in section
    assert "<summary>Each BatchNorm, where it went (4)</summary>" in section


def test_long_module_paths_may_wrap_after_each_dot_only() -> None:
    report = sample_report()
    name = "features.denseblock4.denselayer16.norm2"
    report["fold"]["layers"][0].update(name=name, into=["features.denseblock4.denselayer16.conv2"])
    document = render_html(report)
    assert "<code>features.<wbr>denseblock4.<wbr>denselayer16.<wbr>norm2</code>" in document
    assert "into features.<wbr>denseblock4.<wbr>denselayer16.<wbr>conv2" in document
    text = text_of(parse(document))
    assert name in text and "into features.denseblock4.denselayer16.conv2" in text


def test_a_hostile_batchnorm_name_is_shown_as_text() -> None:
    report = sample_report()
    report["fold"]["layers"][0]["name"] = HOSTILE
    report["fold"]["layers"][3]["reason"] = HOSTILE
    report["model"]["path"] = HOSTILE
    report["warnings"] = [HOSTILE]
    document = render_html(report)
    assert "<script" not in document and "&lt;script&gt;" in document
    parser = parse(document)
    assert "script" not in [tag for tag, _ in parser.tags]
    assert text_of(parser).count(HOSTILE) >= 3


def test_no_external_assets_anywhere() -> None:
    for report in (sample_report(), verify_report()):
        document = render_html(report)
        assert not re.search(r"https?:", document) and "@import" not in document and "url(" not in document
        for tag, attrs in parse(document).tags:
            assert tag not in ("script", "link", "img", "iframe", "object", "embed")
            assert not {"src", "href", "srcset"} & set(attrs)


def latency_svg(document: str) -> str:
    start = document.index('<svg width="', document.index("<h2>Latency</h2>"))
    return document[start : document.index("</svg>", start)]


def bars(svg: str) -> dict[str, float]:
    """Bar width by the time in its tooltip, e.g. {"original: 0.050 ms": 24.4}."""
    found = re.findall(
        r'<rect x="[\d.]+" y="[\d.]+" width="([\d.]+)" height="17" fill="#[0-9a-f]+">'
        r"<title>([^<]+)</title>",
        svg,
    )
    return {title: float(width) for width, title in found}


def test_the_chart_has_a_labelled_bar_pair_per_backend_and_batch() -> None:
    document = render_html(sample_report())
    svg = latency_svg(document)
    assert svg.count("<rect") == 2 + 2 * 3  # legend and one pair per (backend, provider, batch)
    for label in ("onnxruntime · CPU · batch 1", "onnxruntime · CPU · batch 64", "torch · eager · batch 1"):
        assert label in svg
    assert '<text x="' in svg and "0.050 ms" in svg and '"faster">0.038 ms (1.32×, faster)' in svg
    assert 'viewBox="0 0 ' in svg


def test_latency_bars_share_one_linear_scale_with_an_axis_in_ms() -> None:
    document = render_html(sample_report())
    svg = latency_svg(document)
    widths = bars(svg)
    assert len(widths) == 6
    per_ms = {title: width / float(title.split(": ")[1].removesuffix(" ms")) for title, width in widths.items()}
    assert max(per_ms.values()) == pytest.approx(min(per_ms.values()), rel=0.01)  # pixels per ms: one scale
    ticks = re.findall(r'class="axis">([^<]+)</text>', svg)
    assert ticks[0] == "0 ms" and all(t.endswith(" ms") for t in ticks) and len(ticks) >= 3
    assert float(ticks[-1].split()[0]) >= 0.9  # the axis reaches the slowest bar
    assert "one time scale (linear from 0)" in document


def test_latency_far_apart_goes_on_one_logarithmic_scale() -> None:
    report = sample_report()
    for entry, p50 in zip(report["latency"][4:], (20.0, 12.0), strict=True):
        entry["p50_ms"] = p50  # torch eager 500x slower than onnxruntime
    document = render_html(report)
    svg = latency_svg(document)
    widths = {float(t.split(": ")[1].removesuffix(" ms")): w for t, w in bars(svg).items()}
    assert min(widths.values()) > 20  # the fastest bar is still plainly visible
    logs = np.log10(list(widths))
    slope, intercept = np.polyfit(logs, list(widths.values()), 1)
    assert np.allclose(slope * logs + intercept, list(widths.values()), atol=0.2)  # length ~ log10(time)
    assert re.findall(r'class="axis">([^<]+)</text>', svg) == ["0.01 ms", "0.1 ms", "1 ms", "10 ms", "100 ms"]
    assert "logarithmic" in document


def test_the_chart_says_when_a_difference_is_noise() -> None:
    report = sample_report()
    report["speedup"][0].update(speedup_p50=1.01, speedup_low=0.98, speedup_high=1.03)
    assert "(1.01×, within noise)" in render_html(report)


def test_parity_table_is_compact_for_one_output() -> None:
    document = render_html(sample_report())
    parity = document.split("<h2>Parity: passed</h2>")[1].split("</section>")[0]
    assert "Every candidate of output logits against original fp64 (torch)" in parity
    assert "<th>output</th>" not in parity and '<th class="n">abs err</th>' in parity
    assert "CUDA not available" in parity


def test_parity_table_keeps_the_output_column_for_several_outputs() -> None:
    report = sample_report()
    report["parity"]["checks"][0]["output"] = "boxes"
    assert "<th>output</th>" in render_html(report)


def test_a_verify_report_shows_no_made_up_figures() -> None:
    document = render_html(verify_report())
    text = text_of(parse(document))
    assert "None" not in text and "size unknown" not in text and "opset" not in text
    assert "Not folded in this run" in text and "0/0" not in text
    assert cards(document)[0].startswith("—BatchNorms folded")
    assert "latency not measured" in text


def test_environment_lists_versions_and_hashes_once() -> None:
    document = render_html(sample_report())
    environment = document.split("<h2>Environment</h2>")[1]
    assert "onnxruntime" in environment and "1.32.0" in environment
    assert "ab" * 32 in environment and "cd" * 32 in environment
    assert "bnfold_version" not in environment  # the same as the environment's bnfold


def test_model_notes_are_shown() -> None:
    report = sample_report()
    report["model"]["notes"] = ["switched the model to eval mode"]
    assert "<li>switched the model to eval mode</li>" in render_html(report)
