"""The decode step in torch, vectorised over batch, heads and state: a few fused elementwise
passes over the state and one batched matrix-vector product, no Python loop."""
from __future__ import annotations

import torch

from ..base import Backend
from ..checks import weight_dtype
from ..ssd import skip_and_gate, step_sizes
from . import as_heads


def selective_state_update(state, x, dt, A, B, C, D=None, z=None, dt_bias=None, dt_softplus=False):
    """Shapes as ``ssmbench.selective_state_update``; computed in float32 (float64 for float64
    inputs); a state of that dtype is updated without a copy."""
    dtype, shape = x.dtype, x.shape
    acc = weight_dtype(dtype)
    state_h, x, dt, A, B, C, D, z, dt_bias = as_heads(state, x, dt, A, B, C, D, z, dt_bias)
    # Mamba-2 passes dt, dt_bias and A per head, broadcast (stride 0) over channels and state:
    # the decay is then computed once per head, not once per state element.
    dt, dt_bias, A = _distinct(dt, -1), _distinct(dt_bias, -1), _distinct(A, -2, -1)
    x, dt, B, C = (t.to(acc) for t in (x, dt, B, C))
    dt = step_sizes(dt, dt_bias, dt_softplus)
    h, g = state_h.shape[1], B.shape[1]
    decay = (dt[..., None] * A.to(acc)).exp_()
    new = state_h.mul_(decay) if state_h.dtype == acc else state_h.to(acc) * decay
    # Heads as (g, h/g) so that B and C broadcast over the heads of their group.
    grouped = new.unflatten(1, (g, h // g))
    grouped.addcmul_((dt * x).unflatten(1, (g, h // g))[..., None], B[:, :, None, None, :])
    out = (grouped @ C[:, :, None, :, None]).flatten(1, 2)[..., 0]
    if new is not state_h:
        state_h.copy_(new)
    return skip_and_gate(out, x, D, z).reshape(shape).to(dtype)


def _distinct(t: torch.Tensor | None, *dims: int) -> torch.Tensor | None:
    """t narrowed to its first element along each of dims where it is broadcast (stride 0):
    the same values, once."""
    for dim in dims:
        if t is not None and t.stride(dim) == 0:
            t = t.narrow(dim, 0, 1)
    return t


BACKEND = Backend(
    op="selective_state_update", name="torch", impl=f"{__name__}:selective_state_update", kind="torch",
    priority=0, description="torch, one vectorised step (state updated in place)",
)
