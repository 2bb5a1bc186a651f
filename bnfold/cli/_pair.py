"""``bnfold verify`` and ``bnfold bench``: models the user already has, checked against the original or
timed against each other."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from bnfold.cli._app import EXIT_FAILED, EXIT_OK, cli
from bnfold.cli._options import (
    _batches,
    model_option,
    parity_options,
    progress_drawn,
    providers_option,
    quiet_option,
    shape_option,
    trust_option,
)


@cli.command(short_help="Check a candidate model against the original.")
@click.argument("original", type=click.Path(path_type=Path))
@click.argument("candidate", type=click.Path(path_type=Path))
@click.option(
    "--report",
    type=click.Path(path_type=Path),
    help="Write the JSON report here, a path ending in .json (.md and .html beside it).",
)
@shape_option
@parity_options
@providers_option("Execution providers: auto, cpu, cuda.")
@click.option("--threads", type=click.IntRange(1, 1024), help="ONNX Runtime threads.")
@model_option
@trust_option
@quiet_option
def verify(original: Path, candidate: Path, report: Path | None, quiet: bool, **options: Any) -> int:
    """Check that CANDIDATE (an ONNX file or a PyTorch model) computes what ORIGINAL computes."""
    from bnfold.convert import ConvertConfig
    from bnfold.report.summary import parity_lines
    from bnfold.verify.pair import verify_and_report

    with progress_drawn(quiet) as progress:
        result = verify_and_report(original, candidate, ConvertConfig(**options), report, progress=progress)
    if not quiet:
        for line in parity_lines(result):
            click.echo(line)
    return EXIT_OK if result.verdict.passed else EXIT_FAILED


@cli.command(short_help="Time ONNX models, A/B interleaved.")
@click.argument("models", nargs=-1, required=True, type=click.Path(path_type=Path))
@shape_option
@click.option("--batch", "batches", callback=_batches, metavar="1,8,32", help="Batch sizes (dynamic batch dimension).")
@providers_option("Execution providers: auto, cpu, cuda.")
@click.option("--threads", type=click.IntRange(1, 1024), help="Threads [default: physical cores].")
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON.")
def bench(models: tuple[Path, ...], as_json: bool, **options: Any) -> int:
    """Time an ONNX model, or two (ORIGINAL.onnx FOLDED.onnx) interleaved, with the speedup."""
    from bnfold.bench.files import bench_files
    from bnfold.convert import ConvertConfig

    if len(models) > 2:
        raise click.UsageError("give one ONNX model, or two to compare (original first)")
    latency, speedup = bench_files(list(models), ConvertConfig(**options))
    if as_json:
        entries = {"latency": [row.to_json() for row in latency], "speedup": [item.to_dict() for item in speedup]}
        click.echo(json.dumps(entries, indent=2))
        return EXIT_OK
    for row in latency:
        click.echo(
            f"{row.model:>10} {row.provider} batch {row.batch}: p50 {row.p50_ms:.3f} ms, "
            f"p90 {row.p90_ms:.3f} ms, p99 {row.p99_ms:.3f} ms, {row.throughput:.1f} samples/s"
        )
    unsteady = "; unsteady timings (the cores were busy): measure again on a quiet machine"
    for item in speedup:
        click.echo(
            f"speedup batch {item.batch}: x{item.speedup_p50:.2f} (IQR {item.speedup_low:.2f}-{item.speedup_high:.2f})"
            + (unsteady if item.steady is False else "")
        )
    return EXIT_OK
