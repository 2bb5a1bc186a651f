"""Format detection by content: a few header bytes, a zip directory, a static pickle scan.

Nothing here runs code from the file. In order:

1. a zip archive: torch.export (``models/model.json``; the parts ``torch.export.load`` would unpickle are
   scanned), TorchScript (``constants.pkl`` + ``code/``), or torch.save (``data.pkl``, whose pickle is
   scanned for the globals it would import);
2. bytes that start a zip but have no zip directory: a truncated archive;
3. a safetensors header (8-byte little-endian length, then a JSON object);
4. a legacy (pre-1.6, non-zip) torch.save pickle, scanned like ``data.pkl``;
5. an ONNX ModelProto with a graph of nodes;
6. anything else is refused, with what it looks like (text, a Git LFS pointer, a plain pickle).
"""

from __future__ import annotations

import json
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bnfold.errors import LoadError, one_line
from bnfold.load.export_scan import archive_root, exported_program_code
from bnfold.load.pickle_scan import code_globals, pickle_globals, torch_blob_globals

if TYPE_CHECKING:
    import onnx

SUPPORTED = (
    "a torch.export archive (.pt2), a TorchScript archive (torch.jit.save), an ONNX model (.onnx), "
    "or weights with --model package.module:factory (a state_dict or training checkpoint saved by "
    "torch.save, or a .safetensors file); a whole pickled model also needs --trust-pickle"
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
_MAX_SAFETENSORS_HEADER = 100 * 1024 * 1024  # safetensors' own limit
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
    """What a file is. ``code_globals``: for ``pickle`` and ``torch.export``, what loading would run."""

    kind: str  # torch.export | torchscript | torch.save | pickle | safetensors | onnx
    code_globals: tuple[str, ...] = ()
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
        raise LoadError(
            f"{path}: damaged zip archive ({one_line(exc)}): copy or save the file again"
        ) from exc
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
        return _detect_legacy_pickle(path)
    return _detect_onnx_or_refuse(path, head)


def _detect_zip(path: Path) -> Detected:
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
            root = archive_root(names)
            if root is not None:
                return Detected("torch.export", code_globals=tuple(exported_program_code(archive, root)))
            if any(n.endswith("/constants.pkl") for n in names) and any("/code/" in n for n in names):
                return Detected("torchscript")
            data_pkl = [n for n in names if n.endswith("/data.pkl") and n.count("/") == 1]
            if data_pkl:
                with archive.open(data_pkl[0]) as stream:
                    return _classify_pickle(path, lambda: pickle_globals(stream))
    except _DAMAGED_ZIP as exc:
        raise LoadError(
            f"{path}: damaged zip archive ({one_line(exc)}): copy or save the file again"
        ) from exc
    raise LoadError(
        f"{path} is a zip archive but not a model archive (no data.pkl, code/ or models/model.json "
        f"inside): give {SUPPORTED}"
    )


def _classify_pickle(path: Path, scan: Any) -> Detected:
    try:
        found = scan()
    except Exception as exc:  # pickletools on a damaged opcode stream: ValueError, EOFError, struct.error
        raise LoadError(f"{path}: damaged torch file ({one_line(exc)}): copy or save it again") from exc
    code = code_globals(found)
    return Detected("pickle", code_globals=tuple(code)) if code else Detected("torch.save")


def _detect_legacy_pickle(path: Path) -> Detected:
    """A pre-1.6 torch.save file is a series of pickles; a plain pickle is refused, never unpickled."""
    with path.open("rb") as stream:
        try:
            found, is_torch = torch_blob_globals(stream)
        except Exception:  # no pickle after all (pickletools raises ValueError, EOFError, struct.error)
            return _detect_onnx_or_refuse(path, b"\x80")
    if not is_torch:
        raise LoadError(
            f"{path} is a plain Python pickle, not a torch file; bnfold does not unpickle arbitrary "
            f"objects: give {SUPPORTED}"
        )
    return _classify_pickle(path, lambda: found)


def _has_safetensors_header(path: Path, head: bytes) -> bool:
    if len(head) < 10 or head[8:9] != b"{":
        return False
    length = int.from_bytes(head[:8], "little")
    if length > min(path.stat().st_size - 8, _MAX_SAFETENSORS_HEADER):
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
