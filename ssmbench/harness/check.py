"""Correctness of one backend on one problem, against the op's float64 reference.

Used both by the tests and by the runner before any case is timed. Freshly allocated memory is
filled with NaN while the backend runs, so an output element it never writes cannot pass.
"""
from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass
from typing import Any, Mapping

import torch

from ..impls.base import Backend, Problem
from ..impls.registry import get_op


@dataclass(frozen=True)
class _Within:
    """A worst relative norm error against a tolerance; ``subject`` says of what."""

    rel_error: float
    tolerance: float

    @property
    def passed(self) -> bool:
        return self.rel_error <= self.tolerance

    def describe(self) -> str:
        verdict = "within" if self.passed else "exceeds"
        return f"relative error {self.rel_error:.3g} of {self.subject} {verdict} tolerance {self.tolerance:.3g}"


@dataclass(frozen=True)
class Check(_Within):
    worst_output: str  # of the outputs
    # Wall time of the backend's call, synchronised. For a process's first call at a shape it
    # holds what the first call pays: compiling, autotuning, loading an extension.
    call_ms: float = math.nan

    @property
    def subject(self) -> str:
        return f"output {self.worst_output!r}"


@contextlib.contextmanager
def poisoned_allocations():
    """While active, torch.empty & co. return NaN-filled float tensors (torch's own switch)."""
    was_det = torch.are_deterministic_algorithms_enabled()
    was_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    was_fill = torch.utils.deterministic.fill_uninitialized_memory
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.utils.deterministic.fill_uninitialized_memory = True
    try:
        yield
    finally:
        torch.utils.deterministic.fill_uninitialized_memory = was_fill
        torch.use_deterministic_algorithms(was_det, warn_only=was_warn)


def clone_args(kwargs: Mapping[str, Any], dtype: torch.dtype | None = None, device: str | None = None):
    """Copies of the tensor arguments (so in-place updates of one call do not leak into another),
    optionally cast to ``dtype`` and moved to ``device``."""
    out = {}
    for key, value in kwargs.items():
        if isinstance(value, torch.Tensor):
            value = value.detach().clone()
            if dtype is not None and value.is_floating_point():
                value = value.to(dtype)
            if device is not None:
                value = value.to(device)
        out[key] = value
    return out


def rel_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """||actual - expected|| / ||expected|| in float64; NaN or Inf anywhere gives inf."""
    if actual.shape != expected.shape:
        raise ValueError(f"output has shape {tuple(actual.shape)}, the reference {tuple(expected.shape)}")
    a = actual.detach().to("cpu", torch.float64)
    e = expected.detach().to("cpu", torch.float64)
    if not torch.isfinite(a).all():
        return math.inf
    denom = e.norm().item()
    diff = (a - e).norm().item()
    return diff / denom if denom > 0 else diff


