"""``convert``: load → fold → export → verify → bench → report, the whole job in one call.

:func:`convert` sequences the stages and writes the outputs (atomically, once nothing but parity can fail);
:func:`inspect_model` stops after the fold. The two ways to a folded model live in :mod:`.paths`, the
parity and latency glue in :mod:`.checks`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import onnx
import torch
from torch import nn

from bnfold._entry import make_callable
from bnfold.convert import plan, saved_inputs
from bnfold.convert.checks import (
    Batches,
    bench_stage,
    graph_dims,
    ignored_batches,
    parity_batches,
    parity_settings,
    verify_stage,
)
from bnfold.convert.config import BenchConfig, ConvertConfig, ExportConfig, LoadConfig, ParityConfig
from bnfold.convert.inputs import resolve_inputs
from bnfold.convert.paths import ONNX_LEVEL, Converted, convert_onnx_level, convert_torch
from bnfold.convert.plan import Targets, output_paths
from bnfold.convert.sections import fold_section, model_section, onnx_inputs, onnx_section
from bnfold.errors import InputSpecError
from bnfold.export import DEFAULT_OPSET, annotate, check, external_data_path
from bnfold.fold.records import BnRecord, summarise
from bnfold.library_logs import captured_logs, caught_warnings
from bnfold.load import LoadedModel, from_module, load_model
from bnfold.progress import ProgressCallback, Stages
from bnfold.report import Report, new_report
from bnfold.report.check import overall_verdict
from bnfold.verify.providers import require_providers

__all__ = [
    "BenchConfig",
    "ConvertConfig",
    "ConvertResult",
    "ExportConfig",
    "LoadConfig",
    "ParityConfig",
    "convert",
    "inspect_model",
    "output_paths",
    "resolve_inputs",
]


@dataclass
class ConvertResult:
    """What ``convert`` produced; truthy when parity passed.

    ``report`` is the typed :class:`~bnfold.report.Report` written as ``report_path`` (``report.verdict``,
    ``report.parity.checks``, ...); ``report.to_dict()`` is its JSON data, ``report.to_json()`` its text,
    and ``report["parity"]["checks"]`` still reads the JSON data as it did when the report was a dict.
    """

    report: Report
    onnx_path: Path
    report_path: Path | None
    converted: Converted | None = None
    written: list[Path] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return self.report.verdict.passed

    @property
    def records(self) -> list[BnRecord]:
        return self.converted.records if self.converted else []

    def __bool__(self) -> bool:
        return self.passed


def _as_loaded(model: str | Path | nn.Module | LoadedModel, example_inputs: Any, config: ConvertConfig) -> LoadedModel:
    if isinstance(model, LoadedModel):
        return model
    if isinstance(model, nn.Module):
        return from_module(model, example_inputs)
    return load_model(
        Path(model),
        factory=config.model,
        factory_args=dict(config.model_args),
        trust_code=config.trust_code,
    )


def fold_and_export(
    loaded: LoadedModel, inputs: tuple[torch.Tensor, ...], config: ConvertConfig, scratch: Path | None = None
) -> Converted:
    """The fold (and export) by the path the model's format takes; the model written has the opset asked for.
    ``scratch``: a folder beside the output for the exported weights (see :func:`export_folded`)."""
    opset = config.opset or DEFAULT_OPSET
    if loaded.format in ONNX_LEVEL:
        if config.recalibrate is not None:
            raise InputSpecError(
                f"--recalibrate needs a PyTorch model: a {loaded.format} model is folded on its ONNX graph, "
                "where BatchNorm statistics cannot be re-estimated"
            )
        converted = convert_onnx_level(loaded, inputs, opset, config)
    else:
        converted = convert_torch(loaded, inputs, opset, config, scratch)
    check_opset(converted.exported, config.opset)
    if config.input_names or config.output_names:
        from bnfold.export import rename_io

        rename_io(converted.exported.model, config.input_names, config.output_names)
    return converted


def check_opset(exported: Any, requested: int | None) -> None:
    """Record the opset the model really has; :class:`ExportError` when it is not the one asked for."""
    from bnfold.errors import ExportError

    actual = next((o.version for o in exported.model.opset_import if o.domain in ("", "ai.onnx")), exported.opset)
    exported.opset = actual
    if requested is not None and actual != requested:
        how = "an ONNX input keeps its own opset" if exported.exporter.startswith("none") else "the exporter wrote it"
        raise ExportError(
            f"--opset {requested}: the model would have opset {actual} ({how}); "
            f"give --opset {actual}, or leave --opset out"
        )


def convert(
    model: str | Path | nn.Module | LoadedModel,
    config: ConvertConfig | None = None,
    *,
    example_inputs: tuple[torch.Tensor, ...] | None = None,
    progress: ProgressCallback | None = None,
) -> ConvertResult:
    """Fold, export, verify and time ``model``; write the ONNX file and the reports.

    Raises a :class:`bnfold.errors.BnfoldError` for bad input (nothing is written then). A parity failure
    is not an exception: the result, and the report written, say ``passed: false``. The outputs replace
    those of a previous run as one set (:class:`bnfold.outputs.OutputSet`). ``progress`` is called with a
    :class:`bnfold.progress.ProgressEvent` as each stage starts, advances and ends. What torch and the ONNX
    libraries log meanwhile goes into the report's ``warnings[]``, not to the terminal.
    """
    from bnfold.outputs import OutputSet, check_plan, out_of_space_said

    config = config or ConvertConfig()
    stages = Stages(progress)
    source = Path(model) if isinstance(model, (str, Path)) else getattr(model, "path", None)
    targets = plan.Targets.of(source, config)
    with saved_inputs.directory(config.save_inputs):
        writes = targets.writes()
        check_plan(writes, {**plan.model_reads("the input file itself", source), **plan.option_reads(config)})
        plan.check_report_name(config.report)
        require_providers(config.providers)
        with OutputSet(list(writes.values())) as outputs, captured_logs() as logs:
            with stages.stage("load", f"loading {source or 'the model'}"):
                loaded = _as_loaded(model, example_inputs, config)
                inputs = resolve_inputs(loaded, config)
            run = Run(loaded, inputs, config, dataclasses.replace(targets, outputs=outputs), stages)
            with out_of_space_said(targets.onnx):
                return _convert(run, logs)


@dataclass(frozen=True)
class Run:
    """One conversion under way: the model loaded and its example inputs, the options, where the outputs go
    (and the set that stages them), and the progress of its stages."""

    loaded: LoadedModel
    inputs: tuple[torch.Tensor, ...]
    config: ConvertConfig
    targets: Targets
    stages: Stages


def _convert(run: Run, logs: list[str]) -> ConvertResult:
    """The stages after loading. Every output is written into its staging folder first -- the ONNX file
    checked, verified and timed from there -- and the whole set moved into place at the end."""
    report = new_report()
    loaded, inputs, config, targets = run.loaded, run.inputs, run.config, run.targets
    with run.stages.stage("fold+export", "folding BatchNorms and exporting to ONNX"):
        converted = fold_and_export(loaded, inputs, config, targets.stage(targets.onnx).parent)
        report.model = model_section(loaded, inputs, converted.notes, converted.exported.model)
        report.fold = fold_section(converted, config.affine_form)
        batches = parity_batches(inputs, config.parity, graph_dims(converted.exported.model))
        saved = _saved(run, converted, report)
    _check_parity(run, converted, batches, report, saved)
    if _export_broke_parity(converted, report, config):
        saved = _export_again(run, converted, report)
        _check_parity(run, converted, batches, report, saved)
    report.warnings.extend(converted.exported.warnings)
    if config.bench:
        _bench(run, converted, report, saved[0])
    with run.stages.stage("reports", f"writing {targets.onnx}" + (" and the reports" if targets.report else "")):
        from bnfold.report.environment import capture_environment

        report.warnings.extend(w for w in logs if w not in report.warnings)
        report.environment = capture_environment()
        report.verdict = overall_verdict(report)
        written = _write(saved[0], saved[1], report, targets)
    return ConvertResult(report, targets.onnx, targets.report, converted, written)


def _export_again(run: Run, converted: Converted, report: Report) -> Saved:
    """Export the folded module with the dynamo exporter (the TorchScript exporter's output failed parity)
    and save it in place of the first export."""
    with run.stages.stage(
        "fold+export", "exporting again with the dynamo exporter: the TorchScript exporter's output failed parity"
    ):
        from bnfold.export import export_module

        converted.exported = export_module(converted.folded, run.inputs, opset=run.config.opset or DEFAULT_OPSET)
        check_opset(converted.exported, run.config.opset)
        converted.exported.warnings.insert(
            0,
            "exported with the dynamo exporter: the TorchScript exporter's output failed parity at the export stage",
        )
        return _saved(run, converted, report)


def _bench(run: Run, converted: Converted, report: Report, folded: Path) -> None:
    """The latency stage: ``report.latency`` and ``report.speedup``, the folded model timed from ``folded``."""
    ignored = ignored_batches(converted, run.inputs, run.config.batches)
    with run.stages.stage("latency", "measuring latency"), caught_warnings() as skipped:
        if ignored:  # said as the latency stage starts, under its name
            report.warnings.append(ignored)
            run.stages.note(ignored)
        report.latency, report.speedup = bench_stage(
            run.loaded, converted, run.inputs, run.config.timing, folded, run.stages.steps
        )
    for note in skipped:  # a provider that cannot run the model, or fell back to another
        report.warnings.append(note)
        run.stages.note(note)


Saved = tuple[Path, Path | None, Path | None]
"""The staged ONNX file, where its external data will go, the staged ``--save-optimized`` file."""


def _saved(run: Run, converted: Converted, report: Report) -> Saved:
    """Annotate the exported model, save it into its staging folder, check it and fill ``report.onnx``."""
    from bnfold.export import save

    targets, external_data = run.targets, run.config.external_data
    annotate(
        converted.exported.model,
        {"bnfold.version": report.bnfold_version, "bnfold.fold": _fold_metadata(converted.records)},
    )
    data_path = external_data_path(converted.exported.model, targets.onnx, external_data)
    report.onnx = onnx_section(converted, targets.onnx, data_path)
    folded = targets.stage(targets.onnx)
    targets.stage(plan.data_file(targets.onnx)).unlink(missing_ok=True)  # an earlier export's
    report.onnx.external_data_sha256 = save(
        converted.exported.model, folded, external_data=external_data, in_place=True, weights=converted.exported.weights
    )
    if data_path is not None:  # the weights moved to disk; protobuf frees their memory with the message only
        converted.exported.model = onnx.load(str(folded), load_external_data=False)
    converted.exported.release_files()
    check(folded)
    optimized = targets.staged(targets.optimized)
    if optimized is not None and targets.optimized is not None:
        from bnfold.export import save_ort_optimized

        run.stages.note("saving the onnxruntime-optimized model")
        targets.stage(plan.data_file(targets.optimized)).unlink(missing_ok=True)
        save_ort_optimized(folded, optimized, run.config.threads)
        report.onnx.optimized_path = str(targets.optimized)
    return folded, data_path, optimized


def _check_parity(run: Run, converted: Converted, batches: Batches, report: Report, saved: Saved) -> None:
    """The parity stage: ``report.parity`` for the saved model (its inputs and reference outputs saved
    into ``--save-inputs`` as they are computed)."""
    config, stages = run.config.parity, run.stages
    writer = None
    if config.save_inputs is not None:
        graph = converted.exported.model.graph
        names = [name for name, _ in onnx_inputs(converted.exported.model)]
        writer = saved_inputs.InputsWriter(
            Path(config.save_inputs), run.targets.outputs, batches, names, [o.name for o in graph.output]
        )
    with stages.stage("parity", f"checking parity on {len(batches)} input batch{'es' if len(batches) > 1 else ''}"):
        settings = parity_settings(batches, config, stages.steps, writer)
        report.parity = parity = verify_stage(run.loaded, converted, settings, config, saved[0], saved[2])
    if writer is not None:
        writer.finish(parity.reference)


def _export_broke_parity(converted: Converted, report: Report, config: ConvertConfig) -> bool:
    """Whether ``exporter="auto"`` should try the dynamo exporter: the folded PyTorch model passed and the
    TorchScript exporter's output of it did not."""
    from bnfold.export import TORCHSCRIPT
    from bnfold.verify.report import EXPORT

    return (
        config.exporter == "auto"
        and converted.refold is not None
        and converted.exported.exporter == TORCHSCRIPT
        and report.parity is not None
        and not report.parity.passed
        and report.parity.failed_stage == EXPORT
    )


def inspect_model(
    model: str | Path | nn.Module | LoadedModel,
    config: ConvertConfig | None = None,
    *,
    example_inputs: tuple[torch.Tensor, ...] | None = None,
) -> list[BnRecord]:
    """Every BatchNorm of the model and its fate, without writing anything (``bnfold inspect``). How the
    model is read is ``config``, as for :func:`convert`: ``input_shapes``, ``model`` and ``model_args`` (the
    code that builds a state_dict's module), ``trust_code``; ``example_inputs`` feed an ``nn.Module``."""
    config = config or ConvertConfig()
    loaded = _as_loaded(model, example_inputs, config)
    inputs = resolve_inputs(loaded, config) if loaded.format != "onnx" else ()
    if loaded.format == "onnx":
        from bnfold.convert.onnx_input import check_onnx_input
        from bnfold.fold.onnx import fold_onnx

        check_onnx_input(loaded.onnx_model, loaded.path)  # type: ignore[arg-type]
        return fold_onnx(loaded.onnx_model).records  # type: ignore[arg-type]
    return (
        fold_and_export(loaded, inputs, config).records if loaded.format in ONNX_LEVEL else _fold_only(loaded, inputs)
    )


def _fold_only(loaded: LoadedModel, inputs: tuple[torch.Tensor, ...]) -> list[BnRecord]:
    from bnfold.fold import fold

    return fold(loaded.exported or loaded.module, inputs).records  # type: ignore[arg-type]


def _fold_metadata(records: list[BnRecord]) -> dict[str, Any]:
    counts = summarise(records)
    return {
        "found": counts["found"],
        "folded": counts["folded"],
        "layers": [{"name": r.name, "action": r.action, "into": r.into} for r in records],
    }


def _write(staged: Path, data_path: Path | None, report: Report, targets: Targets) -> list[Path]:
    """Hash the staged ONNX file (its external data was hashed as it was written), stage the reports, and move
    the set into place."""
    from bnfold.load.loaded import file_sha256
    from bnfold.report import write_report_files

    report.onnx.sha256 = file_sha256(staged)
    report.onnx.size_bytes = staged.stat().st_size
    if data_path is not None:
        report.onnx.size_bytes += targets.stage(data_path).stat().st_size
    if targets.report is not None:
        write_report_files(report, targets.stage(targets.report))
    return targets.commit()


make_callable(__name__, convert)  # bnfold.convert(model, config) calls convert(); bnfold.convert.many stays reachable
