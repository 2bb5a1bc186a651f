"""The file contract on generated runs: whatever the option values and however the input files are
damaged, ``bnfold convert`` exits 0, 1 or 2, never with a traceback; on exit 2 it leaves nothing behind;
the files it reads are never changed (another file given as an output is replaced: that is what -o asks)."""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import snapshot
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from torch import nn

INPUTS = ("model.onnx", "model.pt2", "data.npz")


@pytest.fixture(scope="module")
def originals(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("originals")
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4 * 6 * 6, 3)).eval()
    example = (torch.randn(2, 1, 8, 8),)
    torch.onnx.export(
        model,
        example,
        root / "model.onnx",
        dynamo=False,
        do_constant_folding=False,
        input_names=["x"],
        output_names=["logits"],
        dynamic_axes={"x": {0: "b"}, "logits": {0: "b"}},
    )
    torch.export.save(torch.export.export(model, example), root / "model.pt2")
    np.savez(root / "data.npz", x=np.random.default_rng(0).standard_normal((2, 1, 8, 8)).astype(np.float32))
    return root


def _damage(path: Path, how: str, at: float) -> None:
    data = bytearray(path.read_bytes())
    cut = int(len(data) * at)
    if how == "truncate":
        path.write_bytes(bytes(data[:cut]))
    elif how == "flip" and data:
        data[min(cut, len(data) - 1)] ^= 0xFF
        path.write_bytes(bytes(data))


numbers = st.one_of(
    st.none(), st.floats(allow_nan=True, allow_infinity=True, width=32), st.sampled_from([0.0, 1e-4, -1.0])
)
shapes = st.one_of(
    st.none(),
    st.sampled_from(["2,1,8,8", "1,1,8,8", "3,1,8,8", "8,8", "0,1,8,8", "a,b", "99999999999,99999,9999", "2,1,5,5"]),
)
tolerances = st.one_of(
    st.none(),
    st.sampled_from(["0=1e-3,1e-3", "logits=1e-4,0", "=1,1", "nope=1,1", "0=nan,1", "0=-1,0", "0=1", "7=1,1"]),
)
outputs = st.sampled_from(
    [
        "out.onnx",
        "out.onnx",
        "out.onnx",
        "data.npz",
        "model.onnx",
        "model.onnx.data",
        "pipe",
        "missing/out.onnx",
        "out.onnx.data",
        "x" * 300,
    ]
)


@st.composite
def runs(draw: st.DrawFn) -> tuple[str, tuple[str, str, float] | None, list[str]]:
    """(model file, damage to the model or the data file or None, options)."""
    model = draw(st.sampled_from(["model.onnx", "model.pt2"]))
    damage = draw(
        st.one_of(
            st.none(),
            st.tuples(st.sampled_from(["model", "data"]), st.sampled_from(["truncate", "flip"]), st.floats(0, 1)),
        )
    )
    args = ["-o", draw(outputs)]
    for option, strategy in (
        ("--atol", numbers),
        ("--rtol", numbers),
        ("--input-shape", shapes),
        ("--tolerance", tolerances),
    ):
        value = draw(strategy)
        if value is not None:
            args += [option, str(value)]
    if draw(st.booleans()):
        args += ["--data", "data.npz"]
    if draw(st.booleans()):
        args += ["--report", draw(st.sampled_from(["r.json", "data.npz", "out.onnx", "pipe", "r.md"]))]
    args += ["--opset", str(draw(st.sampled_from([7, 17, 18, 30])))] if draw(st.booleans()) else []
    args += ["--providers", draw(st.sampled_from(["auto", "cpu", "auto", "cpu", "cuda", "bogus"]))]
    args += ["--external-data", draw(st.sampled_from(["auto", "always", "never"]))]
    args += ["--batch", draw(st.sampled_from(["1", "1,8", "2"]))] if draw(st.booleans()) else []
    return model, damage, args


def _main(args: list[str]) -> tuple[int, str, str]:
    from bnfold.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main(args)
        except SystemExit as exc:
            return int(exc.code or 0), out.getvalue(), err.getvalue()
    raise AssertionError("main returned without exiting")


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(run=runs())
def test_every_run_keeps_the_contract(originals: Path, tmp_path: Path, run: tuple) -> None:
    model, damage, options = run
    work = Path(tempfile.mkdtemp(dir=tmp_path))
    for name in INPUTS:
        shutil.copy(originals / name, work / name)
    os.mkfifo(work / "pipe")
    if damage is not None:
        what, how, at = damage
        _damage(work / (model if what == "model" else "data.npz"), how, at)
    before = snapshot(work)
    previous = Path.cwd()
    os.chdir(work)
    try:
        code, out, err = _main(["convert", model, *options, "--no-bench", "--random-batches", "0", "-q"])
    finally:
        os.chdir(previous)
    event(f"exit {code}")
    assert code in (0, 1, 2), err
    assert "Traceback" not in err and "Traceback" not in out, err
    after = snapshot(work)
    reads = [model, *(["data.npz"] if "--data" in options else [])]
    assert {k: after.get(k) for k in reads} == {k: before[k] for k in reads}, err  # inputs never change
    if code == 2:
        assert after == before, err  # nothing written, no staging left
        assert err.startswith("Error: ") and err.count("\n") == 1, err
    assert not [k for k in after if k.startswith(".bnfold-staging-")]
