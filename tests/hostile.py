"""Hostile model files, built from scratch for ``test_security.py``.

Every payload file is built from a clean model by editing its archive the way an attacker would, so each
one differs from a file torch itself writes in one place only. A payload, when something runs it, creates
a marker file: the tests look for the marker, never for an exception. :data:`SPECS` lists them with how
torch loads each unsafely (the positive control); :data:`CLEAN_PT2` lists the odd but valid layouts.
The files whose danger is their size are in ``hostile_sizes.py``; the child processes in ``hostile_child.py``.
"""

from __future__ import annotations

import builtins
import importlib.util
import io
import json
import os
import pickle
import posixpath
import re
import shlex
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
from hostile_zip import Entries, edited, json_edit, read_zip, write_zip
from torch import nn

FACTORIES_NAME = "bnfold_security_factories"
FACTORIES = """
import torch
from torch import nn


class Small(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)

    def forward(self, x):
        return self.bn(self.conv(x))


def small():
    torch.manual_seed(0)
    return Small().eval()
"""
FACTORY = f"{FACTORIES_NAME}:small"
SHAPE = (2, 1, 8, 8)
SHAPE_ARG = ",".join(map(str, SHAPE))
WEIGHTS_CONFIG = "data/weights/model_weights_config.json"
SAMPLE_INPUTS = "data/sample_inputs/model.pt"


# --- payloads ------------------------------------------------------------------------------------------


class Payload:
    """Unpickling it creates ``marker``, in one of several ways (a gate must not rely on one of them).

    ``system``: ``os.system("touch ...")``; ``exec``: ``builtins.exec`` of an ``open(..., "w")``;
    ``from_file``: ``torch.from_file(marker, shared=True)``, which creates the file from C++ (no Python
    audit event); ``torch_save``: ``torch.save({}, marker)``; ``stealth``: ``builtins.eval`` that runs the
    command and then returns ``result`` (an expression), so the load goes on as if nothing happened.
    """

    def __init__(self, marker: Path, how: str = "system", result: str = "None") -> None:
        self.marker, self.how, self.result = str(marker), how, result

    def __reduce__(self) -> tuple[Any, ...]:
        touch = f"touch {shlex.quote(self.marker)}"
        if self.how == "system":
            return os.system, (touch,)
        if self.how == "exec":
            return builtins.exec, (f"open({self.marker!r}, 'w').close()",)
        if self.how == "from_file":
            return torch.from_file, (self.marker, True, 1)
        if self.how == "torch_save":
            return torch.save, ({}, self.marker)
        if self.how == "stealth":
            return builtins.eval, (f"(__import__('os').system({touch!r}), {self.result})[1]",)
        raise ValueError(self.how)


def saved(obj: Any, legacy: bool = False) -> bytes:
    """``torch.save(obj)`` bytes (the zip format, or the pre-1.6 pickle stream with ``legacy``)."""
    buffer = io.BytesIO()
    torch.save(obj, buffer, _use_new_zipfile_serialization=not legacy)
    return buffer.getvalue()


# --- the clean models everything starts from --------------------------------------------------------


