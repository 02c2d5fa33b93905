"""What a selective-scan backend does around its core recurrence, shared so that each backend
(ours or an adapter around a third-party core) only supplies the recurrence itself."""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from ..checks import weight_dtype

# core(u, delta, A, B, C) -> (y, last_state): u, delta (b, d, l) with delta already biased and
# softplus-ed; A (d, n); B, C (b, g, n, l); all in the compute dtype. y (b, d, l) is the C
# contraction of the states alone (no D, no gate); last_state (b, d, n), or None if the core
# cannot give it.
Core = Callable[..., tuple[torch.Tensor, torch.Tensor | None]]


def run(core: Core, u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
        return_last_state=False):
    """The public selective_scan contract around ``core``: casts to the compute dtype, applies
    delta_bias and softplus, groups B and C as (b, g, n, l), adds D u, gates by silu(z) and
    casts the output back to u's dtype. Differentiable wherever ``core`` is."""
    dtype = u.dtype
    acc = weight_dtype(dtype)  # half inputs scan in float32: the state must not round every step
    u, delta, A, B, C = (t.to(acc) for t in (u, delta, A, B, C))
    if delta_bias is not None:
        delta = delta + delta_bias.to(acc)[:, None]
    if delta_softplus:
        delta = F.softplus(delta)
    if B.dim() == 3:
        B, C = B[:, None], C[:, None]
    y, last = core(u, delta, A, B, C)
    if D is not None:
        y = torch.addcmul(y, u, D.to(acc)[:, None])
    if z is not None:
        y = y * F.silu(z.to(acc))
    y = y.to(dtype)
    return (y, last) if return_last_state else y


def group_slices(dim: int, groups: int) -> list[slice]:
    """The channel range of each group of B and C (channels d are split evenly, in order)."""
    per_group = dim // groups
    return [slice(i * per_group, (i + 1) * per_group) for i in range(groups)]
