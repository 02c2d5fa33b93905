"""The public ops (ssmbench.api): a named backend is never replaced by another; a bad shape
is blamed on its argument."""

import pytest
import torch

import ssmbench
from ssmbench.impls import BackendError, backends, get_op


def test_explicit_backend_never_falls_back():
    kw = get_op("selective_scan").make_inputs(get_op("selective_scan").default_problem,
                                              torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="unknown backend of selective_scan 'nope'; known: .*torch"):
        ssmbench.selective_scan(**kw, backend="nope")
    unavailable = [b for b in backends("selective_scan").values() if b.unavailable_reasons()]
    for backend in unavailable:
        with pytest.raises(BackendError, match=f"'{backend.name}' is unavailable"):
            ssmbench.selective_scan(**kw, backend=backend.name)
    ssmbench.selective_scan(**kw)
    assert ssmbench.last_auto_choice("selective_scan") in backends("selective_scan")


def test_bad_shapes_name_the_argument():
    op = get_op("selective_scan")
    kw = op.make_inputs(op.default_problem, torch.Generator().manual_seed(0))
    with pytest.raises(ValueError,
                       match=r"argument 'delta' must have shape \(b d l\) = \(1, 64, 128\), got \(1, 64, 127\)"):
        ssmbench.selective_scan(**{**kw, "delta": kw["delta"][..., :-1]})
    with pytest.raises(ValueError, match="argument 'A' must have shape"):
        ssmbench.selective_scan(**{**kw, "A": kw["A"][None]})
    with pytest.raises(ValueError, match="argument 'z' has dtype bfloat16, expected u's float32"):
        ssmbench.selective_scan(**{**kw, "z": kw["z"].bfloat16()})
