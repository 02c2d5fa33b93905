"""What happens to one case inside the worker process: check, then time; always a row."""
from __future__ import annotations

import time
import traceback
from typing import Any

import torch

from ..impls.base import load_callable
from ..impls.registry import get_backend, get_op, reasons
from ..suites.base import Case
from . import inject
from .check import check, clone_args, reference_outputs
from .timing import measure


def execute(case: Case, seed: int = 0) -> dict[str, Any]:
    """The row of one case (without run-level fields). Never raises for a case's own failure."""
    row: dict[str, Any] = {"case_id": case.case_id, "suite": case.suite, "op": case.op,
                           "backend": case.backend, "fn": case.fn, "series": case.series,
                           **dict(case.params), "status": "ok", "reason": ""}
    started = time.perf_counter()
    inject.current = f"{case.op}/{case.backend}" if case.op else case.fn
    try:
        row.update(_run_custom(case) if case.fn else _run_op(case, seed))
    except torch.cuda.OutOfMemoryError as exc:
        row.update(status="oom", reason=f"CUDA out of memory: {str(exc).splitlines()[0]}")
    except MemoryError as exc:
        row.update(status="oom", reason=f"out of host memory: {exc}")
    except Exception as exc:  # noqa: BLE001 - a failing case is recorded, the sweep goes on
        last = traceback.extract_tb(exc.__traceback__)[-1]
        row.update(status="failed",
                   reason=f"{type(exc).__name__}: {exc} (at {last.filename}:{last.lineno})")
    finally:
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    row["elapsed_s"] = time.perf_counter() - started
    row["threads"] = torch.get_num_threads()
    return row


def _run_custom(case: Case) -> dict[str, Any]:
    return load_callable(case.fn)(**dict(case.params))


def _run_op(case: Case, seed: int) -> dict[str, Any]:
    op = get_op(case.op)
    problem = op.problem_type.from_params(case.params)
    backend = get_backend(case.op, case.backend)
    status, why = reasons(backend, problem)
    if status != "ok":
        return {"status": status, "reason": "; ".join(why)}
    inputs, expected = _inputs_and_reference(case.op, problem, seed)
    result = check(backend, problem, inputs=inputs, expected=expected)
    out: dict[str, Any] = {"rel_error": result.rel_error, "tolerance": result.tolerance}
    if not result.passed:
        # A wrong result is never reported as a speed.
        return {**out, "status": "incorrect", "reason": result.describe()}
    args = clone_args(inputs)
    if problem.device == "cuda":
        out["peak_mem_bytes"] = _cuda_peak_bytes(lambda: backend(**args))
    timing = measure(lambda: backend(**args), problem.device, min_repeats=case.min_repeats,
                     max_repeats=case.max_repeats, budget_s=case.budget_s)
    stats = timing.stats()
    seconds = stats["median_ms"] * 1e-3
    out.update(stats, samples_ms=timing.samples_ms,
               bytes=op.bytes_moved(problem), flops=op.flops(problem),
               gbps=op.bytes_moved(problem) / seconds / 1e9,
               tflops=op.flops(problem) / seconds / 1e12)
    return out


# Cases of one problem usually follow each other (one per backend): the inputs and the float64
# reference, slow to compute for long sequences, are kept for the next case of the same problem.
_last_problem: dict[tuple, tuple] = {}


def _inputs_and_reference(op_name: str, problem, seed: int):
    key = (op_name, problem, seed)
    if key not in _last_problem:
        _last_problem.clear()
        op = get_op(op_name)
        inputs = op.make_inputs(problem, torch.Generator().manual_seed(seed))
        _last_problem[key] = (inputs, reference_outputs(problem, inputs))
    return _last_problem[key]


def _cuda_peak_bytes(fn) -> int:
    """Device memory one call needs beyond its inputs (outputs and temporaries)."""
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - base
