"""The ``bnfold`` command group and how a run ends: exit codes, one ``Error:`` line for the user's
mistakes, SIGINT and SIGTERM unwound."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import traceback
import warnings
from typing import Any

import click

from bnfold.errors import BnfoldError, LoadError

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


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


class Interrupted(BaseException):
    """SIGINT or SIGTERM arrived: unwind (staging folders are removed on the way) and exit 128 + signal."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _on_signal(signum: int, _frame: Any) -> None:
    for other in _SIGNALS:  # a second Ctrl-C must not cut the clean-up short
        signal.signal(other, signal.SIG_IGN)
    _received.append(signum)
    if _native_import_running():  # an exception inside it can abort the process: raise once it is done
        for other in _SIGNALS:  # ... unless the user insists
            signal.signal(other, _leave_now)
        _waiting.append(signal.signal(signal.SIGALRM, _when_imported))
        signal.setitimer(signal.ITIMER_REAL, 0.05)
        return
    raise Interrupted(signum)


def _when_imported(_signum: int, _frame: Any) -> None:
    if _native_import_running():
        signal.setitimer(signal.ITIMER_REAL, 0.05)
        return
    for other in _SIGNALS:
        signal.signal(other, signal.SIG_IGN)
    raise Interrupted(_received[0])


def _leave_now(signum: int, _frame: Any) -> None:
    """A second signal while a library still loads: nothing has been written yet; leave at once."""
    sys.stderr.write(f"Interrupted ({signal.Signals(_received[0]).name}).\n")
    sys.stderr.flush()
    os._exit(128 + _received[0])


NATIVE = ("torch", "numpy", "onnx", "onnxruntime", "onnxscript", "onnx_ir", "ml_dtypes", "safetensors")
"""Libraries with compiled extensions: an exception raised while one is being imported can leave it
half-initialised (a later import fails) or abort the process from its C++ code."""


def _native_import_running() -> bool:
    """Whether one of :data:`NATIVE` (or a module of it) is being imported in this thread right now."""
    return any(
        getattr(getattr(module, "__spec__", None), "_initializing", False)
        for name, module in list(sys.modules.items())
        if name.partition(".")[0] in NATIVE
    )


_received: list[int] = []
_waiting: list[Any] = []  # while a signal waits for an import: the SIGALRM handler the retry replaced
"""The signals that arrived: an error raised after one is its consequence (a library whose import was cut
short raises ImportError), and the run ends as interrupted."""


_SIGNALS = (signal.SIGINT, signal.SIGTERM)


@contextlib.contextmanager
def _signals_unwind() -> Any:
    """SIGINT and SIGTERM raise :class:`Interrupted` while the command runs (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.getsignal(s) for s in _SIGNALS}
    _received.clear()  # this command's signals only
    for s in _SIGNALS:
        signal.signal(s, _on_signal)
    try:
        yield
    finally:
        if _waiting:  # the retry armed for a library's import: disarmed, its handler put back
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, _waiting.pop())
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
        from bnfold.outputs import out_of_space_said

        if not debug:
            _quiet_libraries()
        with out_of_space_said():
            code: Any = cli.main(args=args, prog_name="bnfold", standalone_mode=False)
    except BaseException as exc:  # noqa: BLE001 - each way a command ends, sorted in _ended; bugs re-raised
        return _ended(exc, args, debug)
    return code if isinstance(code, int) else EXIT_OK


def _ended(exc: BaseException, args: list[str], debug: bool) -> int:
    """The exit code of a command that raised ``exc``: an interruption (or what a signal cut short raised: an
    import stopped half-way raises ImportError) 128 + the signal, user errors and usage mistakes one line
    and 2; anything else is a bug and keeps its traceback."""
    if isinstance(exc, Interrupted) or _received:
        signum = exc.signum if isinstance(exc, Interrupted) else _received[0]
        click.echo(f"Interrupted ({signal.Signals(signum).name}).", err=True)
        return 128 + signum
    if isinstance(exc, BnfoldError):
        return _user_error(exc, debug)
    if isinstance(exc, click.exceptions.Exit):
        return exc.exit_code
    if isinstance(exc, click.exceptions.NoArgsIsHelpError):  # `bnfold` alone: the help, as asked
        exc.show()
        return EXIT_USAGE
    if isinstance(exc, click.UsageError):
        click.echo(usage_error_line(exc, args), err=True)
        return EXIT_USAGE
    if isinstance(exc, click.ClickException):
        click.echo(f"Error: {_one_line(exc.format_message())}", err=True)
        return EXIT_USAGE
    if isinstance(exc, click.exceptions.Abort):
        click.echo("Aborted.", err=True)
        return EXIT_USAGE
    raise exc


def main(argv: list[str] | None = None) -> None:
    """Entry point: user errors print one line and exit 2 (a traceback too with --debug); bugs keep their
    traceback; SIGINT and SIGTERM exit 130 and 143 once the staging folders are removed."""
    args = sys.argv[1:] if argv is None else argv
    debug = "--debug" in args or os.environ.get("BNFOLD_DEBUG") == "1"
    with _signals_unwind():
        code = _run(args, debug)
    sys.exit(code)
