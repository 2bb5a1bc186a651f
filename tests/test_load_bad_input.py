"""Bad input never hurts: every broken or hostile file gives one clear error, and nothing in it runs."""

from __future__ import annotations

import builtins
import importlib
import io
import os
import pickle
import sys
import uuid
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from bnfold.errors import BnfoldError, InputSpecError, LoadError
from bnfold.load import SUPPORTED, load_data, load_model, parse_shape

FACTORIES = """
from torch import nn


def build():
    return nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4))


def needs_arguments(width):
    return nn.Linear(width, width)


def explodes():
    raise RuntimeError("no GPU found")


def not_a_module():
    return {"weight": 1}


NOT_CALLABLE = 3
"""

RANDOM = np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes()


@pytest.fixture
def code(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """The name of an importable module of factories, good and bad."""
    name = f"factories_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text(FACTORIES)
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.invalidate_caches()
    yield name
    sys.modules.pop(name, None)


@pytest.fixture
def state_dict_file(tmp_path: Path, code: str) -> Path:
    path = tmp_path / "weights.pt"
    torch.save(importlib.import_module(code).build().state_dict(), path)
    return path


def load_error(path: Path, **kwargs: object) -> str:
    with pytest.raises(LoadError) as info:
        load_model(path, **kwargs)  # type: ignore[arg-type]
    return str(info.value)


# --- files that are not models ---------------------------------------------------------------------------


def test_missing_path(tmp_path: Path) -> None:
    assert load_error(tmp_path / "nope.pt2") == f"{tmp_path / 'nope.pt2'}: no such file"


def test_directory(tmp_path: Path) -> None:
    assert "is a directory: give the model file itself" in load_error(tmp_path)


def test_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "model.pt2"
    path.touch()
    assert load_error(path) == f"{path} is empty (0 bytes): give {SUPPORTED}"


@pytest.mark.parametrize("name", ["model.bin", "model.pt"])
def test_random_bytes(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    path.write_bytes(RANDOM)
    message = load_error(path)
    assert "is not one" in message or "not a model file bnfold can read" in message
    assert message.endswith(SUPPORTED)


def test_random_bytes_named_onnx(tmp_path: Path) -> None:
    path = tmp_path / "model.onnx"
    path.write_bytes(b"\x08" + RANDOM)  # a plausible first protobuf field, then garbage
    message = load_error(path)
    assert "the name says an ONNX model but the content is not one (not a valid ONNX protobuf" in message


def test_random_bytes_named_safetensors(tmp_path: Path) -> None:
    path = tmp_path / "model.safetensors"
    path.write_bytes(RANDOM)
    assert "the name says a safetensors file but the content is not one (no valid safetensors header" in (
        load_error(path)
    )


def test_text_file_named_pt2(tmp_path: Path) -> None:
    path = tmp_path / "model.pt2"
    path.write_text("<html><body>404 Not Found</body></html>\n")
    message = load_error(path)
    assert "the name says a torch.export archive but the content is not one" in message
    assert "it is a text file starting '<html><body>404 Not Found</body></html>'" in message


def test_git_lfs_pointer(tmp_path: Path) -> None:
    path = tmp_path / "model.pt2"
    path.write_text("version https://git-lfs.github.com/spec/v1\noid sha256:abc\nsize 123\n")
    assert "Git LFS pointer, not the file itself: fetch it with `git lfs pull`" in load_error(path)


def test_truncated_archive(tmp_path: Path) -> None:
    full = tmp_path / "full.pt2"
    torch.export.save(torch.export.export(nn.Linear(2, 2), (torch.randn(1, 2),)), full)
    half = tmp_path / "half.pt2"
    half.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    assert "starts like a zip archive but its end is missing" in load_error(half)


def test_zip_that_is_not_a_torch_archive(tmp_path: Path) -> None:
    path = tmp_path / "model.pt"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("readme.txt", "hello")
    message = load_error(path)
    assert "is a zip archive but not a model archive (no data.pkl, code/ or models/model.json inside)" in message
    assert message.endswith(SUPPORTED)


def test_plain_python_pickle(tmp_path: Path) -> None:
    path = tmp_path / "model.pkl"
    path.write_bytes(pickle.dumps({"weights": [1, 2, 3]}, protocol=2))
    assert "is a plain Python pickle, not a torch file; bnfold does not unpickle arbitrary objects" in (
        load_error(path)
    )


# --- weights without an architecture, and factories that go wrong ---------------------------------------


def test_state_dict_without_factory(state_dict_file: Path) -> None:
    assert load_error(state_dict_file) == (
        f"{state_dict_file} is a state_dict: it holds weights but no architecture; name the code that builds "
        "the model with --model package.module:factory"
    )


def test_checkpoint_without_weights(tmp_path: Path, code: str) -> None:
    path = tmp_path / "ckpt.pt"
    torch.save({"epoch": 3, "optimizer": {"lr": 0.1}}, path)
    message = load_error(path, factory=f"{code}:build")
    assert "holds a dict with keys 'epoch', 'optimizer' but no weights under any of state_dict" in message


def test_weights_that_do_not_fit(tmp_path: Path, code: str) -> None:
    path = tmp_path / "other.pt"
    torch.save(nn.Linear(3, 3).state_dict(), path)
    message = load_error(path, factory=f"{code}:build")
    assert f"does not fit the model built by {code}:build: Missing key(s) in state_dict" in message


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("no_colon_here", "expected the form package.module:callable"),
        ("missing_package_xyz.arch:build", "cannot import missing_package_xyz.arch (ModuleNotFoundError"),
        ("{code}:absent", "{code} has no callable named 'absent'"),
        ("{code}:NOT_CALLABLE", "{code} has no callable named 'NOT_CALLABLE'"),
        ("{code}:explodes", "calling it failed (RuntimeError: no GPU found)"),
        ("{code}:needs_arguments", "it must build the model with no arguments"),
        ("{code}:not_a_module", "returned a dict, not a torch.nn.Module"),
    ],
)
def test_bad_factory(state_dict_file: Path, code: str, spec: str, expected: str) -> None:
    spec = spec.format(code=code)
    message = load_error(state_dict_file, factory=spec)
    assert message.startswith(f"--model {spec}") and expected.format(code=code) in message


