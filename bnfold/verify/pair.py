"""``bnfold verify`` for models the user already has: any original against any candidate.

``bnfold verify ORIGINAL CANDIDATE``: the candidate is an ONNX file (checked at the ``export`` stage against
the original in PyTorch, then ``ort-optimization``) or a PyTorch model (checked at the ``fold`` stage).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch

from bnfold.convert import saved_inputs
from bnfold.convert.checks import Batches, parity_batches, parity_settings
from bnfold.convert.config import ConvertConfig
from bnfold.convert.onnx_input import check_loaded_onnx
from bnfold.errors import InputSpecError
from bnfold.export import count_ops
from bnfold.library_logs import captured_logs
from bnfold.load import LoadedModel, load_model
from bnfold.load.inputs import dims_text, fits
from bnfold.load.loaded import loaded_source
from bnfold.outputs import OutputSet
from bnfold.progress import ProgressCallback, Stages
from bnfold.report import OnnxSection, ParitySection, Report, new_report
from bnfold.verify.chain import ParityChain, parity_chain
from bnfold.verify.providers import require_providers, select_providers
from bnfold.verify.report import PROVIDER
from bnfold.verify.runners import Runner


def _inputs(loaded: LoadedModel, config: ConvertConfig) -> tuple[torch.Tensor, ...]:
    from bnfold.convert import resolve_inputs

    return resolve_inputs(loaded, config)


def _chain(original: LoadedModel, candidate: LoadedModel, config: ConvertConfig) -> ParityChain:
    """The parity chain from the original to the candidate: an ONNX candidate at the export stage (then
    ort-optimization and, when selected, CUDA), a PyTorch one at the fold stage. Two ONNX models' outputs are
    matched by name (as code reading them by name sees them), by position when their names differ."""
    first = loaded_source(original) if original.onnx_model is not None else original.module
    if candidate.format != "onnx":
        return parity_chain(first, folded=candidate.module, candidate=True, lazy=False)  # type: ignore[arg-type]
    providers = select_providers(",".join(config.providers))
    model = loaded_source(candidate)
    chain = parity_chain(first, model, providers=providers, threads=config.threads, candidate=True, lazy=False)  # type: ignore[arg-type]
    if original.onnx_model is None or candidate.onnx_model is None:
        return chain
    wanted = [o.name for o in original.onnx_model.graph.output]
    given = [o.name for o in candidate.onnx_model.graph.output]
    if sorted(wanted) != sorted(given):
        if len(wanted) > 1:
            chain.notes.append(
                f"outputs compared by position: the candidate's ({', '.join(given)}) are not named as the "
                f"original's ({', '.join(wanted)})"
            )
        return chain
    if wanted != given:
        order = [given.index(name) for name in wanted]
        chain.candidates[:] = [
            dataclasses.replace(c, runner=_ByName(c.runner, order, wanted)) for c in chain.candidates
        ]
    return chain


@dataclass
class _ByName:
    """A runner whose outputs are put in the original's order, matched by name."""

    runner: Runner
    order: list[int]
    output_names: list[str]

    def __call__(self, inputs: tuple[np.ndarray, ...]) -> list[np.ndarray]:
        outputs = self.runner(inputs)
        return [outputs[i] for i in self.order]

    def release(self) -> None:
        release = getattr(self.runner, "release", None)
        if callable(release):
            release()


def verify_pair(
    original_path: str | Path,
    candidate_path: str | Path,
    config: ConvertConfig,
    progress: ProgressCallback | None = None,
    outputs: OutputSet | None = None,
) -> Report:
    """A report comparing a candidate model with the original on the parity matrix; what torch and the ONNX
    libraries log meanwhile goes into its ``warnings[]``. ``--save-inputs`` needs ``outputs``, the
    :class:`~bnfold.outputs.OutputSet` its files are staged in (:func:`verify_and_report` makes it)."""
    with captured_logs() as logs:
        report = _verify_pair(Path(original_path), Path(candidate_path), config, Stages(progress), outputs)
    report.warnings.extend(w for w in logs if w not in report.warnings)
    return report


