"""Float64 reference: the SSD recurrence one step at a time."""
from __future__ import annotations

import torch

from ..base import Backend
from . import per_channel, skip_and_gate, step_sizes


def ssd(x, dt, A, B, C, chunk_size=256, D=None, z=None, dt_bias=None, initial_states=None,
        dt_softplus=False, return_final_states=False):
    """h_t = exp(dt_t A) h_{t-1} + dt_t x_t B_t^T;  y_t = h_t C_t + D x_t;  y *= silu(z).

    Per head: h_t (p, n), x_t (p,), B_t, C_t (n,) of the head's group, dt_t and A scalars.
    x, z: (b, l, h, p); dt: (b, l, h); A, dt_bias: (h,); B, C: (b, l, g, n); D: (h,) or (h, p);
    initial_states: (b, h, p, n). Computed in float64 (chunk_size plays no part); out is returned
    in x's dtype, the final state (b, h, p, n) in float64.
    """
    dtype = x.dtype
    x, dt, A, B, C = (t.double() for t in (x, dt, A, B, C))
    dt = step_sizes(dt, dt_bias, dt_softplus)
    b, l, h, p = x.shape
    B = B.repeat_interleave(h // B.shape[2], dim=2)  # (b, l, h, n)
    C = C.repeat_interleave(h // C.shape[2], dim=2)
    state = x.new_zeros(b, h, p, B.shape[-1]) if initial_states is None else initial_states.double()
    ys = []
    for t in range(l):
        decay = torch.exp(dt[:, t] * A)[:, :, None, None]
        state = decay * state + torch.einsum("bh,bhp,bhn->bhpn", dt[:, t], x[:, t], B[:, t])
        ys.append(torch.einsum("bhpn,bhn->bhp", state, C[:, t]))
    y = skip_and_gate(torch.stack(ys, dim=1), x, per_channel(D), z)
    y = y.to(dtype)
    return (y, state) if return_final_states else y


BACKEND = Backend(
    op="ssd", name="reference", has_backward=True, impl=f"{__name__}:ssd", kind="reference",
    priority=-100, max_sensible_len=2**14,  # a float64 Python loop: seconds per call beyond
    description="float64 step-by-step loop; the ground truth",
)
