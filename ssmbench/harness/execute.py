"""What happens to one case inside the worker process: check, then time; always a row."""
from __future__ import annotations

import time
import traceback
from typing import Any

import torch

from ..impls.base import load_callable
from ..impls.registry import get_backend, get_op, reasons
from .case import Case
from . import inject
from .check import (
    check,
    check_backward,
    clone_args,
    cotangents,
    forward_for_backward,
    reference_grads,
    reference_outputs,
)
from .stats import two_sided_p
from .timing import Timing, measure, measure_interleaved


def execute(case: Case, seed: int = 0) -> list[dict[str, Any]]:
    """The rows of one case (without run-level fields): one, or one per backend of an interleaved
    comparison. Never raises for a case's own failure."""
    if case.op and case.backends:
        return _interleaved(case, seed)
    body = (lambda: _run_custom(case)) if case.fn else (lambda: _run_op(case, case.backend, seed))
    return [_guarded(case, case.backend, body)]


def base_row(case: Case, backend: str) -> dict[str, Any]:
    """The fields every row of a case starts with."""
    return {"case_id": case.case_id, "suite": case.suite, "op": case.op, "backend": backend, "fn": case.fn,
            "series": case.series or backend, **dict(case.params), "status": "ok", "reason": "",
            **({"pass_mode": case.pass_mode} if case.op else {})}


def _guarded(case: Case, backend: str, body) -> dict[str, Any]:
    row = base_row(case, backend)
    started = time.perf_counter()
    inject.current = f"{case.op}/{backend}" if case.op else case.fn
    try:
        row.update(body())
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


def prepare(case: Case, backend_name: str, seed: int = 0):
    """(row fields, the timed callable or None when the backend is not to be timed, op, problem)."""
    op = get_op(case.op)
    problem = op.problem_type.from_params(case.params)
    backend = get_backend(case.op, backend_name)
    if case.pass_mode != "forward" and not backend.has_backward:
        return {"status": "unsupported", "reason": "forward only"}, None, op, problem
    status, why = reasons(backend, problem)
    if status != "ok":
        return {"status": status, "reason": "; ".join(why)}, None, op, problem
    checked = problem.replace(**case.check_params)
    inputs, expected = _inputs_and_reference(case.op, checked, seed)
    triton_kernels = _triton_common() if backend.kind == "triton" else None
    if triton_kernels:
        triton_kernels.LAST_CONFIGS.clear()
    result = check(backend, checked, inputs=inputs, expected=expected)
    fields: dict[str, Any] = {"rel_error": result.rel_error, "tolerance": result.tolerance}
    if triton_kernels and triton_kernels.LAST_CONFIGS:
        fields["kernel_configs"] = triton_kernels.describe_configs(triton_kernels.LAST_CONFIGS)
    if case.check_params:
        fields["checked_at"] = ",".join(f"{k}={v}" for k, v in case.check_params.items())
    else:
        # The check made the first call at this problem (compile and autotune included); the
        # timing's own first call, made after it, would hide that cost.
        fields["first_call_ms"] = result.call_ms
    if not result.passed:
        # A wrong result is never reported as a speed.
        return {**fields, "status": "incorrect", "reason": result.describe()}, None, op, problem
    if case.pass_mode != "forward":
        grads = check_backward(backend, checked, inputs=inputs,
                               expected=_kept(_last_grads, (case.op, checked, seed),
                                              lambda: reference_grads(checked, inputs, seed)))
        fields.update(grad_rel_error=grads.rel_error, grad_worst_input=grads.worst_input)
        if not grads.passed:
            return {**fields, "status": "incorrect", "reason": grads.describe()}, None, op, problem
    if checked != problem:
        inputs = _inputs(case.op, problem, seed)
    call = _timed_call(case.pass_mode, backend, problem, inputs, seed)
    if problem.device == "cuda":
        fields["peak_mem_bytes"] = _cuda_peak_bytes(call)
    return fields, call, op, problem


def _timed_call(pass_mode: str, backend, problem, inputs, seed: int):
    """What a case of ``pass_mode`` times: the call; the backward alone, from the activations one
    forward stored (the graph is kept between calls); or a forward and its backward."""
    if pass_mode == "forward":
        args = clone_args(inputs)
        return lambda: backend(**args)
    # The output gradients only need the outputs' shapes: one forward without autograd gives them.
    with torch.no_grad():
        shapes = get_op(backend.op).outputs(clone_args(inputs), backend(**clone_args(inputs)))
    cotangent = cotangents(shapes, seed)
    if pass_mode == "backward":
        return forward_for_backward(backend, problem, inputs, cotangent)
    return lambda: forward_for_backward(backend, problem, inputs, cotangent)()