def _verify_pair(
    original_path: Path, candidate_path: Path, config: ConvertConfig, stages: Stages, outputs: OutputSet | None
) -> Report:
    require_providers(config.providers)
    trust_code = config.trust_code
    args = dict(config.model_args)
    with stages.stage("load", f"loading {original_path} and {candidate_path}"):
        original = load_model(original_path, factory=config.model, factory_args=args, trust_code=trust_code)
        candidate = load_model(candidate_path, factory=config.model, factory_args=args, trust_code=trust_code)
        check_loaded_onnx(original, candidate)
        if original.format == "onnx" and candidate.format != "onnx":
            raise InputSpecError("give the original model first and the candidate second")
        inputs = _inputs(original, config)
        chain = _chain(original, candidate, config)
        candidates, notes = chain.candidates, chain.notes
        _check_output_keys(config, original, candidate)
        names = candidates[-1].runner.output_names if hasattr(candidates[-1].runner, "output_names") else None
        batches = parity_batches(inputs, config.parity, _declared_dims(original, candidate, inputs))
        _check_fits(batches, original, candidate)
    writer = _inputs_writer(config, outputs, batches, original, candidate)
    with stages.stage("parity", f"checking parity on {len(batches)} input batch{'es' if len(batches) > 1 else ''}"):
        parity = chain.run(parity_settings(batches, config.parity, stages.steps, writer), names)
    if writer is not None:
        writer.finish(chain.reference_name)
    parity.notes = notes
    cuda_used = any(c.stage == PROVIDER for c in candidates)
    parity.cuda = {
        "available": cuda_used,
        "note": "CUDA results included"
        if cuda_used
        else (next((n for n in notes if "CUDA" in n), "CUDA not requested")),
    }
    return _pair_report(original, candidate, inputs, ParitySection.of(parity))


def verify_and_report(
    original_path: str | Path,
    candidate_path: str | Path,
    config: ConvertConfig,
    report_path: Path | None = None,
    progress: ProgressCallback | None = None,
) -> Report:
    """:func:`verify_pair`, writing the report (JSON, Markdown, HTML) to ``report_path`` when given --
    after checking, before any work, that none of them is a file the run reads or another report."""
    from bnfold.convert import plan
    from bnfold.outputs import OutputSet, check_plan
    from bnfold.report import write_report_files

    writes = plan.report_writes(report_path)
    if config.save_inputs is not None:
        writes.update(saved_inputs.planned(Path(config.save_inputs), config.parity.batch_count))
    reads = {
        **plan.model_reads("the original model", Path(original_path)),
        **plan.model_reads("the candidate model", Path(candidate_path)),
    }
    with saved_inputs.directory(config.save_inputs):
        check_plan(writes, {**reads, **plan.option_reads(config)})
        plan.check_report_name(report_path)
        with OutputSet(list(writes.values())) as outputs:
            result = verify_pair(original_path, candidate_path, config, progress, outputs)
            if writes:
                written = f"{report_path} (+ .md, .html)" if report_path is not None else "the saved inputs"
                with Stages(progress).stage("reports", f"writing {written}"):
                    if report_path is not None:
                        write_report_files(result, outputs.stage(report_path))
                    outputs.commit()
    return result


def _inputs_writer(
    config: ConvertConfig, outputs: OutputSet | None, batches: Batches, original: LoadedModel, candidate: LoadedModel
) -> saved_inputs.InputsWriter | None:
    """The ``--save-inputs`` writer, named by the ONNX model among the two (else ``input_0``, ...)."""
    if config.save_inputs is None:
        return None
    if outputs is None:
        raise ValueError("--save-inputs needs an OutputSet to stage its files: use verify_and_report")
    from bnfold.convert.sections import onnx_inputs

    graph = candidate.onnx_model or original.onnx_model
    inputs = [name for name, _ in onnx_inputs(graph)]
    names = [o.name for o in graph.graph.output] if graph is not None else []
    return saved_inputs.InputsWriter(Path(config.save_inputs), outputs, batches, inputs, names)


def _declared_dims(original: LoadedModel, candidate: LoadedModel, inputs: tuple[torch.Tensor, ...]) -> Any:
    """The input dimensions the models declare: an ONNX graph's, else the example's (batch free when the
    original's batch dimension is dynamic)."""
    from bnfold.convert.checks import graph_dims

    for model in (candidate, original):
        if model.onnx_model is not None:
            return graph_dims(model.onnx_model)
    return [(None if original.dynamic_batch else t.shape[0], *t.shape[1:]) for t in inputs]


