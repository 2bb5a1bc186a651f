"""Dynamic dimensions and names as users expect: a batch-1 example does not pin the batch, --dynamic says
what else is dynamic, a torch.export archive keeps its own, and names come from the model or the user."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from conftest import MODELS
from torch import nn

import bnfold
from bnfold.cli import main


class Net(nn.Module):
    """A fully convolutional classifier: any batch, any height and width."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.head = nn.Linear(8, 5)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(image).mean((2, 3)))


def trained() -> Net:
    torch.manual_seed(0)
    net = Net()
    with torch.no_grad():
        bn = net.features[1]
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
    return net.eval()


def cli(*argv: str, capfd: pytest.CaptureFixture[str]) -> tuple[int, str]:
    with pytest.raises(SystemExit) as exit_info:
        main(list(argv))
    return int(exit_info.value.code or 0), capfd.readouterr().err


def run(path: Path, shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """The ONNX model's output on a random input of ``shape``, and the fp64 reference's."""
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(shape[0]))
    (got,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    with torch.no_grad():
        expected = trained().double()(x.double()).numpy()
    return got, expected


@pytest.fixture
def weights(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    here = str(Path(__file__).parent)
    (tmp_path / "netdef.py").write_text(
        f"import sys\nsys.path.insert(0, {here!r})\nfrom test_convert_dynamic import trained\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "net.pt"
    torch.save(trained().state_dict(), path)
    return path


def test_a_batch_one_example_keeps_the_batch_dynamic(weights: Path, capfd: pytest.CaptureFixture[str]) -> None:
    code, err = cli("convert", str(weights), "--model", "netdef:trained", "--input-shape", "1,3,16,16",
                    "-o", "net.onnx", "--no-bench", "-q", capfd=capfd)  # fmt: skip
    assert code == 0, err
    for batch in (1, 32):
        got, expected = run(Path("net.onnx"), (batch, 3, 16, 16))
        assert got.shape == (batch, 5)
        np.testing.assert_allclose(got, expected, atol=1e-4, rtol=1e-3)
    with pytest.raises(Exception, match="Got invalid dimensions|Invalid"):
        run(Path("net.onnx"), (2, 3, 20, 20))  # height and width stay fixed unless asked
    report = json.loads(Path("net.report.json").read_text())
    assert report["model"]["inputs"] == [
        {"name": "image", "shape": [1, 3, 16, 16], "dtype": "float32", "dynamic_axes": [0]}
    ]


def test_dynamic_height_and_width_on_request(weights: Path, capfd: pytest.CaptureFixture[str]) -> None:
    code, err = cli("convert", str(weights), "--model", "netdef:trained", "--input-shape", "1,3,16,16",
                    "--dynamic", "batch,height,width", "-o", "net.onnx", "--no-bench", "-q", capfd=capfd)  # fmt: skip
    assert code == 0, err
    for shape in ((1, 3, 16, 16), (32, 3, 24, 40)):
        got, expected = run(Path("net.onnx"), shape)
        np.testing.assert_allclose(got, expected, atol=1e-4, rtol=1e-3)
    assert json.loads(Path("net.report.json").read_text())["model"]["inputs"][0]["dynamic_axes"] == [0, 2, 3]


def test_dynamic_none_fixes_every_dimension(weights: Path, capfd: pytest.CaptureFixture[str]) -> None:
    code, err = cli("convert", str(weights), "--model", "netdef:trained", "--input-shape", "4,3,16,16",
                    "--dynamic", "none", "-o", "net.onnx", "--no-bench", "-q", capfd=capfd)  # fmt: skip
    assert code == 0, err
    run(Path("net.onnx"), (4, 3, 16, 16))
    with pytest.raises(Exception, match="Got invalid dimensions|Invalid"):
        run(Path("net.onnx"), (8, 3, 16, 16))


def test_an_archive_keeps_its_own_dynamic_dimensions(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    net = trained()
    size = torch.export.Dim("size", min=8, max=64)
    program = torch.export.export(net, (torch.randn(2, 3, 16, 16),),
                                  dynamic_shapes=({0: torch.export.Dim("batch"), 2: size, 3: size},))  # fmt: skip
    torch.export.save(program, tmp_path / "net.pt2")
    code, err = cli("convert", str(tmp_path / "net.pt2"), "-o", str(tmp_path / "net.onnx"), "--no-bench", "-q",
                    capfd=capfd)  # fmt: skip
    assert code == 0, err
    got, expected = run(tmp_path / "net.onnx", (3, 3, 32, 32))
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=1e-3)


@pytest.mark.parametrize("dynamic", ["none", "batch,height,width"])
def test_an_archive_retraced_for_other_dimensions_says_nothing_of_a_training_mode(
    tmp_path: Path, dynamic: str, capfd: pytest.CaptureFixture[str]
) -> None:
    """The shipped archive was traced in eval mode; the module torch.export gives back has no mode of its
    own, so retracing it for other dynamic dimensions reports none (it said the model was in training mode)."""
    out = tmp_path / "d.onnx"
    code, err = cli("convert", str(MODELS / "digits_cnn.pt2"), "-o", str(out), "--no-bench", "-q", "--dynamic",
                    dynamic, capfd=capfd)  # fmt: skip
    assert code == 0, err
    assert "training mode" not in (tmp_path / "d.report.md").read_text()
    assert "training mode" not in json.dumps(json.loads((tmp_path / "d.report.json").read_text()))


def test_names_can_be_set(weights: Path, capfd: pytest.CaptureFixture[str]) -> None:
    code, err = cli("convert", str(weights), "--model", "netdef:trained", "--input-shape", "1,3,16,16",
                    "--input-names", "pixels", "--output-names", "logits", "-o", "net.onnx", "--no-bench", "-q",
                    capfd=capfd)  # fmt: skip
    assert code == 0, err
    session = ort.InferenceSession("net.onnx", providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["pixels"]
    assert [o.name for o in session.get_outputs()] == ["logits"]
    report = json.loads(Path("net.report.json").read_text())
    assert report["model"]["inputs"][0]["name"] == "pixels"
    assert {c["output"] for c in report["parity"]["checks"]} == {"logits"}


class FixedBatchReshape(nn.Module):
    """``reshape(2, C, -1)``: the model's code needs a batch of 2 (at 4 it would mix the batch into the
    length), so torch.export fixes the batch the trace was asked to keep dynamic."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv1d(3, 4, 1)
        self.bn = nn.BatchNorm1d(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(x).reshape(2, 4, -1))


def test_a_batch_the_trace_fixed_is_fixed_in_the_onnx_file_and_said(tmp_path: Path) -> None:
    """The fold is right for the traced batch only: the ONNX file must not take another (it took batch 4,
    1.19 off), and the report says why."""
    torch.manual_seed(0)
    model = FixedBatchReshape().eval()
    with torch.no_grad():
        model.bn.running_var.uniform_(0.5, 2.0)
        model.bn.weight.normal_()
    x = torch.randn(2, 3, 6)
    config = bnfold.ConvertConfig(output=tmp_path / "m.onnx", bench=False)
    report = bnfold.convert(model, config, example_inputs=(x,)).report
    assert report.parity is not None and report.parity.passed
    assert any("stays fixed at 2" in note for note in report.model.notes)
    session = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].shape == [2, 3, 6]
    (got,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    with torch.no_grad():
        expected = copy.deepcopy(model).double()(x.double()).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)


def test_an_input_keeps_the_name_of_its_argument_where_it_shadows_a_builtin(tmp_path: Path) -> None:
    """``nn.Sequential.forward(input)``: fx renames the argument ``input_1`` (``input`` is a builtin); the ONNX
    input is still ``input``, as the dynamo exporter names it."""
    model = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3)).eval()
    config = bnfold.ConvertConfig(output=tmp_path / "m.onnx", bench=False, write_reports=False)
    bnfold.convert(model, config, example_inputs=(torch.randn(2, 4),))
    session = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    assert [(i.name, i.shape) for i in session.get_inputs()] == [("input", ["batch", 4])]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (("--output-names", "a,b"), "--output-names gives 2 name(s); the model has 1 output(s)"),
        (("--input-names", "x", "--output-names", "x"), "must differ: x given twice"),
        (("--dynamic", "depth"), "'depth' is not a dimension"),
        (("--dynamic", "7"), "--dynamic 7: no input of the model has that axis (their ranks: 4)"),
        (("--dynamic", "batch,length"), "--dynamic length: no input of the model has that axis"),
    ],
)
def test_bad_names_and_dimensions_are_refused(
    weights: Path, capfd: pytest.CaptureFixture[str], options: tuple[str, ...], message: str
) -> None:
    code, err = cli("convert", str(weights), "--model", "netdef:trained", "--input-shape", "1,3,16,16",
                    *options, "-o", "net.onnx", "--no-bench", "-q", capfd=capfd)  # fmt: skip
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1
    assert not Path("net.onnx").exists()


def test_torchscript_inputs_are_named_by_the_forward(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    torch.jit.save(torch.jit.trace(trained(), torch.randn(1, 3, 16, 16)), tmp_path / "net.ts")
    code, err = cli("convert", str(tmp_path / "net.ts"), "--trust-code", "--input-shape", "1,3,16,16",
                    "-o", str(tmp_path / "net.onnx"), "--no-bench", "-q", capfd=capfd)  # fmt: skip
    assert code == 0, err
    session = ort.InferenceSession(str(tmp_path / "net.onnx"), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["image"]
    got, expected = run(tmp_path / "net.onnx", (32, 3, 16, 16))
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=1e-3)


def test_the_shipped_archive_runs_at_batch_one_and_thirty_two(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    code, err = cli("convert", str(MODELS / "digits_cnn.pt2"), "-o", str(tmp_path / "d.onnx"), "--no-bench", "-q",
                    capfd=capfd)  # fmt: skip
    assert code == 0, err
    session = ort.InferenceSession(str(tmp_path / "d.onnx"), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    for batch in (1, 32):
        assert session.run(None, {name: np.zeros((batch, 1, 8, 8), np.float32)})[0].shape[0] == batch


class VarArgs(nn.Module):
    """``forward(self, *images)``, as some published code takes its inputs."""

    def __init__(self) -> None:
        super().__init__()
        self.net = trained()

    def forward(self, *images: torch.Tensor) -> torch.Tensor:
        return self.net(images[0])


def test_a_forward_taking_star_args_keeps_the_batch_dynamic(tmp_path: Path) -> None:
    from bnfold.convert import ConvertConfig, convert

    out = tmp_path / "net.onnx"
    result = convert(
        VarArgs().eval(), ConvertConfig(output=out, bench=False), example_inputs=(torch.randn(2, 3, 16, 16),)
    )
    assert result.passed and result.report["fold"]["batchnorm_folded"] == 1
    for batch in (1, 5):
        got, expected = run(out, (batch, 3, 16, 16))
        np.testing.assert_allclose(got, expected, atol=1e-4, rtol=1e-3)


def test_an_archive_exported_with_a_fixed_batch_refuses_another_in_one_line(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """torch.export fixed the batch at 2 (no dynamic_shapes): its module refuses batch 1 (a guard), so
    ``--input-shape 1,...`` is bad input, said before any work, not an AssertionError from the parity run."""
    archive = tmp_path / "fixed.pt2"
    torch.export.save(torch.export.export(trained(), (torch.randn(2, 3, 16, 16),)), archive)
    code, err = cli("convert", str(archive), "--input-shape", "1,3,16,16", "-o", str(tmp_path / "out.onnx"),
                    "--no-bench", "-q", capfd=capfd)  # fmt: skip
    assert code == 2 and err == (
        "Error: --input-shape 1x3x16x16 does not fit input 0 of the archive, exported for shape 2x3x16x16 "
        "(? dynamic); give --input-shape 2,3,16,16, or export it with those dimensions dynamic (torch.export "
        "dynamic_shapes)\n"
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fixed.pt2"]
    code, err = cli("convert", str(archive), "--input-shape", "2,3,16,16", "-o", str(tmp_path / "out.onnx"),
                    "--no-bench", "-q", capfd=capfd)  # fmt: skip
    assert code == 0, err
