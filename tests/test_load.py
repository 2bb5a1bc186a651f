"""Every supported format loads to a runnable model that matches the original; input files stay untouched."""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import sys
import uuid
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from bnfold.errors import LoadError
from bnfold.load import LoadedModel, load_model

ARCHITECTURE = """
import torch
from torch import nn


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4 * 8 * 8, 3)

    def forward(self, x):
        return self.fc(torch.relu(self.bn(self.conv(x))).flatten(1))


def build():
    return Net()
"""

X = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(0))


@pytest.fixture
def arch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """The architecture as an importable module of its own, as a user's factory would be."""
    name = f"arch_{uuid.uuid4().hex[:8]}"
    code_dir = tmp_path / "code"
    code_dir.mkdir()
    (code_dir / f"{name}.py").write_text(ARCHITECTURE)
    monkeypatch.syspath_prepend(str(code_dir))
    yield importlib.import_module(name)
    sys.modules.pop(name, None)


@pytest.fixture
def net(arch: ModuleType) -> nn.Module:
    """A trained-looking model: BN statistics and affine parameters away from their defaults."""
    model = arch.build()
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        model.bn.running_mean.copy_(torch.randn(4, generator=gen))
        model.bn.running_var.copy_(torch.rand(4, generator=gen) + 0.5)
        model.bn.weight.copy_(torch.randn(4, generator=gen))
    return model.eval()


def factory(arch: ModuleType) -> str:
    return f"{arch.__name__}:build"


def assert_runs_like(loaded: LoadedModel, reference: nn.Module) -> None:
    assert loaded.module is not None
    with torch.no_grad():
        torch.testing.assert_close(loaded.module(X), reference(X))


def test_torch_export_archive(net: nn.Module, tmp_path: Path) -> None:
    path = tmp_path / "model.pt2"
    torch.export.save(torch.export.export(net, (X,)), path)
    loaded = load_model(path)
    assert loaded.format == "torch.export" and loaded.exported is not None
    assert loaded.example_inputs is not None and loaded.example_inputs[0].shape == X.shape
    assert loaded.path == path and loaded.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert_runs_like(loaded, net)


@pytest.mark.parametrize("compile_with", [torch.jit.script, lambda m: torch.jit.trace(m, X)])
def test_torchscript_archive(net: nn.Module, tmp_path: Path, compile_with: Callable) -> None:
    path = tmp_path / "model.pt"
    torch.jit.save(compile_with(net), path)
    with pytest.raises(LoadError, match="TorchScript archive: it holds code .* pass --trust-code"):
        load_model(path)
    loaded = load_model(path, trust_code=True)
    assert loaded.format == "torchscript" and loaded.example_inputs is None
    assert isinstance(loaded.module, torch.jit.ScriptModule)
    assert_runs_like(loaded, net)


@pytest.mark.parametrize("legacy", [False, True])
def test_state_dict_with_factory(net: nn.Module, arch: ModuleType, tmp_path: Path, legacy: bool) -> None:
    path = tmp_path / "weights.pth"
    torch.save(net.state_dict(), path, _use_new_zipfile_serialization=not legacy)
    loaded = load_model(path, factory=factory(arch))
    assert loaded.format == "state_dict" and loaded.example_inputs is None and loaded.notes == []
    assert_runs_like(loaded, net)


@pytest.mark.parametrize("prefix", ["module.", "_orig_mod.", "module._orig_mod."])
def test_wrapper_prefixes_are_stripped(net: nn.Module, arch: ModuleType, tmp_path: Path, prefix: str) -> None:
    path = tmp_path / "weights.pt"
    torch.save({prefix + k: v for k, v in net.state_dict().items()}, path)
    loaded = load_model(path, factory=factory(arch))
    assert loaded.notes == [f"stripped the name prefix {prefix!r} from every weight"]
    assert_runs_like(loaded, net)


