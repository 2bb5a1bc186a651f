"""``bnfold convert``: one model, or many into ``--output-dir``; every option but those of the command line
alone (``--output-dir``, ``--jobs``, ``--quiet``) lands in the :class:`~bnfold.convert.ConvertConfig`."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from bnfold.cli._app import EXIT_FAILED, EXIT_OK, cli
from bnfold.cli._options import (
    _batches,
    _dynamic,
    _names,
    model_option,
    parity_options,
    progress_drawn,
    providers_option,
    quiet_option,
    shape_option,
    trust_option,
)

if TYPE_CHECKING:
    from bnfold.convert import ConvertConfig, ConvertResult


@cli.command(short_help="Fold, export, verify and time a model (or many).")
@click.argument("model_paths", metavar="MODEL...", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("-o", "--output", type=click.Path(path_type=Path), help="ONNX file to write [default: MODEL with .onnx].")
@click.option(
    "--output-dir",
    type=click.Path(path_type=Path, file_okay=False),
    help="Write each model's outputs into this existing folder (needed for several models, with "
    "summary.json/.md/.html).",
)
@click.option(
    "--jobs",
    "-j",
    type=click.IntRange(1, 64),
    default=1,
    show_default=True,
    help="Models converted at once, each in its own process with its share of the cores.",
)
@click.option(
    "--report",
    type=click.Path(path_type=Path),
    help="JSON report, a path ending in .json [default: <output stem>.report.json]; .md and .html beside it.",
)
@shape_option
@click.option(
    "--dynamic",
    callback=_dynamic,
    metavar="batch|none|batch,height,width",
    help="Dimensions the ONNX model keeps dynamic, by name or axis [default: a torch.export archive's own, "
    "else batch].",
)
@click.option(
    "--input-names",
    callback=_names,
    metavar="A,B",
    help="Names of the ONNX model's inputs [default: the model's own, e.g. the forward's arguments].",
)
@click.option("--output-names", callback=_names, metavar="Y", help="Names of the ONNX model's outputs.")
@click.option(
    "--opset",
    type=click.IntRange(7, 30),
    help="ONNX opset, written exactly or refused [default: 18; an ONNX input keeps its own].",
)
@parity_options
@click.option(
    "--recalibrate",
    type=click.Path(path_type=Path),
    metavar="DATA.npz",
    help="Re-estimate every BN's statistics from this data before folding.",
)
@click.option(
    "--affine-form",
    type=click.Choice(["batchnorm", "muladd"]),
    default="batchnorm",
    show_default=True,
    help="How a BN that cannot fold is frozen: a BatchNormalization computing x*s+t (mean 0, var 1; fastest "
    "in ONNX Runtime) or Mul+Add (no BatchNormalization node left).",
)
@click.option(
    "--exporter",
    type=click.Choice(["auto", "torchscript", "dynamo"]),
    default="auto",
    show_default=True,
    help="ONNX exporter for the folded graph: auto tries the TorchScript exporter (fast on a folded graph) "
    "and falls back on the dynamo exporter when it fails or its output fails parity.",
)
@click.option(
    "--external-data",
    type=click.Choice(["auto", "always", "never"]),
    default="auto",
    show_default=True,
    help="Write the weights to OUTPUT.data beside the ONNX file: auto from 1 MB of weights on (onnxruntime "
    "loads such models faster), always, or never (one file; up to protobuf's 2 GB).",
)
@click.option(
    "--save-optimized",
    type=click.Path(path_type=Path),
    metavar="PATH",
    help="Also write the model as onnxruntime optimizes it for this machine's CPU (sessions start faster; "
    "may hold CPU-specific layouts), checked in the parity matrix.",
)
@click.option("--bench/--no-bench", default=True, show_default=True, help="Measure the latency (--no-bench skips it).")
@click.option(
    "--batch",
    "batches",
    callback=_batches,
    metavar="1,8,32",
    help="Batch sizes to time (when the batch dimension is dynamic).",
)
@providers_option("Execution providers: auto, cpu, cuda (comma-separated).")
@click.option(
    "--threads", type=click.IntRange(1, 1024), help="ONNX Runtime / torch threads for timing [default: physical cores]."
)
@model_option
@trust_option
@quiet_option
def convert(model_paths: tuple[Path, ...], output_dir: Path | None, jobs: int, quiet: bool, **options: Any) -> int:
    """Fold, export, verify and time MODEL; write MODEL.onnx and its reports.

    Several models convert one per process (--jobs at a time) into --output-dir, with an aggregate
    summary.json; exit 0 when all pass, 1 when one failed parity, 2 when one could not be converted."""
    from bnfold.convert import ConvertConfig
    from bnfold.convert import convert as run

    config = ConvertConfig(**options)
    if len(model_paths) > 1 or output_dir is not None:
        return _convert_many(model_paths, config, output_dir, jobs, quiet)
    with progress_drawn(quiet) as progress:
        result = run(model_paths[0], config, progress=progress)
    if not quiet:
        _print_result(result)
    return EXIT_OK if result.passed else EXIT_FAILED


def _print_result(result: ConvertResult) -> None:
    """The summary of one conversion, and the files it wrote."""
    from bnfold.report.summary import summary_lines

    for line in summary_lines(result.report):
        click.echo(line)
    onnx = result.report.onnx
    weights = f" (weights in {onnx.external_data})" if onnx.external_data else ""
    optimized = f", {onnx.optimized_path} (onnxruntime-optimized)" if onnx.optimized_path else ""
    click.echo(f"wrote {result.onnx_path}{weights}{optimized} and {result.report_path} (+ .md, .html)")


def _convert_many(
    models: tuple[Path, ...], config: ConvertConfig, output_dir: Path | None, jobs: int, quiet: bool
) -> int:
    from bnfold.convert.many import convert_many, exit_code, plan
    from bnfold.report.aggregate import summary, write_summary

    if output_dir is None:
        raise click.UsageError("give --output-dir for several models: each model's outputs and summary.json go there")
    given = [o for o, v in (("-o", config.output), ("--report", config.report), ("--save-optimized",
             config.save_optimized), ("--save-inputs", config.save_inputs)) if v]  # fmt: skip
    if given:
        why = "with several models use --output-dir" if len(models) > 1 else "give one or the other"
        raise click.UsageError(f"{' and '.join(given)} and --output-dir both say where outputs go: {why}")
    if not output_dir.is_dir():
        raise click.UsageError(f"--output-dir {output_dir} does not exist: create it first")
    runs = plan(list(models), output_dir, config)

    def done(run: Any) -> None:
        if not quiet:
            status = {0: "PASS", 1: "FAIL"}.get(run.exit_code, "ERROR")
            click.echo(f"{status} {run.model} ({run.seconds:.1f} s){': ' + run.reason if run.reason else ''}")

    convert_many(runs, config, jobs, done)
    paths = write_summary(summary(runs, jobs, output_dir), output_dir)
    code = exit_code(runs)
    if not quiet:
        counts = {label: sum(1 for r in runs if r.exit_code == c) for c, label in ((0, "passed"), (1, "failed"))}
        errors = len(runs) - counts["passed"] - counts["failed"]
        head = {0: "PASS", 1: "FAIL"}.get(code, "ERROR")
        click.echo(f"{head}: {counts['passed']}/{len(runs)} models passed, {counts['failed']} failed parity, "
                   f"{errors} could not be converted")  # fmt: skip
        click.echo(f"wrote {paths[0]} (+ .md, .html)")
    return code
