"""The straightforward torch SSD: float32 state, decay and input weights precomputed for all
steps, then a Python loop over L."""
from __future__ import annotations

import torch

from ..base import Backend
from ..checks import weight_dtype
from . import per_channel, skip_and_gate, step_sizes


def ssd(x, dt, A, B, C, chunk_size=256, D=None, z=None, dt_bias=None, initial_states=None,
        dt_softplus=False, return_final_states=False):
    """Shapes as ``ssmbench.ssd``; chunk_size is unused (there are no chunks)."""
    dtype = x.dtype
    acc = weight_dtype(dtype)
    x, dt, A, B, C = (t.to(acc) for t in (x, dt, A, B, C))
    dt = step_sizes(dt, dt_bias, dt_softplus)
    b, l, h, p = x.shape
    g, n = B.shape[2:]
    decay = torch.exp(dt * A).reshape(b, l, g, h // g, 1, 1)
    # Heads as (g, h/g) so that B and C broadcast over the heads of their group without copies.
    dtx = (dt[..., None] * x).reshape(b, l, g, h // g, p, 1)
    B, C = B[:, :, :, None, None, :], C[:, :, :, None, :, None]  # (b, l, g, 1, 1, n), (b, l, g, 1, n, 1)
    state = x.new_zeros(b, g, h // g, p, n) if initial_states is None else \
        initial_states.to(acc).reshape(b, g, h // g, p, n)
    ys = []
    for t in range(l):
        state = decay[:, t] * state + dtx[:, t] * B[:, t]
        ys.append((state @ C[:, t]).view(b, h, p))
    y = skip_and_gate(torch.stack(ys, dim=1), x, per_channel(D), z).to(dtype)
    state = state.reshape(b, h, p, n)
    return (y, state) if return_final_states else y


BACKEND = Backend(
    op="ssd", name="torch", has_backward=True, impl=f"{__name__}:ssd", kind="torch",
    priority=0, python_loop=True, max_sensible_len=2**12,
    description="torch, Python loop over L with precomputed decays",
)