def test_missing_module_says_where_it_is_searched(state_dict_file: Path) -> None:
    assert "run bnfold from the directory that holds it, or add that directory to PYTHONPATH" in load_error(
        state_dict_file, factory="missing_package_xyz:build"
    )


# --- hostile pickles never run ----------------------------------------------------------------------------


class ShellPayload:
    marker: Path

    def __reduce__(self) -> tuple:
        return (os.system, (f"touch {self.marker}",))


class OpenPayload:
    marker: Path

    def __reduce__(self) -> tuple:
        return (builtins.exec, (f"open({str(self.marker)!r}, 'w').close()",))


@pytest.mark.parametrize("payload", [ShellPayload, OpenPayload])
@pytest.mark.parametrize("legacy", [False, True])
def test_malicious_pickle_does_not_run(tmp_path: Path, payload: type, legacy: bool) -> None:
    marker = tmp_path / "pwned"
    evil = payload()
    evil.marker = marker
    path = tmp_path / "weights.pt"
    torch.save({"conv.weight": torch.zeros(1), "x": evil}, path, _use_new_zipfile_serialization=not legacy)
    message = load_error(path)
    assert "loading it would run code from the file" in message and "--trust-code" in message
    assert "system" in message or "exec" in message  # names what it would have called
    assert not marker.exists()


# --- input shapes and data files --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1,three,8", "'three' is not an integer"),
        ("1,3.5,8", "'3.5' is not an integer"),
        ("1,0,8", "dimension 0 is not positive"),
        ("1,-3,8", "dimension -3 is not positive"),
        ("", "no dimensions"),
        (" , ", "no dimensions"),
        ("1,,8", "a dimension is missing"),  # not read as 1x8
        ("1,1,8,8,", "a dimension is missing"),
        ("1,3,x", "a dimension is missing"),  # 'x' separates dimensions; it is no placeholder
    ],
)
def test_parse_shape_errors(text: str, expected: str) -> None:
    with pytest.raises(InputSpecError) as info:
        parse_shape(text)
    assert str(info.value).startswith(f"--input-shape {text!r}: {expected}")
    assert str(info.value).endswith("expected comma-separated positive integers like 1,3,224,224")


