"""The models benchmarked: the two shipped sample models and the four architectures of ``architectures.py``.

A :class:`Subject` knows how to build its ``nn.Module`` (deterministically, so a fresh subprocess builds the
same weights), its example inputs, and what ``bnfold convert`` and a bare ``torch.onnx.export`` are given:
the shipped models go in as their ``.pt2`` archives, as on the command line; the architectures as modules.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
for folder in (HERE, ROOT):
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))

import architectures  # noqa: E402

SHIPPED = ("digits_cnn", "tabular_mlp")
ALL = (*SHIPPED, *architectures.ARCHITECTURES)
LARGE = ("wide_mlp",)
"""Models past protobuf's 2 GB, built on the fly into a ``.pt2`` archive and only run when named
(``--models wide_mlp``): ``wide_mlp`` is nine 8192x8192 Linear + BatchNorm1d layers, 2.4 GB of weights.
Only ``convert``'s wall time and memory against the bare export are measured on them."""
LARGE_LAYERS, LARGE_WIDTH = 9, 8192


@dataclass(frozen=True)
class Subject:
    """One benchmarked model at one input size. ``shallow``: the depth-reduced variant (``--quick``)."""

    name: str
    resolution: int = 224
    shallow: bool = False

    @property
    def shipped(self) -> bool:
        return self.name in SHIPPED

    @property
    def large(self) -> bool:
        return self.name in LARGE

    @property
    def archive(self) -> Path:
        if self.large:
            return Path(tempfile.gettempdir()) / f"bnfold-benchmark-{self.name}.pt2"
        return ROOT / "models" / f"{self.name}.pt2"

    def build_archive(self) -> None:
        """Write a large subject's archive (in a process of its own, so the caller stays small)."""
        if self.large and not self.archive.exists():
            code = f"import subjects; subjects.save_wide_mlp({str(self.archive)!r})"
            subprocess.run([sys.executable, "-c", code], cwd=HERE, check=True)

    def module(self) -> nn.Module:
        """The model, in eval mode, with the same weights in every process."""
        if self.large:
            return wide_mlp()
        if self.shipped:
            from models import architectures as shipped

            model: nn.Module = getattr(shipped, self.name)()
            state = torch.load(ROOT / "models" / f"{self.name}.state_dict.pt", weights_only=True)
            model.load_state_dict(state)
            return model.eval()
        return architectures.build(self.name, seed=0, shallow=self.shallow)

    def inputs(self) -> tuple[torch.Tensor, ...]:
        """The example inputs: the ones stored in the archive, or one seeded 1x3xRxR image."""
        if self.large:
            return (torch.randn(4, LARGE_WIDTH, generator=torch.Generator().manual_seed(1234)),)
        if self.shipped:
            return tuple(torch.export.load(self.archive).example_inputs[0])
        generator = torch.Generator().manual_seed(1234)
        return (torch.randn(1, 3, self.resolution, self.resolution, generator=generator),)

    def convert_source(self) -> Any:
        """What ``bnfold.convert`` is handed: the archive path, or the module."""
        return self.archive if self.shipped or self.large else self.module()

    def export_source(self) -> Any:
        """What a bare ``torch.onnx.export`` is handed: the loaded program, or the module."""
        return torch.export.load(self.archive) if self.shipped or self.large else self.module()

    def describe(self) -> str:
        shape = "x".join(str(d) for d in self.inputs()[0].shape)
        variant = " (depth-reduced)" if self.shallow and not (self.shipped or self.large) else ""
        return f"{self.name}{variant} input {shape}"


def batch_dynamic_shapes(inputs: tuple[torch.Tensor, ...]) -> tuple[dict[int, Any], ...]:
    """Dim 0 of every input marked ``Dim.AUTO``, as bnfold exports (static when the example batch is 1)."""
    return tuple({0: torch.export.Dim.AUTO} for _ in inputs)


def wide_mlp(layers: int = LARGE_LAYERS, width: int = LARGE_WIDTH) -> nn.Module:
    """``layers`` Linear(width, width) + BatchNorm1d (ReLU between): 2.4 GB of weights at 9 x 8192."""
    torch.manual_seed(0)
    modules: list[nn.Module] = []
    for i in range(layers):
        modules += [nn.Linear(width, width), nn.BatchNorm1d(width)] + ([nn.ReLU()] if i < layers - 1 else [])
    model = nn.Sequential(*modules)
    architectures.randomise_batchnorms(model, torch.Generator().manual_seed(1))
    return model.eval()


def save_wide_mlp(path: str) -> None:
    """``torch.export.save`` of :func:`wide_mlp` with its example input, as a user would hand it over."""
    subject = Subject("wide_mlp")
    torch.export.save(torch.export.export(wide_mlp(), subject.inputs()), path)
