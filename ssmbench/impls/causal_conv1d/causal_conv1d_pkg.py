"""The causal-conv1d package's CUDA kernel, ``causal_conv1d_fn`` (third-party, optional).

Same arguments as ours, passed through. Its kernels take widths 2 to 4 only. The package imports
its compiled extension ``causal_conv1d_cuda`` at import time; where that fails, its error is the
reason shown.
"""
from __future__ import annotations

from functools import partial

from ..base import Backend, import_failure
from . import TOLERANCES

WIDTHS = (2, 3, 4)


def causal_conv1d(x, weight, bias=None, activation=None):
    """Shapes as ``ssmbench.causal_conv1d``."""
    from causal_conv1d import causal_conv1d_fn

    return causal_conv1d_fn(x, weight, bias=bias, activation=activation)


def width_failure(p) -> list[str]:
    """For check_supported of both causal-conv1d adapters."""
    if p.width in WIDTHS:
        return []
    return [f"causal-conv1d's kernels take width {WIDTHS[0]} to {WIDTHS[-1]}, not {p.width}"]


BACKEND = Backend(
    op="causal_conv1d", name="causal_conv1d", has_backward=True, impl=f"{__name__}:causal_conv1d", kind="third-party",
    requires=("causal_conv1d",), devices=("cuda",), dtypes=("float32", "bfloat16", "float16"),
    tolerances=TOLERANCES, priority=30, fused=True, check_available=partial(import_failure, "causal_conv1d"),
    check_supported=width_failure,
    description="causal-conv1d causal_conv1d_fn (CUDA), arguments passed through",
)
