"""bench_onnx and bench_torch on tiny models with tiny run counts: structure, sessions, IO binding."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from test_verify_runners import linear_onnx
from torch import nn

import bnfold.bench.onnx_latency as onnx_latency
from bnfold.bench import (
    bench_onnx,
    bench_torch,
    binding_device,
    default_threads,
    logical_cores,
    physical_cores,
)
from bnfold.verify.runners import OrtRunner

QUICK = {"warmup": 1, "min_runs": 3, "min_seconds": 0.0}


def models() -> dict[str, bytes]:
    torch.manual_seed(0)
    return {"original": linear_onnx(nn.Linear(4, 3)), "folded": linear_onnx(nn.Linear(4, 3))}


def make_batch(batch: int) -> list[np.ndarray]:
    return [np.ones((batch, 4), dtype=np.float32)]


def test_bench_onnx_gives_one_result_per_model_and_batch() -> None:
    results = bench_onnx(models(), make_batch, threads=1, batch_sizes=(1, 4), **QUICK)  # type: ignore[arg-type]
    expected = [("original", 1), ("folded", 1), ("original", 4), ("folded", 4)]
    assert [(r.model, r.batch) for r in results] == expected
    for r in results:
        assert (r.backend, r.provider, r.threads, r.runs) == ("onnxruntime", "CPUExecutionProvider", 1, 3)
        assert r.session_create_ms is not None and r.session_create_ms >= 0
        assert r.min_ms <= r.p50_ms <= r.p90_ms <= r.p99_ms <= r.max_ms and r.throughput > 0
    sessions = {(r.model, r.session_create_ms) for r in results}
    assert len(sessions) == 2  # one session per model, reused for every batch size


def test_io_binding_only_for_device_providers() -> None:
    assert binding_device("CPUExecutionProvider") is None
    assert binding_device("CUDAExecutionProvider") == "cuda"
    assert binding_device("TensorrtExecutionProvider") == "cuda"


def test_device_providers_are_timed_through_io_binding(monkeypatch: pytest.MonkeyPatch) -> None:
    runner = OrtRunner(models()["folded"])
    bound: list[str] = []

    def spy(session: object, feeds: object, device: str) -> object:
        bound.append(device)
        return lambda: None

    monkeypatch.setattr(onnx_latency, "bound_call", spy)
    onnx_latency.timed_call(runner, make_batch(2), "CUDAExecutionProvider")
    onnx_latency.timed_call(runner, make_batch(2), "CPUExecutionProvider")
    assert bound == ["cuda"]


def test_the_io_binding_call_computes_what_a_plain_run_does() -> None:
    runner = OrtRunner(models()["folded"])
    feeds = runner.feeds(make_batch(2))
    bindings = []
    make_binding = runner.session.io_binding
    runner.session.io_binding = lambda: bindings.append(make_binding()) or bindings[-1]  # type: ignore[method-assign]
    call = onnx_latency.bound_call(runner.session, feeds, "cpu")
    call()  # on CPU memory here; the same code binds CUDA memory on a GPU
    (bound,) = bindings[0].copy_outputs_to_cpu()
    (plain,) = runner.session.run(None, feeds)
    np.testing.assert_array_equal(bound, plain)


def test_a_provider_that_falls_back_is_skipped_with_a_warning() -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        providers = ("CPUExecutionProvider", "CUDAExecutionProvider")
        results = bench_onnx(models(), make_batch, providers, threads=1, **QUICK)  # type: ignore[arg-type]
    assert {r.provider for r in results} == {"CPUExecutionProvider"}
    assert any("CUDAExecutionProvider is not usable here" in str(w.message) for w in caught)


def test_bench_torch_times_modules_and_restores_the_thread_count() -> None:
    before = torch.get_num_threads()
    modules = {"original": nn.Linear(4, 3).eval(), "folded": nn.Linear(4, 3).eval()}
    results = bench_torch(modules, {2: make_batch(2)}, threads=1, **QUICK)  # type: ignore[arg-type]
    assert torch.get_num_threads() == before
    assert [(r.backend, r.provider, r.model, r.batch, r.runs) for r in results] == [
        ("torch", "eager", "original", 2, 3),
        ("torch", "eager", "folded", 2, 3),
    ]
    assert all(r.session_create_ms is None and r.threads == 1 for r in results)


def test_default_threads_is_one_per_physical_core() -> None:
    assert 1 <= default_threads() == physical_cores() <= logical_cores()


def test_physical_cores_from_cpuinfo(tmp_path: object) -> None:
    path = tmp_path / "cpuinfo"  # type: ignore[operator]
    block = "processor\t: {i}\nmodel name\t: Test CPU\nphysical id\t: 0\ncore id\t\t: {core}\n"
    blocks = [block.format(i=i, core=i // 2) for i in range(4)]
    path.write_text("\n".join(blocks))
    from bnfold.bench.cpu import cpu_model

    assert physical_cores(path) == min(2, logical_cores())
    assert cpu_model(path) == "Test CPU"
