"""The child processes of ``test_security.py``; nothing runs at import.

* ``python hostile_child.py controls JOBS.json``: the positive controls, loading each file with torch's
  own unsafe reader (``torch.export.load``, ``torch.load(weights_only=False)``, ``torch.jit.load``); the
  payloads leave their markers, the outcome of each load is written beside it;
* ``python hostile_child.py commands PLAN.json RESULTS.json``: bnfold commands and API calls run one after
  another in this process, each with its CPU time, the growth of the peak memory and a time limit.
"""

from __future__ import annotations

import json
import os
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch


def run_controls(jobs: list[dict[str, Any]]) -> None:
    """Load each file with torch's unsafe reader; the payloads leave their markers behind."""
    import logging

    logging.disable(logging.CRITICAL)
    warnings.simplefilter("ignore")
    loaders: dict[str, Callable[[str], Any]] = {
        "export": torch.export.load,
        "torch_load": lambda p: torch.load(p, weights_only=False),
        "torch_load_default": torch.load,  # weights_only unset: what TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD overrides
        "jit": torch.jit.load,
    }
    for job in jobs:
        saved_env = {k: os.environ.get(k) for k in job["env"]}
        os.environ.update(job["env"])
        outcome = "loaded"
        try:
            loaders[job["loader"]](job["path"])
        except BaseException as exc:  # noqa: BLE001 - a control reports, it does not stop
            outcome = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
        for key, value in saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        Path(job["outcome"]).write_text(outcome)


def _peak_rss_reset() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _status_kib(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


class _Alarm(BaseException):
    pass


def _run_one(job: dict[str, Any]) -> dict[str, Any]:
    """One bnfold command (``argv``) or API call (``api``) in this process, stdout/stderr caught at fd level."""
    import signal
    import tempfile
    import time

    from bnfold.cli import main

    sys.stdout.flush()
    sys.stderr.flush()
    saved_fds = os.dup(1), os.dup(2)
    out, err = tempfile.TemporaryFile(), tempfile.TemporaryFile()
    os.dup2(out.fileno(), 1)
    os.dup2(err.fileno(), 2)
    reset = _peak_rss_reset()
    before_rss = _status_kib("VmRSS")
    cpu = time.process_time()

    def alarm(_signum: int, _frame: Any) -> None:
        raise _Alarm

    signal.signal(signal.SIGALRM, alarm)
    signal.alarm(int(job.get("timeout", 30)))
    code: Any = 0
    try:
        if "argv" in job:
            main(job["argv"])
        else:
            _api(job["api"])
    except SystemExit as exc:
        code = exc.code
    except _Alarm:
        code = "timeout"
    except BaseException as exc:  # noqa: BLE001 - reported to the test
        code = f"{type(exc).__module__}.{type(exc).__name__}: {str(exc)[:300]}"
    finally:
        signal.alarm(0)
        cpu = time.process_time() - cpu
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved_fds[0], 1)
        os.dup2(saved_fds[1], 2)
    peak = _status_kib("VmHWM")
    out.seek(0)
    err.seek(0)
    return {
        "code": code,
        "stdout": out.read().decode(errors="replace"),
        "stderr": err.read().decode(errors="replace"),
        "cpu_seconds": cpu,
        "peak_growth_mib": (peak - before_rss) / 1024 if reset else None,
    }


def api_outcome(call: dict[str, Any]) -> tuple[Any, str]:
    """Call the Python API as ``call`` says and return (code, message): ``load`` is ``bnfold.load_model``,
    which must raise a LoadError; ``convert`` is ``bnfold.convert``, which must raise a BnfoldError. Code 2
    with ``Error: message`` when it raised what it should, 0 when it returned, else what it raised."""
    import bnfold
    from bnfold.errors import BnfoldError, LoadError

    try:
        if call["kind"] == "load":
            bnfold.load_model(call["path"], factory=call["factory"])
        else:
            config = bnfold.ConvertConfig(
                output=Path(call["output"]),
                bench=False,
                factory=call["factory"],
                input_shapes=tuple(tuple(s) for s in call["input_shapes"]),
            )
            bnfold.convert(call["path"], config)
    except BnfoldError as exc:
        if call["kind"] == "load" and not isinstance(exc, LoadError):
            return f"{type(exc).__name__} raised, not a LoadError: {exc}", ""
        return 2, f"Error: {exc}"
    except BaseException as exc:  # noqa: BLE001 - reported to the test
        return f"{type(exc).__module__}.{type(exc).__name__} raised: {exc}", ""
    return 0, ""


def _api(call: dict[str, Any]) -> None:
    code, message = api_outcome(call)
    if message:
        print(message, file=sys.stderr)
    raise SystemExit(code)


def run_commands(plan: dict[str, Any], results: Path) -> None:
    """``plan``: ``warmup`` (files loaded first, so that lazy imports are not counted against the first
    job) and ``jobs``; results are written after each job."""
    import bnfold

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for path in plan["warmup"]:
            bnfold.load_model(path)
    done = []
    for job in plan["jobs"]:
        done.append(_run_one(job))
        results.write_text(json.dumps(done))


if __name__ == "__main__":
    if sys.argv[1] == "controls":
        run_controls(json.loads(Path(sys.argv[2]).read_text()))
    elif sys.argv[1] == "commands":
        run_commands(json.loads(Path(sys.argv[2]).read_text()), Path(sys.argv[3]))
    else:
        raise SystemExit(f"unknown mode {sys.argv[1]!r}")
