"""The short human summary ``bnfold convert`` prints on the terminal."""

from __future__ import annotations

from typing import Any


def summary_lines(report: dict[str, Any]) -> list[str]:
    """BNs found, folded, kept (with reasons), the parity verdict and latency before/after."""
    fold, onnx, parity = report["fold"], report["onnx"], report["parity"]
    lines = [
        f"BatchNorms: {fold['batchnorm_found']} found, {fold['batchnorm_folded']} folded, "
        f"{fold['batchnorm_affine']} frozen affine, {fold['batchnorm_kept'] - fold['batchnorm_affine']} kept as is; "
        f"{onnx['batchnorm_nodes']} BatchNormalization nodes in the ONNX file"
    ]
    for layer in fold["layers"]:
        if layer["action"] != "folded":
            lines.append(f"  {layer['name']}: {'frozen affine' if layer['action'] == 'affine' else 'kept'} — {layer['reason']}")
    lines.append(_parity_line(parity))
    for item in report.get("speedup", []):
        lines.append(
            f"latency {item['backend']} {item.get('provider', '')} batch {item['batch']}: "
            f"{item['original_p50_ms']:.3f} ms → {item['folded_p50_ms']:.3f} ms (×{item['speedup_p50']:.2f})"
            if "original_p50_ms" in item else
            f"latency {item['backend']} {item.get('provider', '')} batch {item['batch']}: ×{item['speedup_p50']:.2f} p50 speedup"
        )
    verdict = report["verdict"]
    lines.append(("PASS: " if verdict["passed"] else "FAIL: ") + verdict["reason"])
    return lines


def _parity_line(parity: dict[str, Any]) -> str:
    checks = parity.get("checks", [])
    worst = max((c["max_abs_err"] for c in checks), default=0.0)
    if parity.get("passed"):
        return f"parity: passed ({len(checks)} checks, max abs err {worst:.2e}, atol {parity['atol']:g}, rtol {parity['rtol']:g})"
    failing = [c for c in checks if not c["passed"]]
    first = failing[0] if failing else None
    where = f" — {first['candidate']} vs {first['reference']}, output {first['output']}: max abs err {first['max_abs_err']:.2e}" if first else ""
    return f"parity: FAILED at stage {parity.get('failed_stage')}{where}"
