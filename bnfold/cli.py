"""The ``bnfold`` command line: a thin layer that parses options into a config and calls the API.

Exit codes: 0 ok, 1 parity (or a check) failed with the report written, 2 bad input or usage, 130 and 143
interrupted by SIGINT and SIGTERM.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import threading
import traceback
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from bnfold.errors import BnfoldError, InputSpecError, LoadError

if TYPE_CHECKING:
    from bnfold.convert.config import AffineForm, Exporter, ExternalData

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def _shapes(_ctx: click.Context, _param: click.Parameter, values: tuple[str, ...]) -> tuple[tuple[int, ...], ...]:
    from bnfold.load import parse_shape

    return tuple(parse_shape(v) for v in values)


def _batches(_ctx: click.Context, _param: click.Parameter, value: str | None) -> tuple[int, ...]:
    if not value:
        return ()
    try:
        sizes = tuple(int(v) for v in value.split(","))
    except ValueError:
        raise InputSpecError(f"--batch {value!r}: expected comma-separated integers like 1,8,32") from None
    if any(b <= 0 for b in sizes):
        raise InputSpecError(f"--batch {value!r}: batch sizes must be positive")
    return sizes


def _tolerances(
    _ctx: click.Context, _param: click.Parameter, values: tuple[str, ...]
) -> tuple[tuple[str, float, float], ...]:
    from bnfold.verify.tolerance import check_tolerance

    out = []
    for text in values:
        name, _, numbers = text.partition("=")
        try:
            atol, rtol = (float(v) for v in numbers.split(","))
        except ValueError:
            raise InputSpecError(f"--tolerance {text!r}: expected OUTPUT=ATOL,RTOL, e.g. logits=1e-4,1e-3") from None
        if not name.strip():
            raise InputSpecError(f"--tolerance {text!r}: name the output (or give its index) before '='")
        for value in (atol, rtol):
            check_tolerance(f"--tolerance {text}", value)
        out.append((name, atol, rtol))
    return tuple(out)


def _tolerance(ctx: click.Context, param: click.Parameter, value: float | None) -> float | None:
    from bnfold.verify.tolerance import check_tolerance

    return None if value is None else check_tolerance(f"--{param.name} {value}", value)


def _dynamic(_ctx: click.Context, _param: click.Parameter, value: str | None) -> tuple[str, ...] | None:
    from bnfold.load.inputs import parse_dynamic

    return None if value is None else parse_dynamic(value)


def _names(_ctx: click.Context, _param: click.Parameter, value: str | None) -> tuple[str, ...]:
    names = tuple(n.strip() for n in (value or "").split(",") if n.strip())
    if value is not None and not names:
        raise InputSpecError(f"--{_param.name.replace('_', '-') if _param.name else 'names'} needs names, e.g. x,mask")
    return names


def _providers(value: str) -> tuple[str, ...]:
    return tuple(p.strip() for p in value.split(",") if p.strip())


@contextlib.contextmanager
def _progress(quiet: bool) -> Iterator[Any]:
    """Progress drawn on stderr (:class:`bnfold.terminal.TerminalProgress`), or, quiet, nothing at all: the
    process's stdout and stderr point at /dev/null for the run (an ``Error:`` line is printed after it)."""
    from bnfold.terminal import TerminalProgress, silenced

    if quiet:
        with silenced():
            yield None
        return
    drawer = TerminalProgress()
    try:
        yield drawer
    finally:
        drawer.close()


def model_option(command: Any) -> Any:
    """--model and --model-arg: the code that builds the architecture for a weights file, and its arguments."""
    command = click.option(
        "--model-arg",
        "model_args",
        multiple=True,
        metavar="NAME=VALUE",
        callback=_model_args,
        help="Keyword argument for the --model callable (repeatable; a Python literal, else a string).",
    )(command)
    return click.option(
        "--model",
        "factory",
        metavar="MODULE:CALLABLE",
        help="Code that builds the nn.Module for a state_dict/safetensors/checkpoint file.",
    )(command)


def _model_args(_ctx: click.Context, _param: click.Parameter, values: tuple[str, ...]) -> tuple[tuple[str, Any], ...]:
    from bnfold.load.factory import parse_model_args

    return tuple(parse_model_args(values).items())


