"""Where ``bnfold convert`` spends its time and memory, stage by stage, on one model; and two alternatives.

    python benchmarks/profile_convert.py                  # ResNet-50 at 224x224
    python benchmarks/profile_convert.py --model densenet121 --resolution 160 --cprofile 30
    python benchmarks/profile_convert.py --model wide_mlp --sections stages   # the 2.4 GB model, from its archive

1. Stages: ``bnfold.convert(model, ConvertConfig(bench=False))`` with its stage functions (and every parity
   runner's build and runs) wrapped by timers, the process's RSS sampled every 20 ms in a thread (the peak
   of each stage), after the same warm-up as ``wall.py``; then the export of the original model that
   ``convert`` adds when latency is measured (``bench=True``). The shipped and large models are given as
   their ``.pt2`` archives, as ``wall.py`` gives them.
2. Inside the folded model's dynamo export: torch.export, decompositions, translation, ONNX optimisation
   (cProfile cumulative times, inflated by the profiler; read them as shares).
3. The TorchScript exporter (``dynamo=False``) on the folded GraphModule: does it work, how fast, and is
   its output as fast in onnxruntime (interleaved) as the dynamo exporter's?
4. Session creation from an offline-optimised model (``SessionOptions.optimized_model_filepath``).

Prints a plain-text report; nothing is written except temporary files.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import resource
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import onnx
import onnxruntime as ort
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import measure  # noqa: E402
import wall  # noqa: E402
from subjects import Subject  # noqa: E402

from bnfold.convert import ConvertConfig, convert  # noqa: E402

Stage = tuple[int, str, float, float, float, float]  # depth, label, start, seconds, RSS after, peak (MB)


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class RssSampler:
    """Samples the process's RSS every ``interval`` seconds in a thread: the peak of any stretch of a run."""

    def __init__(self, interval: float = 0.02) -> None:
        self.interval, self.samples = interval, [(time.perf_counter(), rss_mb())]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.samples.append((time.perf_counter(), rss_mb()))

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def peak(self, start: float, end: float) -> float:
        inside = [rss for t, rss in self.samples if start <= t <= end]
        return max(inside, default=rss_mb())


class StageTimer:
    """Wraps functions in their modules' namespaces; records each call's time, the RSS after it and the
    peak RSS sampled while it ran."""

    def __init__(self, sampler: RssSampler | None = None) -> None:
        self.stages: list[Stage] = []
        self.depth = 0
        self.sampler = sampler

    def wrap(self, function: Callable[..., Any], label: Callable[..., str] | str) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            name = label if isinstance(label, str) else label(*args, **kwargs)
            depth, start = self.depth, time.perf_counter()
            self.depth += 1
            try:
                return function(*args, **kwargs)
            finally:
                self.depth -= 1
                end = time.perf_counter()
                peak = self.sampler.peak(start, end) if self.sampler else peak_mb()
                self.stages.append((depth, name, start, end - start, rss_mb(), peak))

        return timed

    @contextmanager
    def patched(self, targets: list[tuple[str, str, Callable[..., str] | str]]) -> Iterator[None]:
        saved = []
        for module_name, attr, label in targets:
            module = sys.modules[module_name]
            if not hasattr(module, attr):
                print(f"(not timed: {module_name}.{attr} no longer exists)")
                continue
            saved.append((module, attr, getattr(module, attr)))
            setattr(module, attr, self.wrap(getattr(module, attr), label))
        try:
            yield
        finally:
            for module, attr, original in reversed(saved):
                setattr(module, attr, original)

    def runner_factory(self, factory: Callable[..., Any], kind: str) -> Callable[..., Any]:
        """Wrap ``torch_runner`` / ``ort_runner``: time building the runner and every call, by label."""

        def make(*args: Any, **kwargs: Any) -> Any:
            name = runner_label(kind, args, kwargs)
            runner = self.wrap(factory, f"build {name}")(*args, **kwargs)
            return TimedRunner(runner, self.wrap(runner, f"run {name}"))

        return make


class TimedRunner:
    """A runner whose calls go through a timer; every other attribute is the runner's own."""

    def __init__(self, runner: Any, timed: Callable[..., Any]) -> None:
        self._runner, self._timed = runner, timed

    def __call__(self, *args: Any) -> Any:
        return self._timed(*args)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._runner, name)


