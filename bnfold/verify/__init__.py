"""Verify: is the folded, exported model the same function as the original?

Runners (:mod:`~bnfold.verify.runners`) run a model in PyTorch or onnxruntime; the parity matrix
(:mod:`~bnfold.verify.matrix`) compares each candidate with an fp64 reference and with the stage before
it, so a failure names the step that broke it; :func:`assert_allclose_report` is the same rule for tests.
"""

from __future__ import annotations

from bnfold.verify.compare import Comparison, assert_allclose_report, compare_outputs
from bnfold.verify.matrix import Candidate, run_parity, standard_candidates, verify_parity
from bnfold.verify.metrics import OutputMetrics
from bnfold.verify.providers import ProviderSelection, available_providers, select_providers
from bnfold.verify.report import STAGES, ParityCheck, ParityReport
from bnfold.verify.runners import LazyRunner, OrtRunner, Runner, TorchRunner, ort_runner, session_options, torch_runner
from bnfold.verify.tolerance import RULE, Tolerance, Tolerances

__all__ = [
    "RULE", "STAGES", "Candidate", "Comparison", "OrtRunner", "OutputMetrics", "ParityCheck", "ParityReport",
    "LazyRunner", "ProviderSelection", "Runner", "Tolerance", "Tolerances", "TorchRunner", "assert_allclose_report",
    "available_providers", "compare_outputs", "ort_runner", "run_parity", "select_providers",
    "session_options", "standard_candidates", "torch_runner", "verify_parity",
]
