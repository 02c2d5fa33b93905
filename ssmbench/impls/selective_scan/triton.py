"""Our fused Triton selective scan (ssmbench/kernels/triton/selective_scan.py)."""
from __future__ import annotations

import torch

from ..base import triton_backend


def selective_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                   return_last_state=False):
    """Shapes as ``ssmbench.selective_scan``; the last state is float32."""
    from ...kernels.triton import selective_scan as kernels

    if B.dim() == 3:  # ungrouped B, C are one group
        B, C = B.unsqueeze(1), C.unsqueeze(1)
    out = torch.empty_like(u)
    last_state = (u.new_empty(u.shape[0], u.shape[1], A.shape[1], dtype=torch.float32)
                  if return_last_state else None)
    kernels.selective_scan_fwd(u, delta, A, B, C, D, z, delta_bias, delta_softplus, out, last_state)
    return (out, last_state) if return_last_state else out


BACKEND = triton_backend(
    "selective_scan", f"{__name__}:selective_scan",
    "Triton, one fused kernel: chunks of L scanned in parallel, the state carried in registers",
    first_call_s=14.2,
)
