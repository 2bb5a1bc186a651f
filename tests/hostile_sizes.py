"""Files whose danger is their size: zip bombs, safetensors headers and ONNX external data that claim more
than the file holds, external data that is a FIFO or a device. Each :class:`SizeSpec` has a ``claim``
that checks, without reading the dangerous part, that the file declares what the fixture says (the
positive control).
"""

from __future__ import annotations

import json
import os
import struct
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hostile import FACTORY, MODEL_ARGS, SAMPLE_INPUTS, Base, saved
from hostile_zip import Deflated, read_zip_bytes, write_zip_by_hand, zeros_bomb

GIB = 1 << 30


@dataclass(frozen=True)
class SizeSpec:
    """A file that is dangerous to read in full (or at all). ``claim`` checks what the fixture claims
    about it without reading the dangerous part (the positive control), returning a description."""

    name: str
    build: Callable[[Path, Base], list[Path]]  # (directory, base) -> [model file, files beside it]
    claim: Callable[[list[Path]], str]
    args: tuple[str, ...] = ()
    factory: str | None = None


BOMB_SIZE = 3 * GIB


def _bomb_pt2(member: str) -> Callable[[Path, Base], list[Path]]:
    """``member`` (added if the archive has none) replaced by the bomb."""

    def build(directory: Path, base: Base) -> list[Path]:
        entries: list[tuple[str, bytes | Deflated]] = [(n, d) for n, d in base.pt2 if n != member]
        entries.append((member, zeros_bomb(BOMB_SIZE)))
        return [write_zip_by_hand(directory / "model.pt2", entries, "archive/")]

    return build


def _bomb_duplicate(directory: Path, base: Base) -> list[Path]:
    """The example inputs twice, the bomb first: torch reads the first copy of this member, Python's
    zipfile the last (see test_control_torch_and_zipfile_read_different_duplicates)."""
    entries: list[tuple[str, bytes | Deflated]] = [(n, d) for n, d in base.pt2 if n != SAMPLE_INPUTS]
    entries += [(SAMPLE_INPUTS, zeros_bomb(BOMB_SIZE)), (SAMPLE_INPUTS, dict(base.pt2)[SAMPLE_INPUTS])]
    return [write_zip_by_hand(directory / "model.pt2", entries, "archive/")]


def _bomb_torch_save(directory: Path, base: Base) -> list[Path]:
    root, entries = read_zip_bytes(saved(base.model().state_dict()))
    storage = next(n for n, _ in entries if n.startswith("data/") and n[5:].isdigit())
    bombed = [(n, zeros_bomb(BOMB_SIZE) if n == storage else d) for n, d in entries]
    return [write_zip_by_hand(directory / "weights.pt", bombed, root)]


def bomb_claim(paths: list[Path]) -> str:
    """The declared size is several GiB, the stream a few MB, and it really inflates to zeros."""
    with zipfile.ZipFile(paths[0]) as archive:
        info = max(archive.infolist(), key=lambda i: i.file_size)
        assert info.compress_type == zipfile.ZIP_DEFLATED
        assert info.file_size >= BOMB_SIZE and info.compress_size < info.file_size // 500
        assert paths[0].stat().st_size < 8 << 20
        with archive.open(info) as stream:
            head = stream.read(16 << 20)
        assert len(head) == 16 << 20 and not any(head)
    return f"{info.filename}: {info.file_size} bytes declared, {info.compress_size} stored"


def _safetensors(
    header: dict[str, Any], declared: int | None = None, data: bytes = bytes(64)
) -> Callable[[Path, Base], list[Path]]:
    def build(directory: Path, base: Base) -> list[Path]:
        raw = json.dumps(header).encode()
        length = len(raw) if declared is None else declared
        path = directory / "weights.safetensors"
        path.write_bytes(struct.pack("<Q", length) + raw + data)
        return [path]

    return build


