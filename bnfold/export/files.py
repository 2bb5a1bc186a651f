"""Saving an ONNX model: one file or its weights in ``<name>.data`` beside it, onnx.checker, what onnxruntime
creates a session from, and the model as onnxruntime optimizes it."""

from __future__ import annotations

import hashlib
import math
import os
import tempfile
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import onnx

from bnfold.errors import ExportError, one_line


def check(model: onnx.ModelProto | Path) -> None:
    """onnx.checker on the model (or the saved file: its external data is checked for presence, not read),
    as an ExportError when it fails."""
    try:
        onnx.checker.check_model(model if isinstance(model, onnx.ModelProto) else str(model))
    except onnx.checker.ValidationError as exc:
        raise ExportError(f"the exported ONNX model does not pass onnx.checker: {one_line(exc)}") from exc


def tensor_bytes(model: onnx.ModelProto) -> int:
    """Bytes held by the model's initializers (protobuf cannot serialise past 2 GB), without serialising
    anything: ``ByteSize()`` of a model past 2 GB raises."""
    return sum(_stored_bytes(t) for t in model.graph.initializer)


def _stored_bytes(tensor: onnx.TensorProto) -> int:
    """A tensor's bytes, from its shape and type where they tell (reading ``raw_data`` would copy it)."""
    if tensor.data_location == onnx.TensorProto.EXTERNAL:
        return next((int(e.value) for e in tensor.external_data if e.key == "length"), 0)
    if tensor.data_type not in (onnx.TensorProto.STRING, onnx.TensorProto.UNDEFINED):
        try:
            itemsize = onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize
        except Exception:  # an element type numpy has no match for (4-bit, float8): count it as serialised
            itemsize = 0
        if itemsize:
            return int(itemsize * math.prod(tensor.dims))
    return int(tensor.ByteSize())


EXTERNAL_DATA = ("auto", "always", "never")
EXTERNAL_DATA_AUTO_BYTES = 1_000_000
"""``external_data="auto"``: weights from this size on go to a ``.data`` file beside the model. onnxruntime
creates sessions from such a pair faster; below it one file is simpler and faster (where the two cross over
is measured in ``benchmarks/PROFILE.md``)."""


def external_data_limit() -> int:
    """:data:`bnfold.export.EXTERNAL_DATA_BYTES`, read from the package at each call: past it, one file
    cannot hold a model (protobuf's 2 GB limit), and the weights always go beside it."""
    import bnfold.export

    return int(bnfold.export.EXTERNAL_DATA_BYTES)


def external_data_path(model: onnx.ModelProto, path: Path, external_data: str = "auto") -> Path | None:
    """Where :func:`save` writes ``model``'s weights for ``path``: ``<name>.data`` beside it, or None for one
    self-contained file. Raises :class:`ExportError` for "never" on a model one file cannot hold."""
    if external_data not in EXTERNAL_DATA:
        raise ValueError(f"external_data must be one of {', '.join(EXTERNAL_DATA)}, not {external_data!r}")
    size, limit = tensor_bytes(model), external_data_limit()
    if external_data == "never" and size >= limit:
        raise ExportError(
            f"the weights ({size / 1e9:.1f} GB) do not fit in one ONNX file (protobuf's 2 GB limit): "
            "use --external-data auto"
        )
    external = (
        size >= limit or external_data == "always" or (external_data == "auto" and size >= EXTERNAL_DATA_AUTO_BYTES)
    )
    return path.with_name(path.name + ".data") if external else None


def save(
    model: onnx.ModelProto,
    path: Path,
    final_name: str | None = None,
    external_data: str = "auto",
    *,
    in_place: bool = False,
    weights: WrittenWeights | None = None,
) -> str | None:
    """Write the model to ``path``, its weights to ``<final_name>.data`` beside it where
    :func:`external_data_path` says so (``final_name``: the name the file will have once moved into
    place). An existing ``.data`` file is replaced, never appended to. Returns the SHA-256 (hex) of the
    ``.data`` file, hashed as it is written (None for one file): the weights are not read back to hash them.

    ``model`` is left as it was, at the cost of a copy of it; with ``in_place`` its weights move into the
    ``.data`` file instead, one tensor at a time, and ``model`` is left holding the graph that refers to them:
    no second copy of weights past 2 GB. (protobuf frees their memory only with the whole message: replace
    ``model`` by ``onnx.load(path, load_external_data=False)`` to have it back.) With ``in_place``, a file of
    ``weights`` the model's tensors point into exactly as the ``.data`` file would hold them is moved into
    place rather than copied (its hash already known)."""
    target = Path(path).with_name(final_name or Path(path).name)
    data = external_data_path(model, target, external_data)
    if not in_place:
        copy = onnx.ModelProto()
        copy.CopyFrom(model)  # marking tensors external rewrites them
        model = copy
    if data is None:
        read_external_tensors(model)  # weights left in an exporter's files: into the one file
        onnx.save_model(model, str(path))
        return None
    with tempfile.TemporaryDirectory(dir=data.parent, prefix=f".{data.name}.") as folder:
        staged = Path(folder) / target.name  # beside a fresh .data: onnx appends to an existing one
        written = Path(folder) / data.name
        digest: Any
        if in_place and weights is not None and move_weights(model, weights, written):
            digest, hashed = weights.digest.copy(), weights.size
        else:
            digest = hashlib.sha256()
            hashed = copy_external_tensors(model, written, digest)
        mark_external(model, data.name)
        onnx.save_model(model, str(staged))  # appends each marked tensor to the .data file, then drops it
        if not written.exists():  # no tensor reached the threshold: the promised file, empty
            written.touch()
        _hash_from(written, hashed, digest)  # what onnx appended after the copied bytes
        os.replace(written, data)
        os.replace(staged, path)
    return str(digest.hexdigest())


