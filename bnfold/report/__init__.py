"""Reports: the versioned JSON contract, and its Markdown and HTML renderings beside it.

The JSON keys are a public interface (documented in the README): add keys, never rename or remove them
within a schema major version.
"""

from __future__ import annotations

import datetime as _dt
import json
from importlib import metadata
from pathlib import Path
from typing import Any

SCHEMA = "bnfold.report/1"


def bnfold_version() -> str:
    try:
        return metadata.version("bnfold")
    except metadata.PackageNotFoundError:
        return "unknown"


def new_report() -> dict[str, Any]:
    """The report skeleton every command fills in, keys in their documented order."""
    return {
        "schema": SCHEMA,
        "bnfold_version": bnfold_version(),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "model": {},
        "fold": {},
        "onnx": {},
        "parity": {},
        "latency": [],
        "speedup": [],
        "environment": {},
        "warnings": [],
        "verdict": {"passed": False, "reason": "not run"},
    }


def companion_paths(json_path: Path) -> tuple[Path, Path]:
    """The Markdown and HTML paths written beside ``REPORT.json`` (same stem)."""
    stem = json_path.name[: -len(".json")] if json_path.name.endswith(".json") else json_path.name
    return json_path.with_name(stem + ".md"), json_path.with_name(stem + ".html")


def render_all(report: dict[str, Any]) -> dict[str, str]:
    """JSON, Markdown and HTML texts of one report."""
    from bnfold.report.html import render_html
    from bnfold.report.markdown import render_markdown

    return {
        "json": json.dumps(report, indent=2, sort_keys=False, default=_jsonable) + "\n",
        "md": render_markdown(report),
        "html": render_html(report),
    }


def write_reports(report: dict[str, Any], json_path: Path) -> list[Path]:
    """Write REPORT.json, REPORT.md and REPORT.html atomically; returns the paths written."""
    from bnfold.files import atomic_write_text

    texts = render_all(report)
    md_path, html_path = companion_paths(json_path)
    written = []
    for path, key in ((json_path, "json"), (md_path, "md"), (html_path, "html")):
        atomic_write_text(path, texts[key])
        written.append(path)
    return written


def write_report_files(report: dict[str, Any], json_path: Path) -> list[Path]:
    """Write REPORT.json, REPORT.md and REPORT.html as plain files (into a staging folder: the set is
    moved into place by :class:`bnfold.outputs.OutputSet`); returns the paths written."""
    texts = render_all(report)
    md_path, html_path = companion_paths(json_path)
    for path, key in ((json_path, "json"), (md_path, "md"), (html_path, "html")):
        path.write_text(texts[key], encoding="utf-8")
    return [json_path, md_path, html_path]


def _jsonable(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "item"):
        return value.item()
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)
