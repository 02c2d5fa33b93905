"""SSD in its chunked matrix form ([M2] section 6): within a chunk of Q steps the output is a
masked (Q, Q) matrix product; chunks exchange only their (p, n) states, through a loop over
chunks (L / Q small steps). Float32 accumulation; autograd works through every step.

Layouts are chosen so that the heavy products are few large batched matmuls: heads that share a
group of B and C are stacked along the columns, giving per chunk (Q, n) @ (n, r p) and
(Q, Q) @ (Q, r p) products with r = h / g heads of p channels each.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..base import Backend
from ..checks import weight_dtype
from . import per_channel, skip_and_gate, step_sizes

# Inside a chunk the decay between steps j <= i is exp(cs_i - cs_j), cs the cumulative log decay.
# Split as exp(cs_i - m) * exp(m - cs_j), with m the middle of the chunk's range, it turns the
# per-head masked (Q, Q) product into one product shared by all heads of a group; both factors
# stay within exp(+-FACTOR_LIMIT), far from float32 overflow (exp(88)), as long as the chunk's
# total log decay is at least -2 * FACTOR_LIMIT. Faster-decaying (batch, chunk, head) triples are
# computed with the decay matrix itself.
FACTOR_LIMIT = 60.0


def ssd(x, dt, A, B, C, chunk_size=256, D=None, z=None, dt_bias=None, initial_states=None,
        dt_softplus=False, return_final_states=False):
    """Shapes as ``ssmbench.ssd``; L is padded to a multiple of chunk_size inside."""
    dtype = x.dtype
    acc = weight_dtype(dtype)
    b, l, h, p = x.shape
    g, n = B.shape[2:]
    r, q = h // g, chunk_size
    c = -(-l // q)
    x, dt, B, C = (t.to(acc) for t in (x, dt, B, C))
    dt = step_sizes(dt, dt_bias, dt_softplus)
    x_out = x
    if c * q != l:
        # Padded steps get dt = 0: no decay and no input, so they leave the state unchanged.
        pad = (0, 0) * (x.dim() - 2) + (0, c * q - l)
        x, B, C = F.pad(x, pad), F.pad(B, pad), F.pad(C, pad)
        dt = F.pad(dt, (0, 0, 0, c * q - l))

    cs = (dt * A.to(acc)).view(b, c, q, h).cumsum(2)  # log decay from the chunk start to step i
    total = cs[:, :, -1]  # (b, c, h)
    fast = total >= -2 * FACTOR_LIMIT
    middle = torch.where(fast, total / 2, torch.zeros_like(total))[:, :, None]
    left = torch.exp(cs - middle)
    # -inf leaves the slow triples' input weights at zero without an exp that could overflow.
    right = dt.view(b, c, q, h) * torch.exp(torch.where(fast[:, :, None], middle - cs, -torch.inf))
    to_end = dt.view(b, c, q, h) * torch.exp(total[:, :, None] - cs)

    xc = x.reshape(b, c, q, g, r, p)

    def per_head(w):  # (b, c, q, h) weights against xc
        return w.view(b, c, q, g, r, 1)

    def group_major(t):  # (b, c, q, g, ...) -> (b, c, g, q, ...) as one matrix per group
        return t.reshape(b, c, q, g, -1).transpose(2, 3)

    Bc, Cc = group_major(B), group_major(C)  # (b, c, g, q, n)

    # Each chunk's own contribution to the state at its end, then the states entering each chunk.
    chunk_states = (group_major(xc * per_head(to_end)).transpose(-1, -2) @ Bc).view(b, c, g, r, p, n)
    chunk_decay = torch.exp(total).view(b, c, g, r, 1, 1)
    state = (x.new_zeros(b, g, r, p, n) if initial_states is None
             else initial_states.to(acc).reshape(b, g, r, p, n))
    entering = []
    for k in range(c):
        entering.append(state)
        state = torch.addcmul(chunk_states[:, k], chunk_decay[:, k], state)
    # exp(middle) turns the left factor back into exp(cs_i) for the entering-state term.
    entering = torch.stack(entering, 1) * torch.exp(middle).view(b, c, g, r, 1, 1)

    scores = (Cc @ Bc.transpose(-1, -2)).tril()  # (b, c, g, q, q): C_i . B_j for j <= i
    from_states = Cc @ entering.view(b, c, g, r * p, n).transpose(-1, -2)  # (b, c, g, q, r p)
    y = torch.baddbmm(from_states.reshape(-1, q, r * p), scores.reshape(-1, q, q),
                      group_major(xc * per_head(right)).reshape(-1, q, r * p))
    y = y.view(b, c, g, q, r, p).transpose(2, 3) * per_head(left)
    y = y.reshape(b, c, q, h, p)
    if not bool(fast.all()):
        y = _add_slow_triples(y, ~fast, cs, scores, xc.reshape(b, c, q, h, p) * dt.view(b, c, q, h, 1), r)
    y = skip_and_gate(y.reshape(b, c * q, h, p)[:, :l], x_out, per_channel(D), z).to(dtype)
    return (y, state.reshape(b, h, p, n)) if return_final_states else y


def _add_slow_triples(y, slow, cs, scores, xdt, heads_per_group):
    """Adds the within-chunk term of the (batch, chunk, head) triples marked in ``slow``, with the
    decay matrix exp(cs_i - cs_j) computed entry by entry. y, xdt: (b, c, q, h, p); cs: (b, c, q, h);
    scores: (b, c, g, q, q)."""
    bi, ci, hi = slow.nonzero(as_tuple=True)
    cs = cs[bi, ci, :, hi]  # (k, q)
    q = cs.shape[-1]
    causal = torch.ones(q, q, dtype=torch.bool, device=cs.device).tril()
    decay = torch.exp((cs[:, :, None] - cs[:, None, :]).masked_fill(~causal, -torch.inf))
    y[bi, ci, :, hi] += (decay * scores[bi, ci, hi // heads_per_group]) @ xdt[bi, ci, :, hi]
    return y


BACKEND = Backend(
    op="ssd", name="torch_chunked", impl=f"{__name__}:ssd", kind="torch",
    priority=10, description="torch, chunked SSD matrix form (batched matmuls, loop over chunks)",
)
