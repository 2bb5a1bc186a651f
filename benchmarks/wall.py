"""One timed job in a fresh process, for wall time and peak memory: ``bnfold convert`` or a bare export.

    python benchmarks/wall.py convert resnet50 --resolution 224 --out /tmp/x.onnx

Both jobs first pay the same one-time costs of a process, which are in neither side's time: they import
the same libraries (the lazily imported torch.export and torch.onnx internals included, ~3.5 s here),
export a one-layer model with both of torch's exporters (each builds its operator registry on its first
export, the dynamo exporter's ~3 s) and run it in onnxruntime once (see :func:`warm_up`). Then they
build the same model, with one intra-op thread, time one call, and print one JSON line with the
process's peak RSS, imports included: ``VmHWM`` from ``/proc/self/status``. (Not ``ru_maxrss``: Linux
carries it over fork and exec, so a child started by a large parent reports at least the parent's RSS.)
"""

from __future__ import annotations

import argparse
import io
import json
import time
from pathlib import Path

import onnx
import onnxscript  # noqa: F401
import torch
import torch.export._trace  # noqa: F401
import torch.onnx._internal.exporter._core  # noqa: F401
from subjects import Subject

from bnfold.convert import ConvertConfig, convert


def run_convert(subject: Subject, out: Path) -> dict[str, object]:
    """``bnfold convert`` as the CLI runs it, with latency measurement off and reports written."""
    archive = subject.shipped or subject.large
    source, inputs = subject.convert_source(), None if archive else subject.inputs()
    config = ConvertConfig(output=out, bench=False, write_reports=True)
    start = time.perf_counter()
    result = convert(source, config, example_inputs=inputs)
    seconds = time.perf_counter() - start
    fold = result.report["fold"]
    return {
        "seconds": seconds,
        "passed": result.passed,
        "batchnorm_found": fold["batchnorm_found"],
        "batchnorm_folded": fold["batchnorm_folded"],
        "batchnorm_affine": fold["batchnorm_affine"],
        "batchnorm_nodes": result.report["onnx"]["batchnorm_nodes"],
        "nodes": result.report["onnx"]["nodes"],
    }


def run_export(subject: Subject, out: Path) -> dict[str, object]:
    """A bare ``torch.onnx.export(model, args, path, dynamo=True)`` with the exporter's defaults."""
    if subject.shipped or subject.large:  # loading the archive is part of the job, as it is for bnfold convert
        start = time.perf_counter()
        model = program = subject.export_source()
        torch.onnx.export(program, tuple(program.example_inputs[0]), str(out), dynamo=True, verbose=False)
    else:
        model, inputs = subject.export_source(), subject.inputs()
        start = time.perf_counter()
        torch.onnx.export(model, inputs, str(out), dynamo=True, verbose=False)
    seconds = time.perf_counter() - start
    nodes = len(onnx.load(str(out), load_external_data=False).graph.node)
    return {"seconds": seconds, "nodes": nodes, "weights_mb": weights_mb(model)}


def weights_mb(model: torch.nn.Module | torch.export.ExportedProgram) -> float:
    """MiB of the model's parameters, buffers and tensor constants (each storage once): one copy of the
    weights, the allowance the memory target gives bnfold over the bare export."""
    if isinstance(model, torch.export.ExportedProgram):
        tensors = [*model.state_dict.values(), *(t for t in model.constants.values() if isinstance(t, torch.Tensor))]
    else:
        tensors = [*model.state_dict().values()]
    storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in tensors if t.numel()}
    return sum(storages.values()) / 2**20


def warm_up() -> None:
    """The one-time set-up of the libraries either side runs, done before timing: a one-conv model exported
    with both of torch's exporters (each builds its operator registry on its first call) and run in an
    onnxruntime session (its environment, kernel registry and thread pools)."""
    import onnxruntime as ort

    from bnfold.export import quiet

    conv, x, buffer = torch.nn.Conv2d(1, 1, 1), torch.randn(1, 1, 2, 2), io.BytesIO()
    with quiet():
        torch.onnx.export(conv, (x,), dynamo=True, verbose=False)
        torch.onnx.export(conv, (x,), buffer, dynamo=False)
    session = ort.InferenceSession(buffer.getvalue(), providers=["CPUExecutionProvider"])
    session.run(None, {session.get_inputs()[0].name: x.numpy()})


def peak_rss_mb() -> float:
    """This process's peak resident set size (``VmHWM``), in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status (Linux only)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("job", choices=("convert", "export"))
    parser.add_argument("model")
    parser.add_argument("--resolution", type=int, default=224)
    parser.add_argument("--shallow", action="store_true")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    warm_up()
    subject = Subject(args.model, args.resolution, args.shallow)
    job = run_convert if args.job == "convert" else run_export
    result = job(subject, args.out)
    print(json.dumps({**result, "peak_rss_mb": peak_rss_mb()}), flush=True)


if __name__ == "__main__":
    main()
