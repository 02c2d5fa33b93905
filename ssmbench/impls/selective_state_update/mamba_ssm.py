"""mamba-ssm's Triton decode step, ``selective_state_update`` (third-party, optional).

It takes our arguments in both layouts and updates the state in place. Mamba-1 calls go in viewed
as heads (``as_heads``), which is what mamba-ssm does itself for ungrouped B and C, and which also
covers our grouped Mamba-1 B and C (b, g, n) that its own reshaping does not. mamba-ssm's package
``__init__`` imports its compiled CUDA extension; where that is missing the Triton module is
loaded without it (``ssmbench.impls.third_party``). Its argument unpacking fails when D or dt_bias
is None (``*(D.stride(0), D.stride(1)) if D is not None else 0``, in 2.3.2), so such calls are
reported as unsupported rather than passed zeros that would change what is timed.
"""
from __future__ import annotations

from functools import partial

from ..base import Backend
from ..third_party import mamba_triton, mamba_triton_failure
from . import as_heads

MODULE = "selective_state_update"


def selective_state_update(state, x, dt, A, B, C, D=None, z=None, dt_bias=None, dt_softplus=False):
    """Shapes as ``ssmbench.selective_state_update``."""
    state_h, x_h, dt, A, B, C, D, z, dt_bias = as_heads(state, x, dt, A, B, C, D, z, dt_bias)
    out = mamba_triton(MODULE).selective_state_update(
        state_h, x_h, dt, A, B, C, D=D, z=z, dt_bias=dt_bias, dt_softplus=dt_softplus)
    return out.reshape(x.shape)


def needs_D_and_dt_bias(p) -> list[str]:
    missing = [name for name, given in (("D", p.has_D), ("dt_bias", p.has_dt_bias)) if not given]
    if not missing:
        return []
    return [f"mamba-ssm's selective_state_update fails without {' and '.join(missing)}"]


BACKEND = Backend(
    op="selective_state_update", name="mamba_ssm", impl=f"{__name__}:selective_state_update",
    kind="third-party", requires=("mamba_ssm",), devices=("cuda",),
    dtypes=("float32", "bfloat16", "float16"), priority=30, fused=True,
    check_available=partial(mamba_triton_failure, MODULE), check_supported=needs_D_and_dt_bias,
    description="mamba-ssm selective_state_update (Triton), arguments in Mamba-2's layout",
)
