"""Many models in one call: ``bnfold convert a.pt2 b.pt2 c.onnx --output-dir out/ --jobs N``.

Each model converts in a process of its own (spawned fresh, so one model's crash, hang or memory cannot
touch another's), at most ``jobs`` at a time, each with its share of the cores so that its timings stay
honest. A model that fails fails alone, with its one-line reason; the others go on. Each model's outputs
and reports are written as a single conversion writes them, and an aggregate (``summary.json``, ``.md``,
``.html``) lists one row per model, worst first.
"""

from __future__ import annotations

import contextlib
import dataclasses
import multiprocessing
import signal
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Any

from bnfold.convert.config import ConvertConfig
from bnfold.errors import OutputError

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT = 0, 1, 2


@dataclass
class ModelRun:
    """One model of a batch: where it goes, and how its conversion ended."""

    model: Path
    output: Path
    exit_code: int | None = None
    reason: str = ""
    seconds: float = 0.0

    @property
    def report_path(self) -> Path:
        return self.output.with_name(self.output.stem + ".report.json")


SUMMARY_FILES = ("summary.json", "summary.md", "summary.html")


def plan(models: Sequence[Path], output_dir: Path | None, config: ConvertConfig | None = None) -> list[ModelRun]:
    """Each model's ONNX path (``DIR/<stem>.onnx``, or beside the model), checked before any work starts:
    no model is given twice, and nothing any model writes (its ONNX file and ``.data``, its reports, the
    summary) is a file any model reads (a model, its external data, ``config``'s ``--data``,
    ``--recalibrate`` or ``--model`` source) or one another model writes."""
    from bnfold.outputs import same_file

    runs: list[ModelRun] = []
    for model in models:
        twice = next((run.model for run in runs if same_file(run.model, model)), None)
        if twice is not None:
            raise OutputError(f"{model} is given twice ({twice}): give each model once")
        name = model.with_suffix(".folded.onnx" if model.suffix == ".onnx" else ".onnx").name
        runs.append(ModelRun(model, (output_dir / name) if output_dir is not None else model.with_name(name)))
    _check_paths(runs, output_dir, config)
    return runs


def _check_paths(runs: Sequence[ModelRun], output_dir: Path | None, config: ConvertConfig | None) -> None:
    """See :func:`plan`; an :class:`OutputError` naming the first clash."""
    from bnfold.convert import plan as paths
    from bnfold.outputs import same_file

    reads = [item for run in runs for item in paths.model_reads(f"the input {run.model}", run.model).items()]
    if config is not None:
        reads += [(label, path) for label, path in paths.option_reads(config).items()]
    writes = [
        (str(run.model), path)
        for run in runs
        for path in paths.convert_writes(run.output, run.report_path, None).values()
    ]
    if output_dir is not None:
        writes += [("the summary", output_dir / name) for name in SUMMARY_FILES]
    where = "convert into another --output-dir" if output_dir is not None else "give --output-dir"
    for i, (writer, path) in enumerate(writes):
        read = next((what for what, source in reads if same_file(path, source)), None)
        if read is not None:
            raise OutputError(f"{writer} would write {path}, which is {read}: {where}, or rename the model")
        other = next((w for w, p in writes[i + 1 :] if w != writer and same_file(path, p)), None)
        if other is not None:
            raise OutputError(f"{writer} and {other} would both write {path}: {where}, or rename one")