shape_option = click.option(
    "--input-shape",
    "input_shapes",
    multiple=True,
    callback=_shapes,
    metavar="1,3,224,224",
    help="Shape of one input (repeat per input). Overrides the example inputs stored in the model.",
)
trust_option = click.option(
    "--trust-code",
    "--trust-pickle",
    "trust_code",
    is_flag=True,
    help="Allow formats that carry code (TorchScript archives, pickled modules) and lift the loading gate: "
    "code from the file may run. Only for files you trust.",
)
quiet_option = click.option(
    "--quiet",
    "-q",
    is_flag=True,
    help="Print nothing (an Error: line aside): no progress, summary or library log lines; the exit code tells.",
)


def parity_options(command: Any) -> Any:
    """--atol, --rtol, --tolerance, --data, --save-inputs and --random-batches: the parity settings convert and
    verify share."""
    for option in reversed(
        [
            click.option(
                "--atol",
                type=float,
                callback=_tolerance,
                help="Absolute tolerance for parity [default: by dtype, 1e-4 for float32].",
            ),
            click.option(
                "--rtol",
                type=float,
                callback=_tolerance,
                help="Relative tolerance for parity [default: by dtype, 1e-3 for float32].",
            ),
            click.option(
                "--tolerance",
                "tolerances",
                multiple=True,
                callback=_tolerances,
                metavar="OUTPUT=ATOL,RTOL",
                help="Tolerance for one output (by name or index); repeatable.",
            ),
            click.option(
                "--data",
                type=click.Path(path_type=Path),
                help="Extra parity inputs from .npz (one array per input; labels 'y' ignored).",
            ),
            click.option(
                "--save-inputs",
                type=click.Path(path_type=Path),
                metavar="DIR",
                help="Write the parity inputs (DIR/inputs_<k>.npz, usable as --data) and the reference outputs "
                "(DIR/reference_<k>.npz) with DIR/index.json; DIR is created when missing.",
            ),
            click.option(
                "--random-batches",
                type=click.IntRange(0, 100),
                default=1,
                show_default=True,
                help="Seeded random batches checked besides the example (and --data).",
            ),
        ]
    ):
        command = option(command)
    return command