@pytest.mark.parametrize(("text", "dims"), [("1,3,224,224", (1, 3, 224, 224)), ("2x8", (2, 8)), (" 4 ", (4,))])
def test_parse_shape(text: str, dims: tuple[int, ...]) -> None:
    assert parse_shape(text) == dims


def data_error(path: Path, count: int = 1) -> str:
    with pytest.raises(InputSpecError) as info:
        load_data(path, count)
    return str(info.value)


def test_load_data_not_npz(tmp_path: Path) -> None:
    text = tmp_path / "data.npz"
    text.write_text("x,y\n1,2\n")
    assert data_error(text).startswith(f"--data {text}: not a readable .npz file (")
    single = tmp_path / "data.npy"
    np.save(single, np.zeros((2, 4), dtype=np.float32))
    assert "a single .npy array, not an .npz archive" in data_error(single)
    assert data_error(tmp_path / "absent.npz").endswith("no such file")


def test_load_data_refuses_pickled_arrays(tmp_path: Path) -> None:
    path = tmp_path / "objects.npz"
    np.savez(path, x=np.array([{"a": 1}], dtype=object))
    assert "cannot read its arrays as tensors" in data_error(path)


def test_load_data_counts_inputs(tmp_path: Path) -> None:
    path = tmp_path / "data.npz"
    np.savez(path, x=np.zeros((2, 4), dtype=np.float32), y=np.zeros(2))
    assert "the model takes 2 inputs, the file holds 1" in data_error(path, count=2)
    (tensor,) = load_data(path, 1)
    assert tensor.shape == (2, 4)


# --- torch.export archives: torch.export.load unpickles parts of them, so it runs inside the gate ----------


def _poisoned_archive(tmp_path: Path, part: str) -> tuple[Path, Path]:
    """A real .pt2 with one part replaced by a payload (or a compiled library added)."""
    marker = tmp_path / "pwned"
    evil = ShellPayload()
    evil.marker = marker
    buffer = io.BytesIO()
    torch.save(((evil,), {}), buffer)
    clean = tmp_path / "clean.pt2"
    torch.export.save(torch.export.export(nn.Linear(2, 2), (torch.randn(1, 2),)), clean)
    path = tmp_path / "poisoned.pt2"
    with zipfile.ZipFile(clean) as source, zipfile.ZipFile(path, "w") as target:
        for info in source.infolist():
            data = source.read(info.filename)
            if part == "sample inputs" and info.filename.endswith("data/sample_inputs/model.pt"):
                data = buffer.getvalue()
            elif part == "pickled weight" and info.filename.endswith("data/weights/model_weights_config.json"):
                data = data.replace(b'"use_pickle": false', b'"use_pickle": true', 1)
            elif part == "pickled weight" and info.filename.endswith("data/weights/weight_0"):
                data = buffer.getvalue()
            target.writestr(info, data)
        if part == "compiled code":
            root = source.namelist()[0].split("/")[0]
            target.writestr(f"{root}/data/aotinductor/model/model.so", b"\x7fELF")
    return path, marker


@pytest.mark.parametrize(
    ("part", "named"),
    [
        ("sample inputs", "import posix.system from a pickle"),
        ("pickled weight", "import posix.system from a pickle"),
        ("compiled code", "load compiled AOTInductor code"),
    ],
)
def test_poisoned_torch_export_archive_is_refused(tmp_path: Path, part: str, named: str) -> None:
    path, marker = _poisoned_archive(tmp_path, part)
    message = load_error(path)
    assert message.startswith(f"{path}: this torch.export archive tries to {named} while it is read")
    assert "--trust-code" in message
    assert not marker.exists()


def test_data_file_that_is_a_zip_bomb_is_refused_before_reading(tmp_path: Path) -> None:
    """An .npz is a zip archive: its declared sizes are checked like a model archive's."""
    import resource
    import zipfile as zf

    from hostile_zip import write_zip_by_hand, zeros_bomb

    path = write_zip_by_hand(tmp_path / "data.npz", [("x.npy", zeros_bomb(3 << 30))], root="")
    assert zf.ZipFile(path).infolist()[0].file_size == 3 << 30  # control: it declares 3 GiB
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(BnfoldError, match="inflates from .* to 3,221,225,472 bytes"):
        load_data(path, 1)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 256 * 1024  # KiB: nothing inflated