def move_weights(model: onnx.ModelProto, weights: WrittenWeights, data: Path) -> bool:
    """Move ``weights`` to ``data`` and point the model's tensors at it, when they are laid out in it as
    :func:`copy_external_tensors` would copy them (no bytes no tensor reads, such as a weight a pass
    replaced) and ``data`` is on the same file system. Returns whether it did (if not, nothing changed)."""
    from onnx.external_data_helper import ExternalDataInfo

    tensors, end = _external_tensors(model), 0
    for tensor in tensors:
        info = ExternalDataInfo(tensor)
        start = end + (-end % PAGE)
        if Path(info.location) != weights.path or (info.offset or 0) != start or info.length is None:
            return False
        end = start + info.length
    if not tensors or end != weights.size:
        return False
    try:
        if weights.path.stat().st_size != end:
            return False
        os.replace(weights.path, data)
    except OSError:  # another file system: copy instead
        return False
    for tensor in tensors:
        info = ExternalDataInfo(tensor)
        _point(tensor, data.name, info.offset or 0, info.length or 0)
    return True


def _hash_from(path: Path, offset: int, digest: Any) -> None:
    """Add the bytes of ``path`` from ``offset`` to its end to ``digest``."""
    with path.open("rb") as handle:
        handle.seek(offset)
        for block in iter(lambda: handle.read(COPY_CHUNK), b""):
            digest.update(block)


def session_source(model: onnx.ModelProto | Path, folder: Path, *, in_place: bool = False) -> bytes | Path:
    """What onnxruntime creates a session from: a file as it is; a model protobuf can serialise, as bytes;
    a larger one saved into ``folder`` with its weights beside it (``in_place``: see :func:`save`)."""
    if isinstance(model, Path):
        return model
    if tensor_bytes(model) < external_data_limit():
        return bytes(model.SerializeToString())
    Path(folder).mkdir(parents=True, exist_ok=True)
    path = Path(folder) / "model.onnx"
    save(model, path, external_data="always", in_place=in_place)
    return path


def point_at_files(model: onnx.ModelProto, folder: Path) -> None:
    """Make every external tensor of ``model`` (its locations relative to ``folder``) name its file by
    absolute path, with its offset and length, so that :func:`save` can copy it from anywhere."""
    from onnx.external_data_helper import ExternalDataInfo

    for tensor in _external_tensors(model):
        info = ExternalDataInfo(tensor)
        source = folder / info.location
        offset = info.offset or 0
        length = info.length if info.length is not None else source.stat().st_size - offset
        _point(tensor, str(source.resolve()), offset, length)


def read_external_tensors(model: onnx.ModelProto) -> None:
    """Read every tensor whose data lies in a file named by absolute path (as :func:`point_at_files` leaves
    them) into the model. (onnx's own loader refuses absolute locations, rightly for a file from elsewhere;
    these are the files the export itself wrote.)"""
    from onnx.external_data_helper import ExternalDataInfo

    for tensor in _external_tensors(model):
        info = ExternalDataInfo(tensor)
        if not Path(info.location).is_absolute():
            continue
        with open(info.location, "rb") as source:
            source.seek(info.offset or 0)
            tensor.raw_data = source.read(info.length) if info.length is not None else source.read()
        del tensor.external_data[:]
        tensor.ClearField("data_location")


def _point(tensor: onnx.TensorProto, location: str, offset: int, length: int) -> None:
    """Set where an external tensor's bytes are (``onnx``'s own helper wants the bytes in hand)."""
    del tensor.external_data[:]
    for key, value in (("location", location), ("offset", str(offset)), ("length", str(length))):
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value


def _external_tensors(model: onnx.ModelProto) -> list[onnx.TensorProto]:
    from onnx.external_data_helper import _get_all_tensors

    return [t for t in _get_all_tensors(model) if t.data_location == onnx.TensorProto.EXTERNAL]