class Commands(click.Group):
    """The command group; a KeyboardInterrupt or SystemExit raised by the model's own code (a ``--model``
    factory, a trusted pickle) is a user error, not an abort (SIGINT raises :class:`Interrupted`)."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt as exc:
            raise _model_code("raised KeyboardInterrupt", exc) from exc
        except SystemExit as exc:
            raise _model_code(f"called sys.exit({exc.code!r})", exc) from exc


@click.group(cls=Commands, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="bnfold")
@click.option("--debug", is_flag=True, envvar="BNFOLD_DEBUG", help="Show tracebacks for errors.")
@click.pass_context
def cli(ctx: click.Context, debug: bool) -> None:
    """Fold every BatchNorm out of a trained PyTorch model, export it to ONNX, and prove the result."""
    ctx.obj = {"debug": debug}


@cli.command(short_help="Fold, export, verify and time a model (or many).")
@click.argument("model_paths", metavar="MODEL...", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("-o", "--output", type=click.Path(path_type=Path), help="ONNX file to write [default: MODEL with .onnx].")
@click.option(
    "--output-dir",
    type=click.Path(path_type=Path, file_okay=False),
    help="Write each model's outputs into this folder (needed for several models, with summary.json/.md/.html).",
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
    help="JSON report [default: <output stem>.report.json]; .md and .html beside it.",
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
@click.option(
    "--providers", default="auto", show_default=True, help="Execution providers: auto, cpu, cuda (comma-separated)."
)
@click.option(
    "--threads", type=click.IntRange(1, 1024), help="ONNX Runtime / torch threads for timing [default: physical cores]."
)
@model_option
@trust_option
@quiet_option
def convert(
    model_paths: tuple[Path, ...],
    output: Path | None,
    output_dir: Path | None,
    jobs: int,
    report: Path | None,
    input_shapes: tuple[tuple[int, ...], ...],
    dynamic: tuple[str, ...] | None,
    input_names: tuple[str, ...],
    output_names: tuple[str, ...],
    opset: int | None,
    atol: float | None,
    rtol: float | None,
    tolerances: tuple[tuple[str, float, float], ...],
    data: Path | None,
    save_inputs: Path | None,
    random_batches: int,
    recalibrate: Path | None,
    affine_form: AffineForm,
    exporter: Exporter,
    external_data: ExternalData,
    save_optimized: Path | None,
    bench: bool,
    batches: tuple[int, ...],
    providers: str,
    threads: int | None,
    factory: str | None,
    model_args: tuple[tuple[str, Any], ...],
    trust_code: bool,
    quiet: bool,
) -> int:
    """Fold, export, verify and time MODEL; write MODEL.onnx and its reports.

    Several models convert one per process (--jobs at a time) into --output-dir, with an aggregate
    summary.json; exit 0 when all pass, 1 when one failed parity, 2 when one could not be converted."""
    from bnfold.convert import ConvertConfig
    from bnfold.convert import convert as run

    config = ConvertConfig(
        output=output,
        report=report,
        input_shapes=input_shapes,
        dynamic=dynamic,
        input_names=input_names,
        output_names=output_names,
        opset=opset,
        atol=atol,
        rtol=rtol,
        tolerances=tolerances,
        data=data,
        save_inputs=save_inputs,
        random_batches=random_batches,
        recalibrate=recalibrate,
        affine_form=affine_form,
        exporter=exporter,
        external_data=external_data,
        save_optimized=save_optimized,
        bench=bench,
        batches=batches,
        providers=_providers(providers),
        threads=threads,
        model=factory,
        model_args=model_args,
        trust_code=trust_code,
    )
    if len(model_paths) > 1 or output_dir is not None:
        return _convert_many(model_paths, config, output_dir, jobs, quiet)
    with _progress(quiet) as progress:
        result = run(model_paths[0], config, progress=progress)
    if not quiet:
        from bnfold.report.summary import summary_lines

        for line in summary_lines(result.report):
            click.echo(line)
        onnx = result.report.onnx
        weights = f" (weights in {onnx.external_data})" if onnx.external_data else ""
        optimized = f", {onnx.optimized_path} (onnxruntime-optimized)" if onnx.optimized_path else ""
        click.echo(f"wrote {result.onnx_path}{weights}{optimized} and {result.report_path} (+ .md, .html)")
    return EXIT_OK if result.passed else EXIT_FAILED


def _convert_many(models: tuple[Path, ...], config: Any, output_dir: Path | None, jobs: int, quiet: bool) -> int:
    from bnfold.convert.many import convert_many, exit_code, plan
    from bnfold.report.aggregate import summary, write_summary

    if output_dir is None:
        raise click.UsageError("give --output-dir for several models: each model's outputs and summary.json go there")
    if config.output or config.report or config.save_optimized or config.save_inputs:
        raise click.UsageError(
            "-o, --report, --save-optimized and --save-inputs name one model's files: with "
            "several models use --output-dir"
        )
    if not output_dir.is_dir():
        raise click.UsageError(f"--output-dir {output_dir} does not exist: create it first")
    runs = plan(list(models), output_dir)

    def done(run: Any) -> None:
        if not quiet:
            status = {0: "PASS", 1: "FAIL"}.get(run.exit_code, "ERROR")
            click.echo(f"{status} {run.model} ({run.seconds:.1f} s){': ' + run.reason if run.reason else ''}")

    convert_many(runs, config, jobs, done)
    paths = write_summary(summary(runs, jobs, output_dir), output_dir)
    if not quiet:
        click.echo(f"wrote {paths[0]} (+ .md, .html)")
    return exit_code(runs)


@cli.command(short_help="Check a candidate model against the original.")
@click.argument("original", type=click.Path(path_type=Path))
@click.argument("candidate", type=click.Path(path_type=Path))
@click.option("--report", type=click.Path(path_type=Path), help="Write the JSON report here (.md and .html beside it).")
@shape_option
@parity_options
@click.option("--providers", default="auto", show_default=True, help="Execution providers: auto, cpu, cuda.")
@click.option("--threads", type=click.IntRange(1, 1024), help="ONNX Runtime threads.")
@model_option
@trust_option
@quiet_option
def verify(
    original: Path,
    candidate: Path,
    report: Path | None,
    input_shapes: tuple[tuple[int, ...], ...],
    atol: float | None,
    rtol: float | None,
    tolerances: tuple[tuple[str, float, float], ...],
    data: Path | None,
    save_inputs: Path | None,
    random_batches: int,
    providers: str,
    threads: int | None,
    factory: str | None,
    model_args: tuple[tuple[str, Any], ...],
    trust_code: bool,
    quiet: bool,
) -> int:
    """Check that CANDIDATE (an ONNX file or a PyTorch model) computes what ORIGINAL computes."""
    from bnfold.convert import ConvertConfig
    from bnfold.report.summary import parity_lines
    from bnfold.verify.pair import verify_and_report

    config = ConvertConfig(
        input_shapes=input_shapes,
        atol=atol,
        rtol=rtol,
        tolerances=tolerances,
        data=data,
        save_inputs=save_inputs,
        random_batches=random_batches,
        providers=_providers(providers),
        threads=threads,
        model=factory,
        model_args=model_args,
        trust_code=trust_code,
    )
    with _progress(quiet) as progress:
        result = verify_and_report(original, candidate, config, report, progress=progress)
    if not quiet:
        for line in parity_lines(result):
            click.echo(line)
    return EXIT_OK if result.verdict.passed else EXIT_FAILED


@cli.command(short_help="Time ONNX models, A/B interleaved.")
@click.argument("models", nargs=-1, required=True, type=click.Path(path_type=Path))
@shape_option
@click.option("--batch", "batches", callback=_batches, metavar="1,8,32", help="Batch sizes (dynamic batch dimension).")
@click.option("--providers", default="auto", show_default=True, help="Execution providers: auto, cpu, cuda.")
@click.option("--threads", type=click.IntRange(1, 1024), help="Threads [default: physical cores].")
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON.")
def bench(
    models: tuple[Path, ...],
    input_shapes: tuple[tuple[int, ...], ...],
    batches: tuple[int, ...],
    providers: str,
    threads: int | None,
    as_json: bool,
) -> int:
    """Time an ONNX model, or two (ORIGINAL.onnx FOLDED.onnx) interleaved, with the speedup."""
    from bnfold.bench.files import bench_files
    from bnfold.convert import ConvertConfig

    if len(models) > 2:
        raise click.UsageError("give one ONNX model, or two to compare (original first)")
    config = ConvertConfig(input_shapes=input_shapes, batches=batches, providers=_providers(providers), threads=threads)
    latency, speedup = bench_files(list(models), config)
    if as_json:
        entries = {"latency": [row.to_json() for row in latency], "speedup": [item.to_dict() for item in speedup]}
        click.echo(json.dumps(entries, indent=2))
        return EXIT_OK
    for row in latency:
        click.echo(
            f"{row.model:>10} {row.provider} batch {row.batch}: p50 {row.p50_ms:.3f} ms, "
            f"p90 {row.p90_ms:.3f} ms, p99 {row.p99_ms:.3f} ms, {row.throughput:.1f} samples/s"
        )
    for item in speedup:
        click.echo(
            f"speedup batch {item.batch}: x{item.speedup_p50:.2f} (IQR {item.speedup_low:.2f}-{item.speedup_high:.2f})"
        )
    return EXIT_OK


@cli.command(short_help="List every BatchNorm and its fate.")
@click.argument("model_path", metavar="MODEL", type=click.Path(path_type=Path))
@shape_option
@model_option
@trust_option
@click.option("--json", "as_json", is_flag=True, help="Print the records as JSON.")
def inspect(
    model_path: Path,
    input_shapes: tuple[tuple[int, ...], ...],
    factory: str | None,
    model_args: tuple[tuple[str, Any], ...],
    trust_code: bool,
    as_json: bool,
) -> int:
    """Print every BatchNorm of MODEL and its fate, without exporting."""
    from bnfold.convert import inspect_model

    records = inspect_model(
        model_path, input_shapes=input_shapes, factory=factory, model_args=dict(model_args), trust_code=trust_code
    )
    if as_json:
        click.echo(json.dumps([r.to_json() for r in records], indent=2))
    else:
        for record in records:
            click.echo(record.describe())
        folded = sum(r.action == "folded" for r in records)
        click.echo(f"{folded}/{len(records)} BatchNorms fold")
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


class Interrupted(BaseException):
    """SIGINT or SIGTERM arrived: unwind (staging folders are removed on the way) and exit 128 + signal."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _on_signal(signum: int, _frame: Any) -> None:
    for other in _SIGNALS:  # a second Ctrl-C must not cut the clean-up short
        signal.signal(other, signal.SIG_IGN)
    raise Interrupted(signum)


