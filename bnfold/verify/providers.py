"""Which onnxruntime execution providers to test, and a note for each one asked for but missing.

CPU is always tested. CUDA is tested when asked for ("cuda") or by default ("auto") if this onnxruntime
build has it; otherwise the results are CPU only and a note says why.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import onnxruntime as ort

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"

CUDA_MISSING = "CUDA not available: onnxruntime-gpu is not installed or no GPU is visible; CPU results only"

_ALIASES = {"cpu": CPU, "cuda": CUDA, "gpu": CUDA}


@dataclass(frozen=True)
class ProviderSelection:
    """The providers to run (each on its own, CPU first) and notes on those asked for but unavailable."""

    providers: tuple[str, ...]
    notes: tuple[str, ...] = ()

    @property
    def cuda(self) -> bool:
        return CUDA in self.providers


def available_providers() -> list[str]:
    """The execution providers of the installed onnxruntime build."""
    return list(ort.get_available_providers())


def select_providers(requested: str | Sequence[str] = "auto") -> ProviderSelection:
    """Resolve ``requested`` ("auto", "cpu", "cuda", provider names, a comma list) against what is available.

    "auto" means CPU plus CUDA when available. Nothing unavailable raises: it is left out with a note,
    so a report made on a machine without a GPU says so instead of failing.
    """
    wanted = _expand(requested)
    available = available_providers()
    chosen = [CPU] + [p for p in wanted if p != CPU and p in available]
    notes = [_missing_note(p) for p in wanted if p not in available]
    return ProviderSelection(tuple(dict.fromkeys(chosen)), tuple(notes))


def require_providers(requested: str | Sequence[str]) -> None:
    """Raise :class:`~bnfold.errors.InputSpecError` when a provider named explicitly (not through "auto")
    is not available: the user asked for it, so results without it would answer another question."""
    from bnfold.errors import InputSpecError

    names = [item.strip() for item in (requested.split(",") if isinstance(requested, str) else requested)]
    available = available_providers()
    for name in names:
        if name.lower() in ("", "auto"):
            continue
        provider = _ALIASES.get(name.lower(), name)
        if provider not in available:
            raise InputSpecError(
                f"--providers {name}: {provider} is not available in this onnxruntime build "
                f"({', '.join(available)}); use --providers auto to take CUDA only where there is one"
            )


def _expand(requested: str | Sequence[str]) -> list[str]:
    if isinstance(requested, str):
        requested = requested.split(",")
    wanted: list[str] = []
    for item in requested:
        key = item.strip().lower()
        if not key:
            continue
        if key == "auto":
            wanted += [CPU, CUDA]
        else:
            wanted.append(_ALIASES.get(key, item.strip()))
    return list(dict.fromkeys(wanted))


def _missing_note(provider: str) -> str:
    if provider == CUDA:
        return CUDA_MISSING
    return f"{provider} not available in this onnxruntime build ({', '.join(available_providers())}); skipped"
