"""Our chunked Triton SSD (ssmbench/kernels/triton/ssd.py): five kernels, the matrix products on
tensor cores for half precision and in IEEE float32 for float32 inputs.

Its backward is the selective-scan backward kernel (ssmbench/kernels/triton/
selective_scan_backward.py) run over the heads' channels: SSD is that recurrence with one step
size and one scalar A per head, shared by the head's p channels, so the kernel reads them at
channel // p and the per-channel gradients of dt, A and dt_bias are summed over each head."""
from __future__ import annotations

import torch

from ..base import triton_backend
from ..checks import grad_as, records_grad
from . import SSDProblem

# The kernels hold a whole chunk of step sizes in one tile and a (chunk, chunk) block of C.B per
# chunk in scratch memory (L x chunk floats per group); sizes above this are not tested.
MAX_CHUNK = 1024


def _channels(t: torch.Tensor) -> torch.Tensor:
    """(b, l, h, p) as the scan's (b, h * p, l), a view where the layout allows."""
    return t.flatten(2).transpose(1, 2)


class _SSD(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, dt, A, B, C, chunk_size, D, z, dt_bias, initial_states, dt_softplus):
        from ...kernels.triton.ssd import ssd_forward

        out, final = ssd_forward(x, dt, A, B, C, chunk_size, D=D, z=z, dt_bias=dt_bias,
                                 initial_states=initial_states, dt_softplus=dt_softplus)
        ctx.save_for_backward(x, dt, A, B, C, D, z, dt_bias, initial_states)
        ctx.dt_softplus = dt_softplus
        return out, final

    @staticmethod
    def backward(ctx, dout, dfinal):
        from ...kernels.triton.selective_scan_backward import selective_scan_bwd

        x, dt, A, B, C, D, z, dt_bias, initial_states = ctx.saved_tensors
        b, l, h, p = x.shape
        n = B.shape[-1]
        g = selective_scan_bwd(
            _channels(x), dt.transpose(1, 2), A[:, None].expand(h, n), B.permute(0, 2, 3, 1),
            C.permute(0, 2, 3, 1), None if D is None else D.reshape(h, -1).expand(h, p).reshape(h * p),
            None if z is None else _channels(z), dt_bias, ctx.dt_softplus, _channels(dout),
            h0=None if initial_states is None else initial_states.reshape(b, h * p, n),
            dlast=None if dfinal is None else dfinal.reshape(b, h * p, n), head_dim=p)

        def per_head(t):  # (h * p, ...) summed over each head's p channels: (h,)
            return t.reshape(h, -1).sum(1)

        def sequence(t):  # the scan's (b, h * p, l) as (b, l, h, p)
            return t.transpose(1, 2).unflatten(2, (h, p))

        dD = None if D is None else g["dD"].view(D.shape) if D.dim() == 2 else per_head(g["dD"])
        dh0 = None if initial_states is None else g["dh0"].view(b, h, p, n)
        return (sequence(g["du"]), grad_as(g["ddelta"].view(b, h, p, l).sum(2).transpose(1, 2), dt),
                grad_as(per_head(g["dA"]), A), grad_as(g["dB"].permute(0, 3, 1, 2), B),
                grad_as(g["dC"].permute(0, 3, 1, 2), C), None, grad_as(dD, D),
                None if z is None else sequence(g["dz"]), grad_as(per_head(g["ddelta_bias"]), dt_bias),
                grad_as(dh0, initial_states), None)


def ssd(x, dt, A, B, C, chunk_size=256, D=None, z=None, dt_bias=None, initial_states=None,
        dt_softplus=False, return_final_states=False):
    """Shapes as ``ssmbench.ssd``; the final states are float32."""
    from ...kernels.triton.ssd import ssd_forward

    tensors = (x, dt, A, B, C, D, z, dt_bias, initial_states)
    if records_grad(*tensors):
        out, final = _SSD.apply(x, dt, A, B, C, chunk_size, D, z, dt_bias, initial_states, dt_softplus)
    else:
        out, final = ssd_forward(x, dt, A, B, C, chunk_size, D=D, z=z, dt_bias=dt_bias,
                                 initial_states=initial_states, dt_softplus=dt_softplus)
    return (out, final) if return_final_states else out


def _unsupported(problem: SSDProblem) -> list[str]:
    q = problem.chunk_size
    if q & (q - 1):
        return [f"chunk_size={q} is not a power of two (Triton blocks are)"]
    return []


BACKEND = triton_backend(
    "ssd", f"{__name__}:ssd",
    "Triton, chunked SSD: per-chunk states and outputs as tl.dot products, states passed between "
    "chunks; backward: the selective-scan backward kernel over the heads' channels",
    limits={"chunk_size": MAX_CHUNK}, check_supported=_unsupported, first_call_s=7.5, has_backward=True,
)
