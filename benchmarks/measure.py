"""The measurements behind each target, one function each; every one returns a JSON-ready dict.

Each ratio is candidate ÷ baseline, measured in the same run with the same thread count on both sides:
latencies A/B interleaved (``bnfold.bench``), one-off times alternated A, B, B, A, ... and summarised by
their medians, wall time and memory in fresh processes (``wall.py``).
"""

from __future__ import annotations

import gc
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch
from subjects import HERE, Subject
from torch import nn

from bnfold.bench import bench_onnx, bench_torch

THREADS = 1  # intra-op threads for torch and onnxruntime, both sides of every ratio


@dataclass(frozen=True)
class Effort:
    """How hard to try: latency rounds and seconds, repetitions of one-off timings and of processes."""

    min_runs: int = 20
    min_seconds: float = 2.0
    repeats: int = 3
    sessions: int = 15
    processes: int = 3


def ratio_block(candidate: Sequence[float], baseline: Sequence[float], unit: str) -> dict[str, Any]:
    """Medians of both sides, their ratio, and (for paired samples) the median of per-pair ratios."""
    block: dict[str, Any] = {
        "candidate_median": statistics.median(candidate),
        "baseline_median": statistics.median(baseline),
        "unit": unit,
        "samples": [len(candidate), len(baseline)],
    }
    block["ratio"] = block["candidate_median"] / block["baseline_median"]
    if len(candidate) == len(baseline):
        block["paired_ratio_median"] = statistics.median(c / b for c, b in zip(candidate, baseline, strict=True))
    return block


# P1: onnxruntime latency ------------------------------------------------------------------------------


def export_without_batchnorm(twin: nn.Module, inputs: tuple[torch.Tensor, ...], path: Path) -> Path:
    """The BN-free twin exported as ``bnfold convert`` exports its output: captured by ``bnfold.fold``
    (nothing to fold), ``export_folded`` with the default exporter, opset 18, saved by ``export.save``
    (external data by the same rule)."""
    import bnfold
    from bnfold.export import export_folded, save

    captured = bnfold.fold(twin, inputs)
    save(export_folded(captured.module, inputs).model, path)
    return path


def ort_latency(
    folded: Path, bn_free: Path, inputs: tuple[torch.Tensor, ...], effort: Effort, blocks: int = 3
) -> dict[str, Any]:
    """P1: onnxruntime CPU latency of bnfold's output ÷ the BN-free twin's, interleaved.

    Timed in ``blocks`` blocks, each with fresh sessions and a share of the effort; the ratio is the median
    of the blocks' ratios, so one unlucky pair of sessions (seen once for a 7 µs model: 0.72) cannot decide
    it alone."""
    arrays = tuple(t.numpy() for t in inputs)
    batch = int(arrays[0].shape[0])
    samples: dict[str, list[float]] = {"bnfold": [], "bn_free": []}
    ratios = []
    for _ in range(blocks):
        results = bench_onnx(
            {"bnfold": folded, "bn_free": bn_free},
            {batch: arrays},
            threads=THREADS,
            min_runs=max(10, effort.min_runs // blocks),
            min_seconds=effort.min_seconds / blocks,
        )
        by_name = {r.model: r for r in results}
        ratios.append(by_name["bnfold"].p50_ms / by_name["bn_free"].p50_ms)
        for name in samples:
            samples[name] += by_name[name].samples_ms
    block = ratio_block(samples["bnfold"], samples["bn_free"], "ms")
    block.update(ratio=statistics.median(ratios), block_ratios=ratios)
    return block


# P2: PyTorch eager latency ----------------------------------------------------------------------------


def eager_latency(
    folded: nn.Module, bn_free: nn.Module, inputs: tuple[torch.Tensor, ...], effort: Effort
) -> dict[str, Any]:
    """P2: eager latency of ``bnfold.fold(...).module`` ÷ the BN-free twin, interleaved."""
    arrays = tuple(t.numpy() for t in inputs)
    results = bench_torch(
        {"bnfold": folded, "bn_free": bn_free},
        {int(arrays[0].shape[0]): arrays},
        threads=THREADS,
        min_runs=effort.min_runs,
        min_seconds=effort.min_seconds,
    )
    by_name = {r.model: r for r in results}
    return ratio_block(by_name["bnfold"].samples_ms, by_name["bn_free"].samples_ms, "ms")


# P4: fold step against torch.fx's fuse ------------------------------------------------------------------


def alternate(jobs: dict[str, Callable[[], object]], repeats: int) -> dict[str, list[float]]:
    """Run each job once untimed, then ``repeats`` timed rounds, the order flipping every round (seconds).
    As ``timeit`` does, the garbage collector is paused during each timed call (after a full collection
    before it): a collection of what one job left would otherwise land in whichever job runs next."""
    for job in jobs.values():
        job()
    names = list(jobs)
    times: dict[str, list[float]] = {name: [] for name in jobs}
    for i in range(repeats):
        for name in names if i % 2 == 0 else names[::-1]:
            gc.collect()
            gc.disable()
            try:
                start = time.perf_counter()
                jobs[name]()
                times[name].append(time.perf_counter() - start)
            finally:
                gc.enable()
    return times


def fold_time(
    module: nn.Module, inputs: tuple[torch.Tensor, ...], effort: Effort
) -> tuple[dict[str, Any], dict[str, Any], Any]:
    """P4: ``bnfold.fold(module, inputs)`` (tracing included) ÷ ``torch.fx.experimental.optimization.fuse``;
    P4t: the same fold ÷ the torch.export trace it starts from (``bnfold.fold.capture.capture``).

    Returns both blocks and the last fold result (reused for P2)."""
    from torch.fx.experimental.optimization import fuse

    from bnfold.fold import fold
    from bnfold.fold.capture import capture

    last: dict[str, Any] = {}

    def run_fold() -> None:
        last["fold"] = fold(module, inputs)

    with torch.no_grad():
        times = alternate(
            {"fold": run_fold, "fuse": lambda: fuse(module), "trace": lambda: capture(module, inputs)}, effort.repeats
        )
    return (
        ratio_block(times["fold"], times["fuse"], "s"),
        ratio_block(times["fold"], times["trace"], "s"),
        last["fold"],
    )


# P5: session creation ----------------------------------------------------------------------------------


def session_options() -> ort.SessionOptions:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads, options.inter_op_num_threads = THREADS, 1
    options.log_severity_level = 3
    return options


def create_session(path: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), session_options(), providers=["CPUExecutionProvider"])


