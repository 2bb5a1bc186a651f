"""The ``bnfold`` command line: a thin layer that parses options into a config and calls the API.

Exit codes: 0 ok, 1 parity (or a check) failed with the report written, 2 bad input or usage, 130 and 143
interrupted by SIGINT and SIGTERM.

The group and how a run ends live in :mod:`._app`, the options the commands share in :mod:`._options`, the
commands in :mod:`._convert` (``convert``), :mod:`._pair` (``verify``, ``bench``) and :mod:`._reports`
(``inspect``, ``check``). Each command collects its options (``**options``, named as the config's fields)
into one frozen :class:`~bnfold.convert.ConvertConfig` and calls one API function.
"""

from __future__ import annotations

from bnfold.cli._app import EXIT_FAILED, EXIT_OK, EXIT_USAGE, Commands, Interrupted, cli, main, usage_error_line
from bnfold.cli._convert import convert
from bnfold.cli._options import model_option, parity_options, quiet_option, shape_option, trust_option
from bnfold.cli._pair import bench, verify
from bnfold.cli._reports import check, inspect

__all__ = [
    "EXIT_FAILED",
    "EXIT_OK",
    "EXIT_USAGE",
    "Commands",
    "Interrupted",
    "bench",
    "check",
    "cli",
    "convert",
    "inspect",
    "main",
    "model_option",
    "parity_options",
    "quiet_option",
    "shape_option",
    "trust_option",
    "usage_error_line",
    "verify",
]
