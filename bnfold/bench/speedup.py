"""Speedup of the folded model over the original, from interleaved (paired) latency samples."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from bnfold.bench.timing import LatencyResult


@dataclass(frozen=True)
class Speedup:
    """The speedup of one (backend, provider, batch): one statistic, the paired ratios original / folded.

    Each pair of runs was timed in the same round; ``speedup_p50`` is the median of their ratios and
    ``speedup_low`` / ``speedup_high`` the 25th and 75th percentiles, so the headline always lies inside its
    interval. Without samples, the ratio of the p50 latencies and no interval. ``steady`` is False when on
    either side the median run took more than :data:`UNSTEADY` times the fastest (stalls: another process
    took the cores); the numbers then say little. ``verdict`` is "faster" only when the timings were steady,
    the whole interval lies above 1 and the median is at least :data:`NOTICEABLE` above it, "slower" likewise
    below, else "unchanged" (a model timed against itself is not called slower for 0.1 %).
    """

    backend: str
    provider: str
    batch: int
    speedup_p50: float
    speedup_low: float | None
    speedup_high: float | None
    original_p50_ms: float
    folded_p50_ms: float
    steady: bool = True
    unsteady_ratio: float | None = None  # the worst side's p50 / fastest run, when not steady

    @property
    def verdict(self) -> str:
        low = self.speedup_low if self.speedup_low is not None else self.speedup_p50
        high = self.speedup_high if self.speedup_high is not None else self.speedup_p50
        if not self.steady:
            return "unchanged"
        if low > 1.0 and self.speedup_p50 >= 1.0 + NOTICEABLE:
            return "faster"
        if high < 1.0 and self.speedup_p50 <= 1.0 / (1.0 + NOTICEABLE):
            return "slower"
        return "unchanged"

    def unsteady_note(self) -> str | None:
        """What to say of timings that were not steady, or None."""
        if self.steady or self.unsteady_ratio is None:
            return None
        return (
            f"latency {self.backend} ({self.provider}) batch {self.batch}: unsteady timings (the median run took "
            f"{self.unsteady_ratio:.0f}x the fastest): the cores were busy with something else, so the speedup "
            "says little; measure again on a quiet machine, or with fewer --threads"
        )

    def to_json(self) -> dict[str, Any]:
        fields = {k: round(v, 4) if isinstance(v, float) else v for k, v in asdict(self).items()}
        fields.pop("unsteady_ratio")
        return {**fields, "verdict": self.verdict}

    def describe(self) -> str:
        spread = (
            f" (IQR {self.speedup_low:.2f}-{self.speedup_high:.2f}x)"
            if self.speedup_low is not None and self.speedup_high is not None
            else ""
        )
        return (
            f"{self.backend} {self.provider} batch {self.batch}: {self.original_p50_ms:.3f} ms -> "
            f"{self.folded_p50_ms:.3f} ms, {self.speedup_p50:.2f}x{spread}"
        )


def speedups(results: Sequence[LatencyResult], baseline: str = "original", candidate: str = "folded") -> list[Speedup]:
    """One :class:`Speedup` per (backend, provider, batch) that has both models, in result order; a
    ``RuntimeWarning`` says which were timed unsteadily (``convert`` puts it in the report's warnings)."""
    by_key = {(r.backend, r.provider, r.batch, r.model): r for r in results}
    keys = dict.fromkeys((r.backend, r.provider, r.batch) for r in results)
    out = []
    for backend, provider, batch in keys:
        base = by_key.get((backend, provider, batch, baseline))
        cand = by_key.get((backend, provider, batch, candidate))
        if base is not None and cand is not None:
            out.append(_speedup(base, cand))
    for item in out:
        note = item.unsteady_note()
        if note is not None:
            warnings.warn(note, RuntimeWarning, stacklevel=2)
    return out


NOTICEABLE = 0.01
"""A speedup or slowdown smaller than this (1 %) is "unchanged", whatever its interval: below what timings on
a shared machine can tell apart."""

UNSTEADY = 3.0
"""A median run slower than this many times the fastest run means the timings were disturbed."""


def _speedup(base: LatencyResult, cand: LatencyResult) -> Speedup:
    spread = max(r.p50_ms / r.min_ms if r.min_ms > 0 else 1.0 for r in (base, cand))
    steady, unsteady = spread <= UNSTEADY, None if spread <= UNSTEADY else spread
    n = min(len(base.samples_ms), len(cand.samples_ms))
    low: float | None = None
    high: float | None = None
    median = base.p50_ms / cand.p50_ms
    if n:
        ratios = np.asarray(base.samples_ms[:n]) / np.maximum(np.asarray(cand.samples_ms[:n]), 1e-12)
        low, median, high = (float(v) for v in np.percentile(ratios, [25, 50, 75]))
    return Speedup(
        base.backend, base.provider, base.batch, median, low, high, base.p50_ms, cand.p50_ms, steady, unsteady
    )
