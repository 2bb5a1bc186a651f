"""``ConvertConfig``: fields named as the CLI's options, the older names still accepted, bad values refused
when the config is built."""

from __future__ import annotations

import dataclasses
import pickle
import re
from pathlib import Path

import click
import pytest

from bnfold import ConvertConfig
from bnfold.cli import convert as convert_command
from bnfold.errors import BnfoldError, ConfigError


def test_the_cli_names_are_the_fields() -> None:
    config = ConvertConfig(random_batches=3, model="models.architectures:digits_cnn", bench=False, trust_code=True)
    assert (config.random_batches, config.model, config.bench, config.trust_code) == (
        3,
        "models.architectures:digits_cnn",
        False,
        True,
    )


def test_every_convert_option_has_its_field() -> None:
    fields = {f.name for f in dataclasses.fields(ConvertConfig)}
    repeatable = {
        "input_shape": "input_shapes",
        "tolerance": "tolerances",
        "model_arg": "model_args",
        "batch": "batches",
    }
    many_models_only, cli_only = {"output_dir", "jobs"}, {"quiet"}
    for param in convert_command.params:
        if not isinstance(param, click.Option):
            continue
        name = next(o for o in param.opts if o.startswith("--")).lstrip("-").replace("-", "_")
        if name in many_models_only | cli_only:
            continue
        assert repeatable.get(name, name) in fields, f"--{name} has no ConvertConfig field"


def test_the_older_names_still_work() -> None:
    config = ConvertConfig(seeds=4, factory="pkg:build", trust_pickle=True)
    assert (config.random_batches, config.model, config.trust_code) == (4, "pkg:build", True)
    assert ConvertConfig(seeds=0).random_batches == 0
    assert ConvertConfig(seeds=2, random_batches=2).random_batches == 2


def test_older_and_newer_names_that_disagree_are_refused() -> None:
    with pytest.raises(ConfigError, match="seeds=2 and random_batches=5 disagree"):
        ConvertConfig(seeds=2, random_batches=5)
    with pytest.raises(ConfigError, match="factory"):
        ConvertConfig(factory="a:b", model="c:d")


def test_replace_and_pickle_keep_the_values(tmp_path: Path) -> None:
    config = ConvertConfig(seeds=3, factory="pkg:build")
    changed = dataclasses.replace(config, random_batches=5, output=tmp_path / "m.onnx")
    assert (changed.random_batches, changed.model) == (5, "pkg:build")
    assert pickle.loads(pickle.dumps(changed)) == changed  # --jobs sends it to a worker process
    assert "seeds" not in repr(config) and "random_batches=3" in repr(config)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"affine_form": "fused"}, "--affine-form 'fused': expected one of batchnorm, muladd"),
        ({"exporter": "onnxscript"}, "--exporter 'onnxscript'"),
        ({"external_data": "sometimes"}, "--external-data 'sometimes'"),
        ({"providers": ("tpu",)}, "--providers 'tpu'"),
        ({"providers": "cpu"}, "give a tuple of names"),
        ({"atol": -1e-4}, "--atol: a tolerance is a finite number >= 0"),
        ({"rtol": float("nan")}, "--rtol"),
        ({"tolerances": (("logits", 1e-4, -1.0),)}, "--tolerance logits=0.0001,-1.0"),
        ({"random_batches": -1}, "--random-batches -1: expected an integer from 0 to 100"),
        ({"seeds": -2}, "--random-batches -2"),
        ({"threads": 0}, "--threads 0: expected an integer >= 1"),
        ({"opset": 6}, "--opset 6: expected an integer from 7 to 30"),
        ({"opset": 31}, "--opset 31"),
        ({"batches": (8, 0)}, "--batch 0"),
        ({"input_shapes": ((1, 0, 8),)}, "--input-shape 1,0,8"),
    ],
)
def test_a_bad_value_is_refused_when_the_config_is_built(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)) as caught:
        ConvertConfig(**kwargs)  # type: ignore[arg-type]
    assert isinstance(caught.value, BnfoldError)


def test_good_values_pass() -> None:
    config = ConvertConfig(providers=("auto",), opset=7, threads=1, random_batches=0, atol=0.0, batches=(1, 8))
    assert (config.opset, config.threads, config.random_batches, config.atol) == (7, 1, 0, 0.0)
    config = ConvertConfig(providers=("cpu", "CUDAExecutionProvider"), opset=30, exporter="dynamo",
                           external_data="never")  # fmt: skip
    assert config.providers == ("cpu", "CUDAExecutionProvider") and config.exporter == "dynamo"


@pytest.mark.parametrize(
    "kwargs",
    [
        {"trust_pickle": True, "trust_code": False},  # an explicit refusal of code is not a default to override
        {"seeds": 3, "random_batches": 1},  # the newer name at its default value, given all the same
        {"factory": "a:b", "model": None},
    ],
)
def test_an_older_name_and_its_newer_one_given_together_must_agree(kwargs: dict[str, object]) -> None:
    with pytest.raises(ConfigError, match="disagree"):
        ConvertConfig(**kwargs)  # type: ignore[arg-type]