def runner_label(kind: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
    if kind == "torch":
        dtype = args[1] if len(args) > 1 else kwargs.get("dtype", torch.float32)
        return f"torch {str(dtype).replace('torch.', '')} ({type(args[0]).__name__})"
    optimization = args[2] if len(args) > 2 else kwargs.get("optimization", "all")
    return f"onnxruntime optimizations {optimization}"


def stage_targets() -> list[tuple[str, str, Callable[..., str] | str]]:
    import bnfold.convert.checks  # noqa: F401
    import bnfold.export  # noqa: F401
    import bnfold.load.loaded  # noqa: F401
    import bnfold.report  # noqa: F401
    import bnfold.verify.matrix  # noqa: F401

    return [
        ("bnfold.convert", "_as_loaded", "load"),
        ("bnfold.convert", "fold_and_export", "fold + export"),
        ("bnfold.convert.paths", "fold", "fold (bnfold.fold)"),
        ("bnfold.fold", "capture", "trace: torch.export of the original"),
        ("bnfold.fold", "graph_module", "ExportedProgram.module()"),
        ("bnfold.fold", "fold_constants", "fold_constants"),
        ("bnfold.fold", "find_sites", "find_sites"),
        ("bnfold.fold", "fold_graph", "fold_graph (graph rewrite)"),
        ("bnfold.fold", "plain_module", "plain_module (recompile)"),
        ("bnfold.convert.paths", "export_folded", "export of the folded GraphModule (export_folded)"),
        ("bnfold.export", "_torchscript_export", "torch.onnx.export (TorchScript)"),
        ("bnfold.export", "tidy", "tidy (onnx_ir passes)"),
        ("bnfold.convert", "_saved", "annotate, save, check"),
        ("bnfold.export", "save", "save into the staging folder"),
        ("bnfold.convert", "check", "onnx.checker"),
        ("bnfold.convert", "verify_stage", "parity (verify_stage)"),
        ("bnfold.verify.matrix", "_run_reference", "fp64 reference, every batch"),
        ("bnfold.verify.matrix", "_run_all", "a candidate, every batch"),
        ("bnfold.verify.matrix", "_release", "release"),
        ("bnfold.convert", "_write", "write ONNX file and reports"),
        ("bnfold.load.loaded", "file_sha256", "sha256 of a file"),
        ("bnfold.report", "write_report_files", "reports (JSON, Markdown, HTML)"),
    ]


def profile_stages(subject: Subject, folder: Path, original_export: bool = True) -> tuple[list[Stage], float, Any]:
    """One ``convert`` with its stages timed and the RSS sampled; returns the stages, the total and the
    result. The shipped and large models are given as their archives (as ``wall.py`` does)."""
    import bnfold.verify.chain as chain

    sampler = RssSampler()
    timer = StageTimer(sampler)
    archive = subject.shipped or subject.large
    source, inputs = subject.convert_source(), None if archive else subject.inputs()
    config = ConvertConfig(output=folder / "bnfold.onnx", bench=False, write_reports=True)
    saved = chain.torch_runner, chain.ort_runner
    chain.torch_runner = timer.runner_factory(chain.torch_runner, "torch")
    chain.ort_runner = timer.runner_factory(chain.ort_runner, "ort")
    try:
        with timer.patched(stage_targets()):
            start = time.perf_counter()
            result = convert(source, config, example_inputs=inputs)
            total = time.perf_counter() - start
    finally:
        chain.torch_runner, chain.ort_runner = saved
        sampler.stop()
    print(f"peak RSS sampled during convert: {sampler.peak(start, start + total):.0f} MB")
    converted = result.converted
    if not original_export:
        return timer.stages, total, result
    if converted is None or converted.original_onnx is None:
        raise RuntimeError("convert kept no way to export the original model")
    original = timer.wrap(converted.original_onnx, "(bench=True only) dynamo export of the original, for latency")()
    onnx.save_model(original, str(folder / "original.onnx"))
    return timer.stages, total, result


def print_stages(stages: list[Stage], total: float) -> None:
    """Stages in call order (repeated calls summed, with their count), nested calls indented; shares of the
    convert total; RSS and peak RSS after the stage's last call."""
    print(f"\n## convert stages (total {total:.2f} s, bench off)\n")
    print(f"{'stage':<76} {'seconds':>8} {'share':>6} {'RSS MB':>7} {'peak MB':>8}")
    print("(RSS after the stage's last call; peak: the highest RSS sampled during its calls)")
    groups: dict[tuple[int, str], list[Stage]] = {}
    for stage in sorted(stages, key=lambda s: (s[2], s[0])):
        groups.setdefault((stage[0], stage[1]), []).append(stage)
    for (depth, name), calls in groups.items():
        seconds = sum(c[3] for c in calls)
        label = "  " * depth + name + (f" (x{len(calls)})" if len(calls) > 1 else "")
        print(f"{label:<76} {seconds:8.3f} {seconds / total:6.1%} {calls[-1][4]:7.0f} {calls[-1][5]:8.0f}")


# 2. Inside the dynamo export ------------------------------------------------------------------------------

EXPORT_PARTS = (
    ("torch/export/__init__.py", "export", "torch.export.export (capture)"),
    ("exporter/_registration.py", "from_torchlib", "operator registry (from_torchlib)"),
    ("exporter/_core.py", "_prepare_exported_program_for_export", "decompositions"),
    ("exporter/_core.py", "_exported_program_to_onnx_program", "translation to ONNX"),
    ("exporter/_onnx_program.py", "optimize", "ONNX optimisation (onnxscript)"),
    ("torch/onnx/__init__.py", "export", "torch.onnx.export, total"),
)


def export_breakdown(module: torch.nn.Module, inputs: tuple[torch.Tensor, ...]) -> list[tuple[str, float]]:
    """cProfile cumulative seconds of the dynamo exporter's phases, exporting ``module`` as bnfold does."""
    from bnfold.export import export_module

    profile = cProfile.Profile()
    profile.runcall(export_module, module, inputs)
    stats = pstats.Stats(profile, stream=io.StringIO()).stats  # type: ignore[attr-defined]
    parts = []
    for suffix, function, label in EXPORT_PARTS:
        seconds = [v[3] for (file, _, name), v in stats.items() if file.endswith(suffix) and name == function]
        parts.append((label, max(seconds, default=0.0)))
    return parts


# 3. The TorchScript exporter on the folded GraphModule ---------------------------------------------------


def torchscript_export(module: torch.nn.Module, inputs: tuple[torch.Tensor, ...], path: Path) -> str | None:
    """``torch.onnx.export(..., dynamo=False)`` of ``module``; the error text when it fails."""
    from bnfold.export import quiet

    try:
        with quiet(), torch.no_grad():
            torch.onnx.export(
                module,
                inputs,
                str(path),
                dynamo=False,
                opset_version=18,
                input_names=["input_0"],
                output_names=["output_0"],
                dynamic_axes={"input_0": {0: "batch"}, "output_0": {0: "batch"}},
            )
    except Exception as exc:  # report whatever the exporter raises
        return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    return None


def plain_graph_module(folded: torch.fx.GraphModule) -> torch.fx.GraphModule:
    """The folded graph in a plain ``fx.GraphModule``: no ExportedProgram hooks (``train()`` refused, input
    checks), no ``_guards_fn`` call, no pytree codegen (outputs come back as a tuple)."""
    import copy

    graph = copy.deepcopy(folded.graph)
    graph._codegen = torch.fx.graph.CodeGen()
    for node in list(graph.nodes):
        if node.op == "call_module" and node.target == "_guards_fn":
            graph.erase_node(node)
    return torch.fx.GraphModule(folded, graph)


def compare_exporters(
    folded: torch.fx.GraphModule, inputs: tuple[torch.Tensor, ...], dynamo_path: Path, folder: Path, repeats: int
) -> dict[str, Any]:
    """Export time (alternating, after one untimed call each), output agreement, latency and session time.

    The TorchScript exporter is tried on the folded GraphModule as ``fold`` returns it, then on
    :func:`plain_graph_module` of it."""
    from bnfold.export import export_module

    ts_path = folder / "torchscript.onnx"
    out: dict[str, Any] = {"error_as_returned": torchscript_export(folded, inputs, ts_path)}
    if out["error_as_returned"] is not None:
        folded = plain_graph_module(folded)
        out["error_plain_graph_module"] = torchscript_export(folded, inputs, ts_path)
        if out["error_plain_graph_module"] is not None:
            return out
    times = measure.alternate(
        {
            "torchscript": lambda: torchscript_export(folded, inputs, ts_path),
            "dynamo": lambda: export_module(folded, inputs),
        },
        repeats,
    )
    effort = measure.Effort(min_runs=20, min_seconds=2.0, sessions=5)
    latency = measure.ort_latency(ts_path, dynamo_path, inputs, effort)
    sessions = measure.session_time(ts_path, dynamo_path, effort)
    return {
        **out,
        "export_seconds": {k: sorted(v)[len(v) // 2] for k, v in times.items()},
        "max_abs_diff": measure.outputs_agree(ts_path, dynamo_path, inputs),
        "nodes": {"torchscript": measure.output_nodes(ts_path), "dynamo": measure.output_nodes(dynamo_path)},
        "latency_torchscript_over_dynamo": latency,
        "session_torchscript_over_dynamo": sessions,
    }


# 2b. What re-tracing and per-batch parity calls cost -------------------------------------------------------


def program_versus_module(model: torch.nn.Module, inputs: tuple[torch.Tensor, ...], repeats: int) -> dict[str, Any]:
    """torch.onnx.export of an already captured ExportedProgram against the module (which it re-traces)."""
    from bnfold.export import quiet

    program = torch.export.export(model, inputs, strict=False)

    def export(what: Any) -> Callable[[], object]:
        def run() -> object:
            with quiet():
                return torch.onnx.export(what, inputs, dynamo=True, verbose=False)

        return run

    times = measure.alternate({"ExportedProgram": export(program), "nn.Module": export(model)}, repeats)
    return {k: sorted(v)[len(v) // 2] for k, v in times.items()}


def batched_parity(
    model: torch.nn.Module, onnx_path: Path, inputs: tuple[torch.Tensor, ...], repeats: int
) -> dict[str, Any]:
    """The fp64 reference and an onnxruntime session on 4 single-sample batches, one call each, against
    one call on the 4 samples stacked (possible when the exported batch dimension is dynamic)."""
    import copy

    import numpy as np

    reference = copy.deepcopy(model).double()
    singles = [inputs[0].double() + 0.01 * i for i in range(4)]
    stacked = torch.cat(singles)
    session = measure.create_session(onnx_path)
    name = session.get_inputs()[0].name
    arrays = [t.float().numpy() for t in singles]

    def torch_calls(batches: list[torch.Tensor]) -> Callable[[], object]:
        def run() -> object:
            with torch.inference_mode():
                return [reference(b) for b in batches]

        return run

    def ort_calls(batches: list[np.ndarray]) -> Callable[[], object]:
        return lambda: [session.run(None, {name: b}) for b in batches]

    jobs = {
        "fp64 torch, 4 calls": torch_calls(singles),
        "fp64 torch, 1 stacked call": torch_calls([stacked]),
        "onnxruntime, 4 calls": ort_calls(arrays),
        "onnxruntime, 1 stacked call": ort_calls([np.concatenate(arrays)]),
    }
    times = measure.alternate(jobs, repeats)
    return {k: sorted(v)[len(v) // 2] for k, v in times.items()}


# 4. Offline-optimised models -----------------------------------------------------------------------------


def offline_optimised(path: Path, folder: Path, level: ort.GraphOptimizationLevel, name: str) -> Path:
    """Save onnxruntime's optimised graph of ``path`` at ``level`` (ORT_ENABLE_ALL output is machine-specific)."""
    options = measure.session_options()
    options.graph_optimization_level = level
    options.optimized_model_filepath = str(folder / name)
    ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return folder / name


def session_seconds(path: Path, level: ort.GraphOptimizationLevel) -> Callable[[], object]:
    def create() -> object:
        options = measure.session_options()
        options.graph_optimization_level = level
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    return create


def compare_offline(path: Path, folder: Path, inputs: tuple[torch.Tensor, ...], repeats: int) -> dict[str, Any]:
    """Session creation: the file as written (ORT_ENABLE_ALL) against the same graph with its weights in an
    external data file, and against offline-optimised files; and the latency of the ENABLE_ALL offline file
    against the file as written (interleaved)."""
    import onnx

    levels = ort.GraphOptimizationLevel
    extended = offline_optimised(path, folder, levels.ORT_ENABLE_EXTENDED, "offline_extended.onnx")
    full = offline_optimised(path, folder, levels.ORT_ENABLE_ALL, "offline_all.onnx")
    external = folder / "external.onnx"
    onnx.save_model(onnx.load(str(path)), str(external), save_as_external_data=True, location="external.onnx.data")
    jobs = {
        "as written, ENABLE_ALL": session_seconds(path, levels.ORT_ENABLE_ALL),
        "weights as external data, ENABLE_ALL": session_seconds(external, levels.ORT_ENABLE_ALL),
        "offline EXTENDED, then ENABLE_ALL": session_seconds(extended, levels.ORT_ENABLE_ALL),
        "offline ALL, loaded with DISABLE_ALL": session_seconds(full, levels.ORT_DISABLE_ALL),
    }
    times = measure.alternate(jobs, repeats)
    medians = {k: 1e3 * sorted(v)[len(v) // 2] for k, v in times.items()}
    arrays = tuple(t.numpy() for t in inputs)
    latency = offline_latency(path, full, arrays)
    return {
        "session_ms": medians,
        "latency_ms": latency,
        "size_mb": {p.name: p.stat().st_size / 2**20 for p in (path, extended, full)},
    }


def offline_latency(path: Path, full: Path, arrays: tuple[Any, ...]) -> dict[str, float]:
    from bnfold.bench import interleave

    levels = ort.GraphOptimizationLevel
    sessions = {
        "as written": session_seconds(path, levels.ORT_ENABLE_ALL)(),
        "offline ALL": session_seconds(full, levels.ORT_DISABLE_ALL)(),
    }
    calls = {k: (lambda s=s: s.run(None, {s.get_inputs()[0].name: arrays[0]})) for k, s in sessions.items()}
    samples = interleave(calls, warmup=5, min_runs=20, min_seconds=2.0)
    return {k: sorted(v)[len(v) // 2] for k, v in samples.items()}


# Main ------------------------------------------------------------------------------------------------------

SECTIONS = ("stages", "export", "program", "parity", "torchscript", "offline")


def main() -> None:
    parser = argparse.ArgumentParser(description="profile bnfold convert stage by stage")
    parser.add_argument("--model", default="resnet50")
    parser.add_argument("--resolution", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--sections", default=",".join(SECTIONS), help=f"comma-separated subset of {SECTIONS}")
    args = parser.parse_args()
    sections = set(args.sections.split(","))
    torch.set_num_threads(measure.THREADS)
    wall.warm_up()
    subject = Subject(args.model, args.resolution)
    print(f"# bnfold convert profile: {subject.describe()}, {measure.THREADS} thread(s)")
    with tempfile.TemporaryDirectory(prefix="bnfold-profile-") as tmp:
        folder = Path(tmp)
        if subject.large:
            subject.build_archive()
        try:
            stages, total, result = profile_stages(subject, folder, original_export=not subject.large)
        finally:
            if subject.large:
                subject.archive.unlink(missing_ok=True)
        if "stages" in sections:
            print_stages(stages, total)
        if not subject.large:  # the other sections would hold several copies of a large model
            run_sections(sections, subject, result.converted.folded, folder, args.repeats)


def run_sections(sections: set[str], subject: Subject, folded: Any, folder: Path, repeats: int) -> None:
    inputs = subject.inputs()
    if "export" in sections:
        print("\n## inside the dynamo export of the folded GraphModule (cProfile, cumulative s)\n")
        for label, seconds in export_breakdown(folded, inputs):
            print(f"{label:<50} {seconds:8.3f}")
    if "program" in sections:
        print("\n## torch.onnx.export of a captured ExportedProgram vs the nn.Module (median s)\n")
        print(program_versus_module(subject.module(), inputs, repeats))
    if "parity" in sections:
        print("\n## parity inputs one by one vs stacked (median s)\n")
        print(batched_parity(subject.module(), folder / "bnfold.onnx", inputs, repeats))
    if "torchscript" in sections:
        print("\n## TorchScript exporter (dynamo=False) on the folded GraphModule\n")
        print(compare_exporters(folded, inputs, folder / "bnfold.onnx", folder, repeats))
    if "offline" in sections:
        print("\n## session creation (median ms) and latency (median ms): external data, offline-optimised\n")
        print(compare_offline(folder / "bnfold.onnx", folder, inputs, max(repeats, 5)))


if __name__ == "__main__":
    main()
