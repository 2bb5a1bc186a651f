"""Interleaved timing and the latency statistics of one (backend, provider, model, batch).

Models are timed A/B interleaved: each iteration runs every model once, the starting model rotating
from one iteration to the next, so that drift (thermal throttling, a noisy neighbour, frequency scaling)
hits all of them alike and per-iteration ratios between them are paired.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any, TypedDict

import numpy as np
from typing_extensions import Unpack

Clock = Callable[[], float]


@dataclass(frozen=True)
class Rounds:
    """How long :func:`interleave` times: ``warmup`` untimed rounds, then timed rounds until at least
    ``min_runs`` rounds and ``min_seconds`` have passed (or ``max_runs`` rounds, if given)."""

    warmup: int = 10
    min_runs: int = 30
    min_seconds: float = 1.0
    max_runs: int | None = None

    def expected(self, rounds: int, elapsed: float) -> int:
        """How many timed rounds will run in all, judged from ``rounds`` done in ``elapsed`` seconds."""
        by_time = math.ceil(rounds * self.min_seconds / elapsed) if elapsed > 0 else rounds
        expected = max(self.min_runs, by_time, rounds)
        return min(expected, self.max_runs) if self.max_runs is not None else expected


class RoundsKeywords(TypedDict, total=False):
    """The fields of :class:`Rounds` as keywords, how every timing function is told how long to time:
    ``interleave(calls, warmup=2, min_runs=5)``, ``bench_onnx(models, inputs, min_seconds=0.5)``."""

    warmup: int
    min_runs: int
    min_seconds: float
    max_runs: int | None


def interleave(
    calls: Mapping[str, Callable[[], object]],
    clock: Clock = time.perf_counter,
    on_round: Callable[[int, int], None] | None = None,
    **rounds: Unpack[RoundsKeywords],
) -> dict[str, list[float]]:
    """Time every call round robin for the :class:`Rounds` its keywords name (``warmup``, ``min_runs``,
    ``min_seconds``, ``max_runs``); returns each call's per-iteration times in milliseconds.

    Round ``i`` starts with call ``i mod n``. ``on_round(done, expected)`` is called after each timed round
    (outside the timed region) with the rounds done and the rounds expected in all, as the pace so far
    predicts.
    """
    plan = Rounds(**rounds)
    names = list(calls)
    if not names:
        return {}
    for _ in range(plan.warmup):
        for name in names:
            calls[name]()
    samples: dict[str, list[float]] = {name: [] for name in names}
    start, done = clock(), 0
    while done < plan.min_runs or clock() - start < plan.min_seconds:
        if plan.max_runs is not None and done >= plan.max_runs:
            break
        shift = done % len(names)
        for name in names[shift:] + names[:shift]:
            t0 = clock()
            calls[name]()
            samples[name].append((clock() - t0) * 1e3)
        done += 1
        if on_round is not None:
            on_round(done, plan.expected(done, clock() - start))
    return samples


@dataclass
class LatencyResult:
    """Latency of one model on one backend, provider and batch size. Times in milliseconds.

    ``throughput`` is samples per second at the mean latency (batch / mean). ``samples_ms`` holds the
    per-iteration times (paired across models by index) and is not part of the JSON.
    """

    backend: str
    provider: str
    model: str
    batch: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    std_ms: float
    min_ms: float
    max_ms: float
    throughput: float
    runs: int
    threads: int
    session_create_ms: float | None = None
    samples_ms: list[float] = field(default_factory=list, repr=False)

    @classmethod
    def of(
        cls,
        samples_ms: list[float],
        *,
        backend: str,
        provider: str,
        model: str,
        batch: int,
        threads: int,
    ) -> LatencyResult:
        """Statistics of the timed samples (``session_create_ms`` is set by who created the session)."""
        if not samples_ms:
            raise ValueError(f"no timed runs for {model} ({backend}, {provider}, batch {batch})")
        x = np.asarray(samples_ms, dtype=np.float64)
        p50, p90, p99 = (float(v) for v in np.percentile(x, [50, 90, 99]))
        mean = float(x.mean())
        return cls(
            backend,
            provider,
            model,
            batch,
            p50,
            p90,
            p99,
            mean,
            float(x.std()),
            float(x.min()),
            float(x.max()),
            batch * 1e3 / mean if mean > 0 else float("inf"),
            len(x),
            threads,
            None,
            list(samples_ms),
        )

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> LatencyResult:
        """A ``latency`` entry as a report wrote it (:meth:`to_json`): no samples; a key an older report did
        not write takes its default, a missing statistic is NaN."""
        names = [f.name for f in fields(cls) if f.name != "samples_ms"]
        given = {key: value for key, value in data.items() if key in names}
        absent = {name: math.nan for name in names if name.endswith("_ms") or name == "throughput"}
        counts = {"backend": "", "provider": "", "model": "", "batch": 0, "runs": 0, "threads": 0}
        return cls(**{**counts, **absent, "session_create_ms": None, **given})

    def to_json(self) -> dict[str, Any]:
        """The report's ``latency`` entry (times rounded to the nanosecond)."""
        out = {k: v for k, v in self.__dict__.items() if k != "samples_ms"}
        for key, value in out.items():
            if isinstance(value, float) and key != "throughput":
                out[key] = round(value, 6)
        out["throughput"] = round(self.throughput, 3)
        return out

    def describe(self) -> str:
        return (
            f"{self.backend} {self.provider} {self.model} batch {self.batch}: p50 {self.p50_ms:.3f} ms "
            f"(p90 {self.p90_ms:.3f}, {self.runs} runs, {self.threads} threads)"
        )