def test_a_prefix_is_stripped_from_weights_saved_without_num_batches_tracked(
    net: nn.Module, arch: ModuleType, tmp_path: Path
) -> None:
    """Files of older PyTorch lack BatchNorm's ``num_batches_tracked`` (loading fills it in): a DDP prefix on
    them is stripped as on any other."""
    state = {"module." + k: v for k, v in net.state_dict().items() if not k.endswith("num_batches_tracked")}
    assert len(state) < len(net.state_dict())  # the model has BatchNorms
    torch.save(state, tmp_path / "old.pt")
    loaded = load_model(tmp_path / "old.pt", factory=factory(arch))
    assert loaded.notes == ["stripped the name prefix 'module.' from every weight"]
    assert_runs_like(loaded, net)


def test_weights_under_a_prefix_with_other_names_beside_say_what_is_left(
    net: nn.Module, arch: ModuleType, tmp_path: Path
) -> None:
    """A LightningModule's state: ``model.``-prefixed weights and its loss's own (not the model's)."""
    state = {"model." + k: v for k, v in net.state_dict().items()} | {"criterion.weight": torch.ones(3)}
    torch.save(state, tmp_path / "lightning.pt")
    with pytest.raises(LoadError, match=r"carry the prefix 'model.' .*not in the model criterion.weight; save") as e:
        load_model(tmp_path / "lightning.pt", factory=factory(arch))
    assert "\n" not in str(e.value) and "missing" not in str(e.value)


@pytest.mark.parametrize(
    ("keys", "chosen"),
    [
        (["model"], "model"),
        (["ema", "model"], "model"),
        (["model", "state_dict"], "state_dict"),
        (["net", "model_state_dict"], "model_state_dict"),
        (["ema"], "ema"),
        (["model_ema"], "model_ema"),  # EMA weights alone
        (["state_dict", "state_dict_ema"], "state_dict"),  # the trained weights before their EMA
        (["module"], "module"),
    ],
)
def test_checkpoint_weights_key(net: nn.Module, arch: ModuleType, tmp_path: Path, keys: list[str], chosen: str) -> None:
    other = {k: torch.zeros_like(v) for k, v in net.state_dict().items()}  # wrong on purpose
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    checkpoint = {"epoch": 7, "optimizer": optimizer.state_dict(), "best_acc": 0.9}
    checkpoint |= {k: (net.state_dict() if k == chosen else other) for k in keys}
    path = tmp_path / "last.ckpt"
    torch.save(checkpoint, path)
    loaded = load_model(path, factory=factory(arch))
    assert loaded.format == "checkpoint"
    assert loaded.notes[0].startswith(f"weights taken from checkpoint key {chosen!r}")
    for key in set(keys) - {chosen}:
        assert repr(key) in loaded.notes[0]
    assert_runs_like(loaded, net)


def test_checkpoint_of_data_parallel_weights(net: nn.Module, arch: ModuleType, tmp_path: Path) -> None:
    path = tmp_path / "dp.pt"
    torch.save({"epoch": 1, "state_dict": {"module." + k: v for k, v in net.state_dict().items()}}, path)
    loaded = load_model(path, factory=factory(arch))
    assert loaded.notes == [
        "weights taken from checkpoint key 'state_dict'",
        "stripped the name prefix 'module.' from every weight",
    ]
    assert_runs_like(loaded, net)


def test_safetensors(net: nn.Module, arch: ModuleType, tmp_path: Path) -> None:
    from safetensors.torch import save_file

    path = tmp_path / "model.bin"  # detected by its header, whatever the name
    save_file(net.state_dict(), str(path))
    loaded = load_model(path, factory=factory(arch))
    assert loaded.format == "safetensors"
    assert_runs_like(loaded, net)


