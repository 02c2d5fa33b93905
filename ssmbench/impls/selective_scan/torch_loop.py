"""The straightforward torch scan: float32 state, discretisation precomputed for all steps,
then a Python loop over L (the shape of mamba-ssm's ``selective_scan_ref``)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..base import Backend


def selective_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                   return_last_state=False):
    """Shapes as ``ssmbench.selective_scan``."""
    dtype = u.dtype
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    u, delta, A, B, C = (t.to(acc) for t in (u, delta, A, B, C))
    if delta_bias is not None:
        delta = delta + delta_bias.to(acc)[:, None]
    if delta_softplus:
        delta = F.softplus(delta)
    b, d, l = u.shape
    if B.dim() == 3:
        B, C = B[:, None], C[:, None]
    per_group = d // B.shape[1]
    B = B.repeat_interleave(per_group, dim=1)  # (b, d, n, l)
    C = C.repeat_interleave(per_group, dim=1)
    delta_a = torch.exp(delta[:, :, None, :] * A[None, :, :, None])  # (b, d, n, l)
    delta_bu = (delta * u)[:, :, None, :] * B
    h = u.new_zeros(b, d, A.shape[1])
    ys = []
    for t in range(l):
        h = delta_a[..., t] * h + delta_bu[..., t]
        ys.append((h * C[..., t]).sum(-1))
    y = torch.stack(ys, dim=-1)
    if D is not None:
        y = y + D.to(acc)[:, None] * u
    if z is not None:
        y = y * F.silu(z.to(acc))
    y = y.to(dtype)
    return (y, h) if return_last_state else y


BACKEND = Backend(
    op="selective_scan", name="torch", impl=f"{__name__}:selective_scan", kind="torch",
    priority=0, description="torch, Python loop over L with precomputed discretisation",
)
