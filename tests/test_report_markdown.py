"""The Markdown report as a CI job summary: verdict on the first line, headline figures, then the tables."""

from __future__ import annotations

import numpy as np
from test_report_html import HOSTILE, verify_report
from test_report_sample import sample_errors, sample_report, seed

from bnfold.report.markdown import esc, render_markdown, times


def test_the_headline_line_gives_the_figures_a_reader_needs() -> None:
    figures = render_markdown(sample_report()).split("\n\n")[1]
    assert figures.startswith(
        "**3/4 BatchNorms folded** · **max abs error 2.6e-06** vs fp64 (1.30× the original fp32 model's own, 2.0e-06)"
    )
    assert "**speedup 1.25-1.32×** (onnxruntime p50, original / folded; torch eager 1.67×)" in figures


def test_a_failure_is_stated_once() -> None:
    lines = render_markdown(verify_report()).splitlines()
    assert lines[0].startswith("# ❌ bnfold: FAIL — parity failed at stage export: onnxruntime CPU")
    assert not lines[2].startswith("**parity failed")


def test_a_verify_report_shows_no_made_up_figures() -> None:
    document = render_markdown(verify_report())
    assert "0/0" not in document and "opset ?" not in document and "size unknown" not in document
    assert "BROKEN.onnx (21 nodes, 0 BatchNormalization nodes)" in document
    assert "## BatchNorms\n\nNot folded in this run" in document


def test_latency_comes_before_the_long_parity_table() -> None:
    document = render_markdown(sample_report())
    assert document.index("## BatchNorms") < document.index("## Latency") < document.index("## Parity")


def test_parity_notes_appear_once() -> None:
    report = sample_report()
    report["parity"]["notes"] = [report["parity"]["cuda"]["note"], "fp16 outputs compared in fp32"]
    document = render_markdown(report)
    assert document.count("CUDA not available") == 1 and "> fp16 outputs compared in fp32" in document


def test_hostile_names_cannot_break_the_summary() -> None:
    report = sample_report()
    report["fold"]["layers"][0]["name"] = HOSTILE
    report["model"]["notes"] = [HOSTILE]
    document = render_markdown(report)
    assert "<script" not in document and esc(HOSTILE) in document


def test_ratios_read_at_any_size() -> None:
    assert [times(x) for x in (0.9, 1.666, 12.34, 33115.6)] == ["0.90×", "1.67×", "12.3×", "33,116×"]


def test_one_line_per_output_gives_the_share_of_small_errors_of_each_candidate() -> None:
    report = sample_report()
    document = render_markdown(report)
    line = next(line for line in document.splitlines() if line.startswith("Share of elements"))
    assert line.startswith(
        "Share of elements with \\|error\\| under 1e-6 against original fp64 (torch), output logits: original fp32 "
    )
    against_fp64 = [c for c in report["parity"]["checks"] if c["reference"] == "original fp64 (torch)"]
    for check in against_fp64:  # the share from the errors the sample histograms were made of
        errors = sample_errors(check["max_abs_err"], seed(check["candidate"], check["reference"]))
        assert f"{check['candidate']} {100 * np.mean(errors < 1e-6):.1f}%" in line
    assert line.count(" · ") == len(against_fp64) - 1
    assert document.index("| ort-optimization |") < document.index("Share of elements") < document.index("> CUDA")


def test_text_reads_plainly_and_opens_no_markup() -> None:
    """``<=`` and ``>`` as a reader types them; a ``<`` that would open a tag or an ``&`` an entity, escaped."""
    assert esc("|a - b| <= atol, 8.5e-06 > tolerance & rtol") == r"\|a - b\| <= atol, 8.5e-06 > tolerance & rtol"
    assert esc("<script>x</script> &amp; <!-- c -->") == "&lt;script>x&lt;/script> &amp;amp; &lt;!-- c -->"


def test_under_default_tolerances_the_headline_says_how_far_the_error_may_go() -> None:
    """The noise rule lets a check pass up to 4x the original fp32's own error: the headline says so, next to the
    ratio it is judged by; with the user's tolerances (no noise bound) it does not."""
    report = sample_report()
    for check in report["parity"]["checks"]:
        if check["baseline_max_abs_err"] is not None:
            check["noise_bound"] = 4 * check["baseline_max_abs_err"]
    figures = render_markdown(report).split("\n\n")[1]
    assert "(1.30× the original fp32 model's own, 2.0e-06; passes up to 4.00×)" in figures
    assert "passes up to" not in render_markdown(sample_report())
