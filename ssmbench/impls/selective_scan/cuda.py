"""Our CUDA extension (ssmbench/kernels/cuda/selective_scan.cu), built on first use: one block per
(batch, block of channels), float32 state in registers, L walked in staged chunks, discretisation,
D, z and the last state fused."""
from __future__ import annotations

import torch

from ...kernels.cuda import build
from ..base import Backend


def selective_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                   return_last_state=False):
    """Shapes as ``ssmbench.selective_scan``; A, D and delta_bias are used in float32."""
    dtype, f32, dense = u.dtype, torch.float32, build.contiguous
    if B.dim() == 3:
        B, C = B.unsqueeze(1), C.unsqueeze(1)
    result = build.run(
        "selective_scan_fwd", u.device,
        dense(u, dtype), dense(delta, dtype), dense(A, f32), dense(B, dtype), dense(C, dtype),
        dense(D, f32), dense(z, dtype), dense(delta_bias, f32),
        bool(delta_softplus), bool(return_last_state))
    return (result[0], result[1]) if return_last_state else result[0]


BACKEND = Backend(
    op="selective_scan", name="cuda", impl=f"{__name__}:selective_scan", kind="cuda",
    devices=("cuda",), dtypes=("float32", "bfloat16", "float16"),
    limits={"dstate": build.MAX_DSTATE}, priority=20, fused=True, first_call_s=3.7,
    check_available=build.unavailable_reasons,
    description="our CUDA extension: fused scan, fp32 state in registers, L in staged chunks",
)
