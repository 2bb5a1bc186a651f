"""The ``bnfold`` command's entry point: a Ctrl-C (or SIGTERM) from its first instant ends it with exit 130 (143)
and one line, no traceback, even while the command line's own modules load; once they have, the command
line's handling takes over (:mod:`bnfold.cli._app`: a running command unwinds and removes its staging)."""

from __future__ import annotations

import os
import signal
import sys
from typing import Any


def _early(signum: int, _frame: Any) -> None:
    """Nothing has been written yet: say so and leave at once (a half-finished import needs no unwinding)."""
    sys.stderr.write(f"Interrupted ({signal.Signals(signum).name}).\n")
    sys.stderr.flush()
    os._exit(128 + signum)


def main() -> None:
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, _early)
    from bnfold.cli import main as command_line

    command_line()
