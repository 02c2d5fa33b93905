"""The check against the float64 reference made before a case is timed (harness/check.py): a
wrong, perturbed or unwritten output is caught and never timed."""
import dataclasses

import pytest
import torch

from ssmbench.harness.check import check
from ssmbench.harness.execute import execute
from ssmbench.impls import OP_NAMES, backends, get_backend, get_op
from ssmbench.suites.base import Case


def test_wrong_backend_is_incorrect_and_not_timed(monkeypatch):
    backend = get_backend("selective_scan", "torch")
    bad = dataclasses.replace(backend)
    bad.__dict__["fn"] = lambda **kw: backend.fn(**kw) * 1.01
    monkeypatch.setattr("ssmbench.harness.execute.get_backend", lambda op, name: bad)
    case = Case(suite="t", op="selective_scan", backend="torch",
                params=get_op("selective_scan").default_problem.replace(seqlen=16).params())
    (row,) = execute(case)
    assert row["status"] == "incorrect"
    assert "exceeds tolerance" in row["reason"]
    assert "median_ms" not in row


def perturbed(backend, scale):
    """The backend with every output tensor moved by ``scale`` of its norm (random direction)."""
    copy = dataclasses.replace(backend)

    def fn(**kwargs):
        result = backend.fn(**kwargs)
        outs = result if isinstance(result, tuple) else (result,)
        moved = []
        for t in outs:
            noise = torch.randn_like(t, dtype=torch.float64)
            moved.append((t.double() + scale * t.double().norm() * noise / noise.norm()).to(t.dtype))
        return tuple(moved) if isinstance(result, tuple) else moved[0]

    copy.__dict__["fn"] = fn
    return copy


@pytest.mark.parametrize("op", OP_NAMES)
def test_check_fails_when_output_is_perturbed_by_1e3(op):
    spec = get_op(op)
    for backend in backends(op).values():
        if backend.kind == "reference" or backend.unavailable_reasons():
            continue
        problem = spec.test_problems()[0]
        if backend.unsupported_reasons(problem):
            continue
        assert check(backend, problem).passed
        assert not check(perturbed(backend, 1e-3), problem).passed, backend.name


def test_unwritten_output_is_caught():
    backend = get_backend("selective_scan", "torch")
    lazy = dataclasses.replace(backend)
    lazy.__dict__["fn"] = lambda u, **kw: torch.empty_like(u)
    assert not check(lazy, get_op("selective_scan").test_problems()[0]).passed
