"""Sizes a file declares, checked against the file before anything is read or allocated.

A small file can declare gigabytes: a zip member that inflates a thousandfold, a safetensors tensor or an
ONNX external-data reference that claims more bytes than its file holds. Each is refused from its headers
alone, in constant memory, before a reader trusts the number.
"""

from __future__ import annotations

import json
import math
import stat
import zipfile
from collections import Counter
from pathlib import Path

import onnx

from bnfold.errors import LoadError

MAX_INFLATION = 100  # a deflated member may inflate this many times (tensors barely compress)
_SMALL_MEMBER = 1 << 20  # below this a member may inflate at any ratio
MAX_MEMBERS = 1_000_000
MAX_SAFETENSORS_HEADER = 100 * 1024 * 1024  # safetensors' own limit
_SAFETENSORS_ITEMSIZE = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
    "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8, "C64": 8,
}  # fmt: skip


_SUB_BYTE = {onnx.TensorProto.INT4, onnx.TensorProto.UINT4}


def check_zip(path: Path, archive: zipfile.ZipFile) -> None:
    """Refuse an archive whose members claim more bytes than the file can hold or inflate to."""
    size = path.stat().st_size
    members = archive.infolist()
    if len(members) > MAX_MEMBERS:
        raise LoadError(f"{path}: the archive lists {len(members):,} members: not a model archive")
    repeated = [name for name, count in Counter(info.filename for info in members).items() if count > 1]
    if repeated:
        twice = repeated[0]
        raise LoadError(
            f"{path}: the archive lists {twice!r} more than once (readers disagree on which copy counts: a "
            "damaged or crafted archive): save the model again"
        )
    for info in members:
        if info.header_offset + info.compress_size > size:
            raise LoadError(
                f"{path}: member {info.filename!r} claims {info.compress_size:,} bytes past the end of the "
                "file (a damaged or crafted archive): copy or save it again"
            )
        if info.file_size > max(_SMALL_MEMBER, MAX_INFLATION * info.compress_size):
            raise LoadError(
                f"{path}: member {info.filename!r} inflates from {info.compress_size:,} to {info.file_size:,} "
                f"bytes (over {MAX_INFLATION}x; a zip bomb?): bnfold does not read it"
            )


def check_safetensors(path: Path) -> None:
    """Refuse a safetensors file whose header or tensors claim more bytes than the file holds."""
    size = path.stat().st_size
    with path.open("rb") as handle:
        length = int.from_bytes(handle.read(8), "little")
        if length > min(size - 8, MAX_SAFETENSORS_HEADER):
            raise LoadError(f"{path}: the safetensors header claims {length:,} bytes; the file has {size:,}")
        try:
            header = json.loads(handle.read(length))
        except (UnicodeDecodeError, ValueError) as exc:
            raise LoadError(f"{path}: the safetensors header is not JSON ({exc}): save it again") from None
    data = size - 8 - length
    for name, meta in header.items() if isinstance(header, dict) else ():
        if name != "__metadata__":
            _check_safetensors_tensor(path, name, meta, data)


def _check_safetensors_tensor(path: Path, name: str, meta: object, data: int) -> None:
    try:
        assert isinstance(meta, dict)
        begin, end = (int(v) for v in meta["data_offsets"])
        shape = [int(d) for d in meta["shape"]]
        itemsize = _SAFETENSORS_ITEMSIZE.get(str(meta["dtype"]))
    except (AssertionError, KeyError, TypeError, ValueError):
        raise LoadError(f"{path}: tensor {name!r} has no valid dtype, shape and data_offsets") from None
    claimed = math.prod(shape) * itemsize if itemsize and min(shape, default=0) >= 0 else None
    if not 0 <= begin <= end <= data or (claimed is not None and claimed != end - begin):
        raise LoadError(
            f"{path}: tensor {name!r} claims bytes {begin:,}-{end:,} (shape {shape}) of a data section of "
            f"{data:,} bytes: a damaged or crafted file, save it again"
        )


def check_external_data(path: Path, model: onnx.ModelProto) -> None:
    """Refuse external data that is not a regular file beside the model or lies past that file's end."""
    from onnx.external_data_helper import ExternalDataInfo, _get_all_tensors, uses_external_data

    base = path.parent.resolve()
    for tensor in _get_all_tensors(model):
        if uses_external_data(tensor):
            info = ExternalDataInfo(tensor)
            _check_external_tensor(path, base, tensor, info.location, int(info.offset or 0), info.length)


def _check_external_tensor(
    path: Path, base: Path, tensor: onnx.TensorProto, location: str, offset: int, length: int | None
) -> None:
    target = (base / location).resolve()
    if not location or Path(location).is_absolute() or base not in (target, *target.parents):
        raise LoadError(f"{path}: tensor {tensor.name!r} names external data {location!r} outside the model's folder")
    try:
        mode, size = target.stat().st_mode, target.stat().st_size
    except OSError:
        raise LoadError(
            f"{path}: tensor {tensor.name!r} needs the external data {location!r}, which is missing: keep the "
            "data files the model names in the same directory as the .onnx file"
        ) from None
    if not stat.S_ISREG(mode):
        raise LoadError(f"{path}: external data {location!r} is not a regular file")
    expected = _tensor_bytes(tensor)
    claimed = length if length is not None else (expected if expected is not None else size - offset)
    if offset < 0 or claimed < 0 or offset + claimed > size or (expected is not None and claimed != expected):
        raise LoadError(
            f"{path}: tensor {tensor.name!r} claims {claimed:,} bytes at offset {offset:,} of {location!r} "
            f"({size:,} bytes; its shape needs {expected if expected is not None else '?'}): a damaged or "
            "crafted model, export it again"
        )


def _tensor_bytes(tensor: onnx.TensorProto) -> int | None:
    """The bytes a numeric tensor of this shape holds (None for strings, sub-byte and unknown types)."""
    try:
        dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type)
    except (KeyError, ValueError, TypeError):
        return None
    if dtype.kind == "O" or tensor.data_type in _SUB_BYTE:
        return None
    return int(math.prod(tensor.dims) * dtype.itemsize)
