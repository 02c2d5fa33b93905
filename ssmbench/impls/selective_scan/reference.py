"""Float64 reference: the recurrence one step at a time."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..base import Backend


def selective_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                   return_last_state=False):
    """h_t = exp(delta_t A) * h_{t-1} + delta_t u_t B_t;  y_t = <C_t, h_t> + D u_t;  y *= silu(z).

    u, delta, z: (b, d, l); A: (d, n); B, C: (b, n, l) or (b, g, n, l); D, delta_bias: (d,).
    Computed in float64; out is returned in u's dtype, the last state (b, d, n) in float64.
    """
    dtype = u.dtype
    u, delta, A, B, C = (t.double() for t in (u, delta, A, B, C))
    b, d, l = u.shape
    if delta_bias is not None:
        delta = delta + delta_bias.double()[:, None]
    if delta_softplus:
        delta = F.softplus(delta)
    if B.dim() == 3:
        B, C = B[:, None], C[:, None]
    per_group = d // B.shape[1]
    B = B.repeat_interleave(per_group, dim=1)  # (b, d, n, l)
    C = C.repeat_interleave(per_group, dim=1)
    h = u.new_zeros(b, d, A.shape[1])
    ys = []
    for t in range(l):
        h = torch.exp(delta[:, :, t, None] * A) * h + (delta[:, :, t] * u[:, :, t])[..., None] * B[..., t]
        ys.append(torch.einsum("bdn,bdn->bd", h, C[..., t]))
    y = torch.stack(ys, dim=-1)
    if D is not None:
        y = y + D.double()[:, None] * u
    if z is not None:
        y = y * F.silu(z.double())
    y = y.to(dtype)
    return (y, h) if return_last_state else y


BACKEND = Backend(
    op="selective_scan", name="reference", has_backward=True, impl=f"{__name__}:selective_scan", kind="reference",
    priority=-100, max_sensible_len=2**14,  # a float64 Python loop: seconds per call beyond
    description="float64 step-by-step loop; the ground truth",
)