def session_time(folded: Path, original: Path, effort: Effort) -> dict[str, Any]:
    """P5: onnxruntime session creation of bnfold's output ÷ the dynamo export of the original model."""
    times = alternate(
        {"bnfold": lambda: create_session(folded), "export": lambda: create_session(original)}, effort.sessions
    )
    return ratio_block([t * 1e3 for t in times["bnfold"]], [t * 1e3 for t in times["export"]], "ms")


# P3 and memory: fresh processes -------------------------------------------------------------------------


def run_process(job: str, subject: Subject, out: Path) -> dict[str, Any]:
    """``wall.py job`` in a fresh interpreter: its JSON line (with its peak RSS) and its wall time."""
    command = [
        sys.executable,
        str(HERE / "wall.py"),
        job,
        subject.name,
        "--resolution",
        str(subject.resolution),
        "--out",
        str(out),
        *(["--shallow"] if subject.shallow else []),
    ]
    with tempfile.TemporaryFile() as stdout, tempfile.TemporaryFile() as stderr:
        start = time.perf_counter()
        process = subprocess.run(command, stdout=stdout, stderr=stderr, cwd=HERE.parent, check=False)
        elapsed = time.perf_counter() - start
        stdout.seek(0), stderr.seek(0)
        lines = stdout.read().decode().strip().splitlines()
        if process.returncode != 0 or not lines:
            tail = stderr.read().decode(errors="replace").strip().splitlines()[-5:]
            raise RuntimeError(f"wall.py {job} {subject.name} exited {process.returncode}: " + " | ".join(tail))
    result = json.loads(lines[-1])
    result["process_seconds"] = elapsed
    return result


def convert_processes(subject: Subject, folder: Path, effort: Effort) -> dict[str, Any]:
    """P3 and memory: ``bnfold convert`` and a bare export, each in ``effort.processes`` fresh processes,
    alternating which goes first. The last outputs stay in ``folder`` (bnfold.onnx, export.onnx). The
    memory baseline is the bare export's peak plus one copy of the model's weights."""
    runs: dict[str, list[dict[str, Any]]] = {"convert": [], "export": []}
    paths = {"convert": folder / "bnfold.onnx", "export": folder / "export.onnx"}
    for i in range(effort.processes):
        for job in ("convert", "export") if i % 2 == 0 else ("export", "convert"):
            runs[job].append(run_process(job, subject, paths[job]))
    convert, export = runs["convert"], runs["export"]
    wall = ratio_block([r["seconds"] for r in convert], [r["seconds"] for r in export], "s")
    wall["process_seconds"] = [statistics.median(r["process_seconds"] for r in runs[j]) for j in runs]
    weights = export[-1]["weights_mb"]
    memory = ratio_block([r["peak_rss_mb"] for r in convert], [r["peak_rss_mb"] + weights for r in export], "MB")
    memory.update(
        weights_mb=weights,
        export_peak_mb=statistics.median(r["peak_rss_mb"] for r in export),
        ratio_to_export=memory["candidate_median"] / (memory["baseline_median"] - weights),
    )
    facts = {k: v for k, v in convert[-1].items() if k not in ("seconds", "process_seconds", "peak_rss_mb")}
    return {"P3": wall, "memory": memory, "convert": facts}


def output_nodes(path: Path) -> dict[str, Any]:
    """Node and BatchNormalization counts of an ONNX file, its size, and the size of its external data."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    external = [path.parent / e.value for t in graph.initializer for e in t.external_data if e.key == "location"]
    return {
        "nodes": len(graph.node),
        "batchnorm_nodes": sum(n.op_type == "BatchNormalization" for n in graph.node),
        "file_mb": path.stat().st_size / 2**20,
        "external_data_mb": sum(p.stat().st_size for p in set(external)) / 2**20,
    }


def outputs_agree(folded: Path, original: Path, inputs: tuple[torch.Tensor, ...]) -> float:
    """Max abs difference between bnfold's output and the plain export on the example (a sanity check)."""
    feeds = [t.numpy() for t in inputs]
    a, b = (create_session(p) for p in (folded, original))
    run = [s.run(None, {i.name: x for i, x in zip(s.get_inputs(), feeds, strict=True)})[0] for s in (a, b)]
    return float(np.max(np.abs(run[0] - run[1])))
