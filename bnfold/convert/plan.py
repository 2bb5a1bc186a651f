"""Which files a run reads and which it writes, named as the user named them: the input to
:func:`bnfold.outputs.check_plan`, checked before any work starts."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

from bnfold.report import companion_paths


def data_file(path: Path) -> Path:
    """Where bnfold writes the external data of the ONNX file ``path``."""
    return path.with_name(path.name + ".data")


def convert_writes(onnx_path: Path, report: Path | None, optimized: Path | None) -> dict[str, Path]:
    """Every file ``convert`` may write, by label. A ``.data`` file is reserved even when the model ends
    up as one file: a previous run's is then removed, as it belongs to the previous set."""
    writes = {"-o": onnx_path, "the external data of -o": data_file(onnx_path)}
    writes.update(report_writes(report))
    if optimized is not None:
        writes["--save-optimized"] = optimized
        writes["the external data of --save-optimized"] = data_file(optimized)
    return writes


def report_writes(report: Path | None) -> dict[str, Path]:
    """The JSON report and its Markdown and HTML companions, by label."""
    if report is None:
        return {}
    markdown, html = companion_paths(report)
    return {"--report": report, "the Markdown report": markdown, "the HTML report": html}


def model_reads(what: str, path: Path | None) -> dict[str, Path]:
    """A model file (``what``: how to call it, "the input file itself") and, for an ONNX file, the external
    data files it names."""
    if path is None:
        return {}
    reads = {what: Path(path)}
    owner = what.removesuffix(" itself").removeprefix("the ")
    for i, extra in enumerate(onnx_external_files(Path(path))):
        reads[f"the external data of {owner}" + (f" #{i + 1}" if i else "")] = extra
    return reads


def option_reads(config: Any) -> dict[str, Path]:
    """``--data``, ``--recalibrate`` and the ``--model`` factory's source file."""
    reads = {}
    for option in ("data", "recalibrate"):
        path = getattr(config, option, None)
        if path is not None:
            reads[f"the --{option} file"] = Path(path)
    source = factory_file(getattr(config, "model", None))
    if source is not None:
        reads["the source of --model"] = source
    return reads


def onnx_external_files(path: Path) -> list[Path]:
    """The external data files an ONNX model names (none for any other file, or one that does not parse:
    the loader reports that)."""
    from bnfold.load.onnx_files import NotOnnx, parse_onnx

    try:
        with path.open("rb") as handle:
            head = handle.read(1)
        model = parse_onnx(path, head)
    except (OSError, NotOnnx, ValueError):
        return []
    from onnx.external_data_helper import _get_all_tensors

    locations = {
        entry.value for tensor in _get_all_tensors(model) for entry in tensor.external_data if entry.key == "location"
    }
    return [path.parent / location for location in sorted(locations)]


def factory_file(spec: str | None) -> Path | None:
    """The source file of ``--model package.module:callable``, found without running it (its parent
    packages are imported); None when it cannot be found (the loader says why)."""
    if not spec or ":" not in spec:
        return None
    from bnfold.load.factory import cwd_importable

    cwd_importable()
    try:
        found = importlib.util.find_spec(spec.partition(":")[0])
    except Exception:  # a parent package that fails to import: the loader reports it
        return None
    origin = found.origin if found is not None else None
    return Path(origin) if origin and Path(origin).is_file() else None