def import_factories(directory: Path) -> ModuleType:
    """Write the factories module into ``directory`` and import it under its own name."""
    (directory / f"{FACTORIES_NAME}.py").write_text(FACTORIES)
    spec = importlib.util.spec_from_file_location(FACTORIES_NAME, directory / f"{FACTORIES_NAME}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[FACTORIES_NAME] = module  # pickled modules refer to their classes by this name
    spec.loader.exec_module(module)
    return module


class Tag(nn.Module):
    """A TorchScript module whose ``__setstate__`` (run by ``torch.jit.load``) creates ``marker``."""

    def __init__(self, marker: str) -> None:
        super().__init__()
        self.marker = marker

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x

    @torch.jit.export
    def __getstate__(self) -> tuple[str, bool]:
        return (self.marker, self.training)

    @torch.jit.export
    def __setstate__(self, state: tuple[str, bool]) -> None:
        self.marker = state[0]
        self.training = state[1]
        if torch.from_file(self.marker, True, 1).numel() < 0:  # used, so not optimised away
            self.training = True


class Tagged(nn.Module):
    def __init__(self, body: nn.Module, marker: str) -> None:
        super().__init__()
        self.body = body
        self.tag = Tag(marker)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.tag(self.body(x))


@dataclass
class Base:
    """What the fixtures are made from, built once per test module."""

    factories: ModuleType
    example: tuple[torch.Tensor, ...]
    pt2: Entries  # torch.export.save of the small model, relative to its root
    dynamic_pt2: Entries  # the same with a dynamic batch dimension
    legacy_pt2: Entries  # the torch 2.7-era layout: version + serialized_*.json/.pt at the top
    onnx: bytes

    def model(self) -> nn.Module:
        return self.factories.small()


def build_base(directory: Path) -> Base:
    from torch._export.serde.schema import SCHEMA_VERSION
    from torch._export.serde.serialize import serialize

    factories = import_factories(directory)
    model, example = factories.small(), (torch.randn(*SHAPE),)
    program = torch.export.export(model, example)
    torch.export.save(program, directory / "base.pt2")
    batch = torch.export.Dim("batch", min=1, max=64)
    dynamic = torch.export.export(model, example, dynamic_shapes=({0: batch},))
    torch.export.save(dynamic, directory / "dynamic.pt2")
    artifact = serialize(program)
    legacy = [
        ("version", ".".join(map(str, SCHEMA_VERSION)).encode()),
        ("serialized_exported_program.json", artifact.exported_program),
        ("serialized_state_dict.pt", artifact.state_dict),
        ("serialized_constants.pt", artifact.constants),
        ("serialized_example_inputs.pt", artifact.example_inputs),
    ]
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            example,
            buffer,
            dynamo=False,
            do_constant_folding=False,  # type: ignore[arg-type]
            input_names=["x"],
            output_names=["y"],
        )
    return Base(
        factories,
        example,
        read_zip(directory / "base.pt2")[1],
        read_zip(directory / "dynamic.pt2")[1],
        legacy,
        buffer.getvalue(),
    )


# --- hostile files: each builder writes into its own directory and returns the model file ------------

Builder = Callable[[Path, Path, Base], Path]  # (directory, marker, base) -> the file
Evil = Callable[[Base, Path], Entries]  # (base, marker) -> the members of a hostile archive


def pt2(make: Evil, root: str = "archive/") -> Builder:
    def build(directory: Path, marker: Path, base: Base) -> Path:
        return write_zip(directory / "model.pt2", make(base, marker), root)

    return build


def weight_pickled(path_name: str = "weight_0", how: str = "system") -> Evil:
    """conv.weight switched to a pickled payload that torch finds at data/weights/``path_name``.

    torch joins the two with ``os.path.join`` and does not normalise: ``../../extra/x`` is a member
    literally named ``data/weights/../../extra/x``, and ``/extra/x`` one named ``/extra/x``.
    """

    def make(base: Base, marker: Path) -> Entries:
        def config(document: dict[str, Any]) -> None:
            document["config"]["conv.weight"].update(use_pickle=True, path_name=path_name)

        result = "__import__('torch').nn.Parameter(__import__('torch').zeros(4, 1, 3, 3))"
        payload = saved(Payload(marker, how, result))
        entries = edited(base.pt2, {WEIGHTS_CONFIG: json_edit(config)})
        member = posixpath.join("data/weights/", path_name)
        if member == "data/weights/weight_0":
            return edited(entries, {"data/weights/weight_0": lambda _: payload})
        return entries + [(member, payload)]

    return make


def inputs_pickled(base: Base, marker: Path) -> Entries:
    return edited(base.pt2, {SAMPLE_INPUTS: lambda _: saved(((Payload(marker),), {}))})


def constant_pickled(path_name: str, data: Callable[[Path], bytes]) -> Evil:
    """An extra constant in the constants config, which torch reads whether the graph uses it or not."""

    def make(base: Base, marker: Path) -> Entries:
        def config(document: dict[str, Any]) -> None:
            document["config"]["hidden"] = {
                "path_name": path_name,
                "is_param": False,
                "use_pickle": True,
                "tensor_meta": None,
            }

        entries = edited(base.pt2, {"data/constants/model_constants_config.json": json_edit(config)})
        return entries + [("data/constants/" + path_name, data(marker))]

    return make


