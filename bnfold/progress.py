"""Progress of a run: its stages, each with its elapsed time, and the steps counted inside a stage.

``convert`` (and ``verify``) report to one callable, ``progress(event)``, with a :class:`ProgressEvent`:
``kind`` is "start" when a stage begins, "step" as it advances (parity: model runs over the input batches;
latency: timing rounds), "end" with the stage's ``seconds``, and "note" for something worth saying on the
way. ``str(event)`` is a line for people, so ``progress=print`` works. The stages of ``convert``, in
order: load, fold+export, parity, latency, reports. The CLI draws them with tqdm (:mod:`bnfold.terminal`).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

STAGES = ("load", "fold+export", "parity", "latency", "reports")
STEP_INTERVAL = 0.1
"""Seconds between two step events of one stage (the last step of a count is always sent)."""


@dataclass(frozen=True)
class ProgressEvent:
    """One thing a run says about its progress (see the module docstring)."""

    kind: str  # "start" | "step" | "end" | "note"
    stage: str
    message: str
    done: int = 0
    total: int | None = None
    seconds: float | None = None

    def __str__(self) -> str:
        if self.kind == "end":
            return f"{self.stage} {self.seconds or 0.0:.2f} s: {self.message}"
        if self.kind == "step":
            return f"{self.stage}: {self.message} {self.done}/{self.total if self.total is not None else '?'}"
        return f"{self.stage}: {self.message}"


ProgressCallback = Callable[[ProgressEvent], None]
StepCallback = Callable[[str, int, int], None]
"""What a stage's worker calls as it goes: (what is counted, done, total)."""


class Stages:
    """Sends a run's events to ``progress`` (nowhere when None), timing each stage."""

    def __init__(self, progress: ProgressCallback | None = None) -> None:
        self.progress = progress
        self.stage_name = ""
        self._last_step = 0.0

    @contextlib.contextmanager
    def stage(self, stage: str, message: str) -> Iterator[Stages]:
        """The block is ``stage``: a "start" event before it, an "end" event with its time after it (none
        when it raises)."""
        self.stage_name = stage
        self._send(ProgressEvent("start", stage, message))
        started = time.perf_counter()
        yield self
        self._send(ProgressEvent("end", stage, message, seconds=time.perf_counter() - started))

    def step(self, label: str, done: int, total: int) -> None:
        """``done`` of ``total`` of what ``label`` counts, within the current stage (sent at most every
        :data:`STEP_INTERVAL` seconds, and always at the end of the count)."""
        if self.progress is None:
            return
        now = time.perf_counter()
        if done < total and now - self._last_step < STEP_INTERVAL and done > 1:
            return
        self._last_step = now
        self._send(ProgressEvent("step", self.stage_name, label, done, total))

    def note(self, message: str) -> None:
        self._send(ProgressEvent("note", self.stage_name, message))

    @property
    def steps(self) -> StepCallback | None:
        """:meth:`step`, or None when nobody listens (the workers then skip counting)."""
        return self.step if self.progress is not None else None

    def _send(self, event: ProgressEvent) -> None:
        if self.progress is not None:
            self.progress(event)