def reference_outputs(problem: Problem, kwargs: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """The op's float64 reference on the given inputs, upcast to float64 on the problem's device
    (a GPU runs the long loops of large problems far sooner than the CPU)."""
    op = _op_of(problem)
    ref_args = clone_args(kwargs, dtype=torch.float64)
    result = op.reference_fn(**ref_args)
    return op.outputs(ref_args, result)


def _op_of(problem: Problem):
    # Each op's Problem class lives in ssmbench.impls.<op>.
    return get_op(problem.__class__.__module__.split(".")[2])


def check(backend: Backend, problem: Problem, seed: int = 0,
          inputs: Mapping[str, Any] | None = None,
          expected: Mapping[str, torch.Tensor] | None = None) -> Check:
    """Run ``backend`` once on random inputs for ``problem`` (drawn from ``seed`` unless given)
    and compare with the reference outputs (computed here unless given for these inputs)."""
    op = _op_of(problem)
    if inputs is None:
        inputs = op.make_inputs(problem, torch.Generator().manual_seed(seed))
    if expected is None:
        expected = reference_outputs(problem, inputs)
    args = clone_args(inputs)
    if problem.device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    with poisoned_allocations():
        result = backend(**args)
    if problem.device == "cuda":
        torch.cuda.synchronize()
    call_ms = (time.perf_counter() - start) * 1e3
    actual = op.outputs(args, result)
    missing = set(expected) - set(actual)
    if missing:
        raise ValueError(f"backend {backend.name} returned no {', '.join(sorted(missing))}")
    errors = {name: rel_error(actual[name], expected[name]) for name in expected}
    worst = max(errors, key=errors.get)
    return Check(errors[worst], backend.tolerance(problem.dtype), worst, call_ms)


def differentiable(kwargs: Mapping[str, Any]) -> list[str]:
    """The arguments gradients are taken for: every floating-point tensor."""
    return [k for k, v in kwargs.items() if isinstance(v, torch.Tensor) and v.is_floating_point()]


def cotangents(outputs: Mapping[str, torch.Tensor], seed: int) -> dict[str, torch.Tensor]:
    """Random output gradients (a sum of the outputs would hide errors that cancel), float64 on
    the CPU, drawn from ``seed`` so the reference and the backend see the same ones."""
    generator = torch.Generator().manual_seed(seed + 1)
    return {name: torch.randn(out.shape, generator=generator, dtype=torch.float64).to(out.device)
            for name, out in outputs.items() if out.is_floating_point()}


def with_grad(kwargs: Mapping[str, Any], dtype: torch.dtype | None = None) -> dict[str, Any]:
    """Fresh copies of the arguments, the differentiable ones requiring grad."""
    args = clone_args(kwargs, dtype=dtype)
    for name in differentiable(args):
        args[name].requires_grad_(True)
    return args


def forward_for_backward(fn, problem: Problem, kwargs: Mapping[str, Any],
                         cotangent: Mapping[str, torch.Tensor], dtype: torch.dtype | None = None):
    """One forward with autograd recording: the backward callable returning the input gradients by
    name. The backward keeps the graph, so it can be called again (timed alone)."""
    op = _op_of(problem)
    args = with_grad(kwargs, dtype)
    outputs = op.outputs(args, fn(**args))
    used = {n: o for n, o in outputs.items() if n in cotangent and o.requires_grad}
    if not used:
        raise ValueError(f"no output of {op.name} carries a gradient")
    names = differentiable(args)
    grads_out = [cotangent[n].to(o.device, o.dtype) for n, o in used.items()]

    def backward() -> dict[str, torch.Tensor | None]:
        grads = torch.autograd.grad(list(used.values()), [args[n] for n in names], grads_out,
                                    retain_graph=True, allow_unused=True)
        return dict(zip(names, grads))
    return backward


def reference_grads(problem: Problem, kwargs: Mapping[str, Any], seed: int = 0):
    """Autograd through the op's float64 reference for random output gradients drawn from
    ``seed``: (the input gradients every backward is held to, the output gradients)."""
    op = _op_of(problem)
    args = with_grad(kwargs, torch.float64)
    outputs = op.outputs(args, op.reference_fn(**args))
    cotangent = cotangents({n: o for n, o in outputs.items() if o.requires_grad}, seed)
    names = differentiable(args)
    grads = torch.autograd.grad([outputs[n] for n in cotangent], [args[n] for n in names],
                                list(cotangent.values()), allow_unused=True)
    return dict(zip(names, grads)), cotangent


@dataclass(frozen=True)
class GradCheck(_Within):
    worst_input: str  # of the input gradients

    @property
    def subject(self) -> str:
        return f"the gradient of {self.worst_input!r}"


def compare_grads(actual: Mapping[str, torch.Tensor | None], expected: Mapping[str, torch.Tensor | None],
                  tolerance: float) -> GradCheck:
    """The worst input gradient against the reference's; a gradient the reference has and the
    backend does not is infinitely wrong."""
    errors = {}
    for name, want in expected.items():
        if want is None:
            continue
        got = actual.get(name)
        errors[name] = math.inf if got is None else rel_error(got, want)
    if not errors:
        raise ValueError("the reference gives no input a gradient")
    worst = max(errors, key=errors.get)
    return GradCheck(errors[worst], tolerance, worst)


def check_backward(backend: Backend, problem: Problem, seed: int = 0,
                   inputs: Mapping[str, Any] | None = None, expected=None) -> GradCheck:
    """The backend's input gradients for random output gradients against autograd through the
    float64 reference (``expected``: reference_grads of these inputs, computed here unless given),
    with the forward's poisoning and tolerance."""
    op = _op_of(problem)
    if inputs is None:
        inputs = op.make_inputs(problem, torch.Generator().manual_seed(seed))
    expected, cotangent = expected or reference_grads(problem, inputs, seed)
    with poisoned_allocations():
        actual = forward_for_backward(backend, problem, inputs, cotangent)()
    return compare_grads(actual, expected, backend.tolerance(problem.dtype))