def test_safetensors_without_the_package(
    net: nn.Module, arch: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from safetensors.torch import save_file

    path = tmp_path / "model.safetensors"
    save_file(net.state_dict(), str(path))
    monkeypatch.setitem(sys.modules, "safetensors", None)
    monkeypatch.setitem(sys.modules, "safetensors.torch", None)
    with pytest.raises(LoadError, match="pip install safetensors"):
        load_model(path, factory=factory(arch))


def test_pickled_module_needs_trust(net: nn.Module, tmp_path: Path) -> None:
    path = tmp_path / "whole.pt"
    torch.save(net, path)
    with pytest.raises(LoadError) as info:
        load_model(path)
    message = str(info.value)
    assert "would run code from the file" in message and "--trust-code" in message
    assert "torch.export.save" in message and "state_dict" in message and "safetensors" in message
    assert ".Net" in message  # names what the pickle would import (torch's restricted unpickler says)


def test_pickled_module_loads_when_trusted(net: nn.Module, tmp_path: Path) -> None:
    path = tmp_path / "whole.pt"
    torch.save(net, path)
    loaded = load_model(path, trust_code=True)
    assert loaded.format == "pickle" and loaded.example_inputs is None
    assert load_model(path, trust_pickle=True).format == "pickle"  # the older name still works
    assert_runs_like(loaded, net)


def test_pickled_module_inside_a_checkpoint(net: nn.Module, tmp_path: Path) -> None:
    path = tmp_path / "ckpt.pt"
    torch.save({"epoch": 3, "model": net.train()}, path)
    loaded = load_model(path, trust_code=True)
    assert loaded.format == "pickle"
    assert loaded.notes[0].startswith("loaded as trusted code (--trust-code): it refers to ")
    assert loaded.notes[1:] == [
        "module taken from checkpoint key 'model'",
        "the module was saved in training mode",
    ]
    loaded.module.eval()
    assert_runs_like(loaded, net.eval())


def _onnx_model(batch: int | str, height: int | str = 8) -> onnx.ModelProto:
    gen = np.random.default_rng(0)
    weight = numpy_helper.from_array(gen.standard_normal((4, 1, 3, 3)).astype(np.float32), "w")
    bn = [
        numpy_helper.from_array(v.astype(np.float32), n)
        for n, v in [
            ("g", gen.standard_normal(4)),
            ("b", gen.standard_normal(4)),
            ("m", gen.standard_normal(4)),
            ("v", gen.random(4) + 0.5),
        ]
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["c", "g", "b", "m", "v"], ["n"]),
        helper.make_node("Relu", ["n"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 1, height, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, 4, height, 8])],
        [weight, *bn],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    return model


def test_onnx_static_shape(tmp_path: Path) -> None:
    path = tmp_path / "model.onnx"
    onnx.save(_onnx_model(batch=2), path)
    loaded = load_model(path)
    assert loaded.format == "onnx" and loaded.module is None and loaded.onnx_model is not None
    assert loaded.example_inputs is not None and loaded.example_inputs[0].shape == (2, 1, 8, 8)
    assert loaded.example_inputs[0].dtype == torch.float32 and not loaded.dynamic_batch


def test_onnx_symbolic_batch_uses_one(tmp_path: Path) -> None:
    path = tmp_path / "graph.bin"  # detected by parsing, whatever the name
    onnx.save(_onnx_model(batch="N"), path)
    loaded = load_model(path)
    assert loaded.format == "onnx" and loaded.dynamic_batch
    assert loaded.example_inputs is not None and loaded.example_inputs[0].shape == (1, 1, 8, 8)
    assert loaded.notes == ["input 'x' has a symbolic batch dimension; using batch 1"]


def test_onnx_other_symbolic_dims_need_a_shape(tmp_path: Path) -> None:
    path = tmp_path / "model.onnx"
    onnx.save(_onnx_model(batch="N", height="H"), path)
    loaded = load_model(path)
    assert loaded.example_inputs is None
    assert loaded.notes == ["input 'x' has symbolic dimensions (N, H): give --input-shape"]


