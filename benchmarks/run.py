"""Benchmark bnfold against its targets (P1-P5, memory) and keep the latest results.

    python benchmarks/run.py                       # every model, input 224x224 (~15 min on 2 cores)
    python benchmarks/run.py --quick               # depth-reduced models, 64x64, fewer repetitions (~3 min)
    python benchmarks/run.py --models resnet50,digits_cnn
    python benchmarks/run.py --models wide_mlp --output /tmp/large  # 2.4 GB of weights: P3 and memory only

Prints the machine, a table per model and the verdict per target; writes benchmarks/results.json and
benchmarks/RESULTS.md. See RESULTS.md ("Method") for how each ratio is measured.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import measure  # noqa: E402
import results  # noqa: E402
from architectures import exact_limit, without_batchnorm  # noqa: E402
from subjects import ALL, HERE, LARGE, Subject  # noqa: E402

FULL = measure.Effort(min_runs=40, min_seconds=4.0)
QUICK = measure.Effort(min_runs=10, min_seconds=0.5, repeats=2, sessions=3, processes=1)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="bnfold speed, memory and overhead benchmarks")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="depth-reduced architectures at 64x64, fewer repetitions (a smoke run, ~3 min)",
    )
    parser.add_argument("--models", default=",".join(ALL), help=f"comma-separated subset of {','.join(ALL)}")
    parser.add_argument("--resolution", type=int, default=None, help="input height and width (224; --quick: 64)")
    parser.add_argument("--output", type=Path, default=HERE, help="folder for results.json and RESULTS.md")
    args = parser.parse_args(argv)
    args.models = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = [m for m in args.models if m not in (*ALL, *LARGE)]
    if unknown:
        parser.error(f"unknown model(s) {', '.join(unknown)}; choose from {', '.join((*ALL, *LARGE))}")
    args.resolution = args.resolution or (64 if args.quick else 224)
    return args


def say(text: str) -> None:
    print(text, flush=True)


def bench_subject(subject: Subject, effort: measure.Effort, folder: Path) -> dict[str, Any]:
    """Every measurement for one model; ONNX files go to ``folder``."""
    out: dict[str, Any] = {"input": subject.describe()}
    say(f"\n== {out['input']}")
    subject.build_archive()
    say("  P3/memory: bnfold convert and bare export in fresh processes")
    try:
        out.update(measure.convert_processes(subject, folder, effort))
    finally:
        if subject.large:
            subject.archive.unlink(missing_ok=True)
    if subject.large:  # the other measurements would hold several copies of it in this process
        out["onnx"] = {
            "bnfold": measure.output_nodes(folder / "bnfold.onnx"),
            "export": measure.output_nodes(folder / "export.onnx"),
        }
        for key in ("P3", "memory"):
            say(f"  {key}: {out[key]['ratio']:.3f}")
        return out
    module, inputs = subject.module(), subject.inputs()
    twin = without_batchnorm(module)
    out["max_abs_diff_vs_export"] = measure.outputs_agree(folder / "bnfold.onnx", folder / "export.onnx", inputs)
    out["onnx"] = {
        "bnfold": measure.output_nodes(folder / "bnfold.onnx"),
        "export": measure.output_nodes(folder / "export.onnx"),
    }
    say("  P4t: bnfold.fold against the torch.export trace it starts from (and torch.fx fuse, for scale)")
    out["P4"], out["P4t"], folded = measure.fold_time(module, inputs, effort)
    kept = {r.name for r in folded.records if r.action != "folded"}
    say(f"  P2: eager latency, folded module against the exact limit ({len(kept)} BN(s) kept as multiply-add)")
    out["P2"] = measure.eager_latency(folded.module, exact_limit(module, kept), inputs, effort)
    say("  P1: onnxruntime latency, bnfold's output against the BN-free twin")
    bn_free = measure.export_without_batchnorm(twin, inputs, folder / "bn_free.onnx")
    out["onnx"]["bn_free"] = measure.output_nodes(bn_free)
    out["P1"] = measure.ort_latency(folder / "bnfold.onnx", bn_free, inputs, effort)
    say("  P5: onnxruntime session creation")
    out["P5"] = measure.session_time(folder / "bnfold.onnx", folder / "export.onnx", effort)
    for key in ("P1", "P2", "P3", "P4", "P4t", "P5", "memory"):
        say(f"  {key}: {out[key]['ratio']:.3f}")
    return out


def environment() -> dict[str, Any]:
    from bnfold.report.environment import capture_environment

    return capture_environment()


def load_average() -> str:
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    effort = QUICK if args.quick else FULL
    torch.set_num_threads(measure.THREADS)
    started, start_load = time.perf_counter(), load_average()
    env = environment()
    say("machine: " + ", ".join(f"{k} {v}" for k, v in env.items()))
    say(f"threads: torch {measure.THREADS}, onnxruntime intra-op {measure.THREADS}; load average {start_load}")
    models: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="bnfold-bench-") as tmp:
        for name in args.models:
            folder = Path(tmp) / name
            folder.mkdir()
            subject = Subject(name, args.resolution, shallow=args.quick)
            models[name] = bench_subject(subject, effort, folder)
    summary = results.summarise(models)
    report = {
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "elapsed_seconds": time.perf_counter() - started,
        "settings": {
            "command": " ".join(["python benchmarks/run.py", *(argv if argv is not None else sys.argv[1:])]),
            "quick": args.quick,
            "resolution": args.resolution,
            "models": args.models,
            "threads": measure.THREADS,
            "effort": effort.__dict__,
        },
        "environment": env,
        "load_average": {"start": start_load, "end": load_average()},
        "summary": summary,
        "models": models,
    }
    say("\n" + results.text_table(*results.model_rows(models)))
    say("\n" + results.text_table(*results.target_rows(summary)))
    args.output.mkdir(parents=True, exist_ok=True)
    results.write_json(report, args.output / "results.json")
    (args.output / "RESULTS.md").write_text(results.markdown(results.rounded(report)))
    say(f"\nwrote {args.output / 'results.json'} and {args.output / 'RESULTS.md'} ({report['elapsed_seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
