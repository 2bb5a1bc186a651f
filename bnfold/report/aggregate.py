"""The aggregate of a many-model conversion: ``summary.json`` (schema ``bnfold.summary/1``), ``.md``, ``.html``.

One row per model, worst first (bad input, then failed parity, then by how much error folding added):
BatchNorms found and folded, the parity verdict and its worst error ratio, the speedup, the time. Each row
names the model's own report; ``bnfold check summary.json`` judges every report it lists.
"""

from __future__ import annotations

import html
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from bnfold.report import bnfold_version
from bnfold.report.check import headline
from bnfold.report.document import Report
from bnfold.report.markdown import esc, num, ratio_text, table
from bnfold.verify.report import BASELINE

SUMMARY_SCHEMA = "bnfold.summary/1"
STATUS = {0: "passed", 1: "failed", 2: "error"}


def summary(runs: Sequence[Any], jobs: int, directory: Path) -> dict[str, Any]:
    """The aggregate of ``runs`` (:class:`bnfold.convert.many.ModelRun`), rows sorted worst first; the
    paths of each model's outputs relative to ``directory``, where the summary is written."""
    import datetime as dt

    rows = sorted((_row(run, directory) for run in runs), key=_worst_first)
    return {
        "schema": SUMMARY_SCHEMA,
        "bnfold_version": bnfold_version(),
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "jobs": jobs,
        "passed": all(row["status"] == "passed" for row in rows),
        "counts": {status: sum(row["status"] == status for row in rows) for status in STATUS.values()},
        "models": rows,
    }


def _row(run: Any, directory: Path) -> dict[str, Any]:
    report = _read(run.report_path) if run.exit_code in (0, 1) else None
    row: dict[str, Any] = {
        "model": str(run.model),
        "status": STATUS.get(run.exit_code, "error"),
        "exit_code": run.exit_code,
        "reason": run.reason or (report.verdict.reason if report else ""),
        "onnx": os.path.relpath(run.output, directory) if report else None,
        "report": os.path.relpath(run.report_path, directory) if report else None,
        "seconds": round(run.seconds, 2),
        "batchnorm_found": None, "batchnorm_folded": None, "max_abs_err": None, "error_ratio": None,
        "speedup_p50": None,
    }  # fmt: skip
    if report:
        head = headline(report)
        checks = report.parity.checks if report.parity else []
        ratios = [c.error_ratio for c in checks if c.error_ratio is not None and c.stage != BASELINE]
        row.update(
            batchnorm_found=head.batchnorm_found,
            batchnorm_folded=head.batchnorm_folded,
            max_abs_err=head.max_abs_err,
            error_ratio=max(ratios, default=None),
            speedup_p50=head.speedup_min,
        )
    return row


def _read(path: Path) -> Report | None:
    """The model's report, or None when there is none to read."""
    try:
        data = json.loads(path.read_text())
        return Report.from_dict(data) if isinstance(data, dict) else None
    except (OSError, ValueError, TypeError, AttributeError, KeyError):
        return None


def _worst_first(row: Mapping[str, Any]) -> tuple[int, float, str]:
    rank = {"error": 0, "failed": 1, "passed": 2}[row["status"]]
    return rank, -(row.get("error_ratio") or 0.0), row["model"]


def write_summary(data: Mapping[str, Any], directory: Path) -> list[Path]:
    """``summary.json``, ``summary.md`` and ``summary.html`` in ``directory``, each written atomically."""
    from bnfold.files import atomic_write_text

    texts = {"json": json.dumps(data, indent=2) + "\n", "md": render_summary_markdown(data),
             "html": render_summary_html(data)}  # fmt: skip
    paths = []
    for suffix, text in texts.items():
        path = directory / f"summary.{suffix}"
        atomic_write_text(path, text)
        paths.append(path)
    return paths


_HEADER = ["model", "status", "BatchNorms folded", "max abs err", "error ratio", "speedup", "time", "reason"]


def _cells(row: Mapping[str, Any]) -> list[str]:
    folded = f"{row['batchnorm_folded']}/{row['batchnorm_found']}" if row["batchnorm_found"] is not None else "—"
    return [os.path.basename(row["model"]), row["status"], folded, num(row["max_abs_err"]),
            "—" if row["error_ratio"] is None else f"{row['error_ratio']:.2f}x", ratio_text(row["speedup_p50"]),
            f"{row['seconds']:.1f} s", row["reason"] or ""]  # fmt: skip


def _headline(data: Mapping[str, Any]) -> str:
    counts = data["counts"]
    total = sum(counts.values())
    verdict = "PASS" if data["passed"] else "FAIL"
    return (
        f"{verdict}: {counts['passed']}/{total} models passed, {counts['failed']} failed parity, "
        f"{counts['error']} could not be converted"
    )


def render_summary_markdown(data: Mapping[str, Any]) -> str:
    rows = [[esc(cell) for cell in _cells(row)] for row in data["models"]]
    return f"# bnfold summary\n\n**{_headline(data)}** (worst first)\n\n{table(_HEADER, rows)}\n"


def render_summary_html(data: Mapping[str, Any]) -> str:
    from bnfold.report.html import CSS

    tone = "pass" if data["passed"] else "fail"
    verdict, _, counts = _headline(data).partition(": ")
    head = "".join(f"<th>{html.escape(h)}</th>" for h in _HEADER)
    body = "".join(_html_row(row) for row in data["models"])
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>bnfold summary: {verdict}</title>'
        f"<style>{CSS}</style></head><body>"
        f'<header class="verdict {tone}"><div class="wrap"><h1>{verdict}</h1>'
        f'<p class="why">{html.escape(counts)} (worst first)</p></div></header>'
        f'<main class="wrap"><section><div class="scroll"><table><thead><tr>{head}</tr></thead>'
        f"<tbody>{body}</tbody></table></div></section></main></body></html>\n"
    )


def _html_row(row: Mapping[str, Any]) -> str:
    """One model's row; its name links to its own HTML report when it has one."""
    cells = [html.escape(str(cell)) for cell in _cells(row)]
    if row.get("report"):
        target = html.escape(str(row["report"]).removesuffix(".json") + ".html")
        cells[0] = f'<a href="{target}">{cells[0]}</a>'
    failed = ' class="failed"' if row["status"] != "passed" else ""
    return f"<tr{failed}>" + "".join(f"<td>{cell}</td>" for cell in cells) + "</tr>"


def report_paths(data: Mapping[str, Any], where: Path) -> list[tuple[str, Path | None, str]]:
    """For ``bnfold check``: each model's (name, report path or None, reason); relative paths from ``where``."""
    found = []
    for row in data.get("models", []):
        report = row.get("report")
        path = None if not report else (Path(report) if Path(report).is_absolute() else where / report)
        found.append((str(row.get("model")), path, str(row.get("reason") or row.get("status"))))
    return found