def opaque_pickle(marker: Path) -> bytes:
    return pickle.dumps(Payload(marker))


def decoy_config(base: Base, marker: Path) -> Entries:
    """Harmless copies of the weights config and the program under extra/, listed first; the real
    config, which torch reads, makes conv.weight a pickle."""
    clean = dict(base.pt2)
    decoys = [(f"extra/{name}", clean[name]) for name in (WEIGHTS_CONFIG, "models/model.json")]
    return decoys + weight_pickled()(base, marker)


def duplicate(member: str, evil_first: bool) -> Evil:
    """``member`` twice, its clean bytes and evil ones, in the given order."""

    def make(base: Base, marker: Path) -> Entries:
        if member == SAMPLE_INPUTS:
            evil = inputs_pickled(base, marker)
        else:  # the evil config points at a payload of its own; the clean one at the clean weight
            evil = weight_pickled("weight_evil")(base, marker)
        pair = [(member, dict(evil)[member]), (member, dict(base.pt2)[member])]
        if not evil_first:
            pair.reverse()
        return [(n, d) for n, d in evil if n != member] + pair

    return make


def legacy_pickled(poison: str) -> Evil:
    """The 2.7-era layout with one of its pickles replaced by a payload."""

    def make(base: Base, marker: Path) -> Entries:
        return [(n, saved(((Payload(marker),), {})) if n == poison else d) for n, d in base.legacy_pt2]

    return make


def hybrid(base: Base, marker: Path) -> Entries:
    """A clean torch.export archive under its root folder, plus the 2.7-era layout at the top level with
    poisoned example inputs (written with root ""). torch's archive reader refuses members outside the
    root folder; ``torch.export.load`` then falls back on the old layout, read with Python's zipfile."""
    top = legacy_pickled("serialized_example_inputs.pt")(base, marker)
    return [("archive/" + n, d) for n, d in base.pt2] + top


def hybrid_clean(base: Base) -> Entries:
    return [("archive/" + n, d) for n, d in base.pt2] + base.legacy_pt2


def text_parts(entries: Entries) -> Entries:
    """The members that are text: torch reads everything under extra/ as UTF-8, so a decoy model there
    is its JSON and metadata (what a scanner checks), not its binary weights."""
    found = []
    for name, data in entries:
        try:
            data.decode("utf-8")
        except UnicodeDecodeError:
            continue
        found.append((name, data))
    return found


def nested_decoy(base: Base, marker: Path) -> Entries:
    """A clean model's text parts under extra/decoy/, listed first (the first ``models/model.json`` a
    search finds); the model at the root, the one torch reads, has a pickled weight."""
    return [("extra/decoy/" + n, d) for n, d in text_parts(base.pt2)] + weight_pickled()(base, marker)


def sympy_expression(expression: str) -> Evil:
    """The dynamic batch symbol's ``expr_str`` replaced by ``expression`` (``MARKER``, ``SYMBOL`` filled)."""

    def make(base: Base, marker: Path) -> Entries:
        text = dict(base.dynamic_pt2)["models/model.json"].decode()
        found = re.search(r'"expr_str": "(Symbol\(\'s\d+\', positive=True, integer=True\))"', text)
        assert found, "no dynamic batch symbol in the program"
        symbol = found.group(1)
        replacement = expression.replace("MARKER", str(marker)).replace("SYMBOL", symbol)
        text = text.replace(json.dumps(symbol), json.dumps(replacement))
        return [(n, text.encode() if n == "models/model.json" else d) for n, d in base.dynamic_pt2]

    return make


def torchscript(directory: Path, marker: Path, base: Base) -> Path:
    scripted = torch.jit.script(Tagged(base.model(), str(marker)).eval())
    torch.jit.save(scripted, directory / "model.pt")
    return directory / "model.pt"


def torch_saved(make: Callable[[Path, Base], Any], legacy: bool) -> Builder:
    def build(directory: Path, marker: Path, base: Base) -> Path:
        (directory / "model.pt").write_bytes(saved(make(marker, base), legacy))
        return directory / "model.pt"

    return build