def _triton_common():
    # Imported only for a Triton backend: triton is optional.
    from ..kernels.triton import common

    return common


def timing_fields(op, problem, timing: Timing, pass_mode: str = "forward") -> dict[str, Any]:
    stats = timing.stats()
    if pass_mode != "forward":
        # The op's cost model counts the forward's work; no rate is claimed for a backward.
        return {**stats, "samples_ms": timing.samples_ms}
    seconds = stats["median_ms"] * 1e-3
    return {**stats, "samples_ms": timing.samples_ms, "bytes": op.bytes_moved(problem),
            "flops": op.flops(problem), "exps": op.exps(problem) if op.exps else None,
            "gbps": op.bytes_moved(problem) / seconds / 1e9, "tflops": op.flops(problem) / seconds / 1e12}


def _add_timing(fields: dict[str, Any], timed: dict[str, Any]) -> dict[str, Any]:
    """The row's fields with the timing's added; a first call already recorded by the check is
    kept (it was the cold one)."""
    return {**fields, **{k: v for k, v in timed.items() if k not in fields}}


def _run_op(case: Case, backend_name: str, seed: int) -> dict[str, Any]:
    fields, call, op, problem = prepare(case, backend_name, seed)
    if call is None:
        return fields
    timing = measure(call, problem.device, min_repeats=case.min_repeats, max_repeats=case.max_repeats,
                     budget_s=case.budget_s)
    return _add_timing(fields, timing_fields(op, problem, timing, case.pass_mode))


def _interleaved(case: Case, seed: int) -> list[dict[str, Any]]:
    """Every backend of the case checked, then the correct ones timed in rounds (A B A B ...).
    With ``case.stability`` the first of them runs twice per round, and its row reports how far
    apart the two copies came out: the noise floor of this comparison."""
    prepared: dict[str, tuple] = {}
    rows: dict[str, dict] = {}
    for name in case.backends:
        rows[name] = _guarded(case, name, lambda n=name: prepared.setdefault(n, prepare(case, n, seed))[0])
        rows[name].update(case_id=f"{case.case_id}/{name}", parent_case_id=case.case_id)
    timed = {n: p[1] for n, p in prepared.items() if p[1] is not None and rows[n]["status"] == "ok"}
    if not timed:
        return list(rows.values())
    first = next(iter(timed))
    if case.stability:
        timed[f"{first}#again"] = timed[first]
    _, _, op, problem = prepared[first]
    inject.current = ""
    try:
        timings = measure_interleaved(timed, problem.device, min_rounds=case.min_repeats,
                                      max_rounds=case.max_repeats, budget_s=case.budget_s * len(timed))
    except Exception as exc:  # noqa: BLE001
        for name in timed:
            if name in rows:
                rows[name].update(status="failed", reason=f"{type(exc).__name__}: {exc}")
        return list(rows.values())
    for name, timing in timings.items():
        if name in rows:
            rows[name] = {**_add_timing(rows[name], timing_fields(op, problem, timing, case.pass_mode)),
                          "interleaved": True}
    if case.stability:
        again = timings[f"{first}#again"]
        rows[first]["self_spread"] = again.median_ms / timings[first].median_ms - 1
        rows[first]["self_p"] = two_sided_p(timings[first].samples_ms, again.samples_ms)
    return list(rows.values())


# Cases of one problem usually follow each other (one per backend): its inputs (seconds to draw for
# long sequences) and the float64 reference of the checked size (slower still) are kept for the
# next case. One problem each: a long problem's inputs take gigabytes.
_last_inputs: dict[tuple, dict] = {}
_last_reference: dict[tuple, tuple] = {}
_last_grads: dict[tuple, tuple] = {}


def _kept(cache: dict, key: tuple, make):
    if key not in cache:
        cache.clear()
        cache[key] = make()
    return cache[key]


def _inputs(op_name: str, problem, seed: int) -> dict:
    return _kept(_last_inputs, (op_name, problem, seed),
                 lambda: get_op(op_name).make_inputs(problem, torch.Generator().manual_seed(seed)))


def _inputs_and_reference(op_name: str, problem, seed: int):
    def make():
        inputs = _inputs(op_name, problem, seed)
        return inputs, reference_outputs(problem, inputs)
    return _kept(_last_reference, (op_name, problem, seed), make)


def _cuda_peak_bytes(fn) -> int:
    """Device memory one call needs beyond its inputs (outputs and temporaries)."""
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - base