def test_onnx_external_data(tmp_path: Path) -> None:
    path = tmp_path / "model.onnx"
    onnx.save(_onnx_model(batch=1), path, save_as_external_data=True, location="model.data", size_threshold=0)
    loaded = load_model(path)
    assert loaded.onnx_model is not None
    weight = next(t for t in loaded.onnx_model.graph.initializer if t.name == "w")
    assert numpy_helper.to_array(weight).shape == (4, 1, 3, 3)


def test_onnx_external_data_missing(tmp_path: Path) -> None:
    path = tmp_path / "model.onnx"
    onnx.save(_onnx_model(batch=1), path, save_as_external_data=True, location="model.data", size_threshold=0)
    (tmp_path / "model.data").unlink()
    with pytest.raises(LoadError, match="external data .* same directory"):
        load_model(path)


def test_factory_not_needed_is_noted(net: nn.Module, arch: ModuleType, tmp_path: Path) -> None:
    path = tmp_path / "model.pt2"
    torch.export.save(torch.export.export(net, (X,)), path)
    loaded = load_model(path, factory=factory(arch))
    assert loaded.notes == [f"--model {factory(arch)} not used: the file holds its own architecture"]


def _save_every_format(net: nn.Module, directory: Path) -> list[Path]:
    from safetensors.torch import save_file

    paths = {
        name: directory / name for name in ["m.pt2", "ts.pt", "sd.pt", "ck.pt", "m.safetensors", "whole.pt", "m.onnx"]
    }
    torch.export.save(torch.export.export(net, (X,)), paths["m.pt2"])
    torch.jit.save(torch.jit.script(net), paths["ts.pt"])
    torch.save({"module." + k: v for k, v in net.state_dict().items()}, paths["sd.pt"])
    torch.save({"epoch": 1, "ema": net.state_dict()}, paths["ck.pt"])
    save_file(net.state_dict(), str(paths["m.safetensors"]))
    torch.save(net, paths["whole.pt"])
    onnx.save(_onnx_model(batch="N"), paths["m.onnx"])
    return list(paths.values())


def test_input_files_are_never_modified(net: nn.Module, arch: ModuleType, tmp_path: Path) -> None:
    paths = _save_every_format(net, tmp_path)
    before = {p: (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns) for p in paths}
    listing = sorted(tmp_path.iterdir())
    for path in paths:
        load_model(path, factory=factory(arch), trust_code=True)
        with contextlib.suppress(LoadError):  # weights without a factory, a pickle without trust: refused
            load_model(path)
    after = {p: (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns) for p in paths}
    assert after == before and sorted(tmp_path.iterdir()) == listing


def test_onnx_declared_huge_input_is_not_allocated(tmp_path: Path) -> None:
    path = tmp_path / "model.onnx"
    onnx.save(_onnx_model(batch=1 << 20, height=1 << 12), path)
    loaded = load_model(path)
    assert loaded.example_inputs is None
    assert loaded.notes == [
        f"input 'x' is declared {1 << 20}x1x{1 << 12}x8, too large for made-up inputs: give --input-shape"
    ]


def test_damaged_files_give_load_errors_only(net: nn.Module, arch: ModuleType, tmp_path: Path) -> None:
    """Seeded corruption of every format: each variant loads or raises LoadError, nothing else."""
    rng = np.random.default_rng(0)
    originals = _save_every_format(net, tmp_path)
    for number in range(60):
        source = originals[number % len(originals)]
        data = bytearray(source.read_bytes())
        if number % 3 == 0:
            data = data[: int(rng.integers(1, len(data)))]
        else:
            for at in rng.integers(0, len(data), size=int(rng.integers(1, 40))):
                data[at] = int(rng.integers(0, 256))
        damaged = tmp_path / f"damaged{number}{source.suffix}"
        damaged.write_bytes(bytes(data))
        with contextlib.suppress(LoadError):
            load_model(damaged, factory=factory(arch))
