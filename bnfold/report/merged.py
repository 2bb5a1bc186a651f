"""The parallel convolutions the written file sums into one (``onnx.merged_convs``), as the Markdown and HTML
reports show them: one line per merged convolution, its convolutions named inside the block they share
(``stage1.0: rbr_dense.conv + rbr_1x1.conv → one 3×3 conv``). Nothing is shown when none merged.
"""

from __future__ import annotations

import html
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from bnfold.report.document import OnnxSection


@dataclass(frozen=True)
class MergedConv:
    """One Conv of the written file that replaced several parallel ones."""

    node: str
    convs: tuple[str, ...]
    kernel_shape: tuple[int, ...]

    @property
    def block(self) -> str:
        """The module path every merged convolution sits in ("" when they share none)."""
        paths = [name.split(".") for name in self.convs]
        shared = 0
        while all(len(path) > shared + 1 and path[shared] == paths[0][shared] for path in paths):
            shared += 1
        return ".".join(paths[0][:shared])

    def line(self) -> str:
        """``block: a + b → one 3×3 conv`` (plain text)."""
        block = self.block
        parts = " + ".join(name.removeprefix(f"{block}.") if block else name for name in self.convs)
        kernel = "×".join(str(size) for size in self.kernel_shape) or "?"
        return f"{block}: {parts} → one {kernel} conv" if block else f"{parts} → one {kernel} conv"


def merged_convs(onnx: OnnxSection) -> list[MergedConv]:
    """The report's ``onnx.merged_convs``, read as the report wrote it ([] when absent)."""
    entries = onnx.extra.get("merged_convs") or []
    return [_entry(entry) for entry in entries if isinstance(entry, Mapping)]


def _entry(entry: Mapping[str, Any]) -> MergedConv:
    convs, kernel = entry.get("convs") or [], entry.get("kernel_shape") or []
    return MergedConv(str(entry.get("node", "")), tuple(map(str, convs)), tuple(int(k) for k in kernel))


def merged_markdown(onnx: OnnxSection, esc: Callable[[Any], str]) -> str:
    """A Markdown section, one line per merged convolution; "" when none merged."""
    merged = merged_convs(onnx)
    if not merged:
        return ""
    title = f"## Merged convolutions: {sum(len(m.convs) for m in merged)} written as {len(merged)}"
    return title + "\n\n" + "\n".join(f"- {esc(m.line())} ({esc(m.node)})" for m in merged)


def merged_html(onnx: OnnxSection) -> str:
    """An HTML section with the merged convolutions in a closed list; "" when none merged."""
    merged = merged_convs(onnx)
    if not merged:
        return ""
    note = (
        f"{sum(len(m.convs) for m in merged)} parallel convolutions written as {len(merged)}, "
        "one per reparameterisable block."
    )
    items = "".join(f'<li>{_name(m.line())} <span class="note">({html.escape(m.node)})</span></li>' for m in merged)
    summary = f"Each merged convolution ({len(merged)})"
    return (
        f'<section><h2>Merged convolutions</h2>\n<p class="note">{html.escape(note)}</p>'
        f"<details><summary>{html.escape(summary)}</summary><ul>{items}</ul></details>\n</section>"
    )


def _name(text: str) -> str:
    """Escaped, free to wrap after each dot of a module path."""
    return html.escape(text).replace(".", ".<wbr>")
