"""``bnfold inspect`` and ``bnfold check``: read a model's BatchNorms, or judge reports already written."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from bnfold.cli._app import EXIT_FAILED, EXIT_OK, cli
from bnfold.cli._options import model_option, shape_option, trust_option


@cli.command(short_help="List every BatchNorm and its fate.")
@click.argument("model_path", metavar="MODEL", type=click.Path(path_type=Path))
@shape_option
@model_option
@trust_option
@click.option("--json", "as_json", is_flag=True, help="Print the records as JSON.")
def inspect(model_path: Path, as_json: bool, **options: Any) -> int:
    """Print every BatchNorm of MODEL and its fate, without exporting."""
    from bnfold.convert import ConvertConfig, inspect_model
    from bnfold.fold.records import summarise

    records = inspect_model(model_path, ConvertConfig(**options))
    if as_json:
        click.echo(json.dumps([r.to_json() for r in records], indent=2))
    else:
        for record in records:
            click.echo(record.describe())
        counts = summarise(records)
        click.echo(f"{counts['folded']}/{counts['found']} BatchNorms fold")
    return EXIT_OK


@cli.command(short_help="Turn reports into a CI verdict (exit 0/1).")
@click.argument("reports", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--max-abs-err", type=float, help="Fail when any parity check's max abs error exceeds this.")
@click.option(
    "--require-no-batchnorm", is_flag=True, help="Fail when a BatchNormalization node remains in the ONNX file."
)
@click.option("--min-speedup", type=float, help="Fail when the folded model's p50 speedup is below this.")
def check(
    reports: tuple[Path, ...], max_abs_err: float | None, require_no_batchnorm: bool, min_speedup: float | None
) -> int:
    """Turn one or more reports into a CI verdict: exit 0 if all pass, 1 if not."""
    from bnfold.report.check import check_reports

    verdict = check_reports(
        list(reports), max_abs_err=max_abs_err, require_no_batchnorm=require_no_batchnorm, min_speedup=min_speedup
    )
    click.echo(verdict.table() if len(verdict.results) > 1 else verdict.line())
    return EXIT_OK if verdict else EXIT_FAILED
