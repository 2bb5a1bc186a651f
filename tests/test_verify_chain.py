"""The parity chain: which candidates each set of artifacts gives, their stages and stage checks.

Sessions are built when first run, so placeholder ONNX bytes do here (no candidate is run).
"""

from __future__ import annotations

import weakref
from pathlib import Path

import pytest
import torch
from conftest import MODELS
from torch import nn

from bnfold.verify.chain import CANDIDATE, OPTIMIZED, ORIGINAL_ORT, UNFOLDED, ParityChain, parity_chain
from bnfold.verify.matrix import FOLDED, ORIGINAL, ORT_ALL, ORT_OFF, REFERENCE
from bnfold.verify.providers import select_providers
from bnfold.verify.report import BASELINE, EXPORT, FOLD, ORT_OPTIMIZATION

MODULE = nn.Linear(3, 2)


def rows(chain: ParityChain) -> list[tuple[str, str, str | None]]:
    return [(c.name, c.stage, c.compare_against) for c in chain.candidates]


def test_pytorch_chain_is_the_standard_matrix() -> None:
    chain = parity_chain(
        MODULE, b"folded", folded=MODULE, optimized=Path("opt.onnx"), providers=select_providers("cpu")
    )
    assert chain.reference_name == REFERENCE
    assert rows(chain) == [
        (ORIGINAL, BASELINE, None),
        (FOLDED, FOLD, ORIGINAL),
        (ORT_OFF, EXPORT, FOLDED),
        (ORT_ALL, ORT_OPTIMIZATION, ORT_OFF),
        (OPTIMIZED, ORT_OPTIMIZATION, ORT_OFF),
    ]


def test_onnx_original_is_folded_in_onnx() -> None:
    chain = parity_chain(b"original", b"folded", optimized=Path("opt.onnx"))
    off = f"folded {ORT_OFF}"
    assert chain.reference_name == ORIGINAL_ORT
    assert rows(chain) == [
        (off, FOLD, None),
        (f"folded {ORT_ALL}", ORT_OPTIMIZATION, off),
        (OPTIMIZED, ORT_OPTIMIZATION, off),
    ]
    assert chain.notes == []


def test_unfolded_export_isolates_the_fold() -> None:
    chain = parity_chain(MODULE, b"folded", unfolded=b"unfolded")
    assert rows(chain) == [
        (ORIGINAL, BASELINE, None),
        (UNFOLDED, EXPORT, ORIGINAL),
        (ORT_OFF, FOLD, UNFOLDED),
        (ORT_ALL, ORT_OPTIMIZATION, ORT_OFF),
    ]


@pytest.mark.parametrize("original", [MODULE, b"original"], ids=["torch", "onnx"])
def test_candidate_onnx_is_checked_at_export(original: nn.Module | bytes) -> None:
    chain = parity_chain(original, b"candidate", candidate=True)
    against = ORIGINAL if isinstance(original, nn.Module) else None
    assert rows(chain)[-2:] == [(ORT_OFF, EXPORT, against), (ORT_ALL, ORT_OPTIMIZATION, ORT_OFF)]


def test_candidate_module_is_checked_at_fold() -> None:
    chain = parity_chain(MODULE, folded=MODULE, candidate=True, lazy=False)
    assert rows(chain) == [(ORIGINAL, BASELINE, None), (CANDIDATE, FOLD, ORIGINAL)]
    assert chain.reference_name == REFERENCE


def test_convert_lets_the_folded_module_go_before_the_reference_and_the_onnxruntime_sessions(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With latency off, the folded PyTorch module is released once its parity outputs are in, before any
    onnxruntime session is built; the parity results are those of a run that keeps it, and reading
    ``folded`` afterwards folds the model again."""
    from bnfold import ConvertConfig, convert
    from bnfold.convert import checks
    from bnfold.convert.paths import Converted
    from bnfold.verify import chain as chain_module

    events: list[str] = []
    folded: list[weakref.ref[torch.Tensor]] = []  # the folded weights (not shared with the original)
    real_session, real_release = chain_module.ort_runner, Converted.release_folded

    def session(*args: object, **kwargs: object) -> object:
        events.append("session" + (" beside the folded weights" if any(w() is not None for w in folded) else ""))
        return real_session(*args, **kwargs)  # type: ignore[arg-type]

    real_torch_runner = chain_module.torch_runner

    def runner(module: torch.nn.Module, dtype: torch.dtype = torch.float32) -> object:
        if dtype == torch.float64:
            events.append("reference")
        return real_torch_runner(module, dtype)

    def release(self: Converted) -> None:
        original = {t.data_ptr() for t in self.original.state_dict().values()}
        tensors = [t for t in self._folded.state_dict().values() if t.data_ptr() not in original]
        folded.extend(weakref.ref(t) for t in tensors)
        del tensors
        events.append("folded released")
        real_release(self)

    monkeypatch.setattr(chain_module, "ort_runner", session)
    monkeypatch.setattr(Converted, "release_folded", release)
    monkeypatch.setattr(chain_module, "torch_runner", runner)

    def parity(name: str) -> tuple[list[dict[str, object]], Converted]:
        result = convert(MODELS / "digits_cnn.pt2", ConvertConfig(output=tmp_path / f"{name}.onnx", bench=False))
        assert result.passed and result.converted is not None
        return result.report["parity"]["checks"], result.converted

    released, converted = parity("released")
    # the folded module runs first: neither the float64 reference nor a session is built beside it
    assert events.index("folded released") < events.index("reference") < events.index("session")
    assert folded and all(event in ("folded released", "reference", "session") for event in events)
    assert converted._folded is None and isinstance(converted.folded, torch.nn.Module)
    with monkeypatch.context() as patch:
        patch.setattr(checks, "_release_after_its_run", lambda chain, converted: None)
        kept, converted = parity("kept")
    assert converted._folded is not None
    assert released == kept
