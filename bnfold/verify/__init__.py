"""Verify: is the folded, exported model the same function as the original?

Runners (:mod:`~bnfold.verify.runners`) run a model in PyTorch or onnxruntime; the parity matrix
(:mod:`~bnfold.verify.matrix`) compares each candidate with an fp64 reference and with the stage before
it, so a failure names the step that broke it; :func:`assert_allclose_report` is the same rule for tests.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from bnfold._entry import make_callable
from bnfold.verify.chain import ParityChain, SessionKeywords, Sessions, parity_chain
from bnfold.verify.compare import Comparison, assert_allclose_report, compare_outputs
from bnfold.verify.matrix import (
    Candidate,
    ParityKeywords,
    ParitySettings,
    run_parity,
    standard_candidates,
    verify_parity,
)
from bnfold.verify.metrics import OutputMetrics
from bnfold.verify.providers import ProviderSelection, available_providers, select_providers
from bnfold.verify.report import STAGES, ParityCheck, ParityReport
from bnfold.verify.runners import LazyRunner, OrtRunner, Runner, TorchRunner, ort_runner, session_options, torch_runner
from bnfold.verify.tolerance import RULE, Tolerance, Tolerances

if TYPE_CHECKING:
    from bnfold.convert import ConvertConfig
    from bnfold.report import Report

__all__ = [
    "RULE",
    "STAGES",
    "Candidate",
    "Comparison",
    "OrtRunner",
    "OutputMetrics",
    "ParityChain",
    "ParityCheck",
    "ParityReport",
    "ParityKeywords",
    "ParitySettings",
    "LazyRunner",
    "ProviderSelection",
    "Runner",
    "SessionKeywords",
    "Sessions",
    "Tolerance",
    "Tolerances",
    "TorchRunner",
    "assert_allclose_report",
    "available_providers",
    "compare_outputs",
    "ort_runner",
    "parity_chain",
    "run_parity",
    "select_providers",
    "session_options",
    "standard_candidates",
    "torch_runner",
    "verify_models",
    "verify_parity",
]


def verify_models(original: str | Path, candidate: str | Path, config: ConvertConfig | None = None) -> Report:
    """``bnfold verify``: check a candidate (an ONNX file, or a PyTorch model file) against the original on
    the parity matrix; the :class:`~bnfold.report.Report` (``report.verdict.passed``; ``report.to_dict()``
    is the JSON data, and ``report["verdict"]["passed"]`` still reads it). ``config`` carries the parity
    settings (tolerances, data, providers, ``factory``, ``trust_code``). Also callable as ``bnfold.verify``."""
    from bnfold.convert import ConvertConfig
    from bnfold.verify.pair import verify_and_report

    return verify_and_report(original, candidate, config or ConvertConfig())


make_callable(__name__, verify_models)
