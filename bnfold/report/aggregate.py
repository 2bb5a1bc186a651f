"""The aggregate of a many-model conversion: ``summary.json`` (schema ``bnfold.summary/1``), ``.md``, ``.html``.

One row per model, worst first (bad input, then failed parity, then BatchNorms left unfolded, then by how much
error folding added):
BatchNorms found and folded, the parity verdict and its worst error ratio, the speedup, the time. Each row
names the model's own report; ``bnfold check summary.json`` judges every report it lists.
"""

from __future__ import annotations

import html
import json
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    from bnfold.convert.many import ModelRun

from bnfold.errors import ReportError, one_line
from bnfold.report.check import headline
from bnfold.report.document import Report, bnfold_version, now
from bnfold.report.figures import num, ratio_text
from bnfold.report.markdown import esc, table
from bnfold.report.section import Section, list_of
from bnfold.verify.report import BASELINE

SUMMARY_SCHEMA = "bnfold.summary/1"
STATUS = {0: "passed", 1: "failed", 2: "error"}


@dataclass
class SummaryRow(Section):
    """One model of the aggregate (``models[]``): how its conversion ended, and its report's headline."""

    model: str = ""
    status: str = "error"
    exit_code: int | None = None
    reason: str = ""
    onnx: str | None = None
    report: str | None = None
    seconds: float = 0.0
    batchnorm_found: int | None = None
    batchnorm_folded: int | None = None
    max_abs_err: float | None = None
    error_ratio: float | None = None
    speedup_p50: float | None = None
    extra: dict[str, Any] = field(default_factory=dict, repr=False)


@dataclass
class Summary(Section):
    """``summary.json``: one row per model, worst first, and the verdict over them all."""

    READERS: ClassVar[Mapping[str, Callable[[Any], Any]]] = {"models": list_of(SummaryRow.from_dict)}

    schema: str = SUMMARY_SCHEMA
    bnfold_version: str = field(default_factory=bnfold_version)
    created: str = field(default_factory=now)
    jobs: int = 1
    passed: bool = False
    counts: dict[str, int] = field(default_factory=dict)
    models: list[SummaryRow] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict, repr=False)


def summary(runs: Sequence[ModelRun], jobs: int, directory: Path) -> Summary:
    """The aggregate of ``runs``, rows sorted worst first; the paths of each model's outputs relative to
    ``directory``, where the summary is written."""
    rows = sorted((_row(run, directory) for run in runs), key=_worst_first)
    return Summary(
        jobs=jobs,
        passed=all(row.status == "passed" for row in rows),
        counts={status: sum(row.status == status for row in rows) for status in STATUS.values()},
        models=rows,
    )


def _row(run: ModelRun, directory: Path) -> SummaryRow:
    report = _read(run.report_path) if run.exit_code in (0, 1) else None
    row = SummaryRow(
        model=str(run.model),
        status=STATUS.get(run.exit_code, "error") if run.exit_code is not None else "error",
        exit_code=run.exit_code,
        reason=run.reason or (report.verdict.reason if report else ""),
        onnx=os.path.relpath(run.output, directory) if report else None,
        report=os.path.relpath(run.report_path, directory) if report else None,
        seconds=round(run.seconds, 2),
    )
    if report:
        head = headline(report)
        checks = report.parity.checks if report.parity else []
        ratios = [c.error_ratio for c in checks if c.error_ratio is not None and c.stage != BASELINE]
        row.batchnorm_found, row.batchnorm_folded = head.batchnorm_found, head.batchnorm_folded
        row.max_abs_err, row.speedup_p50 = head.max_abs_err, head.speedup_min
        row.error_ratio = max(ratios, default=None)
    return row


def _read(path: Path) -> Report | None:
    """The model's report, or None when there is none to read."""
    try:
        data = json.loads(path.read_text())
        return Report.from_dict(data) if isinstance(data, dict) else None
    except (OSError, ValueError, TypeError, AttributeError, KeyError):
        return None


def _worst_first(row: SummaryRow) -> tuple[int, int, float, str]:
    rank = {"error": 0, "failed": 1, "passed": 2}[row.status]
    left = (row.batchnorm_found or 0) - (row.batchnorm_folded or 0)
    return rank, -left, -(row.error_ratio or 0.0), row.model


