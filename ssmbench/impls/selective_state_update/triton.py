"""Our Triton decode step (ssmbench/kernels/triton/selective_state_update.py)."""
from __future__ import annotations

import torch

from ..base import triton_backend
from . import as_heads


def selective_state_update(state, x, dt, A, B, C, D=None, z=None, dt_bias=None, dt_softplus=False):
    """Shapes as ``ssmbench.selective_state_update``; ``state`` is updated in place."""
    from ...kernels.triton import selective_state_update as kernels

    out = torch.empty_like(x)
    heads = as_heads(state, x, dt, A, B, C, D, z, dt_bias)  # views: the kernel writes the caller's state
    out_heads = out.unflatten(1, heads[1].shape[1:]) if x.dim() == 2 else out
    kernels.selective_state_update_fwd(*heads, dt_softplus, out_heads)
    return out


BACKEND = triton_backend(
    "selective_state_update", f"{__name__}:selective_state_update",
    "Triton, one program per (batch, head, block of state rows); both layouts",
)
