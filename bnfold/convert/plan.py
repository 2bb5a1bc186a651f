"""Which files a run reads and which it writes, named as the user named them: the input to
:func:`bnfold.outputs.check_plan`, checked before any work starts."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from bnfold.convert import saved_inputs
from bnfold.errors import OutputError
from bnfold.report import companion_paths

if TYPE_CHECKING:
    from bnfold.convert.config import ConvertConfig
    from bnfold.outputs import OutputSet


@dataclass(frozen=True)
class Targets:
    """One run's outputs as the user named them -- the ONNX file, the reports, ``--save-optimized`` and
    ``--save-inputs`` -- and, once staging has started, the :class:`~bnfold.outputs.OutputSet` that stages them."""

    onnx: Path
    report: Path | None = None
    optimized: Path | None = None
    save_inputs: Path | None = None
    batch_count: int = 0  # the parity batches, one ``--save-inputs`` pair of files each
    outputs: OutputSet | None = None
    named: frozenset[str] = frozenset()  # the options that named a path ("-o", "--report"), for messages

    @classmethod
    def of(cls, source: Path | None, config: ConvertConfig) -> Targets:
        """The outputs of converting ``source`` (None: a model in memory) with ``config``."""
        onnx_path, report = output_paths(source, config)
        optimized = Path(config.save_optimized) if config.save_optimized else None
        report_path = report if config.write_reports else None
        named = frozenset(o for o, given in (("-o", config.output), ("--report", config.report)) if given)
        return cls(onnx_path, report_path, optimized, config.save_inputs, config.parity.batch_count, named=named)

    def writes(self) -> dict[str, Path]:
        """Every file the run may write, by label (for :func:`bnfold.outputs.check_plan`)."""
        writes = convert_writes(self.onnx, self.report, self.optimized, self.named)
        if self.save_inputs is not None:
            writes.update(saved_inputs.planned(Path(self.save_inputs), self.batch_count))
        return writes

    def stage(self, target: Path) -> Path:
        """Where ``target`` is written until the set is moved into place."""
        return self._staging().stage(target)

    def staged(self, target: Path | None) -> Path | None:
        return None if target is None else self.stage(target)

    def commit(self) -> list[Path]:
        """Move the staged set into place; the paths written."""
        written: list[Path] = self._staging().commit()
        return written

    def _staging(self) -> OutputSet:
        if self.outputs is None:
            raise RuntimeError("the outputs are not staged yet: give the Targets an OutputSet first")
        return self.outputs


def output_paths(source: Path | None, config: ConvertConfig) -> tuple[Path, Path]:
    """The ONNX and report paths: ``model.onnx`` and ``model.report.json`` unless told otherwise."""
    if config.output is not None:
        onnx_path = Path(config.output)
    elif source is not None:
        onnx_path = source.with_suffix(".folded.onnx" if source.suffix == ".onnx" else ".onnx")
    else:
        raise OutputError("give an output path (-o model.onnx) when converting an in-memory model")
    report = Path(config.report) if config.report else onnx_path.with_name(onnx_path.stem + ".report.json")
    return onnx_path, report


def data_file(path: Path) -> Path:
    """Where bnfold writes the external data of the ONNX file ``path``."""
    return path.with_name(path.name + ".data")


def convert_writes(
    onnx_path: Path, report: Path | None, optimized: Path | None, named: frozenset[str] = frozenset({"-o", "--report"})
) -> dict[str, Path]:
    """Every file ``convert`` may write, by label: an option in ``named`` (one the user gave) by its name, a
    default path by what it is. A ``.data`` file is reserved even when the model ends up as one file: a
    previous run's is then removed, as it belongs to the previous set."""
    output = "-o" if "-o" in named else "the ONNX output"
    writes = {output: onnx_path, f"the external data of {output} {onnx_path}": data_file(onnx_path)}
    writes.update(report_writes(report, "--report" if "--report" in named else "the JSON report"))
    if optimized is not None:
        writes["--save-optimized"] = optimized
        writes[f"the external data of --save-optimized {optimized}"] = data_file(optimized)
    return writes


def report_writes(report: Path | None, label: str = "--report") -> dict[str, Path]:
    """The JSON report (as ``label``) and its Markdown and HTML companions, by label."""
    if report is None:
        return {}
    markdown, html = companion_paths(report)
    return {label: report, "the Markdown report": markdown, "the HTML report": html}


def check_report_name(report: Path | None, label: str = "--report") -> None:
    """A JSON report's path ends in ``.json`` (its ``.md`` and ``.html`` are named from it); checked after the
    plan, which says first what a path would overwrite."""
    if report is not None and Path(report).suffix.lower() != ".json":
        raise OutputError(
            f"{label} {report}: the report is JSON, with its .md and .html beside it; give a path ending in .json"
        )


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


def option_reads(config: ConvertConfig) -> dict[str, Path]:
    """``--data``, ``--recalibrate`` and the ``--model`` factory's source file."""
    reads = {}
    for option, path in (("data", config.data), ("recalibrate", config.recalibrate)):
        if path is not None:
            reads[f"the --{option} file"] = Path(path)
    source = factory_file(config.model)
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