_SIGNALS = (signal.SIGINT, signal.SIGTERM)


@contextlib.contextmanager
def _signals_unwind() -> Any:
    """SIGINT and SIGTERM raise :class:`Interrupted` while the command runs (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.getsignal(s) for s in _SIGNALS}
    for s in _SIGNALS:
        signal.signal(s, _on_signal)
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def _quiet_libraries() -> None:
    """Library chatter off: Python warnings (the exporter's go into the report) and onnxruntime's log lines
    (errors reach the user as bnfold's one ``Error:`` line)."""
    warnings.simplefilter("ignore")
    os.environ.setdefault("ORT_LOGGING_LEVEL", "3")
    try:
        import onnxruntime

        onnxruntime.set_default_logger_severity(4)
    except Exception:  # onnxruntime missing or broken: the commands that need it say so
        pass


def _user_error(exc: BaseException, debug: bool) -> int:
    """One ``Error:`` line (after the traceback with --debug); exit 2."""
    if debug:
        traceback.print_exception(exc)
    click.echo(f"Error: {exc}", err=True)
    return EXIT_USAGE


def _model_code(what: str, cause: BaseException) -> LoadError:
    error = LoadError(
        f"the model's code {what} (from --model or the model file): it must build and run the "
        "model without stopping the program"
    )
    error.__cause__ = cause
    return error


def usage_error_line(exc: click.UsageError, args: list[str]) -> str:
    """A usage error as one ``Error:`` line: what is wrong, and where the command's options are listed."""
    path = exc.ctx.command_path if exc.ctx is not None else "bnfold"
    if path == "bnfold":  # raised while parsing, before the command had a context: name it from the arguments
        command = next((a for a in args if a in cli.commands), None)
        path = f"bnfold {command}" if command else path
    return f"Error: {_one_line(exc.format_message()).rstrip('.')}; see '{path} --help'"


def _one_line(text: str) -> str:
    return " ".join(line.strip() for line in text.splitlines() if line.strip())


def _run(args: list[str], debug: bool) -> int:
    try:
        code: Any = cli.main(args=args, prog_name="bnfold", standalone_mode=False)
    except Interrupted as exc:
        click.echo(f"Interrupted ({exc}).", err=True)
        return 128 + exc.signum
    except BnfoldError as exc:
        return _user_error(exc, debug)
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except click.exceptions.NoArgsIsHelpError as exc:  # `bnfold` alone: the help, as asked
        exc.show()
        return EXIT_USAGE
    except click.UsageError as exc:
        click.echo(usage_error_line(exc, args), err=True)
        return EXIT_USAGE
    except click.ClickException as exc:
        click.echo(f"Error: {_one_line(exc.format_message())}", err=True)
        return EXIT_USAGE
    except click.exceptions.Abort:
        click.echo("Aborted.", err=True)
        return EXIT_USAGE
    return code if isinstance(code, int) else EXIT_OK


def main(argv: list[str] | None = None) -> None:
    """Entry point: user errors print one line and exit 2 (a traceback too with --debug); bugs keep their
    traceback; SIGINT and SIGTERM exit 130 and 143 once the staging folders are removed."""
    args = sys.argv[1:] if argv is None else argv
    debug = "--debug" in args or os.environ.get("BNFOLD_DEBUG") == "1"
    if not debug:
        _quiet_libraries()
    with _signals_unwind():
        code = _run(args, debug)
    sys.exit(code)
