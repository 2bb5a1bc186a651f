"""Node counts of bnfold's ONNX output against the BN-free twin, per model and input format.

    python benchmarks/nodes.py            # depth-reduced architectures and the two blocks, input 64x64
    python benchmarks/nodes.py --write    # also record the table in benchmarks/RESULTS.md

The twin is the same architecture with every BatchNorm deleted (``architectures.without_batchnorm``),
exported by ``torch.onnx.export(dynamo=True)`` with its optimizer (which folds shape arithmetic), batch
dynamic as bnfold's output. bnfold's output is made from each input format a user can bring: a
``torch.export`` program (``.pt2``: fold on the aten graph, then export), a TorchScript archive (exported
unfolded by the TorchScript exporter, folded on the ONNX graph) and an ONNX file (the dynamo exporter
without its optimizer: every BatchNormalization still there). "extra" lists the nodes bnfold's output
holds beyond the twin's, by op type, and "instead of" the twin's nodes it does not hold (an op written
another way, e.g. a Flatten for a Reshape, or the convolution branches of a RepVGG block merged into one);
a BN that cannot fold stays as one frozen node and is listed.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path

import onnx
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from architectures import ARCHITECTURES, BLOCKS, build, without_batchnorm  # noqa: E402

from bnfold.convert.paths import torchscript_to_onnx  # noqa: E402
from bnfold.export import export_folded, export_module, quiet  # noqa: E402
from bnfold.fold import fold  # noqa: E402
from bnfold.fold.onnx import fold_onnx  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
BEGIN, END = "<!-- nodes.py: begin -->", "<!-- nodes.py: end -->"
FORMATS = (".pt2", "TorchScript", "ONNX")


def bnfold_output(model: torch.nn.Module, inputs: tuple[torch.Tensor, ...], fmt: str) -> onnx.ModelProto:
    if fmt == ".pt2":
        folded = fold(torch.export.export(model, inputs), inputs)
        return export_folded(folded.module, inputs).model
    if fmt == "TorchScript":
        with quiet():
            traced = torch.jit.trace(model, inputs)
        return fold_onnx(torchscript_to_onnx(traced, inputs, 18)).model
    original = export_module(model, inputs, optimize=False).model
    return fold_onnx(original).model


def ops(model: onnx.ModelProto) -> Counter[str]:
    return Counter(node.op_type for node in model.graph.node)


def extra(ours: Counter[str], twin: Counter[str]) -> str:
    more = ours - twin
    return ", ".join(f"{op} {n}" for op, n in sorted(more.items())) or "none"


def row(name: str, fmt: str, ours: Counter[str], twin: Counter[str]) -> str:
    counts = f"{sum(ours.values())} | {sum(twin.values())}"
    return f"| {name} | {fmt} | {counts} | {extra(ours, twin)} | {extra(twin, ours)} |"


def measure(name: str) -> list[str]:
    model = build(name, shallow=True)
    inputs = (torch.randn(2, 3, 64, 64),)
    twin = ops(export_module(without_batchnorm(model), inputs).model)
    rows = []
    for fmt in FORMATS:
        with torch.no_grad():
            ours = ops(bnfold_output(model, inputs, fmt))
        rows.append(row(name, fmt, ours, twin))
        print(rows[-1], flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join([*ARCHITECTURES, *BLOCKS]))
    parser.add_argument("--write", action="store_true", help="record the table in benchmarks/RESULTS.md")
    args = parser.parse_args()
    header = ["| model | input | nodes | BN-free twin | extra nodes | instead of |", "|---|---|---|---|---|---|"]
    print("\n".join(header))
    rows = [row for name in args.models.split(",") for row in measure(name)]
    if args.write:
        when = datetime.now(timezone.utc).isoformat(timespec="seconds")
        section = "\n".join(
            [
                BEGIN,
                "## Graph size against the BN-free twin",
                "",
                f"Run of `python benchmarks/nodes.py --write`, {when} (depth-reduced architectures, input 64x64).",
                "",
                *header,
                *rows,
                END,
            ]
        )
        text = RESULTS.read_text()
        text = re.sub(f"\n?{re.escape(BEGIN)}.*{re.escape(END)}", "", text, flags=re.S).rstrip()
        RESULTS.write_text(f"{text}\n\n{section}\n")


if __name__ == "__main__":
    main()
