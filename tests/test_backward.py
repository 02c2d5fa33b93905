"""Gradients of every backend that declares a backward, against autograd through the float64
reference; the pass modes of timed cases."""
from __future__ import annotations

import pytest
import torch

from ssmbench.harness.check import check_backward, reference_grads
from ssmbench.impls.base import Backend
from ssmbench.impls.registry import OP_NAMES, backends, get_backend, get_op, reasons

# The ops whose problems have sequence inputs that gradients flow back into.
DIFFERENTIABLE = [op for op in OP_NAMES if any(b.has_backward for b in backends(op).values())]
CASES = [(op, name, problem) for op in DIFFERENTIABLE for name, b in backends(op).items()
         if b.has_backward and b.kind != "reference" for problem in get_op(op).test_problems()]


def test_ops_with_a_backward():
    # The state-update ops are one decode step each, forward only; the others train.
    assert set(DIFFERENTIABLE) == {"selective_scan", "ssd", "causal_conv1d", "attention"}
    assert get_backend("selective_scan", "torch_fast").has_backward
    assert get_backend("ssd", "torch_chunked").has_backward
    assert not get_backend("selective_state_update", "torch").has_backward


def test_test_problems_cover_the_options():
    seen = {k for p in get_op("selective_scan").test_problems() for k, v in p.params().items() if v}
    assert {"has_D", "has_z", "has_delta_bias", "delta_softplus"} <= seen
    lengths = {p.seqlen for p in get_op("selective_scan").test_problems()}
    assert any(L % 2 for L in lengths)


@pytest.mark.parametrize("op,name,problem", CASES, ids=lambda v: str(v) if isinstance(v, str) else "")
def test_gradients_match_the_reference(op, name, problem):
    backend = get_backend(op, name)
    status, why = reasons(backend, problem)
    if status != "ok":
        pytest.skip(f"{op}/{name}: {'; '.join(why)}")
    result = check_backward(backend, problem, seed=3)
    assert result.passed, f"{op}/{name} {problem}: {result.describe()}"


class _Scale(torch.autograd.Function):
    """Identity forward; the backward scales the gradient by (1 + eps)."""

    @staticmethod
    def forward(ctx, x, eps):
        ctx.eps = eps
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return grad * (1 + ctx.eps), None


def perturbed_scan(u, **kwargs):
    return get_backend("selective_scan", "torch_fast")(u=_Scale.apply(u, 1e-3), **kwargs)


@pytest.mark.parametrize("problem", get_op("selective_scan").test_problems()[:3], ids=str)
def test_a_perturbed_gradient_fails(problem):
    backend = Backend(op="selective_scan", name="perturbed", impl=f"{__name__}:perturbed_scan", has_backward=True)
    inputs = get_op("selective_scan").make_inputs(problem, torch.Generator().manual_seed(0))
    expected = reference_grads(problem, inputs, seed=0)
    assert check_backward(get_backend("selective_scan", "torch_fast"), problem, inputs=inputs,
                          expected=expected).passed
    result = check_backward(backend, problem, inputs=inputs, expected=expected)
    assert not result.passed and result.worst_input == "u"
    assert result.rel_error == pytest.approx(1e-3, rel=0.05)


def _case(backend: str, mode: str, op: str = "selective_scan", **params):
    from ssmbench.suites.base import Case

    spec = get_op(op)
    problem = spec.problem_type.from_params({**spec.default_problem.params(), **params})
    return Case(suite="kernels", op=op, backend=backend, params=problem.params(), pass_mode=mode,
                min_repeats=2, max_repeats=3, budget_s=0.05)


@pytest.mark.parametrize("mode", ["backward", "forward_backward"])
def test_a_backward_case_is_checked_then_timed(mode):
    from ssmbench.harness.execute import execute
    from ssmbench.harness.schema import validate_row

    (row,) = execute(_case("torch_fast", mode, batch=1, dim=8, dstate=4, seqlen=33))
    validate_row({**row, "schema_version": 1, "run_id": "r"}, "row")
    assert row["status"] == "ok", row["reason"]
    assert row["pass_mode"] == mode and row["grad_rel_error"] <= row["tolerance"]
    assert row["n_samples"] >= 2 and row["median_ms"] > 0
    assert row.get("gbps") is None  # the cost model is the forward's


def test_a_forward_only_backend_says_so():
    from ssmbench.harness.execute import execute

    (row,) = execute(_case("torch", "backward", op="selective_state_update"))
    assert (row["status"], row["reason"]) == ("unsupported", "forward only")


def test_a_wrong_gradient_is_incorrect_and_not_timed(monkeypatch):
    from ssmbench.harness import execute as ex
    from ssmbench.impls import registry

    wrong = Backend(op="selective_scan", name="perturbed", impl=f"{__name__}:perturbed_scan", has_backward=True)
    monkeypatch.setattr(ex, "get_backend",
                        lambda op, name: wrong if name == "perturbed" else registry.get_backend(op, name))
    (row,) = ex.execute(_case("perturbed", "backward", batch=1, dim=8, dstate=4, seqlen=17))
    assert row["status"] == "incorrect" and "gradient of 'u'" in row["reason"]
    assert row.get("median_ms") is None


def test_forward_case_ids_do_not_change_with_pass_modes():
    forward = _case("torch_fast", "forward")
    assert forward.case_id != _case("torch_fast", "backward").case_id
    with pytest.raises(ValueError, match="pass_mode"):
        _case("torch_fast", "sideways")


def test_kernels_suite_has_backward_cases():
    from ssmbench.suites import get_suite

    cases = get_suite("kernels").cases("cpu-small")
    modes = {(c.op, c.pass_mode) for c in cases}
    assert ("selective_scan", "backward") in modes and ("ssd", "backward") in modes
    assert ("selective_state_update", "backward") not in modes
