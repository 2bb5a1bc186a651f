"""A handcrafted report in the bnfold.report/1 contract, shared by the report tests."""

from __future__ import annotations

import copy
import json
from typing import Any

import numpy as np

BN_NAMES = ["features.1", "features.4", "head.bn <b>&", "classifier.bn"]


EDGES = [float(f"1e{k}") for k in range(-12, 3)]
ELEMENTS = 4520  # 452 rows of 10 logits


def sample_errors(max_err: float, seed: int = 0) -> np.ndarray:
    """Errors spread over about three decades under ``max_err``, as fp32 rounding spreads them; 40 zeros."""
    rng = np.random.default_rng(seed)
    errors = max_err * 10.0 ** -np.abs(rng.normal(0.8, 0.6, size=ELEMENTS))
    errors[:40] = 0.0
    return errors


def error_histogram(max_err: float, seed: int = 0) -> dict[str, Any]:
    """The histogram of :func:`sample_errors` in the report's bins."""
    errors = sample_errors(max_err, seed)
    counts, _ = np.histogram(errors[errors > 0], bins=EDGES)
    return {"edges": EDGES, "counts": counts.tolist(), "zeros": 40, "below": 0, "above": 0, "nan": 0, "total": ELEMENTS}


def seed(candidate: str, reference: str) -> int:
    return len(candidate) + len(reference)


def _check(candidate: str, reference: str, stage: str, err: float, base: float | None) -> dict[str, Any]:
    return {
        "reference": reference,
        "candidate": candidate,
        "output": "logits",
        "batch_source": "all",
        "max_abs_err": err,
        "max_rel_err": err * 10,
        "mean_abs_err": err / 4,
        "mismatch_ratio": 0.0,
        "cosine": 1.0,
        "top1_agreement": 1.0,
        "top5_agreement": 1.0,
        "atol": 1e-4,
        "rtol": 1e-3,
        "passed": True,
        "stage": stage,
        "baseline_max_abs_err": base,
        "error_ratio": None if base is None else err / base,
        "worst_batch": "random seed 1",
        "nan_count": 0,
        "error": None,
        "error_histogram": error_histogram(err, seed=seed(candidate, reference)),
    }


def _latency(backend: str, provider: str, model: str, batch: int, p50: float) -> dict[str, Any]:
    return {
        "backend": backend,
        "provider": provider,
        "model": model,
        "batch": batch,
        "p50_ms": p50,
        "p90_ms": p50 * 1.1,
        "p99_ms": p50 * 1.3,
        "mean_ms": p50 * 1.05,
        "std_ms": p50 * 0.05,
        "min_ms": p50 * 0.9,
        "max_ms": p50 * 1.5,
        "throughput": batch * 1e3 / p50,
        "runs": 30,
        "threads": 2,
        "session_create_ms": 12.5 if backend == "onnxruntime" else None,
    }


