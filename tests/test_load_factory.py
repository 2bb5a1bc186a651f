"""``--model`` with ``--model-arg``: factories that take arguments (timm's create_model, torchvision's
builders) need no wrapper file."""

from __future__ import annotations

import importlib
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import numpy as np
import onnxruntime as ort
import pytest
import torch

from bnfold.errors import LoadError
from bnfold.load import load_model
from bnfold.load.factory import parse_model_args

REGISTRY = """
import torch
from torch import nn


class Tiny(nn.Module):
    def __init__(self, num_classes, width):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
        self.head = nn.Linear(width, num_classes)

    def forward(self, x):
        return self.head(self.stem(x).mean((2, 3)))


_WIDTHS = {"tiny_a": 4, "tiny_b": 8}


def create_model(model_name, pretrained=False, num_classes=1000, **kwargs):
    if model_name not in _WIDTHS:
        raise RuntimeError(f"Unknown model ({model_name})")
    return Tiny(num_classes, _WIDTHS[model_name])
"""


@pytest.fixture
def zoo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[ModuleType]:
    name = f"zoo_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text(REGISTRY)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield importlib.import_module(name)
    sys.modules.pop(name, None)


@pytest.fixture
def checkpoint(zoo: ModuleType, tmp_path: Path) -> tuple[Path, torch.nn.Module]:
    """A training checkpoint as timm's train script writes one: weights under state_dict beside the rest."""
    torch.manual_seed(0)
    model = zoo.create_model("tiny_b", num_classes=7)
    with torch.no_grad():
        bn = model.stem[1]
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
        bn.weight.uniform_(0.5, 2)
    path = tmp_path / "checkpoint.pth.tar"
    torch.save({"epoch": 12, "arch": "tiny_b", "state_dict": model.state_dict(), "metric": 0.81}, path)
    return path, model.eval()


@pytest.mark.parametrize(
    ("texts", "expected"),
    [
        (["num_classes=10"], {"num_classes": 10}),
        (["model_name=resnet18"], {"model_name": "resnet18"}),  # not a literal: the text itself
        (["pretrained=False", "drop_rate=0.1"], {"pretrained": False, "drop_rate": 0.1}),
        (["img_size=(3, 224)", "name='a b'"], {"img_size": (3, 224), "name": "a b"}),
        (["note=__import__('os')"], {"note": "__import__('os')"}),  # never evaluated, only read as a literal
    ],
)
def test_model_args_are_literals_or_strings(texts: list[str], expected: dict[str, object]) -> None:
    assert parse_model_args(texts) == expected


@pytest.mark.parametrize("text", ["num_classes", "=3", "2x=3"])
def test_model_arg_without_a_name_is_refused(text: str) -> None:
    with pytest.raises(LoadError, match="expected NAME=VALUE"):
        parse_model_args([text])


def test_checkpoint_loads_with_factory_arguments(zoo: ModuleType, checkpoint: tuple[Path, torch.nn.Module]) -> None:
    path, model = checkpoint
    loaded = load_model(path, f"{zoo.__name__}:create_model", factory_args={"model_name": "tiny_b", "num_classes": 7})
    assert loaded.format == "checkpoint" and loaded.module is not None
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(loaded.module(x), model(x))


def test_wrong_factory_arguments_say_so(zoo: ModuleType, checkpoint: tuple[Path, torch.nn.Module]) -> None:
    path, _ = checkpoint
    with pytest.raises(LoadError, match="does not fit the model built by .*create_model.*tiny_a"):
        load_model(path, f"{zoo.__name__}:create_model", factory_args={"model_name": "tiny_a", "num_classes": 7})
    with pytest.raises(LoadError, match=r"Unknown model \(nope\).*with the --model-arg values given"):
        load_model(path, f"{zoo.__name__}:create_model", factory_args={"model_name": "nope"})
    with pytest.raises(LoadError, match="--model-arg needs --model"):
        load_model(path, None, factory_args={"model_name": "tiny_b"})


def test_cli_converts_a_checkpoint_with_model_args(
    zoo: ModuleType, checkpoint: tuple[Path, torch.nn.Module], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from bnfold.cli import main

    path, model = checkpoint
    output = tmp_path / "out" / "tiny.onnx"
    output.parent.mkdir()
    argv = ["convert", str(path), "-o", str(output), "--no-bench", "-q", "--input-shape", "1,3,16,16",
            "--model", f"{zoo.__name__}:create_model", "--model-arg", "model_name=tiny_b",
            "--model-arg", "num_classes=7"]  # fmt: skip
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 0, capsys.readouterr().err
    session = ort.InferenceSession(str(output), providers=["CPUExecutionProvider"])
    reference = model.double()
    for batch in (1, 32):  # a batch-1 example does not pin the batch
        x = torch.randn(batch, 3, 16, 16)
        (got,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
        with torch.no_grad():
            expected = reference(x.double()).numpy()
        np.testing.assert_allclose(got, expected, atol=1e-4, rtol=1e-3)