def safetensors_claim(paths: list[Path]) -> str:
    raw = paths[0].read_bytes()
    size = len(raw)
    length = struct.unpack("<Q", raw[:8])[0]
    if length > size:
        return f"header length {length} declared, file {size} bytes"
    header = json.loads(raw[8 : 8 + length])
    end = max(v["data_offsets"][1] for k, v in header.items() if k != "__metadata__")
    assert end > size - 8 - length
    return f"tensor data up to byte {end} declared, {size - 8 - length} bytes of data"


def _onnx_external(change: str) -> Callable[[Path, Base], list[Path]]:
    """The small model with its weights in ``weights.data``, one tensor's reference made hostile."""

    def build(directory: Path, base: Base) -> list[Path]:
        import onnx

        model = onnx.load_from_string(base.onnx)
        onnx.save_model(
            model, directory / "model.onnx", save_as_external_data=True, location="weights.data", size_threshold=0
        )
        model = onnx.load(directory / "model.onnx", load_external_data=False)
        tensor = next(t for t in model.graph.initializer if t.name == "conv.weight")
        values = {e.key: e for e in tensor.external_data}
        extra: list[Path] = [directory / "weights.data"]
        if change == "length":
            values["length"].value = str(1 << 40)
        elif change == "offset":
            values["offset"].value = str(1 << 40)
        elif change == "fifo":
            os.mkfifo(directory / "fifo.data")
            values["location"].value = "fifo.data"
            extra.append(directory / "fifo.data")
        elif change == "dev-zero":
            (directory / "zero.data").symlink_to("/dev/zero")
            values["location"].value = "zero.data"
            values["length"].value = str(1 << 40)
            extra.append(directory / "zero.data")
        onnx.save(model, directory / "model.onnx")
        return [directory / "model.onnx", *extra]

    return build


def onnx_claim(paths: list[Path]) -> str:
    import onnx

    model = onnx.load(paths[0], load_external_data=False)
    tensor = next(t for t in model.graph.initializer if t.name == "conv.weight")
    info = {e.key: e.value for e in tensor.external_data}
    target = paths[0].parent / info["location"]
    if target.is_fifo():
        return f"location {info['location']!r} is a FIFO"
    size = target.stat().st_size  # /dev/zero: 0
    end = int(info.get("offset", 0)) + int(info.get("length", 0))
    assert end > size
    return f"{info['location']!r}: bytes up to {end} claimed, {size} present"


SIZE_SPECS = [
    SizeSpec("zip-bomb-pt2-weight", _bomb_pt2("data/weights/weight_0"), bomb_claim),
    SizeSpec("zip-bomb-pt2-extra", _bomb_pt2("extra/notes.txt"), bomb_claim),
    SizeSpec("zip-bomb-pt2-duplicate-inputs", _bomb_duplicate, bomb_claim),
    SizeSpec("zip-bomb-torch-save", _bomb_torch_save, bomb_claim, MODEL_ARGS, FACTORY),
    SizeSpec(
        "safetensors-header-length",
        _safetensors(
            {"conv.weight": {"dtype": "F32", "shape": [4, 1, 3, 3], "data_offsets": [0, 144]}},
            declared=1 << 40,
            data=bytes(144),
        ),
        safetensors_claim,
        MODEL_ARGS,
        FACTORY,
    ),
    SizeSpec(
        "safetensors-data-offsets",
        _safetensors({"conv.weight": {"dtype": "F32", "shape": [1 << 30], "data_offsets": [0, 1 << 32]}}),
        safetensors_claim,
        MODEL_ARGS,
        FACTORY,
    ),
    SizeSpec("onnx-external-length", _onnx_external("length"), onnx_claim),
    SizeSpec("onnx-external-offset", _onnx_external("offset"), onnx_claim),
    SizeSpec("onnx-external-fifo", _onnx_external("fifo"), onnx_claim),
    SizeSpec("onnx-external-dev-zero", _onnx_external("dev-zero"), onnx_claim),
]
