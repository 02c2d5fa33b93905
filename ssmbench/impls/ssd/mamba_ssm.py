"""mamba-ssm's fused Triton SSD, ``mamba_chunk_scan_combined`` (third-party, optional).

It takes exactly our arguments, so the adapter passes them through. The final states come back in
the dtype of C, as mamba-ssm returns them. mamba-ssm's package ``__init__`` imports its compiled
CUDA extension; where that is missing the Triton module is loaded without it
(``ssmbench.impls.third_party``), and the package's import error is logged.
"""
from __future__ import annotations

from functools import partial

from ..base import Backend
from ..third_party import mamba_triton, mamba_triton_failure

MODULE = "ssd_combined"
# Triton's tl.dot rounds float32 operands to TF32 (10-bit mantissa) on Ampere and newer GPUs.
TOLERANCES = {"float32": 5e-3}


def ssd(x, dt, A, B, C, chunk_size=256, D=None, z=None, dt_bias=None, initial_states=None,
        dt_softplus=False, return_final_states=False):
    """Shapes as ``ssmbench.ssd``."""
    return mamba_triton(MODULE).mamba_chunk_scan_combined(
        x, dt, A, B, C, chunk_size, D=D, z=z, dt_bias=dt_bias, initial_states=initial_states,
        dt_softplus=dt_softplus, return_final_states=return_final_states)


BACKEND = Backend(
    op="ssd", name="mamba_ssm", has_backward=True, impl=f"{__name__}:ssd", kind="third-party",
    requires=("mamba_ssm",), devices=("cuda",), dtypes=("float32", "bfloat16", "float16"),
    tolerances=TOLERANCES, priority=30, fused=True, first_call_s=31.0,
    check_available=partial(mamba_triton_failure, MODULE),
    description="mamba-ssm mamba_chunk_scan_combined (fused Triton SSD), arguments passed through",
)
