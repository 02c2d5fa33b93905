"""Float64 reference: scores, masked softmax and weighted sum as einsums."""
from __future__ import annotations

import torch

from ..base import Backend
from . import causal_mask, default_scale


def attention(q, k, v, softmax_scale=None, causal=False):
    """out[b, i, h] = sum_j softmax_j(scale <q[b, i, h], k[b, j, h // g]>) v[b, j, h // g].

    q: (b, lq, h, d); k, v: (b, lk, hk, d); g = h / hk. causal keeps keys j <= i + lk - lq; a
    query with no key left outputs zeros. Computed in float64, returned in q's dtype.
    """
    dtype = q.dtype
    q, k, v = q.double(), k.double(), v.double()
    h, lq, lk, d = q.shape[2], q.shape[1], k.shape[1], q.shape[3]
    k = k.repeat_interleave(h // k.shape[2], dim=2)
    v = v.repeat_interleave(h // v.shape[2], dim=2)
    scores = default_scale(softmax_scale, d) * torch.einsum("bihd,bjhd->bhij", q, k)
    keep = causal_mask(lq, lk, q.device) if causal else q.new_ones(lq, lk, dtype=torch.bool)
    probs = torch.softmax(scores.masked_fill(~keep, -torch.inf), dim=-1).where(keep, 0.0)
    return torch.einsum("bhij,bjhd->bihd", probs, v).to(dtype)


BACKEND = Backend(
    op="attention", name="reference", has_backward=True, impl=f"{__name__}:attention", kind="reference",
    priority=-100, max_sensible_len=4096,  # holds (L, L) float64 scores per head
    description="float64 einsum softmax attention; the ground truth",
)