def sample_report() -> dict[str, Any]:
    """A passing report: four BatchNorms (three folded, one kept as affine), CPU parity and latency."""
    ref = "original fp64 (torch)"
    layers = [
        {
            "name": n,
            "kind": "BatchNorm2d",
            "action": "folded",
            "into": [f"{n}.conv"],
            "how": "forward",
            "reason": None,
            "channels": 16,
            "max_stat_change": None,
            "op": "batchnorm",
        }
        for n in BN_NAMES[:3]
    ]
    layers.append(
        {
            "name": BN_NAMES[3],
            "kind": "BatchNorm1d",
            "action": "affine",
            "into": [],
            "how": None,
            "reason": "input feeds two consumers",
            "channels": 10,
            "max_stat_change": None,
            "op": "batchnorm",
        }
    )
    return copy.deepcopy(
        {
            "schema": "bnfold.report/1",
            "bnfold_version": "0.1.0",
            "created": "2026-11-23T19:00:00+00:00",
            "model": {
                "path": "models/digits_cnn.pt2",
                "sha256": "ab" * 32,
                "format": "torch.export",
                "inputs": [{"name": "input_0", "shape": [1, 1, 8, 8], "dtype": "float32"}],
                "notes": [],
            },
            "fold": {
                "batchnorm_found": 4,
                "batchnorm_folded": 3,
                "batchnorm_affine": 1,
                "batchnorm_kept": 1,
                "recalibrated": False,
                "seconds": 0.21,
                "layers": layers,
            },
            "onnx": {
                "path": "out/digits_cnn.onnx",
                "exporter": "torch.onnx (dynamo)",
                "opset": 18,
                "batchnorm_nodes": 0,
                "nodes": 14,
                "size_bytes": 81234,
                "sha256": "cd" * 32,
            },
            "parity": {
                "passed": True,
                "atol": 1e-4,
                "rtol": 1e-3,
                "rule": "|a - b| <= atol + rtol * |b|",
                "reference": ref,
                "failed_stage": None,
                "cuda": {
                    "available": False,
                    "note": "CUDA not available: onnxruntime-gpu is not installed or no "
                    "GPU is visible; CPU results only",
                },
                "inputs": [
                    {"source": "example", "batch": 1},
                    {"source": "random seed 1", "batch": 1},
                    {"source": "data digits_heldout.npz", "batch": 450},
                ],
                "checks": [
                    _check("original fp32", ref, "baseline", 2.0e-6, 2.0e-6),
                    _check("folded fp32 (torch)", ref, "fold", 2.4e-6, 2.0e-6),
                    _check("folded fp32 (torch)", "original fp32", "fold", 1.1e-6, None),
                    _check("onnxruntime CPU (optimizations off)", ref, "export", 2.4e-6, 2.0e-6),
                    _check("onnxruntime CPU (optimizations off)", "folded fp32 (torch)", "export", 4.0e-7, None),
                    _check("onnxruntime CPU (optimizations all)", ref, "ort-optimization", 2.6e-6, 2.0e-6),
                    _check(
                        "onnxruntime CPU (optimizations all)",
                        "onnxruntime CPU (optimizations off)",
                        "ort-optimization",
                        3.0e-7,
                        None,
                    ),
                ],
            },
            "latency": [
                _latency("onnxruntime", "CPUExecutionProvider", "original", 1, 0.050),
                _latency("onnxruntime", "CPUExecutionProvider", "folded", 1, 0.038),
                _latency("onnxruntime", "CPUExecutionProvider", "original", 64, 0.90),
                _latency("onnxruntime", "CPUExecutionProvider", "folded", 64, 0.72),
                _latency("torch", "eager", "original", 1, 0.20),
                _latency("torch", "eager", "folded", 1, 0.12),
            ],
            "speedup": [
                {
                    "backend": "onnxruntime",
                    "provider": "CPUExecutionProvider",
                    "batch": 1,
                    "speedup_p50": 1.3158,
                    "speedup_low": 1.2,
                    "speedup_high": 1.4,
                    "original_p50_ms": 0.05,
                    "folded_p50_ms": 0.038,
                },
                {
                    "backend": "onnxruntime",
                    "provider": "CPUExecutionProvider",
                    "batch": 64,
                    "speedup_p50": 1.25,
                    "speedup_low": 1.2,
                    "speedup_high": 1.3,
                    "original_p50_ms": 0.9,
                    "folded_p50_ms": 0.72,
                },
                {
                    "backend": "torch",
                    "provider": "eager",
                    "batch": 1,
                    "speedup_p50": 1.6667,
                    "speedup_low": 1.5,
                    "speedup_high": 1.8,
                    "original_p50_ms": 0.2,
                    "folded_p50_ms": 0.12,
                },
            ],
            "environment": {
                "cpu_model": "AMD EPYC",
                "physical_cores": 2,
                "logical_cores": 2,
                "os": "Linux",
                "python": "3.11.7",
                "torch": "2.13.0",
                "onnx": "1.23.2",
                "onnxruntime": "1.32.0",
                "onnxscript": "0.7.2",
                "numpy": "2.4.6",
                "bnfold": "0.1.0",
                "execution_providers": ["CPUExecutionProvider"],
            },
            "warnings": ["classifier.bn kept as affine: input feeds two consumers"],
            "verdict": {"passed": True, "reason": "parity passed; 3/4 BatchNorms folded"},
        }
    )


def failing_report() -> dict[str, Any]:
    """The sample with a broken export: parity fails at stage export."""
    report = sample_report()
    checks = report["parity"]["checks"]
    for check in checks[3:]:
        base = check["baseline_max_abs_err"]
        check.update(
            max_abs_err=0.32,
            passed=False,
            mismatch_ratio=0.9,
            top1_agreement=0.8,
            error_ratio=None if base is None else 0.32 / base,
            error_histogram=error_histogram(0.32),
        )
    report["parity"].update(passed=False, failed_stage="export")
    report["verdict"] = {"passed": False, "reason": "parity failed at stage export"}
    return report


def test_the_sample_is_plain_json_in_the_contract() -> None:
    for report in (sample_report(), failing_report()):
        assert json.loads(json.dumps(report, allow_nan=False)) == report
        assert report["schema"] == "bnfold.report/1"