COPY_CHUNK = 1 << 24
PAGE = 4096
"""Every tensor of a ``.data`` file starts on a page boundary, as onnxruntime maps tensors best."""


@dataclass
class WrittenWeights:
    """A file of weights written for a model whose tensors point into it, laid out as :func:`save` lays out
    a ``.data`` file (each tensor page-aligned, in the order the model lists them), with the SHA-256
    state of its bytes (a ``hashlib`` object): ``save`` can move it into place instead of copying it."""

    path: Path
    digest: Any
    size: int


def copy_external_tensors(model: onnx.ModelProto, data: Path, digest: Any = None) -> int:
    """Append the bytes of every tensor whose data lies in another file (named by absolute path, as
    :func:`point_at_files` leaves them) to ``data``, a chunk at a time, and point the tensor there: weights
    the exporter wrote are moved into the output's ``.data`` file without passing through the model.

    ``digest`` (a ``hashlib`` hash, given for a new ``data`` file) is fed every byte written, padding
    included. Returns the size of ``data`` afterwards."""
    from onnx.external_data_helper import ExternalDataInfo

    with data.open("ab") as file, HashingWriter(file, digest) as out:
        for tensor in _external_tensors(model):
            info = ExternalDataInfo(tensor)
            if not Path(info.location).is_absolute():
                continue
            out.write(b"\0" * (-out.tell() % PAGE))
            start = info.offset or 0
            length = info.length if info.length is not None else Path(info.location).stat().st_size - start
            offset, remaining = out.tell(), length
            with open(info.location, "rb") as source:
                source.seek(start)
                while remaining:
                    chunk = source.read(min(COPY_CHUNK, remaining))
                    if not chunk:
                        raise ExportError(f"the exporter's file {info.location} ends before its tensor {tensor.name}")
                    out.write(chunk)
                    remaining -= len(chunk)
            _point(tensor, data.name, offset, length)
        return out.tell()


class HashingWriter:
    """Writes to ``file`` and feeds each chunk to ``digest`` (if any) in a thread of its own, one chunk at a
    time and in order: hashing a chunk (``hashlib`` lets go of the GIL) overlaps reading and writing the next
    one, so the hash costs the copy next to no time."""

    def __init__(self, file: BinaryIO, digest: Any) -> None:
        self.file, self.digest = file, digest
        self.pool = ThreadPoolExecutor(1) if digest is not None else None
        self.pending: Future[None] | None = None

    def write(self, chunk: bytes | memoryview) -> None:
        self.file.write(chunk)
        if self.pool is not None:
            self._wait()
            self.pending = self.pool.submit(self.digest.update, chunk)

    def tell(self) -> int:
        return self.file.tell()

    def _wait(self) -> None:
        if self.pending is not None:
            self.pending.result()
            self.pending = None

    def __enter__(self) -> HashingWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self._wait()
        finally:
            if self.pool is not None:
                self.pool.shutdown()


def mark_external(model: onnx.ModelProto, location: str, size_threshold: int = 1024) -> None:
    """Point every initializer of ``size_threshold`` bytes or more at ``location`` (relative to the model's
    folder), as ``onnx.save_model(save_as_external_data=True)`` does -- without its check for an existing
    file named ``location`` in the *current* directory, which made a second run in the same folder fail."""
    from onnx.external_data_helper import _get_initializer_tensors, set_external_data

    for tensor in _get_initializer_tensors(model):
        if tensor.HasField("raw_data") and len(tensor.raw_data) >= size_threshold:
            set_external_data(tensor, location)


def save_ort_optimized(model: Path, path: Path, threads: int | None = None) -> Path | None:
    """Write what onnxruntime makes of ``model`` at ``ORT_ENABLE_ALL`` on the CPU provider, so that sessions
    start from it without optimising again (faster session creation, measured in ``benchmarks/PROFILE.md``).
    onnxruntime warns that such a file can hold layouts specific to the CPU it was made on.

    When ``model`` keeps its weights in ``<name>.data``, so does the optimized model, in ``<path name>.data``
    beside ``path`` (returned; None for one file)."""
    import onnxruntime as ort

    from bnfold.verify.runners import session_options

    options = session_options("all", threads)
    options.optimized_model_filepath = str(path)
    data = None
    if model.with_name(model.name + ".data").exists():
        data = path.with_name(path.name + ".data")
        options.add_session_config_entry("session.optimized_model_external_initializers_file_name", data.name)
        options.add_session_config_entry("session.optimized_model_external_initializers_min_size_in_bytes", "1024")
    try:
        ort.InferenceSession(str(model), sess_options=options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own error types
        raise ExportError(f"onnxruntime could not save an optimized model: {one_line(exc)}") from exc
    return data