def _check_fits(batches: Batches, original: LoadedModel, candidate: LoadedModel) -> None:
    """Every input batch fits the dimensions each ONNX model or torch.export archive among the two fixes: one
    that does not is bad input (exit 2), not a candidate failing parity."""
    _check_alike(original, candidate)
    for role, model in (("the original", original), ("the candidate", candidate)):
        inputs = _declared_inputs(model)
        if inputs is None:
            continue
        for source, arrays in batches:
            if len(arrays) != len(inputs):
                raise InputSpecError(
                    f"{role} ({model.path}) takes {len(inputs)} input(s), the {source} batch has {len(arrays)}: "
                    "give two models that take the same inputs"
                )
        for index, declared in enumerate(inputs):
            for source, arrays in batches:
                shape = tuple(arrays[index].shape)
                if not fits(declared, shape):
                    wanted, got = dims_text(declared), "x".join(map(str, shape)) or "a scalar"
                    example = ",".join("1" if d is None else str(d) for d in declared)
                    raise InputSpecError(
                        f"{role} ({model.path}) takes input {index} of shape {wanted}; the {source} batch is {got}: "
                        f"give --input-shape {example}, or a model that takes the same inputs"
                    )


def _check_alike(original: LoadedModel, candidate: LoadedModel) -> None:
    """Two models that declare their inputs take inputs of the same count and rank, and agree on each size
    both fix: else no batch fits both."""
    first, second = _declared_inputs(original), _declared_inputs(candidate)
    if first is None or second is None:
        return
    clash = len(first) != len(second) or any(
        len(a) != len(b) or any(x is not None and y is not None and x != y for x, y in zip(a, b, strict=True))
        for a, b in zip(first, second, strict=False)
    )
    if clash:
        shapes = [", ".join(dims_text(dims) for dims in inputs) for inputs in (first, second)]
        raise InputSpecError(
            f"the original ({original.path}) takes inputs of shape {shapes[0]}, the candidate ({candidate.path}) "
            f"{shapes[1]} (? dynamic): no input fits both; give two models of the same inputs"
        )


def _declared_inputs(model: LoadedModel) -> list[list[int | None]] | None:
    """The dimensions of each input an ONNX model or torch.export archive fixes (None: dynamic); None when
    the model does not declare them."""
    from bnfold.convert.checks import graph_dims
    from bnfold.convert.inputs import program_dims

    if model.onnx_model is not None:
        return [list(dims) for dims in graph_dims(model.onnx_model)]
    return program_dims(model.exported) if model.exported is not None else None


def _check_output_keys(config: ConvertConfig, original: LoadedModel, candidate: LoadedModel) -> None:
    """``--tolerance`` names outputs an ONNX model among the two has (not checked for two PyTorch models)."""
    from bnfold.verify.tolerance import check_output_keys

    for model in (candidate, original):
        if model.onnx_model is not None:
            names = [o.name for o in model.onnx_model.graph.output]
            check_output_keys([key for key, _, _ in config.tolerances], names)
            return


def _pair_report(
    original: LoadedModel, candidate: LoadedModel, inputs: tuple[torch.Tensor, ...], parity: ParitySection
) -> Report:
    """The report of a verify run: no fold, the candidate in the ``onnx`` section."""
    from bnfold.convert.sections import model_section
    from bnfold.report.check import overall_verdict
    from bnfold.report.environment import capture_environment

    report = new_report()
    report.model = model_section(original, inputs, [], candidate.onnx_model or original.onnx_model)
    report.onnx = _candidate_section(candidate)
    report.parity = parity
    report.environment = capture_environment()
    report.verdict = overall_verdict(report)
    return report


def _candidate_section(candidate: LoadedModel) -> OnnxSection:
    """The candidate checked: its file, hash and format, and for an ONNX file its opset, nodes and size."""
    section = OnnxSection(path=str(candidate.path), sha256=candidate.sha256, format=candidate.format)
    if candidate.onnx_model is not None:
        model: onnx.ModelProto = candidate.onnx_model
        section.opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
        section.batchnorm_nodes = count_ops(model, "BatchNormalization")
        section.nodes = len(model.graph.node)
        section.size_bytes = candidate.path.stat().st_size if candidate.path else None
    return section


__all__ = ["verify_and_report", "verify_pair"]
