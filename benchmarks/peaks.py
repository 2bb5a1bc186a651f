"""Where ``bnfold convert``'s peak memory is, stage by stage, exactly: the process's high-water mark is reset
before each stage (``/proc/self/clear_refs``) and read after it, so each stage's peak is its own, not a
sample. Then, in a second process, what running the model once costs on its own: one onnxruntime session
of the written file (``ORT_ENABLE_ALL``, as parity builds it) and one float64 forward of the original (as
parity's reference runs it), each from the RSS the model alone holds, in a fresh process.

    python benchmarks/peaks.py resnet50 [--resolution 224]

Linux only. The process is set up as ``wall.py`` sets it up (same imports, same warm-up), so the first
line's "model built" is where both sides of ``wall.py`` stand when their timed call starts.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import wall
from subjects import Subject

from bnfold.convert import ConvertConfig, convert
from bnfold.verify import runners

STATUS_KEYS = ("VmHWM", "VmRSS", "RssAnon", "RssFile")


def status() -> dict[str, int]:
    """This process's memory figures, MiB."""
    lines = Path("/proc/self/status").read_text().splitlines()
    return {k: int(v.split()[0]) // 1024 for k, v in (line.split(":", 1) for line in lines) if k in STATUS_KEYS}


def reset_peak() -> None:
    Path("/proc/self/clear_refs").write_text("5")


class Peaks:
    """Rows of (stage, peak during it, RSS after it), each stage's peak measured from a reset."""

    def __init__(self) -> None:
        self.rows: list[tuple[str, int, int]] = []

    def mark(self, stage: str) -> None:
        now = status()
        self.rows.append((stage, now["VmHWM"], now["VmRSS"]))
        reset_peak()

    def around(self, owner: Any, name: str, stage: str) -> None:
        """Mark before and after every call of ``owner.name``."""
        function = getattr(owner, name)

        def marked(*args: Any, **kwargs: Any) -> Any:
            self.mark(f"(before {stage})")
            out = function(*args, **kwargs)
            self.mark(stage)
            return out

        setattr(owner, name, marked)

    def print(self, title: str) -> None:
        print(f"\n## {title}\n\n| stage | peak MB | RSS after MB |\n|---|---:|---:|")
        for stage, peak, rss in self.rows:
            if not stage.startswith("(before"):
                print(f"| {stage} | {peak} | {rss} |")


@contextlib.contextmanager
def convert_stages(peaks: Peaks) -> Iterator[None]:
    """Mark convert's stages: the fold, the export, the save, and each parity runner as it is released."""
    paths, export = importlib.import_module("bnfold.convert.paths"), importlib.import_module("bnfold.export")
    saved = [(paths, "fold"), (paths, "export_folded"), (export, "save"), (runners.LazyRunner, "release")]
    stock = [getattr(owner, name) for owner, name in saved]
    peaks.around(paths, "fold", "fold (trace and fold)")
    peaks.around(paths, "export_folded", "export (TorchScript exporter, weights file, tidy)")
    peaks.around(export, "save", "save (weights moved into .data)")
    release = runners.LazyRunner.release

    def released(self: runners.LazyRunner) -> None:
        built, label = self._runner is not None, _runner_label(self._runner)  # no reference kept to it
        release(self)
        if built:
            peaks.mark(f"parity: {label}")

    runners.LazyRunner.release = released  # type: ignore[method-assign]
    try:
        yield
    finally:
        for (owner, name), function in zip(saved, stock, strict=True):
            setattr(owner, name, function)


def _runner_label(runner: Any) -> str:
    if isinstance(runner, runners.OrtRunner):
        return f"onnxruntime session ({runner.optimization}), built and run"
    if isinstance(runner, runners.TorchRunner):
        kind = "float64 reference" if runner.dtype == torch.float64 else "folded module (float32)"
        return f"{kind}, run"
    return type(runner).__name__


def alone(peaks: Peaks, label: str, work: Callable[[], object]) -> None:
    """The peak of ``work`` from where the process stands (its objects dropped before the next)."""
    runners.return_freed_memory()
    peaks.mark(f"(before {label})")
    work()
    runners.return_freed_memory()
    peaks.mark(label)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("--resolution", type=int, default=224)
    parser.add_argument("--alone", type=Path, help=argparse.SUPPRESS)  # the second process, given the file
    args = parser.parse_args()
    torch.set_num_threads(1)
    wall.warm_up()
    subject = Subject(args.model, args.resolution, False)
    if args.alone is not None:
        run_alone(subject, args.alone)
        return
    archive = subject.shipped or subject.large
    source, inputs = subject.convert_source(), None if archive else subject.inputs()
    peaks = Peaks()
    peaks.mark("model built (imports, warm-up, the model)")
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "model.onnx"
        with convert_stages(peaks):
            convert(source, ConvertConfig(output=out, bench=False, write_reports=True), example_inputs=inputs)
        peaks.mark("reports")
        peaks.print(f"{args.model}: bnfold convert, each stage's own peak")
        command = [sys.executable, __file__, args.model, "--resolution", str(args.resolution), "--alone", str(out)]
        subprocess.run(command, check=True)


def run_alone(subject: Subject, written: Path) -> None:
    """In a process of its own: the model built as for ``convert``, then what running it once costs."""
    model = subject.export_source() if subject.shipped or subject.large else subject.convert_source()
    arrays = tuple(t.numpy() for t in subject.inputs())
    costs = Peaks()
    costs.mark("model built (imports, warm-up, the model)")
    alone(costs, "onnxruntime session (all) of the written file, built and run once", lambda: _ort(written, arrays))
    alone(costs, "float64 forward of the original, as parity's reference runs it", lambda: _fp64(model, arrays))
    costs.print(f"{subject.name}: running the model once beside it, in a fresh process")


def _ort(path: Path, arrays: tuple[np.ndarray, ...]) -> None:
    runners.ort_runner(path, optimization="all", threads=1)(arrays)


def _fp64(model: Any, arrays: tuple[np.ndarray, ...]) -> None:
    module = model.module() if isinstance(model, torch.export.ExportedProgram) else model
    runners.torch_runner(module, torch.float64)(arrays)


if __name__ == "__main__":
    main()
