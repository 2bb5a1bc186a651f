"""What CPU this is, and how many threads a benchmark should use by default."""

from __future__ import annotations

import os
import platform
from pathlib import Path

CPUINFO = Path("/proc/cpuinfo")


def _cpuinfo(path: Path = CPUINFO) -> list[dict[str, str]]:
    """``/proc/cpuinfo`` as one dict per logical processor (empty where the file does not exist)."""
    try:
        text = path.read_text()
    except OSError:
        return []
    blocks = []
    for block in text.strip().split("\n\n"):
        fields = (line.split(":", 1) for line in block.splitlines() if ":" in line)
        blocks.append({k.strip(): v.strip() for k, v in fields})
    return blocks


def logical_cores() -> int:
    """Logical processors this process may run on (its affinity mask where the OS has one)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def physical_cores(path: Path = CPUINFO) -> int:
    """Physical cores: distinct (physical id, core id) pairs in /proc/cpuinfo, else half the logical
    processors (assuming two hardware threads per core); never more than :func:`logical_cores`, at least 1.
    """
    cores = {(b.get("physical id", "0"), b["core id"]) for b in _cpuinfo(path) if "core id" in b}
    count = len(cores) if cores else (os.cpu_count() or 2) // 2
    return max(1, min(count, logical_cores()))


def cpu_model(path: Path = CPUINFO) -> str:
    """The CPU's model name (from /proc/cpuinfo, else the platform module), or "unknown"."""
    for block in _cpuinfo(path):
        for key in ("model name", "Model", "Hardware", "cpu model"):
            if block.get(key):
                return block[key]
    return platform.processor() or platform.machine() or "unknown"


def default_threads() -> int:
    """The intra-op thread count benchmarks use unless told: one per physical core."""
    return physical_cores()
