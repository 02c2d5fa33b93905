"""mamba-ssm's fused CUDA scan, ``selective_scan_fn`` (third-party, optional).

It takes exactly our arguments, so the adapter passes them through. The kernel is mamba-ssm's
compiled extension ``selective_scan_cuda``: where it is missing or was built for another torch,
``import mamba_ssm`` fails and that error is the reason shown (there is no Triton fallback for
this op in the package).
"""
from __future__ import annotations

from functools import partial

from ..base import Backend, import_failure

MODULE = "mamba_ssm.ops.selective_scan_interface"


def selective_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                   return_last_state=False):
    """Shapes as ``ssmbench.selective_scan``."""
    from mamba_ssm.ops.selective_scan_interface import selective_scan_fn

    return selective_scan_fn(u, delta, A, B, C, D=D, z=z, delta_bias=delta_bias,
                             delta_softplus=delta_softplus, return_last_state=return_last_state)


BACKEND = Backend(
    op="selective_scan", name="mamba_ssm", impl=f"{__name__}:selective_scan", kind="third-party",
    requires=("mamba_ssm",), devices=("cuda",), dtypes=("float32", "bfloat16", "float16"),
    limits={"dstate": 256}, priority=30, check_available=partial(import_failure, MODULE),
    description="mamba-ssm selective_scan_fn (fused CUDA scan), arguments passed through",
)
