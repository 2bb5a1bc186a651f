"""The merged convolutions (``onnx.merged_convs``) in the Markdown and HTML reports: one line per merged conv,
named inside its block, in a closed list in HTML; nothing when no convolution merged."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from fold_models import image, randomise
from test_fold_inplace import InPlaceRepVGG
from test_report_render import parse
from test_report_sample import sample_report
from torch import nn

import bnfold
from bnfold.report.html import render_html
from bnfold.report.markdown import render_markdown

LINES = ["0: dense.0 + one.0 → one 3×3 conv", "1: dense.0 + one.0 → one 3×3 conv"]


@pytest.fixture(scope="module")
def converted(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    """Two in-place RepVGG blocks converted: each block's 3x3 and 1x1 (and identity) become one conv."""
    folder = tmp_path_factory.mktemp("repvgg")
    model = randomise(nn.Sequential(InPlaceRepVGG(), InPlaceRepVGG()), seed=98)
    torch.export.save(torch.export.export(model, (image(2, 4),)), folder / "repvgg.pt2")
    result = bnfold.convert(folder / "repvgg.pt2", bnfold.ConvertConfig(output=folder / "repvgg.onnx", bench=False))
    assert result.passed and result.report.fold is not None
    assert result.report.fold.batchnorm_folded == result.report.fold.batchnorm_found == 6
    nodes = [merged["node"] for merged in result.report.onnx.extra["merged_convs"]]
    assert [m["convs"] for m in result.report.onnx.extra["merged_convs"]] == [
        ["0.dense.0", "0.one.0"],
        ["1.dense.0", "1.one.0"],
    ]
    return folder, nodes


def test_markdown_gives_one_line_per_merged_conv(converted: tuple[Path, list[str]]) -> None:
    folder, nodes = converted
    text = (folder / "repvgg.report.md").read_text(encoding="utf-8")
    assert "## Merged convolutions: 4 written as 2\n" in text
    lines = [line for line in text.splitlines() if "→ one" in line]
    assert lines == [f"- {line} ({node.replace('_', chr(92) + '_')})" for line, node in zip(LINES, nodes, strict=True)]


def test_html_lists_them_in_a_closed_list(converted: tuple[Path, list[str]]) -> None:
    folder, nodes = converted
    document = (folder / "repvgg.report.html").read_text(encoding="utf-8")
    parse(document)
    section = document.split("<h2>Merged convolutions</h2>")[1].split("</section>")[0]
    assert "4 parallel convolutions written as 2" in section
    assert re.search(r"<details><summary>Each merged convolution \(2\)</summary><ul>", section)
    items = [re.sub(r"<[^>]+>", "", item) for item in re.findall(r"<li>(.*?)</li>", section)]
    assert items == [f"{line} ({node})" for line, node in zip(LINES, nodes, strict=True)]


@pytest.mark.parametrize("merged", [None, []])
def test_nothing_is_shown_when_no_conv_merged(merged: list[object] | None) -> None:
    report = sample_report()
    if merged is not None:
        report["onnx"]["merged_convs"] = merged
    assert "Merged convolutions" not in render_markdown(report)
    assert "Merged convolutions" not in render_html(report) and "merged convolution" not in render_html(report)


def test_names_from_the_file_are_shown_as_text() -> None:
    report = sample_report()
    report["onnx"]["merged_convs"] = [{"node": "<i>n</i>", "convs": ["b.<b>a</b>", "b.c"], "kernel_shape": [3, 3]}]
    document = render_html(report)
    parse(document)
    assert "<b>" not in document and "<i>" not in document
    markdown = render_markdown(report)
    assert "&lt;b>a&lt;/b> + c → one 3×3 conv" in markdown and "<b>" not in markdown and "<i>" not in markdown