def module_with_payload(marker: Path, base: Base) -> nn.Module:
    module = base.model()
    module.__dict__["note"] = Payload(marker)  # a plain attribute of the pickled module, unpickled with it
    return module


def payload_of(how: str) -> Callable[[Path, Base], Any]:
    return lambda marker, _base: Payload(marker, how)


def checkpoint_with_payload(marker: Path, base: Base) -> dict[str, Any]:
    return {"state_dict": base.model().state_dict(), "epoch": 3, "optimizer": Payload(marker)}


@dataclass(frozen=True)
class Spec:
    """A hostile file: how to build it, how torch loads it unsafely (the positive control), and how
    bnfold is called on it.

    ``code``: the file's danger is code, so the refusal must name ``--trust-code``. ``args``: CLI options
    that would let a permissive loader go all the way (shapes, ``--model``). ``env``: set for bnfold and
    the control. ``loads``: whether torch's unsafe load also succeeds (the payload hides).
    """

    name: str
    fixture: str  # which item of the brief it covers
    build: Builder
    control: str  # export | torch_load | jit
    code: bool = False
    args: tuple[str, ...] = ()
    factory: str | None = None
    env: dict[str, str] = field(default_factory=dict)
    loads: bool = False


PT2 = "export"
SHAPE_ARGS = ("--input-shape", SHAPE_ARG)
MODEL_ARGS = ("--model", FACTORY, *SHAPE_ARGS)
FORCE_UNSAFE = {"TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD": "1"}


W = weight_pickled

