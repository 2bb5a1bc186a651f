"""Judging the measured ratios against the targets, and printing them: a terminal table, JSON, Markdown."""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Target:
    """A bound on a ratio (lower is better): on the median over models and, if given, on the worst one."""

    key: str
    title: str
    median: float | None
    worst: float | None

    def judge(self, ratios: dict[str, float]) -> dict[str, Any]:
        values = list(ratios.values())
        if not values:
            return {"median": None, "worst": None, "worst_model": None, "passed": None}
        median, worst_model = statistics.median(values), max(ratios, key=ratios.__getitem__)
        passed = (self.median is None or median <= self.median) and (
            self.worst is None or ratios[worst_model] <= self.worst
        )
        return {"median": median, "worst": ratios[worst_model], "worst_model": worst_model, "passed": passed}

    def bound(self) -> str:
        parts = ([f"median ≤ {self.median:g}"] if self.median is not None else []) + (
            [f"every model ≤ {self.worst:g}" if self.median is None else f"worst ≤ {self.worst:g}"]
            if self.worst is not None
            else []
        )
        return ", ".join(parts)


TARGETS = (
    Target("P1", "onnxruntime CPU latency: bnfold output ÷ BN-free twin", 1.01, 1.05),
    Target(
        "P2",
        "PyTorch eager latency: bnfold.fold(...).module ÷ the exact limit (the BN-free twin, its "
        "unfoldable BNs kept as one multiply-add each)",
        None,
        1.01,
    ),
    Target("P3", "bnfold convert wall time (no latency) ÷ bare torch.onnx.export(dynamo=True)", None, 1.0),
    Target("P4t", "bnfold.fold ÷ the torch.export trace it starts from", None, 1.5),
    Target("P5", "onnxruntime session creation: bnfold output ÷ dynamo export of the original", None, 1.0),
    Target("memory", "peak RSS: bnfold convert ÷ (bare export + one copy of the weights), fresh processes", None, 1.0),
)


