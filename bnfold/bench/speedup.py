"""Speedup of the folded model over the original, from interleaved (paired) latency samples."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from bnfold.bench.timing import LatencyResult


@dataclass(frozen=True)
class Speedup:
    """p50 original / p50 folded for one (backend, provider, batch), with the spread of paired ratios.

    ``speedup_low`` and ``speedup_high`` are the 25th and 75th percentiles of the per-iteration ratios
    original / folded (each pair was timed in the same round); None when no samples are at hand.
    """

    backend: str
    provider: str
    batch: int
    speedup_p50: float
    speedup_low: float | None
    speedup_high: float | None
    original_p50_ms: float
    folded_p50_ms: float

    def to_json(self) -> dict[str, Any]:
        return {k: round(v, 4) if isinstance(v, float) else v for k, v in asdict(self).items()}

    def describe(self) -> str:
        spread = (f" (IQR {self.speedup_low:.2f}-{self.speedup_high:.2f}x)"
                  if self.speedup_low is not None and self.speedup_high is not None else "")
        return (f"{self.backend} {self.provider} batch {self.batch}: {self.original_p50_ms:.3f} ms -> "
                f"{self.folded_p50_ms:.3f} ms, {self.speedup_p50:.2f}x{spread}")


def speedups(results: Sequence[LatencyResult], baseline: str = "original",
             candidate: str = "folded") -> list[Speedup]:
    """One :class:`Speedup` per (backend, provider, batch) that has both models, in result order."""
    by_key = {(r.backend, r.provider, r.batch, r.model): r for r in results}
    keys = dict.fromkeys((r.backend, r.provider, r.batch) for r in results)
    out = []
    for backend, provider, batch in keys:
        base = by_key.get((backend, provider, batch, baseline))
        cand = by_key.get((backend, provider, batch, candidate))
        if base is not None and cand is not None:
            out.append(_speedup(base, cand))
    return out


def _speedup(base: LatencyResult, cand: LatencyResult) -> Speedup:
    n = min(len(base.samples_ms), len(cand.samples_ms))
    low = high = None
    if n:
        ratios = np.asarray(base.samples_ms[:n]) / np.maximum(np.asarray(cand.samples_ms[:n]), 1e-12)
        low, high = (float(v) for v in np.percentile(ratios, [25, 75]))
    return Speedup(base.backend, base.provider, base.batch, base.p50_ms / cand.p50_ms, low, high,
                   base.p50_ms, cand.p50_ms)
