"""The log lines torch, onnx and onnxscript write while bnfold runs them, captured for the report.

torch sets up its own handlers writing to stderr (``W1129 ... torch/_export/non_strict_utils.py:656]
dimension inputs['x'].shape[0] 0/1 specialized ...``), on many of its loggers, with propagation off. For
the duration of :func:`captured_logs`, every handler of those libraries' loggers is replaced by one that
keeps the message; the handlers are put back afterwards. The messages (warnings and worse) go into the
report's ``warnings[]``: the terminal stays bnfold's.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator

LIBRARIES = ("torch", "onnx", "onnxscript", "onnx_ir", "onnxruntime")


class _Keep(logging.Handler):
    """Keeps the first line of each distinct message at WARNING or above."""

    def __init__(self, into: list[str]) -> None:
        super().__init__(logging.WARNING)
        self.into = into

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = record.getMessage().strip().splitlines()[0] if record.getMessage().strip() else ""
        except Exception:  # a message whose arguments do not format: keep the template
            text = str(record.msg)
        line = f"{record.name}: {text}"
        if text and line not in self.into:
            self.into.append(line)


@contextlib.contextmanager
def captured_logs() -> Iterator[list[str]]:
    """Route the libraries' log records into the yielded list (``logger: message``) for the block."""
    kept: list[str] = []
    keep = _Keep(kept)
    saved = [(logger, logger.handlers[:]) for logger in _library_loggers() if logger.handlers]
    roots = [logging.getLogger(name) for name in LIBRARIES]
    root_state = [(logger, logger.handlers[:], logger.propagate) for logger in roots]
    try:
        for logger, _ in saved:
            logger.handlers = [keep]
        for logger in roots:  # records of loggers without handlers of their own end here
            logger.handlers = [keep]
            logger.propagate = False
        yield kept
    finally:
        for logger, handlers in saved:
            logger.handlers = handlers
        for logger, handlers, propagate in root_state:
            logger.handlers, logger.propagate = handlers, propagate


@contextlib.contextmanager
def caught_warnings(category: type[Warning] = RuntimeWarning) -> Iterator[list[str]]:
    """The distinct messages of the ``category`` warnings raised in the block, kept (for the report) rather
    than printed; the list is filled when the block ends. Other warnings go on as usual."""
    kept: list[str] = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", category)
        try:
            yield kept
        finally:
            others = [w for w in caught if not issubclass(w.category, category)]
            kept.extend(dict.fromkeys(str(w.message) for w in caught if issubclass(w.category, category)))
    for w in others:
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)


def _library_loggers() -> list[logging.Logger]:
    loggers = list(logging.Logger.manager.loggerDict.values())
    return [lg for lg in loggers if isinstance(lg, logging.Logger) and lg.name.split(".")[0] in LIBRARIES]