def write_summary(data: Summary, directory: Path) -> list[Path]:
    """``summary.json``, ``summary.md`` and ``summary.html`` in ``directory``, each written atomically."""
    from bnfold.files import atomic_write_text

    texts = {"json": json.dumps(data.to_dict(), indent=2) + "\n", "md": render_summary_markdown(data),
             "html": render_summary_html(data)}  # fmt: skip
    paths = []
    for suffix, text in texts.items():
        path = directory / f"summary.{suffix}"
        atomic_write_text(path, text)
        paths.append(path)
    return paths


_HEADER = ["model", "status", "BatchNorms folded", "max abs err", "error ratio", "speedup (onnxruntime p50, lowest)",
           "time", "reason"]  # fmt: skip


def _cells(row: SummaryRow) -> list[str]:
    folded = f"{row.batchnorm_folded}/{row.batchnorm_found}" if row.batchnorm_found is not None else "—"
    return [os.path.basename(row.model), row.status, folded, num(row.max_abs_err),
            "—" if row.error_ratio is None else ratio_text(row.error_ratio), ratio_text(row.speedup_p50),
            f"{row.seconds:.1f} s", row.reason or ""]  # fmt: skip


def _headline(data: Summary) -> str:
    counts = data.counts
    total = sum(counts.values())
    verdict = "PASS" if data.passed else "FAIL"
    return (
        f"{verdict}: {counts['passed']}/{total} models passed, {counts['failed']} failed parity, "
        f"{counts['error']} could not be converted"
    )


def render_summary_markdown(data: Summary) -> str:
    rows = [[esc(cell) for cell in _cells(row)] for row in data.models]
    return f"# bnfold summary\n\n**{_headline(data)}** (worst first)\n\n{table(_HEADER, rows)}\n"


def render_summary_html(data: Summary) -> str:
    from bnfold.report.html_blocks import CSS

    tone = "pass" if data.passed else "fail"
    verdict, _, counts = _headline(data).partition(": ")
    head = "".join(f"<th>{html.escape(h)}</th>" for h in _HEADER)
    body = "".join(_html_row(row) for row in data.models)
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>bnfold summary: {verdict}</title>'
        f"<style>{CSS}</style></head><body>"
        f'<header class="verdict {tone}"><div class="wrap"><h1>{verdict}</h1>'
        f'<p class="why">{html.escape(counts)} (worst first)</p></div></header>'
        f'<main class="wrap"><section><div class="scroll"><table><thead><tr>{head}</tr></thead>'
        f"<tbody>{body}</tbody></table></div></section></main></body></html>\n"
    )


def _html_row(row: SummaryRow) -> str:
    """One model's row; its name links to its own HTML report when it has one."""
    cells = [html.escape(str(cell)) for cell in _cells(row)]
    if row.report:
        target = html.escape(row.report.removesuffix(".json") + ".html")
        cells[0] = f'<a href="{target}">{cells[0]}</a>'
    failed = ' class="failed"' if row.status != "passed" else ""
    return f"<tr{failed}>" + "".join(f"<td>{cell}</td>" for cell in cells) + "</tr>"


def report_paths(data: Summary, where: Path) -> list[tuple[str, Path | None, str]]:
    """For ``bnfold check``: each model's (name, report path or None, reason); relative paths from ``where``."""
    found = []
    for row in data.models:
        path = None if not row.report else (Path(row.report) if Path(row.report).is_absolute() else where / row.report)
        found.append((row.model, path, str(row.reason or row.status)))
    return found


def read_summary(data: Any, where: str = "summary") -> Summary:
    """A ``summary.json``'s data as a :class:`Summary`; :class:`~bnfold.errors.ReportError` when it is of a
    schema major this version does not read, lists no models, or a field has the wrong type."""
    name, _, version = str(data.get("schema", "") if isinstance(data, dict) else "").partition("/")
    if version.split(".")[0] != SUMMARY_SCHEMA.partition("/")[2]:
        raise ReportError(
            f'{where}: summary schema "{name}/{version}" is not readable by this bnfold, which reads '
            f'"{SUMMARY_SCHEMA}"; use a matching bnfold version'
        )
    try:
        found = Summary.from_dict(data)
    except (TypeError, ValueError, AttributeError, KeyError) as exc:
        raise ReportError(f"{where}: malformed bnfold summary, a field has the wrong type ({one_line(exc)})") from exc
    if not isinstance(data.get("models"), list) or not found.models:
        raise ReportError(f"{where}: malformed bnfold summary, it lists no models")
    unnamed = [str(i) for i, row in enumerate(found.models) if not row.model or row.status not in STATUS.values()]
    if unnamed:
        raise ReportError(f"{where}: malformed bnfold summary, models[{unnamed[0]}] has no model name or status")
    return found
