"""What happened to each BatchNorm, and why: the records every fold pass returns."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

Action = Literal["folded", "affine", "kept"]

FOLDED: Action = "folded"
AFFINE: Action = "affine"
KEPT: Action = "kept"


@dataclass
class BnRecord:
    """The fate of one BatchNorm (or BN-like per-channel affine).

    ``action``: "folded" (absorbed into ``into``), "affine" (kept as a frozen per-channel Mul/Add) or
    "kept" (left as it is, e.g. it normalises with batch statistics). ``how`` names the fold ("forward",
    "backward", "branches", "concat", "identity") and ``reason`` says why a BN was not folded.
    """

    name: str
    kind: str = "BatchNorm"
    action: Action = "kept"
    into: list[str] = field(default_factory=list)
    how: str | None = None
    reason: str | None = None
    channels: int | None = None
    max_stat_change: float | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def describe(self) -> str:
        """One line as ``bnfold inspect`` prints it."""
        if self.action == FOLDED and self.how == "removed":
            return f"{self.name} → removed: {self.reason}"
        if self.action == FOLDED:
            return f"{self.name} → folded into {', '.join(self.into)} ({self.how})"
        what = "kept as affine" if self.action == AFFINE else "kept as is"
        return f"{self.name} → {what}: {self.reason}"


def summarise(records: list[BnRecord]) -> dict[str, int]:
    """Counts for the report and the terminal summary."""
    return {
        "found": len(records),
        "folded": sum(r.action == FOLDED for r in records),
        "affine": sum(r.action == AFFINE for r in records),
        "kept": sum(r.action != FOLDED for r in records),
    }
