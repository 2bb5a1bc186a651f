"""What the CLI shows while it works, and how ``-q`` keeps the terminal silent.

:class:`TerminalProgress` draws :class:`~bnfold.progress.ProgressEvent`s on stderr: on a terminal, a tqdm
bar over a stage's steps (parity runs, timing rounds), cleared when the stage ends and replaced by the
stage's line with its time; anywhere else (CI logs, pipes) only that line, one per stage, plain text.
:func:`silenced` points the process's stdout and stderr at /dev/null for ``-q``: onnxruntime and torch's
C++ code write there directly, past anything Python could redirect.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from typing import IO, Any

from bnfold.progress import ProgressEvent

UNITS = {"parity": "run", "latency": "round"}


def stage_line(event: ProgressEvent) -> str:
    """The line a finished stage leaves: ``parity        1.84 s  checking parity ...``."""
    return f"{event.stage:<12}{event.seconds or 0.0:7.2f} s  {event.message}"


class TerminalProgress:
    """A progress callable for ``convert`` and ``verify`` drawing on ``stream`` (default: stderr); bars only
    when it is a terminal (``tty`` overrides the check)."""

    def __init__(self, stream: IO[str] | None = None, tty: bool | None = None) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.tty = _is_terminal(self.stream) if tty is None else tty
        self.bar: Any = None
        self.label = ""

    def __call__(self, event: ProgressEvent) -> None:
        if event.kind == "start" and self.tty:
            self._status(event)
        elif event.kind == "step" and self.tty:
            self._advance(event)
        elif event.kind == "end":
            self.close()
            self._line(stage_line(event))
        elif event.kind == "note":
            self._line(f"{event.stage}: {event.message}" if event.stage else event.message)

    def close(self) -> None:
        """Clear the bar, if one is drawn (after a stage, or when the run stops with an error)."""
        if self.bar is not None:
            self.bar.close()
            self.bar, self.label = None, ""

    def _status(self, event: ProgressEvent) -> None:
        """A stage without steps yet: its name and message until it advances or ends."""
        from tqdm import tqdm

        self.close()
        self.bar = tqdm(
            total=None,
            desc=f"{event.stage}: {event.message}",
            file=self.stream,
            leave=False,
            bar_format="{desc} … {elapsed}",
        )

    def _advance(self, event: ProgressEvent) -> None:
        from tqdm import tqdm

        if self.bar is None or event.message != self.label:
            self.close()
            self.bar = tqdm(
                total=event.total,
                desc=f"{event.stage}: {event.message}",
                file=self.stream,
                leave=False,
                unit=UNITS.get(event.stage, "step"),
                dynamic_ncols=True,
            )
            self.label = event.message
        if event.total is not None and self.bar.total != event.total:
            self.bar.total = event.total
        self.bar.update(event.done - self.bar.n)
        if event.done == event.total:  # tqdm draws at most every 0.1 s: show the count complete
            self.bar.refresh()

    def _line(self, text: str) -> None:
        if self.bar is not None:
            self.bar.clear()
        self.stream.write(text + "\n")
        self.stream.flush()
        if self.bar is not None:
            self.bar.refresh()


def _is_terminal(stream: IO[str]) -> bool:
    if os.environ.get("TERM") == "dumb":
        return False
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


@contextlib.contextmanager
def silenced() -> Iterator[None]:
    """File descriptors 1 and 2 to /dev/null for the block (Python's streams flushed on both sides)."""
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    saved = (os.dup(1), os.dup(2))
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 1)
        os.dup2(devnull, 2)
        yield
    finally:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in (*saved, devnull):
            os.close(fd)
