"""Reports: the versioned JSON contract, and its Markdown and HTML renderings beside it.

A report is one typed :class:`Report` (:mod:`.document`) from the parity stage on; the terminal summary,
Markdown, HTML and ``bnfold check`` read it, and it becomes JSON only when written. The JSON keys are a
public interface (documented in the README): add keys, never rename or remove them within a schema major
version.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from bnfold.report.document import (
    SCHEMA,
    FoldSection,
    ModelInput,
    ModelSection,
    OnnxSection,
    ParitySection,
    Report,
    SpeedupEntry,
    Verdict,
    as_report,
    bnfold_version,
)

__all__ = [
    "SCHEMA",
    "FoldSection",
    "ModelInput",
    "ModelSection",
    "OnnxSection",
    "ParitySection",
    "Report",
    "SpeedupEntry",
    "Verdict",
    "bnfold_version",
    "companion_paths",
    "new_report",
    "render_all",
    "write_report_files",
    "write_reports",
]


def new_report() -> Report:
    """The report every command fills in: this bnfold's version, made now, nothing run yet."""
    return Report()


def companion_paths(json_path: Path) -> tuple[Path, Path]:
    """The Markdown and HTML paths written beside ``REPORT.json`` (same stem)."""
    stem = json_path.name[: -len(".json")] if json_path.name.lower().endswith(".json") else json_path.name
    return json_path.with_name(stem + ".md"), json_path.with_name(stem + ".html")


def render_all(report: Report | Mapping[str, Any]) -> dict[str, str]:
    """JSON, Markdown and HTML texts of one report."""
    from bnfold.report.html import render_html
    from bnfold.report.markdown import render_markdown

    report = as_report(report)
    return {"json": report.to_json(), "md": render_markdown(report), "html": render_html(report)}


def write_reports(report: Report | Mapping[str, Any], json_path: Path) -> list[Path]:
    """Write REPORT.json, REPORT.md and REPORT.html atomically; returns the paths written."""
    from bnfold.files import atomic_write_text

    texts = render_all(report)
    md_path, html_path = companion_paths(json_path)
    written = []
    for path, key in ((json_path, "json"), (md_path, "md"), (html_path, "html")):
        atomic_write_text(path, texts[key])
        written.append(path)
    return written


def write_report_files(report: Report | Mapping[str, Any], json_path: Path) -> list[Path]:
    """Write REPORT.json, REPORT.md and REPORT.html as plain files (into a staging folder: the set is
    moved into place by :class:`bnfold.outputs.OutputSet`); returns the paths written."""
    texts = render_all(report)
    md_path, html_path = companion_paths(json_path)
    for path, key in ((json_path, "json"), (md_path, "md"), (html_path, "html")):
        path.write_text(texts[key], encoding="utf-8")
    return [json_path, md_path, html_path]
