"""The straightforward torch scan: float32 state, discretisation precomputed for all steps,
then a Python loop over L (the shape of mamba-ssm's ``selective_scan_ref``)."""
from __future__ import annotations

import functools

import torch

from ..base import Backend
from . import _common as common


def _core(u, delta, A, B, C):
    """u, delta (b, d, l); A (d, n); B, C (b, g, n, l) -> y (b, d, l), last state (b, d, n)."""
    b, d, l = u.shape
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
    return torch.stack(ys, dim=-1), h


selective_scan = functools.partial(common.run, _core)
selective_scan.__doc__ = "Shapes as ``ssmbench.selective_scan``."

BACKEND = Backend(
    op="selective_scan", name="torch", has_backward=True, impl=f"{__name__}:selective_scan", kind="torch",
    priority=0, python_loop=True, max_sensible_len=2**13,
    description="torch, Python loop over L with precomputed discretisation",
)
