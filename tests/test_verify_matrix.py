"""The parity matrix: checks against fp64, stage checks, attribution, baseline error, the JSON contract."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch
from test_verify_runners import linear_onnx
from torch import nn

from bnfold.verify import Candidate, ParityReport, ParitySettings, Tolerance, run_parity, verify_parity
from bnfold.verify.providers import CUDA_MISSING

CHECK_KEYS = {
    "reference",
    "candidate",
    "output",
    "batch_source",
    "max_abs_err",
    "max_rel_err",
    "mean_abs_err",
    "mismatch_ratio",
    "cosine",
    "top1_agreement",
    "top5_agreement",
    "atol",
    "rtol",
    "passed",
    "stage",
    "baseline_max_abs_err",
    "error_ratio",
    "error_histogram",
}


def original_and_folded() -> tuple[nn.Module, nn.Linear]:
    """Linear(6, 5) + BatchNorm1d(5) with trained-looking statistics, and the same function as one Linear."""
    torch.manual_seed(0)
    linear, bn = nn.Linear(6, 5), nn.BatchNorm1d(5)
    mean, var = torch.empty(5).uniform_(-1, 1), torch.empty(5).uniform_(0.5, 2)
    gamma, beta = torch.empty(5).uniform_(0.5, 1.5), torch.empty(5).uniform_(-0.5, 0.5)
    bn.load_state_dict(
        {
            "running_mean": mean,
            "running_var": var,
            "weight": gamma,
            "bias": beta,
            "num_batches_tracked": torch.tensor(100),
        }
    )
    scale = gamma / torch.sqrt(var + bn.eps)
    folded = nn.Linear(6, 5)
    folded.load_state_dict(
        {
            "weight": linear.weight.detach() * scale[:, None],
            "bias": (linear.bias.detach() - mean) * scale + beta,
        }
    )
    return nn.Sequential(linear, bn).eval(), folded.eval()


def batches() -> list[tuple[str, tuple[np.ndarray, ...]]]:
    rng = np.random.default_rng(0)
    return [
        (name, (rng.normal(size=(n, 6)).astype(np.float32),))
        for name, n in (("example", 1), ("random seed 1", 8), ("data heldout.npz", 16))
    ]


def matrix(folded_bias_shift: float = 0.0, onnx_bias_shift: float = 0.0, **kwargs: object) -> ParityReport:
    original, folded = original_and_folded()
    exported = nn.Linear(6, 5)
    exported.load_state_dict(folded.state_dict())
    with torch.no_grad():
        folded.bias.add_(folded_bias_shift)
        exported.bias.add_(folded_bias_shift + onnx_bias_shift)
    return verify_parity(original, folded, linear_onnx(exported), batches(), **kwargs)  # type: ignore[arg-type]


def test_correct_fold_passes_every_check_of_the_standard_matrix() -> None:
    report = matrix(providers="cpu")
    assert report and report.failed_stage is None
    pairs = [(c.stage, c.candidate, c.reference) for c in report.checks]
    assert pairs == [
        ("baseline", "original fp32", "original fp64 (torch)"),
        ("fold", "folded fp32 (torch)", "original fp64 (torch)"),
        ("fold", "folded fp32 (torch)", "original fp32"),
        ("export", "onnxruntime CPU (optimizations off)", "original fp64 (torch)"),
        ("export", "onnxruntime CPU (optimizations off)", "folded fp32 (torch)"),
        ("ort-optimization", "onnxruntime CPU (optimizations all)", "original fp64 (torch)"),
        ("ort-optimization", "onnxruntime CPU (optimizations all)", "onnxruntime CPU (optimizations off)"),
    ]
    assert {c.output for c in report.checks} == {"y"}  # the ONNX output name
    assert report.inputs == [
        {"source": "example", "batch": 1},
        {"source": "random seed 1", "batch": 8},
        {"source": "data heldout.npz", "batch": 16},
    ]


def test_json_has_the_contract_keys_and_is_plain_json() -> None:
    block = json.loads(json.dumps(matrix(providers="cpu").to_json(), allow_nan=False))
    keys = {"passed", "atol", "rtol", "rule", "reference", "failed_stage", "cuda", "inputs", "checks"}
    assert keys <= set(block)
    for check in block["checks"]:
        assert CHECK_KEYS <= set(check)
        assert check["batch_source"] == "all" and check["worst_batch"] in {
            "example",
            "random seed 1",
            "data heldout.npz",
        }
    assert block["atol"] == 1e-4 and block["rtol"] == 1e-3


def test_error_against_fp64_is_set_next_to_the_original_fp32_models_own() -> None:
    report = matrix(providers="cpu")
    by_candidate = {c.candidate: c for c in report.checks if c.reference == report.reference}
    base = by_candidate["original fp32"].max_abs_err
    assert base is not None and 0 < base < 1e-5  # fp32 noise
    folded = by_candidate["folded fp32 (torch)"]
    assert folded.baseline_max_abs_err == base and folded.max_abs_err is not None
    assert folded.error_ratio == pytest.approx(folded.max_abs_err / base)
    stage_checks = [c for c in report.checks if c.reference != report.reference]
    assert all(c.baseline_max_abs_err is None and c.error_ratio is None for c in stage_checks)


def test_every_check_carries_a_histogram_of_its_errors_over_all_batches() -> None:
    report = matrix(providers="cpu")
    original, _ = original_and_folded()
    with torch.no_grad():
        fp32 = [original(torch.from_numpy(x[0])).numpy() for _, x in batches()]
        fp64 = [original.double()(torch.from_numpy(x[0]).double()).numpy() for _, x in batches()]
    errors = np.concatenate([np.abs(a.astype(np.float64) - b).ravel() for a, b in zip(fp32, fp64, strict=True)])
    baseline = json.loads(json.dumps(report.checks[0].to_json()))["error_histogram"]
    assert baseline["total"] == 5 * (1 + 8 + 16)
    nonzero = errors[errors > 0]
    assert baseline["zeros"] == errors.size - nonzero.size
    assert baseline["counts"] == np.histogram(nonzero, bins=np.logspace(-12, 2, 15))[0].tolist()
    assert all(c.error_histogram and c.error_histogram["total"] == 125 for c in report.checks)


def test_topk_agreement_is_reported_for_classifier_outputs() -> None:
    for check in matrix(providers="cpu").checks:
        assert check.top1_agreement == 1.0 and check.top5_agreement == 1.0


def test_a_broken_fold_is_attributed_to_the_fold_stage() -> None:
    report = matrix(folded_bias_shift=0.1, providers="cpu")
    assert not report and report.failed_stage == "fold"
    export = [c for c in report.checks if c.stage == "export" and c.reference == "folded fp32 (torch)"]
    assert export[0].passed  # the export of the broken fold is faithful to it
    assert "FAILED at stage fold" in report.summary_lines()[0]


def test_a_tolerance_the_fp32_original_misses_is_blamed_on_no_stage_of_bnfold() -> None:
    """atol = rtol = 0: every check fails, the untouched original's too. The fold is as good as float32 allows,
    so the verdict names the baseline and says the tolerance is the problem, not the fold."""
    from bnfold.report.check import parity_failure
    from bnfold.report.document import ParitySection

    report = matrix(providers="cpu", tolerance=Tolerance(0.0, 0.0))
    assert any(c.stage == "fold" and not c.passed for c in report.checks)  # the fold's check fails too
    assert report.failed_stage == "baseline"
    reason = parity_failure(ParitySection.of(report))
    assert reason is not None and reason.startswith("parity failed at stage baseline: original fp32")
    assert "the untouched original in float32 already misses the tolerance" in reason and "--atol" in reason


def test_a_broken_export_is_attributed_to_the_export_stage() -> None:
    report = matrix(onnx_bias_shift=0.1, providers="cpu")
    assert report.failed_stage == "export"
    failing = {(c.candidate, c.reference) for c in report.failures}
    assert ("onnxruntime CPU (optimizations off)", "folded fp32 (torch)") in failing
    assert not any(c.stage == "fold" for c in report.failures)


def test_ort_optimization_and_provider_stages_are_attributed() -> None:
    x = batches()
    exact = lambda inputs: [inputs[0].astype(np.float64)]  # noqa: E731
    off = lambda inputs: [inputs[0] * 1.5]  # noqa: E731
    candidates = [
        Candidate("original fp32", exact, "baseline"),
        Candidate("ort off", exact, "export"),
        Candidate("ort all", off, "ort-optimization", "ort off"),
        Candidate("cuda", off, "provider", "ort all"),
    ]
    report = run_parity(exact, candidates, ParitySettings(x))
    assert report.failed_stage == "ort-optimization"
    assert [c.passed for c in report.checks if c.stage == "provider"] == [False, True]


def test_a_candidate_that_raises_fails_with_the_reason_quoted() -> None:
    def broken(inputs: tuple[np.ndarray, ...]) -> list[np.ndarray]:
        raise RuntimeError("Non-zero status code returned while running Gemm node")

    ok = lambda inputs: [inputs[0]]  # noqa: E731
    report = run_parity(
        ok,
        [Candidate("original fp32", ok, "baseline"), Candidate("ort", broken, "export", "original fp32")],
        ParitySettings(batches()),
    )
    assert report.failed_stage == "export"
    assert all("could not run: RuntimeError: Non-zero status" in (c.error or "") for c in report.failures)
    assert len(report.failures) == 2


def test_per_output_override_applies_to_that_output_only() -> None:
    report = matrix(folded_bias_shift=0.1, providers="cpu", per_output={"y": Tolerance(1.0, 0.0)})
    assert report and {(c.atol, c.rtol) for c in report.checks} == {(1.0, 0.0)}


def test_per_batch_mode_gives_one_check_per_batch() -> None:
    report = matrix(providers="cpu", per_batch=True)
    assert len(report.checks) == 7 * 3
    assert [c.batch_source for c in report.checks[:3]] == ["example", "random seed 1", "data heldout.npz"]
    assert all(c.baseline_max_abs_err is not None for c in report.checks if c.reference == report.reference)


def test_the_callers_modules_are_not_touched() -> None:
    original, folded = original_and_folded()
    verify_parity(original, folded, linear_onnx(folded), batches(), providers="cpu")
    assert all(p.dtype == torch.float32 for p in original.parameters())


def test_cuda_without_a_gpu_is_a_note_not_a_failure(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("onnxruntime.get_available_providers", lambda: ["CPUExecutionProvider"])
    report = matrix(providers="cuda")
    assert report and report.cuda == {"available": False, "note": CUDA_MISSING}
    assert CUDA_MISSING in report.notes and "note: " + CUDA_MISSING in report.summary_lines()[-1]


def test_cuda_listed_but_falling_back_to_cpu_is_left_out(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(
        "onnxruntime.get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"]
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        report = matrix(providers="auto")
    assert report and not any(c.stage == "provider" for c in report.checks)
    assert report.cuda["available"] is False


def test_without_a_baseline_candidate_there_is_no_error_ratio() -> None:
    exact = lambda inputs: [inputs[0].astype(np.float64)]  # noqa: E731
    report = run_parity(exact, [Candidate("folded ort", exact, "fold")], ParitySettings(batches()))
    (check,) = report.checks
    assert check.baseline_max_abs_err is None and check.error_ratio is None and check.passed


class Counting:
    """A runner that counts how often it is built, run and released (a stand-in for a heavy model)."""

    def __init__(self, log: list[str], name: str) -> None:
        self.log, self.name, self.output_names = log, name, ["y"]
        log.append(f"build {name}")

    def __call__(self, inputs: tuple[np.ndarray, ...]) -> list[np.ndarray]:
        self.log.append(f"run {self.name}")
        return [np.asarray(inputs[0], np.float64).sum(1)]


def test_lazy_runners_are_built_one_at_a_time_and_keep_their_output_names() -> None:
    from bnfold.verify import LazyRunner

    log: list[str] = []
    reference = LazyRunner(lambda: Counting(log, "reference"))
    first, second = LazyRunner(lambda: Counting(log, "first")), LazyRunner(lambda: Counting(log, "second"))
    assert log == []  # nothing built before it is needed
    batches = [("a", (np.ones((2, 3), np.float32),)), ("b", (np.zeros((2, 3), np.float32),))]
    report = run_parity(
        reference,
        [Candidate("first", first, "fold"), Candidate("second", second, "export")],
        ParitySettings(batches),
        output_names=lambda: second.output_names,
    )
    assert log == [
        "build reference",
        "run reference",
        "run reference",
        "build first",
        "run first",
        "run first",
        "build second",
        "run second",
        "run second",
    ]
    assert report.passed and {c.output for c in report.checks} == {"y"}
    assert reference._runner is None and first._runner is None and second._runner is None


def test_a_candidate_run_before_the_reference_is_released_first_and_checked_the_same() -> None:
    from bnfold.verify import LazyRunner

    log: list[str] = []
    batches = [("a", (np.ones((2, 3), np.float32),)), ("b", (np.arange(6, dtype=np.float32).reshape(2, 3),))]

    def parity(first: bool) -> list[object]:
        reference = LazyRunner(lambda: Counting(log, "reference"))
        early = LazyRunner(lambda: Counting(log, "early"), on_release=lambda: log.append("early released"))
        late = LazyRunner(lambda: Counting(log, "late"))
        candidates = [Candidate("late", late, "export"), Candidate("early", early, "fold", before_reference=first)]
        report = run_parity(reference, candidates, ParitySettings(batches))
        return [(c.candidate, c.stage, c.max_abs_err, c.passed) for c in report.checks]

    assert parity(first=True) == parity(first=False)
    assert log[:4] == ["build early", "run early", "run early", "early released"]
    assert log[4:10] == ["build reference", "run reference", "run reference", "build late", "run late", "run late"]


def test_a_candidate_that_cannot_be_built_fails_its_checks_with_the_reason() -> None:
    from bnfold.verify import LazyRunner, ort_runner

    model = nn.Linear(3, 2).eval()
    broken = LazyRunner(lambda: ort_runner(b"not an onnx model"))
    report = run_parity(
        LazyRunner(lambda: torch_runner_fp64(model)),
        [Candidate("onnx", broken, "export")],
        ParitySettings([("a", (np.ones((2, 3), np.float32),))]),
        output_names=lambda: broken.output_names,
    )
    assert not report.passed
    assert report.checks[0].candidate == "onnx" and report.checks[0].output == "0"
    assert report.checks[0].error is not None and report.checks[0].error.startswith("could not run")


def torch_runner_fp64(model: nn.Module):
    from bnfold.verify import torch_runner

    return torch_runner(model, torch.float64)
