"""Format detection by content: a few header bytes, a zip directory, an ONNX parse.

Nothing here unpickles anything, and nothing here is what keeps a file from running code: detection only
routes the file to its reader, and every reader of an untrusted file runs inside the loading gate
(:mod:`bnfold.load.gate`). In order:

1. a zip archive (its declared sizes checked first, :mod:`bnfold.load.limits`): torch.export
   (``models/model.json``), TorchScript (``constants.pkl`` + ``code/``), or torch.save (``data.pkl``);
2. bytes that start a zip but have no zip directory: a truncated archive;
3. a safetensors header (8-byte little-endian length, then a JSON object);
4. a pickle: a legacy (pre-1.6, non-zip) torch.save file, or a plain pickle that torch.load refuses;
5. an ONNX ModelProto with a graph of nodes;
6. anything else is refused, with what it looks like (text, a Git LFS pointer, a plain pickle).
"""

from __future__ import annotations

import json
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from bnfold.errors import LoadError, one_line
from bnfold.load.limits import MAX_SAFETENSORS_HEADER, check_zip

if TYPE_CHECKING:
    import onnx

SUPPORTED = (
    "a torch.export archive (.pt2), an ONNX model (.onnx), or weights with --model package.module:factory "
    "(a state_dict or training checkpoint saved by torch.save, or a .safetensors file); a TorchScript archive "
    "or a whole pickled model also needs --trust-code"
)

_HEAD_BYTES = 4096
# What zipfile raises on damaged archives (ValueError covers undecodable names).
_DAMAGED_ZIP = (
    zipfile.BadZipFile,
    OSError,
    EOFError,
    ValueError,
    zlib.error,
    RuntimeError,
    NotImplementedError,
)
_EXTENSION_MEANS = {
    ".onnx": "an ONNX model",
    ".safetensors": "a safetensors file",
    ".pt2": "a torch.export archive",
    ".pt": "a torch file",
    ".pth": "a torch file",
    ".ckpt": "a training checkpoint",
}


@dataclass(frozen=True)
class Detected:
    """What a file is: its format and, for ONNX, the parsed graph (external data not yet read)."""

    kind: str  # torch.export | torchscript | torch.save | safetensors | onnx
    onnx_model: onnx.ModelProto | None = None


def check_readable(path: Path) -> None:
    """Refuse a missing path, a directory, a device or pipe, or an empty file, before reading anything."""
    if not path.exists():
        raise LoadError(f"{path}: no such file")
    if path.is_dir():
        raise LoadError(f"{path} is a directory: give the model file itself ({SUPPORTED})")
    if not path.is_file():
        raise LoadError(f"{path} is not a regular file: give {SUPPORTED}")
    if path.stat().st_size == 0:
        raise LoadError(f"{path} is empty (0 bytes): give {SUPPORTED}")


def detect_format(path: Path) -> Detected:
    """Identify ``path`` by its content; raise :class:`LoadError` saying what it is when it is no model."""
    try:
        with path.open("rb") as handle:
            head = handle.read(_HEAD_BYTES)
        is_zip = zipfile.is_zipfile(path)
    except zipfile.BadZipFile as exc:  # a zip directory record it cannot follow
        raise LoadError(f"{path}: damaged zip archive ({one_line(exc)}): copy or save the file again") from exc
    except OSError as exc:
        raise LoadError(f"{path}: cannot read the file ({one_line(exc)})") from exc
    if is_zip:
        return _detect_zip(path)
    if head.startswith(b"PK\x03\x04"):
        raise LoadError(
            f"{path} starts like a zip archive but its end is missing (a truncated download or copy?): "
            "copy or save the file again"
        )
    if _has_safetensors_header(path, head):
        return Detected("safetensors")
    if head[:1] == b"\x80":
        return Detected("torch.save")  # a legacy torch.save file, or a plain pickle torch.load will refuse
    return _detect_onnx_or_refuse(path, head)


def _detect_zip(path: Path) -> Detected:
    """Which torch archive this is, by its member names. Routing only: every reader it leads to is gated."""
    try:
        with zipfile.ZipFile(path) as archive:
            check_zip(path, archive)
            names = archive.namelist()
    except _DAMAGED_ZIP as exc:
        raise LoadError(f"{path}: damaged zip archive ({one_line(exc)}): copy or save the file again") from exc
    if any(n.endswith(("models/model.json", "serialized_exported_program.json")) for n in names):
        return Detected("torch.export")
    if any(n.endswith("/constants.pkl") for n in names) and any("/code/" in n for n in names):
        return Detected("torchscript")
    if any(n.endswith("data.pkl") for n in names):
        return Detected("torch.save")
    raise LoadError(
        f"{path} is a zip archive but not a model archive (no data.pkl, code/ or models/model.json "
        f"inside): give {SUPPORTED}"
    )


def _has_safetensors_header(path: Path, head: bytes) -> bool:
    if len(head) < 10 or head[8:9] != b"{":
        return False
    length = int.from_bytes(head[:8], "little")
    if length > min(path.stat().st_size - 8, MAX_SAFETENSORS_HEADER):
        return False
    with path.open("rb") as handle:
        handle.seek(8)
        raw = handle.read(length)
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, ValueError):
        return False
    return isinstance(header, dict) and all(
        isinstance(v, dict) and "dtype" in v for k, v in header.items() if k != "__metadata__"
    )


def _detect_onnx_or_refuse(path: Path, head: bytes) -> Detected:
    from bnfold.load.onnx_files import NotOnnx, parse_onnx

    try:
        return Detected("onnx", onnx_model=parse_onnx(path, head))
    except NotOnnx as exc:
        raise LoadError(_not_a_model(path, head, str(exc))) from None


def _not_a_model(path: Path, head: bytes, onnx_reason: str) -> str:
    looks = _what_it_looks_like(head)
    claimed = _EXTENSION_MEANS.get(path.suffix.lower())
    if claimed == "an ONNX model" and not looks:
        looks = f"not a valid ONNX protobuf: {onnx_reason}"
    elif claimed == "a safetensors file" and not looks:
        looks = "no valid safetensors header: 8-byte length then a JSON object"
    elif claimed and not looks:
        looks = "neither a zip archive nor a torch pickle"
    detail = f" ({looks})" if looks else ""
    if claimed:
        return f"{path}: the name says {claimed} but the content is not one{detail}: give {SUPPORTED}"
    return f"{path} is not a model file bnfold can read{detail}: give {SUPPORTED}"


def _what_it_looks_like(head: bytes) -> str:
    if head.startswith(b"version https://git-lfs"):
        return "it is a Git LFS pointer, not the file itself: fetch it with `git lfs pull`"
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as exc:
        if exc.start < len(head) - 3:  # not just a character cut at the end of the sample
            return ""
        text = head[: exc.start].decode("utf-8")
    if "\x00" in text:
        return ""
    first = text.strip().splitlines()[0][:40] if text.strip() else ""
    return f"it is a text file starting {first!r}"