def convert_many(
    runs: list[ModelRun], config: ConvertConfig, jobs: int, on_done: Callable[[ModelRun], None] | None = None
) -> list[ModelRun]:
    """Convert every run with ``config`` (its output replaced per model), ``jobs`` processes at a time."""
    from bnfold.bench import default_threads

    threads = config.threads or max(1, default_threads() // jobs)
    context = multiprocessing.get_context("spawn")
    pending = list(runs)
    active: dict[int, _Worker] = {}
    try:
        while pending or active:
            while pending and len(active) < jobs:
                worker = _Worker.start(context, pending.pop(0), config, threads)
                active[worker.process.sentinel] = worker
            for sentinel in wait(list(active)):
                worker = active.pop(int(sentinel))  # type: ignore[arg-type]
                worker.finish()
                if on_done:
                    on_done(worker.run)
    except BaseException:  # interrupted (SIGINT, SIGTERM) or failed: no worker outlives the batch
        _stop(list(active.values()))
        raise
    return runs


def _stop(workers: list[_Worker], grace: float = 60.0) -> None:
    """Stop the workers and wait for them: each removes its staging folders as it exits on SIGTERM (one that
    has not within ``grace`` seconds is killed)."""
    for worker in workers:
        worker.process.terminate()
    deadline = time.monotonic() + grace
    for worker in workers:
        worker.process.join(max(0.0, deadline - time.monotonic()))
        if worker.process.is_alive():
            worker.process.kill()
            worker.process.join()


@dataclass
class _Worker:
    """A spawned process converting one model, and the pipe its outcome comes back through."""

    run: ModelRun
    process: Any
    receiver: Connection
    started: float

    @classmethod
    def start(cls, context: Any, run: ModelRun, config: ConvertConfig, threads: int) -> _Worker:
        own = dataclasses.replace(config, output=run.output, report=None, threads=threads)
        receiver, sender = context.Pipe(duplex=False)
        process = context.Process(target=_convert_one, args=(run.model, own, sender), daemon=True)
        with _interrupts_ignored_by_workers():
            process.start()
        sender.close()
        return cls(run, process, receiver, time.perf_counter())

    def finish(self) -> None:
        outcome = self.receiver.recv() if self.receiver.poll() else None
        self.process.join()
        self.run.seconds = time.perf_counter() - self.started
        if outcome is None:  # the process died without a word: a crash, a kill, out of memory
            self.run.exit_code = EXIT_BAD_INPUT
            self.run.reason = f"the conversion process died (exit code {self.process.exitcode})"
        else:
            self.run.exit_code, self.run.reason = outcome


def _convert_one(model: Path, config: ConvertConfig, sender: Connection) -> None:
    """In the worker: one conversion, reported as (exit code, one-line reason); its own output silenced."""
    import os
    import warnings

    from bnfold.convert import convert
    from bnfold.errors import BnfoldError

    signal.signal(signal.SIGTERM, _exit_unwinding)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.dup2(devnull, 2)
    warnings.simplefilter("ignore")
    try:
        result = convert(model, config)
        outcome = (EXIT_OK, "") if result.passed else (EXIT_FAILED, result.report.verdict.reason)
    except BnfoldError as exc:
        outcome = (EXIT_BAD_INPUT, str(exc))
    except Exception as exc:  # a bug meets one model: that model fails, the batch goes on
        outcome = (EXIT_BAD_INPUT, f"internal error: {type(exc).__name__}: {exc}")
    sender.send((outcome[0], outcome[1][:2000]))
    sender.close()


@contextlib.contextmanager
def _interrupts_ignored_by_workers() -> Iterator[None]:
    """While a worker starts, SIGINT is ignored (a disposition the worker inherits, from before Python starts up
    in it) and blocked here (one that arrives meanwhile reaches this process's own handler after): Ctrl-C
    reaches the whole process group, and the parent alone handles it, stopping the workers with SIGTERM."""
    previous = signal.getsignal(signal.SIGINT)
    usable = hasattr(signal, "pthread_sigmask") and threading.current_thread() is threading.main_thread()
    if not usable or previous is None:  # signals are only set from the main thread; a handler from C stays
        yield
        return
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)


def _exit_unwinding(signum: int, _frame: Any) -> None:
    """SIGTERM in a worker: exit through the conversion's ``finally`` blocks, which remove its staging folders."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise SystemExit(128 + signum)


def exit_code(runs: Sequence[ModelRun]) -> int:
    """2 when a model was bad input (or crashed), else 1 when one failed parity, else 0."""
    codes = {run.exit_code for run in runs}
    return EXIT_BAD_INPUT if EXIT_BAD_INPUT in codes else EXIT_FAILED if EXIT_FAILED in codes else EXIT_OK
