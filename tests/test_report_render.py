"""Markdown and HTML renderings of a handcrafted report: verdict first, every BatchNorm, escaped text."""

from __future__ import annotations

from html.parser import HTMLParser
from typing import Any

import pytest
from test_report_sample import BN_NAMES, failing_report, sample_report

from bnfold.report.html import render_html
from bnfold.report.markdown import esc, render_markdown
from bnfold.report.summary import summary_lines

VOID = {"meta", "br", "hr", "img", "input", "link", "wbr", "col", "source"}
SVG_LEAVES = {"rect"}


class StrictParser(HTMLParser):
    """Collects tags and text, and the first nesting error (a closing tag that does not match)."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[str] = []
        self.errors: list[str] = []
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))
        if tag not in VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag: str) -> None:
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes {self.stack[-1] if self.stack else 'nothing'}")
        else:
            self.stack.pop()

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def parse(document: str) -> StrictParser:
    parser = StrictParser()
    parser.feed(document)
    parser.close()
    assert parser.errors == [] and parser.stack == []
    return parser


def test_html_is_well_formed_with_a_green_verdict_first() -> None:
    document = render_html(sample_report())
    assert document.startswith("<!DOCTYPE html>")
    parser = parse(document)
    names = [tag for tag, _ in parser.tags]
    assert names.index("header") < names.index("table") and names.count("svg") == 2  # latency, errors
    header = next(attrs for tag, attrs in parser.tags if tag == "header")
    assert header["class"] == "verdict pass"
    text = "".join(parser.text)
    assert text.index("PASS") < text.index("BatchNorms folded") < text.index(BN_NAMES[0])


def test_html_names_every_batchnorm_unescaped_for_the_reader() -> None:
    text = "".join(parse(render_html(sample_report())).text)
    for name in BN_NAMES:
        assert name in text
    assert "input feeds two consumers" in text


def test_html_escapes_report_strings() -> None:
    document = render_html(sample_report())
    assert "head.<wbr>bn &lt;b&gt;&amp;" in document and "<b>&" not in document


def test_html_is_self_contained() -> None:
    document = render_html(sample_report())
    assert "http" not in document
    for tag, attrs in parse(document).tags:
        assert tag not in ("script", "link", "img", "iframe")
        assert "src" not in attrs and "href" not in attrs


def test_html_big_numbers_and_chart() -> None:
    text = "".join(parse(render_html(sample_report())).text)
    assert "3/4" in text and "2.6e-06" in text and "1.25-1.32×" in text
    assert "0.038 ms (1.32×, faster)" in text


def test_html_without_latency_has_no_chart() -> None:
    report = sample_report()
    report["latency"], report["speedup"] = [], []
    parser = parse(render_html(report))
    charts = [attrs["aria-label"] for tag, attrs in parser.tags if tag == "svg"]
    assert charts == ["error histograms against the fp64 reference"] and "Not measured." in "".join(parser.text)


def test_html_failure_is_red_and_names_the_stage() -> None:
    parser = parse(render_html(failing_report()))
    header = next(attrs for tag, attrs in parser.tags if tag == "header")
    assert header["class"] == "verdict fail"
    text = "".join(parser.text)
    assert "FAIL" in text and "parity failed at stage export: onnxruntime CPU (optimizations off)" in text


def test_markdown_starts_with_the_verdict() -> None:
    good, bad = render_markdown(sample_report()), render_markdown(failing_report())
    assert good.splitlines()[0] == "# ✅ bnfold: PASS — parity passed; 3/4 BatchNorms folded"
    assert bad.splitlines()[0] == "# ❌ bnfold: FAIL — parity failed at stage export"
    assert "stage export: onnxruntime CPU (optimizations off) output logits max\\_abs\\_err 3.2e-01" in bad


def test_markdown_tables_have_every_batchnorm_check_and_latency_row() -> None:
    document = render_markdown(sample_report())
    for name in BN_NAMES:
        assert esc(name) in document
    rows = [line for line in document.splitlines() if line.startswith("| ")]
    assert sum("✅ folded" in r or "frozen affine" in r for r in rows) == 4
    assert sum(r.startswith("| ✅ |") for r in rows) == 7
    latency = [r for r in rows if " ms | " in r]
    assert len(latency) == 3 and "1.32× | 1.20–1.40×" in latency[0]


@pytest.mark.parametrize("text", ["a|b", "x_y*z", "<script>", "two\nlines", "`tick`"])
def test_markdown_escaping_keeps_table_cells_intact(text: str) -> None:
    cell = esc(text)
    assert "\n" not in cell and "<" not in cell
    assert all(cell[i - 1] == "\\" for i, ch in enumerate(cell) if ch in "|`*_")


def test_renderers_accept_a_report_without_optional_sections() -> None:
    report: dict[str, Any] = sample_report()
    for key in ("latency", "speedup", "warnings", "environment"):
        report.pop(key)
    assert render_markdown(report).startswith("# ✅")
    parse(render_html(report))


def test_a_mul_add_left_as_written_is_listed_as_the_models_own_op() -> None:
    """Not a kept BatchNorm: neither renderer tags it as one, and the HTML table stays closed."""
    report = sample_report()
    report["fold"]["layers"][3].update(kind="Mul/Add", op="muladd", reason="its output feeds relu")
    report["fold"].update(batchnorm_found=3, batchnorm_affine=0, batchnorm_kept=0)
    markdown, document = render_markdown(report), render_html(report)
    assert f"| {esc(BN_NAMES[3])} | Mul/Add | Mul/Add, left as written | its output feeds relu |" in markdown
    assert "frozen affine |" not in markdown and "BatchNorms: 3 found, 3 folded" in markdown
    assert '<span class="tag">Mul/Add, left as written</span>' in document and "frozen affine</span>" not in document
    assert "<details><summary>Each BatchNorm" in document
    assert markdown.count("0 of 1 per-channel Mul/Adds folded into their layers") == 1
    assert document.count("0 of 1 per-channel Mul/Adds folded into their layers.") == 1
    assert "  0 of 1 per-channel Mul/Adds folded into their layers" in summary_lines(report)
