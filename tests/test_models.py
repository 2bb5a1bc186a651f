"""The trained sample models in models/: their files agree with each other and with models.json."""

from __future__ import annotations

import importlib
import json
import sys
from itertools import pairwise
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

REPO_ROOT = Path(__file__).resolve().parents[1]
MODELS_DIR = REPO_ROOT / "models"
REGISTRY: dict[str, dict[str, Any]] = json.loads((MODELS_DIR / "models.json").read_text())
MIN_ACCURACY = {"digits_cnn": 0.95, "tabular_mlp": 0.93}
NAMES = sorted(REGISTRY)


def _factory(spec: str) -> nn.Module:
    """Build a fresh model from a ``module:function`` spec relative to the repository root."""
    if str(REPO_ROOT) not in sys.path:
        sys.path.insert(0, str(REPO_ROOT))
    module_name, function_name = spec.split(":")
    return getattr(importlib.import_module(module_name), function_name)()


def _heldout(name: str) -> tuple[torch.Tensor, torch.Tensor]:
    data = np.load(MODELS_DIR / REGISTRY[name]["heldout"])
    return torch.from_numpy(data["x"]), torch.from_numpy(data["y"])


def _program(name: str) -> torch.export.ExportedProgram:
    return torch.export.load(MODELS_DIR / REGISTRY[name]["file"])


def _trained_model(name: str) -> nn.Module:
    model = _factory(REGISTRY[name]["architecture"])
    state = torch.load(MODELS_DIR / REGISTRY[name]["state_dict"], weights_only=True)
    model.load_state_dict(state)
    return model.eval()


def _batchnorms(model: nn.Module) -> list[_BatchNorm]:
    return [m for m in model.modules() if isinstance(m, _BatchNorm)]


def test_registry_lists_both_sample_models() -> None:
    assert set(REGISTRY) == set(MIN_ACCURACY)


@pytest.mark.parametrize("name", NAMES)
def test_program_accuracy_matches_registry(name: str) -> None:
    x, y = _heldout(name)
    with torch.no_grad():
        predicted = _program(name).module()(x).argmax(dim=1)
    accuracy = (predicted == y).double().mean().item()
    assert accuracy == pytest.approx(REGISTRY[name]["heldout_accuracy"], abs=1e-6)
    assert accuracy >= MIN_ACCURACY[name]


@pytest.mark.parametrize("name", NAMES)
def test_state_dict_and_factory_give_the_program_logits(name: str) -> None:
    x, _ = _heldout(name)
    with torch.no_grad():
        torch.testing.assert_close(_trained_model(name)(x), _program(name).module()(x))


@pytest.mark.parametrize("name", NAMES)
def test_batchnorm_statistics_were_trained(name: str) -> None:
    batchnorms = _batchnorms(_trained_model(name))
    assert len(batchnorms) == REGISTRY[name]["batchnorm_layers"] > 0
    for bn in batchnorms:
        assert bn.running_var is not None and bn.running_mean is not None, bn
        assert not torch.all(bn.running_var == 1), bn
        assert not torch.all(bn.running_mean == 0), bn
        assert not bn.training


@pytest.mark.parametrize("name", NAMES)
def test_program_has_batch_8_example_and_a_dynamic_batch(name: str) -> None:
    program = _program(name)
    args, kwargs = program.example_inputs
    assert len(args) == 1 and not kwargs
    assert args[0].shape[0] == 8
    assert list(args[0].shape[1:]) == REGISTRY[name]["input_shape"][1:]
    x, _ = _heldout(name)
    model = _trained_model(name)
    with torch.no_grad():
        for batch in (1, 64):
            torch.testing.assert_close(program.module()(x[:batch]), model(x[:batch]))


@pytest.mark.parametrize("name", NAMES)
def test_every_batchnorm_directly_follows_its_producer(name: str) -> None:
    model = _factory(REGISTRY[name]["architecture"])
    followed = 0
    for block in model.modules():
        if not isinstance(block, nn.Sequential):
            continue
        for producer, bn in pairwise(block):
            if isinstance(bn, _BatchNorm):
                assert isinstance(producer, (nn.Conv2d, nn.Linear)), f"{bn} follows {producer}"
                followed += 1
    assert followed == len(_batchnorms(model))


def test_digits_cnn_covers_depthwise_and_bias_free_convs() -> None:
    convs = [m for m in _factory("models.architectures:digits_cnn").modules() if isinstance(m, nn.Conv2d)]
    assert any(c.groups == c.in_channels == c.out_channels > 1 for c in convs)
    assert any(c.bias is None for c in convs)
    assert any(c.bias is not None for c in convs)
