"""The causal-conv1d package's decode kernel, ``causal_conv1d_update`` (third-party, optional).

Same arguments as ours, passed through; conv_state is shifted in place by the kernel. Widths 2 to
4 only; the package's import error, where it has one, is the reason shown.
"""
from __future__ import annotations

from functools import partial

from ..base import Backend, import_failure
from ..causal_conv1d import TOLERANCES
from ..causal_conv1d.causal_conv1d_pkg import width_failure


def causal_conv1d_update(x, conv_state, weight, bias=None, activation=None):
    """Shapes as ``ssmbench.causal_conv1d_update``."""
    from causal_conv1d import causal_conv1d_update as update

    return update(x, conv_state, weight, bias=bias, activation=activation)


BACKEND = Backend(
    op="causal_conv1d_update", name="causal_conv1d", impl=f"{__name__}:causal_conv1d_update",
    kind="third-party", requires=("causal_conv1d",), devices=("cuda",),
    dtypes=("float32", "bfloat16", "float16"), tolerances=TOLERANCES, priority=30, fused=True,
    check_available=partial(import_failure, "causal_conv1d"), check_supported=width_failure,
    description="causal-conv1d causal_conv1d_update (CUDA), arguments passed through",
)
