"""The user-error family.

Everything bnfold raises because of what the user handed it (a file it cannot read, a shape that does not
fit, a model whose forward fails) is a :class:`BnfoldError`. The CLI prints those as one ``Error: ...`` line
and exits 2. Anything else is a bug in bnfold and keeps its traceback.
"""

from __future__ import annotations


class BnfoldError(Exception):
    """A problem with the user's input, stated so that they can fix it."""

    exit_code = 2


class LoadError(BnfoldError):
    """The model file cannot be read, or is not a format bnfold supports."""


class ConfigError(BnfoldError):
    """An option's value is unknown or out of range (raised when the config is built)."""


class InputSpecError(BnfoldError):
    """The input shapes or data do not fit the model."""


class TraceError(BnfoldError):
    """The model cannot be traced (its forward raised, or it is not exportable)."""


class FoldError(BnfoldError):
    """The model's BatchNorm parameters cannot be folded (NaN, Inf, negative variance, ...)."""


class ExportError(BnfoldError):
    """The model cannot be exported to ONNX."""


class OutputError(BnfoldError):
    """An output file cannot be written where the user asked."""


class ReportError(BnfoldError):
    """A file given as a bnfold report is not one."""


def one_line(exc: BaseException, limit: int = 300) -> str:
    """The first meaningful line of an exception's message, for quoting a model's own error."""
    text = str(exc).strip() or type(exc).__name__
    first = next((line.strip() for line in text.splitlines() if line.strip()), text)
    if len(first) > limit:
        first = first[: limit - 3] + "..."
    return f"{type(exc).__name__}: {first}"
