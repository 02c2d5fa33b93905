"""Plain torch attention: the full score matrix in float32, masked softmax, GQA by repeating the
key/value heads. Memory grows as lq * lk, which is the point of comparing against it."""
from __future__ import annotations

import torch

from ..base import Backend
from . import TOLERANCES, causal_mask, default_scale


def attention(q, k, v, softmax_scale=None, causal=False):
    """Shapes as ``ssmbench.attention``."""
    acc = torch.float64 if q.dtype == torch.float64 else torch.float32
    h, lq, lk, d = q.shape[2], q.shape[1], k.shape[1], q.shape[3]
    group = h // k.shape[2]
    # (b, l, h, d) -> (b, h, l, d), so that the matmuls batch over heads.
    qt = q.to(acc).transpose(1, 2)
    kt = k.to(acc).repeat_interleave(group, dim=2).transpose(1, 2)
    vt = v.to(acc).repeat_interleave(group, dim=2).transpose(1, 2)
    scores = (qt @ kt.transpose(-1, -2)) * default_scale(softmax_scale, d)
    if causal:
        keep = causal_mask(lq, lk, q.device)
        # Queries with no key left would softmax to NaN; they output zeros instead.
        probs = torch.softmax(scores.masked_fill(~keep, -torch.inf), dim=-1).where(keep, 0.0)
    else:
        probs = torch.softmax(scores, dim=-1)
    return (probs @ vt).transpose(1, 2).to(q.dtype)


BACKEND = Backend(
    op="attention", name="torch", has_backward=True, impl=f"{__name__}:attention", kind="torch", priority=0,
    tolerances=TOLERANCES, max_sensible_len=2**14,  # (L, L) scores per head
    description="torch matmul + masked softmax in float32; GQA by repeat_interleave",
)
