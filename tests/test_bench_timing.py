"""Interleaving order, run counts, latency statistics and speedups. No timing numbers are asserted."""

from __future__ import annotations

import itertools

import pytest

from bnfold.bench import LatencyResult, interleave, speedups
from bnfold.bench.inputs import batches_of


def recorder() -> tuple[list[str], dict[str, object]]:
    log: list[str] = []
    return log, {name: (lambda name=name: log.append(name)) for name in ("original", "folded")}


def test_interleave_warms_up_then_rotates_the_starting_model() -> None:
    log, calls = recorder()
    samples = interleave(calls, warmup=2, min_runs=4, min_seconds=0.0)  # type: ignore[arg-type]
    assert log == ["original", "folded"] * 2 + [
        "original",
        "folded",
        "folded",
        "original",
        "original",
        "folded",
        "folded",
        "original",
    ]
    assert {k: len(v) for k, v in samples.items()} == {"original": 4, "folded": 4}


def test_interleave_runs_until_min_seconds_on_the_given_clock() -> None:
    ticks = itertools.count()
    log, calls = recorder()
    samples = interleave(
        calls,
        warmup=0,
        min_runs=1,
        min_seconds=10.0,  # type: ignore[arg-type]
        clock=lambda: float(next(ticks)),
    )
    assert len(samples["original"]) > 1
    assert all(t == 1000.0 for t in samples["original"])  # one tick per call, in ms


def test_interleave_stops_at_max_runs() -> None:
    _, calls = recorder()
    samples = interleave(calls, warmup=0, min_runs=5, min_seconds=3600.0, max_runs=3)  # type: ignore[arg-type]
    assert len(samples["folded"]) == 3


def test_latency_statistics_and_json_keys() -> None:
    result = LatencyResult.of(
        [4.0, 1.0, 2.0, 3.0], backend="torch", provider="eager", model="folded", batch=8, threads=2
    )
    stats = (result.min_ms, result.max_ms, result.p50_ms, result.mean_ms, result.runs)
    assert stats == (1.0, 4.0, 2.5, 2.5, 4)
    assert result.throughput == pytest.approx(8 / 2.5e-3)
    assert set(result.to_json()) == {
        "backend",
        "provider",
        "model",
        "batch",
        "p50_ms",
        "p90_ms",
        "p99_ms",
        "mean_ms",
        "std_ms",
        "min_ms",
        "max_ms",
        "throughput",
        "runs",
        "threads",
        "session_create_ms",
    }
    assert result.to_json()["session_create_ms"] is None


def test_latency_of_no_samples_is_an_error() -> None:
    with pytest.raises(ValueError, match="no timed runs"):
        LatencyResult.of([], backend="torch", provider="eager", model="folded", batch=1, threads=1)


def _result(model: str, samples: list[float], batch: int = 1) -> LatencyResult:
    return LatencyResult.of(
        samples, backend="onnxruntime", provider="CPUExecutionProvider", model=model, batch=batch, threads=1
    )


def test_speedup_is_the_median_of_paired_ratios_with_their_iqr() -> None:
    results = [_result("original", [2.0, 4.0, 6.0, 8.0]), _result("folded", [1.0, 2.0, 2.0, 8.0])]
    (s,) = speedups(results)
    ratios = sorted([2.0, 2.0, 3.0, 1.0])  # paired per iteration
    assert s.speedup_p50 == pytest.approx(2.0)  # their median, not p50(original) / p50(folded) = 2.5
    assert (s.speedup_low, s.speedup_high) == (pytest.approx(1.75), pytest.approx(2.25))
    assert ratios[0] <= (s.speedup_low or 0) <= s.speedup_p50 <= (s.speedup_high or 0) <= ratios[-1]
    assert set(s.to_json()) >= {"backend", "provider", "batch", "speedup_p50", "speedup_low", "speedup_high"}
    assert s.to_json()["verdict"] == "faster"


def test_a_speedup_whose_interval_straddles_one_is_unchanged() -> None:
    """Paired ratios 1.0, 1.11, 0.91, 1.11, 0.5: median 1.0 inside an interval (0.91-1.11) around 1."""
    original = [1.0, 1.0, 1.0, 10.0, 10.0]
    folded = [1.0, 0.9, 1.1, 9.0, 20.0]
    (s,) = speedups([_result("original", original), _result("folded", folded)])
    assert s.speedup_low is not None and s.speedup_high is not None
    assert s.speedup_low <= s.speedup_p50 <= s.speedup_high
    assert s.speedup_low < 1.0 < s.speedup_high and s.verdict == "unchanged"


def test_speedups_need_both_models_per_backend_provider_and_batch() -> None:
    results = [_result("original", [1.0]), _result("folded", [1.0]), _result("original", [1.0], batch=8)]
    assert [(s.batch, s.provider) for s in speedups(results)] == [(1, "CPUExecutionProvider")]


def test_speedup_without_samples_has_no_spread() -> None:
    a, b = _result("original", [2.0]), _result("folded", [1.0])
    a.samples_ms, b.samples_ms = [], []
    (s,) = speedups([a, b])
    assert s.speedup_p50 == 2.0 and s.speedup_low is None and s.speedup_high is None


def test_inputs_from_a_mapping_or_a_factory() -> None:
    import numpy as np

    mapping = {1: [np.zeros((1, 2))], 4: [np.zeros((4, 2))]}
    assert list(batches_of(mapping, None)) == [1, 4]
    with pytest.raises(ValueError, match=r"batch sizes \[2\]"):
        batches_of(mapping, [2])
    made = batches_of(lambda b: [np.zeros((b, 3))], [2, 5])
    assert {b: x[0].shape for b, x in made.items()} == {2: (2, 3), 5: (5, 3)}


def test_timings_whose_median_run_stalled_are_unsteady_and_prove_no_speedup() -> None:
    """Stalls (the cores busy with another process) in most runs: the median run takes 167x the fastest. The
    paired ratios still say 2x, but the verdict claims nothing, and a warning says why and what to do."""
    original = [1.2, 240.0, 180.0, 260.0, 200.0]
    folded = [0.6, 120.0, 90.0, 130.0, 100.0]
    with pytest.warns(RuntimeWarning, match=r"unsteady timings \(the median run took 167x the fastest\).*quiet"):
        (s,) = speedups([_result("original", original), _result("folded", folded)])
    assert s.speedup_low is not None and s.speedup_low > 1.0  # what the spread alone would call faster
    assert not s.steady and s.verdict == "unchanged"
    assert s.to_json()["steady"] is False and s.to_json()["verdict"] == "unchanged"
    (steady,) = speedups([_result("original", [2.0, 2.2, 2.1]), _result("folded", [1.0, 1.1, 1.0])])
    assert steady.steady and steady.verdict == "faster"


@pytest.mark.parametrize(
    ("folded_scale", "verdict"), [(1.0007, "unchanged"), (0.9993, "unchanged"), (1.05, "slower"), (0.95, "faster")]
)
def test_a_difference_below_one_percent_is_unchanged_even_with_a_tight_interval(
    folded_scale: float, verdict: str
) -> None:
    """A model timed against itself (seen: every paired ratio 0.999x, steady) is not slower; 5 % is."""
    original = [1.0 + 0.001 * i for i in range(40)]
    folded = [t * folded_scale for t in original]
    (s,) = speedups([_result("original", original), _result("folded", folded)])
    assert s.steady and s.speedup_low is not None and s.speedup_high is not None
    assert (s.speedup_low > 1.0 or s.speedup_high < 1.0) and s.verdict == verdict  # the interval excludes 1