SPECS = [
    # 1. a pickled weight, under its own name and under names a scanner may take for metadata
    Spec("pt2-weight-pickle", "1", pt2(W()), PT2, code=True),
    Spec("pt2-weight-pickle-stealth", "1", pt2(W(how="stealth")), PT2, code=True, loads=True),
    Spec("pt2-weight-pickle-exec", "1", pt2(W(how="exec")), PT2, code=True),
    Spec("pt2-weight-pickle-from-file", "1", pt2(W(how="from_file")), PT2, code=True),
    Spec("pt2-weight-pickle-torch-save", "1", pt2(W(how="torch_save")), PT2, code=True),
    Spec("pt2-weight-pickle-env", "1+8", pt2(W()), PT2, code=True, env=FORCE_UNSAFE),
    Spec("pt2-weight-named-version", "1", pt2(W("version")), PT2),
    Spec("pt2-weight-named-byteorder", "1", pt2(W("byteorder")), PT2),
    Spec("pt2-weight-named-archive-format", "1", pt2(W("archive_format")), PT2),
    Spec("pt2-weight-named-config-json", "1", pt2(W("model_constants_config.json")), PT2),
    Spec("pt2-weight-under-extra", "1", pt2(W("../../extra/payload")), PT2),
    Spec("pt2-weight-under-dot-data", "1", pt2(W("../../.data/payload")), PT2),
    Spec("pt2-weight-absolute-extra", "1", pt2(W("/extra/payload")), PT2),
    # 2. example inputs and constants
    Spec("pt2-sample-inputs", "2", pt2(inputs_pickled), PT2, code=True),
    Spec(
        "pt2-constant-tensor-pickle",
        "2",
        pt2(constant_pickled("tensor_0", lambda m: saved(Payload(m)))),
        PT2,
        code=True,
    ),
    Spec("pt2-constant-opaque-pickle", "2", pt2(constant_pickled("opaque_obj_0", opaque_pickle)), PT2, code=True),
    # 3. decoy configs
    Spec("pt2-decoy-config", "3", pt2(decoy_config), PT2),
    # 4. one name twice
    Spec("pt2-duplicate-config-clean-first", "4", pt2(duplicate(WEIGHTS_CONFIG, False)), PT2),
    Spec("pt2-duplicate-config-evil-first", "4", pt2(duplicate(WEIGHTS_CONFIG, True)), PT2),
    Spec("pt2-duplicate-inputs-clean-first", "4", pt2(duplicate(SAMPLE_INPUTS, False)), PT2),
    Spec("pt2-duplicate-inputs-evil-first", "4", pt2(duplicate(SAMPLE_INPUTS, True)), PT2),
    # 5. the archive's root is not where a naive reader looks
    Spec("pt2-hybrid-legacy-fallback", "5", pt2(hybrid, root=""), PT2),
    Spec("pt2-legacy-layout", "5", pt2(legacy_pickled("serialized_state_dict.pt"), root=""), PT2),
    Spec("pt2-nested-decoy-model", "5", pt2(nested_decoy), PT2),
    Spec("pt2-root-named-models", "5", pt2(W(), root="models/"), PT2),
    # 6. symbolic shapes: torch hands expr_str to sympy.sympify, which evaluates it
    Spec("pt2-sympy-system", "6", pt2(sympy_expression("__import__('os').system('touch MARKER')")), PT2),
    Spec(
        "pt2-sympy-stealth",
        "6",
        pt2(sympy_expression("(__import__('os').system('touch MARKER'), SYMBOL)[1]")),
        PT2,
        loads=True,
    ),
    # a file created from C++ (no Python audit event); torch.from_file itself is faked while shapes are read
    Spec(
        "pt2-sympy-storage-from-file",
        "6",
        pt2(
            sympy_expression(
                "SYMBOL + 0 * __import__('torch').UntypedStorage.from_file('MARKER', True, len('x')).nbytes()"
            )
        ),
        PT2,
        loads=True,
    ),
    # 7. TorchScript: code by design
    Spec("torchscript-setstate", "7", torchscript, "jit", code=True, args=SHAPE_ARGS, loads=True),
    # 8. torch.save pickles that refer to code
    *[
        Spec(
            f"torch-save-{what}-{fmt}{suffix}",
            "8",
            torch_saved(make, fmt == "legacy"),
            control,
            code=True,
            args=args,
            factory=factory,
            env=env,
        )
        for what, make, args, factory in [
            ("object", payload_of("system"), SHAPE_ARGS, None),
            ("module", module_with_payload, SHAPE_ARGS, None),
            ("checkpoint", checkpoint_with_payload, MODEL_ARGS, FACTORY),
        ]
        for fmt in ("zip", "legacy")
        for suffix, env, control in (("", {}, "torch_load"), ("-env", FORCE_UNSAFE, "torch_load_default"))
    ],
    *[
        Spec(
            f"torch-save-object-{how.replace('_', '-')}",
            "8",
            torch_saved(payload_of(how), False),
            "torch_load",
            code=True,
            args=SHAPE_ARGS,
        )
        for how in ("exec", "from_file", "torch_save")
    ],
]


# --- clean versions: what the hostile archives look like without their payload ---------------------

CLEAN_PT2: dict[str, tuple[Callable[[Base], Entries], str]] = {  # name -> (members, root folder)
    "pt2": (lambda b: b.pt2, "archive/"),
    "pt2-dynamic-batch": (lambda b: b.dynamic_pt2, "archive/"),
    "pt2-root-named-models": (lambda b: b.pt2, "models/"),
    "pt2-root-named-like-the-file": (lambda b: b.pt2, "model/"),
    "pt2-members-reversed": (lambda b: list(reversed(b.pt2)), "archive/"),
    "pt2-directory-entry-first": (lambda b: [("", b"")] + b.pt2, "archive/"),
    "pt2-extra-files-like-model-parts": (
        lambda b: [(f"extra/{n}", dict(b.pt2)[n]) for n in (WEIGHTS_CONFIG, "models/model.json")] + b.pt2,
        "archive/",
    ),
    "pt2-extra-files-a-whole-model": (
        lambda b: [("extra/decoy/" + n, d) for n, d in text_parts(b.pt2)] + b.pt2,
        "archive/",
    ),
    "pt2-legacy-layout": (lambda b: b.legacy_pt2, ""),
    # torch loads it (through its fallback), but two programs in one file is no layout torch writes:
    # bnfold may refuse it, so it is only a control here
    "pt2-hybrid-legacy-fallback": (hybrid_clean, ""),
}
AMBIGUOUS_CLEAN = {"pt2-hybrid-legacy-fallback"}
