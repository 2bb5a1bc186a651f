"""What happened to each BatchNorm, and why: the records every fold pass returns."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

Action = Literal["folded", "affine", "kept"]
Op = Literal["batchnorm", "muladd"]

FOLDED: Action = "folded"
AFFINE: Action = "affine"
KEPT: Action = "kept"


@dataclass
class BnRecord:
    """The fate of one BatchNorm (or BN-like per-channel affine).

    ``action``: "folded" (absorbed into ``into``), "affine" (kept as a frozen per-channel Mul/Add) or
    "kept" (left as it is, e.g. it normalises with batch statistics). ``how`` names the fold ("forward",
    "backward", "branches", "concat", "identity") and ``reason`` says why a BN was not folded.

    ``op``: what the graph computes: "batchnorm" (a BatchNorm call or node) or "muladd" (a multiply and/or add
    of per-channel constants right after a layer: a FrozenBatchNorm2d, a hand-written affine). A Mul/Add that
    does not fold is part of the model as written, not a BatchNorm left behind: it stays as it was, and
    :func:`summarise` does not count it.
    """

    name: str
    kind: str = "BatchNorm"
    action: Action = "kept"
    into: list[str] = field(default_factory=list)
    how: str | None = None
    reason: str | None = None
    channels: int | None = None
    max_stat_change: float | None = None
    op: Op = "batchnorm"

    @property
    def as_written(self) -> bool:
        """A Mul/Add of the model that did not fold: it stays as written, and is no BatchNorm left behind."""
        return self.op == "muladd" and self.action != FOLDED

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def describe(self) -> str:
        """One line as ``bnfold inspect`` prints it."""
        if self.action == FOLDED and self.how == "removed":
            return f"{self.name} → removed: {self.reason}"
        if self.action == FOLDED:
            return f"{self.name} → folded into {', '.join(self.into)} ({self.how})"
        if self.as_written:
            return f"{self.name} → Mul/Add left as written: {self.reason}"
        what = "kept as affine" if self.action == AFFINE else "kept as is"
        return f"{self.name} → {what}: {self.reason}"


def summarise(records: list[BnRecord]) -> dict[str, int]:
    """The BatchNorm counts for the report and the terminal summary. Only BatchNorm calls and nodes count: a
    per-channel Mul/Add (``op`` "muladd") is listed, never counted, whether it folds or not, since from an ONNX
    file a FrozenBatchNorm2d cannot be told from a layer scale."""
    records = [r for r in records if r.op == "batchnorm"]
    return {
        "found": len(records),
        "folded": sum(r.action == FOLDED for r in records),
        "affine": sum(r.action == AFFINE for r in records),
        "kept": sum(r.action != FOLDED for r in records),
    }


def muladd_summary(records: list[BnRecord]) -> str | None:
    """``2 of 3 per-channel Mul/Adds folded into their layers``; None when the model has none."""
    muladds = [r for r in records if r.op == "muladd"]
    if not muladds:
        return None
    folded = sum(r.action == FOLDED for r in muladds)
    return f"{folded} of {len(muladds)} per-channel Mul/Adds folded into their layers"