def summarise(models: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Per target: median and worst ratio over the models, and whether the target holds."""
    summary = {}
    for target in TARGETS:
        ratios = {name: m[target.key]["ratio"] for name, m in models.items() if target.key in m}
        summary[target.key] = {"title": target.title, "target": target.bound(), **target.judge(ratios)}
    return summary


def _fmt(value: float | None, digits: int = 3) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def _verdict(passed: bool | None) -> str:
    return "—" if passed is None else ("pass" if passed else "FAIL")


def model_rows(models: dict[str, dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    """Per-model ratios with the absolute medians behind them."""
    header = ["model", *(t.key for t in TARGETS), "BN folded", "parity"]
    rows = []
    for name, m in models.items():
        cells = [name]
        for t in TARGETS:
            block = m.get(t.key)
            cells.append(
                "—"
                if block is None
                else (
                    f"{block['ratio']:.3f} ({_absolute(block['candidate_median'], block['unit'])} / "
                    f"{_absolute(block['baseline_median'], block['unit'])})"
                )
            )
        facts = m.get("convert", {})
        cells.append(f"{facts.get('batchnorm_folded', '?')}/{facts.get('batchnorm_found', '?')}")
        cells.append({True: "pass", False: "FAIL"}.get(facts.get("passed"), "—"))
        rows.append(cells)
    return header, rows


def file_rows(models: dict[str, dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    """The ONNX files compared: nodes, BatchNormalization nodes, size in the file and in external data."""
    sides = ("bnfold", "export", "bn_free")
    header = ["model", *(f"{side}: nodes / BN / MB in file + external" for side in sides), "max |bnfold - export|"]
    rows = []
    for name, m in models.items():
        cells = [name]
        for side in sides:
            f = m.get("onnx", {}).get(side)
            cells.append(
                "—"
                if f is None
                else f"{f['nodes']} / {f['batchnorm_nodes']} / {f['file_mb']:.1f} + {f['external_data_mb']:.1f}"
            )
        diff = m.get("max_abs_diff_vs_export")
        cells.append("—" if diff is None else f"{diff:.1e}")
        rows.append(cells)
    return header, rows


def _absolute(value: float, unit: str) -> str:
    if unit == "ms":
        return f"{value:.3g} ms"
    if unit == "s":
        return f"{value:.2f} s"
    return f"{value:.0f} {unit}"


def target_rows(summary: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    header = ["target", "what", "bound", "median", "worst (model)", "result"]
    rows = [
        [
            key,
            s["title"],
            s["target"],
            _fmt(s["median"]),
            f"{_fmt(s['worst'])} ({s['worst_model']})",
            _verdict(s["passed"]),
        ]
        for key, s in summary.items()
    ]
    return header, rows


def text_table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    line = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True))  # noqa: E731
    return "\n".join([line(header), line(["-" * w for w in widths]), *(line(r) for r in rows)])


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    escape = lambda c: c.replace("|", "\\|")  # noqa: E731
    lines = ["| " + " | ".join(escape(c) for c in header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(escape(c) for c in r) + " |" for r in rows])


def write_json(results: dict[str, Any], path: Path) -> None:
    path.write_text(json.dumps(rounded(results), indent=2) + "\n")


def rounded(value: Any) -> Any:
    """Floats rounded to 6 significant digits, recursively (results.json stays readable)."""
    if isinstance(value, float):
        return float(f"{value:.6g}")
    if isinstance(value, dict):
        return {k: rounded(v) for k, v in value.items()}
    if isinstance(value, list):
        return [rounded(v) for v in value]
    return value


METHOD = """\
- **Models.** The shipped `models/digits_cnn.pt2` and `models/tabular_mlp.pt2` (given to `bnfold convert` as
  archives, example batch 8), and ResNet-50, MobileNetV2, DenseNet-121 and RepVGG-A0 as written out in
  `benchmarks/architectures.py` (real layer counts and widths, random weights, every BatchNorm with random
  running statistics and affine parameters), input {resolution}. The *BN-free twin* is the same module with
  every BatchNorm replaced by `nn.Identity`: not equivalent, the speed limit of any fold. The *exact limit*
  (P2) is that twin with the BatchNorms bnfold could not fold exactly kept as one multiply-add each
  (`torch.addcmul`), the fastest equal model; it is the twin itself when every BatchNorm folds.
- **Threads.** {threads} intra-op thread(s) for torch and onnxruntime on both sides of every ratio (two torch
  threads are erratic on this machine for small ops).
- **P1, P2.** Latency A/B interleaved in one run (`bnfold.bench.bench_onnx` / `bench_torch`: warm-up, then
  rounds alternating which model goes first, at least {min_runs} rounds and {min_seconds:g} s); ratio of
  medians. P1 is timed in three blocks with fresh sessions, and its ratio is the median of the blocks'.
  onnxruntime sessions use `ORT_ENABLE_ALL`. The twin is exported as `bnfold convert` exports its output:
  captured by `bnfold.fold` (nothing to fold), `bnfold.export.export_folded` with the default exporter
  (TorchScript, the dynamo exporter as fallback), opset 18, saved with the same external-data rule.
- **P3, memory.** Each side in {processes} fresh processes (`benchmarks/wall.py`), alternating which runs
  first. Both first pay the same one-time costs, outside the timing: the same imports (the lazily imported
  torch.export / torch.onnx internals included), one export of a one-layer model with each of torch's two
  exporters (each builds its operator registry on its first call, the dynamo exporter's ~3 s) and one
  onnxruntime session of it (the runtime's environment and thread pools). Then both build the same model
  and one call is timed:
  `bnfold.convert(model, ConvertConfig(bench=False, write_reports=True))` against
  `torch.onnx.export(model, args, path, dynamo=True)` (for the shipped models, loading the `.pt2` archive
  is inside both timings). Ratio of medians. Peak RSS is the process's `VmHWM` at exit, imports included,
  nothing subtracted (`ru_maxrss` is not usable: Linux carries it over fork and exec from the parent). The
  memory baseline is the bare export's peak plus one copy of the model's weights (its parameters, buffers
  and constants): `convert` holds the original and the folded model at once, the export only one.
- **Models past 2 GB.** `--models wide_mlp` (not in the default list) builds nine 8192x8192 Linear +
  BatchNorm1d layers (2.4 GB of weights) into a `torch.export.save` archive in the temporary folder, and
  measures P3 and memory only, as for the shipped models (the archive is the input of both sides).
- **P4t.** `bnfold.fold(module, inputs)` (torch.export tracing included) against the torch.export trace it
  starts from (`bnfold.fold.capture.capture`), one untimed call each, then {repeats} timed calls each,
  alternating, with the garbage collector run before each timed call and paused during it, as `timeit`
  does (a collection of what one call left would land in the next); ratio of medians: what bnfold's own
  work adds to a trace any exact fold of an arbitrary model needs. The former P4 (against
  `torch.fx.experimental.optimization.fuse`, a Python-level symbolic trace that cannot see through
  arbitrary models) is still measured and kept in `results.json`, for scale, with no target (see
  `PROFILE.md`).
- **P5.** onnxruntime `InferenceSession` creation (`ORT_ENABLE_ALL`, from the file) of bnfold's output
  against the plain dynamo export of the original model (the one P3 timed), {sessions} alternating each
  (collected and timed as P4t).
"""


def markdown(results: dict[str, Any]) -> str:
    """RESULTS.md: targets and verdicts, per-model numbers, the machine, the date, the method."""
    env, settings = results["environment"], results["settings"]
    summary_table = markdown_table(*target_rows(results["summary"]))
    models_table = markdown_table(*model_rows(results["models"]))
    files_table = markdown_table(*file_rows(results["models"]))
    machine = (
        f"{env['cpu_model']}, {env['physical_cores']} physical / {env['logical_cores']} logical cores, "
        f"{env['os']}; Python {env['python']}, torch {env['torch']}, onnx {env['onnx']}, onnxruntime "
        f"{env['onnxruntime']}, onnxscript {env['onnxscript']}; load average "
        f"{results['load_average']['start']} at start, {results['load_average']['end']} at end"
    )
    resolution = f"{settings['resolution']}x{settings['resolution']}" + (
        " (depth-reduced variants)" if settings["quick"] else ""
    )
    method = METHOD.format(resolution=resolution, threads=settings["threads"], **settings["effort"])
    return f"""# bnfold benchmarks

Latest run of `{settings["command"]}`, {results["created"]}, {results["elapsed_seconds"]:.0f} s.
Ratios are bnfold ÷ baseline: lower is better. Regenerated by every run; the full numbers are in
`results.json`. Where `convert`'s time and memory go, and what bounds the targets marked FAIL, is in
`PROFILE.md`.

## Targets

{summary_table}

## Per model

Each cell: ratio (bnfold side / baseline side, medians).

{models_table}

## ONNX files

bnfold's output, the plain dynamo export of the original (`torch.onnx.export(model, args, path, dynamo=True)`,
which writes its weights to an external data file), and the BN-free twin.

{files_table}

## Machine

{machine}

## Method

{method}"""
