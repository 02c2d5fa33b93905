"""Float64 reference: the decode step as written in the math."""
from __future__ import annotations

import torch

from ..base import Backend
from ..ssd import skip_and_gate, step_sizes
from . import as_heads


def selective_state_update(state, x, dt, A, B, C, D=None, z=None, dt_bias=None, dt_softplus=False):
    """state <- state * exp(dt A) + dt x B;  out = sum_n state C + D x;  out *= silu(z).

    In Mamba-2's layout (Mamba-1's is viewed as heads, see ``as_heads``): state (b, h, p, n);
    x, dt, z: (b, h, p); A: (h, p, n); B, C: (b, g, n), head i reading group i // (h / g);
    D, dt_bias: (h, p). Computed in float64; state is overwritten in its own dtype, out is
    returned in x's dtype and shape.
    """
    dtype, shape = x.dtype, x.shape
    state_h, x, dt, A, B, C, D, z, dt_bias = as_heads(state, x, dt, A, B, C, D, z, dt_bias)
    x, dt, A, B, C = (t.double() for t in (x, dt, A, B, C))
    dt = step_sizes(dt, dt_bias, dt_softplus)
    heads_per_group = x.shape[1] // B.shape[1]
    B = B.repeat_interleave(heads_per_group, dim=1)[:, :, None, :]  # (b, h, 1, n)
    C = C.repeat_interleave(heads_per_group, dim=1)
    new = state_h.double() * torch.exp(dt[..., None] * A) + (dt * x)[..., None] * B
    out = skip_and_gate(torch.einsum("bhpn,bhn->bhp", new, C), x, D, z)
    state_h.copy_(new)
    return out.reshape(shape).to(dtype)


BACKEND = Backend(
    op="selective_state_update", name="reference", impl=f"{__name__}:selective_state_update",
    kind="reference", priority=-100, description="float64, the step as written; the ground truth",
)
