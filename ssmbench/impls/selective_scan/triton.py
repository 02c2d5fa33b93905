"""Our fused Triton selective scan (ssmbench/kernels/triton/selective_scan.py), and its backward
(ssmbench/kernels/triton/selective_scan_backward.py), which recomputes the states from the inputs
rather than keeping them: autograd saves only the inputs."""
from __future__ import annotations

import torch

from ..base import triton_backend
from ..checks import grad_as, records_grad


def _forward(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state):
    from ...kernels.triton import selective_scan as kernels

    out = torch.empty_like(u)
    last_state = (u.new_empty(u.shape[0], u.shape[1], A.shape[1], dtype=torch.float32)
                  if return_last_state else None)
    kernels.selective_scan_fwd(u, delta, A, B, C, D, z, delta_bias, delta_softplus, out, last_state)
    return out, last_state


class _SelectiveScan(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state):
        out, last_state = _forward(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state)
        ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias)
        ctx.delta_softplus = delta_softplus
        return out, last_state

    @staticmethod
    def backward(ctx, dout, dlast):
        from ...kernels.triton.selective_scan_backward import selective_scan_bwd

        u, delta, A, B, C, D, z, delta_bias = ctx.saved_tensors
        g = selective_scan_bwd(u, delta, A, B, C, D, z, delta_bias, ctx.delta_softplus, dout, dlast=dlast)
        return (g["du"], grad_as(g["ddelta"], delta), grad_as(g["dA"], A), grad_as(g["dB"], B),
                grad_as(g["dC"], C), grad_as(g["dD"], D), g["dz"], grad_as(g["ddelta_bias"], delta_bias),
                None, None)


def selective_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                   return_last_state=False):
    """Shapes as ``ssmbench.selective_scan``; the last state is float32."""
    if B.dim() == 3:  # ungrouped B, C are one group
        B, C = B.unsqueeze(1), C.unsqueeze(1)
    tensors = (u, delta, A, B, C, D, z, delta_bias)
    if records_grad(*tensors):
        out, last_state = _SelectiveScan.apply(*tensors, delta_softplus, return_last_state)
    else:
        out, last_state = _forward(*tensors, delta_softplus, return_last_state)
    return (out, last_state) if return_last_state else out


BACKEND = triton_backend(
    "selective_scan", f"{__name__}:selective_scan",
    "Triton, one fused kernel: chunks of L scanned in parallel, the state carried in registers; "
    "backward: the states recomputed per chunk, the adjoint by a reverse scan",
    first_call_s=14.2, has_backward=True,
)
