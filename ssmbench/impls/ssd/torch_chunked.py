"""SSD in its chunked matrix form ([M2] section 6): within a chunk of Q steps the output is a
masked (Q, Q) matrix product; chunks exchange only their (p, n) states, through a recurrence over
the L / Q chunks. Float32 accumulation; autograd works through every step.

Speed on the CPU comes from two choices. Heads that share a group of B and C are stacked along
the columns, so that the heavy work is a few large batched matmuls per chunk ((Q, n) @ (n, r p)
and (Q, Q) @ (Q, r p), r = h / g heads of p channels). And large intermediates are updated in
place wherever autograd allows, since allocating fresh memory (page faults) costs as much as
the arithmetic on it.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..base import Backend
from ..checks import weight_dtype
from . import per_channel, scale_, skip_and_gate, step_sizes

# Inside a chunk the decay between steps j <= i is exp(cs_i - cs_j), cs the cumulative log decay.
# Split as exp(cs_i - m) * exp(m - cs_j), with m the middle of the chunk's range, it turns the
# per-head masked (Q, Q) product into one product shared by all heads of a group. Both factors
# stay within exp(+-FACTOR_LIMIT), far from float32 overflow (exp(88)), as long as the chunk's
# total log decay is at least -2 * FACTOR_LIMIT; faster-decaying (batch, chunk, head) triples
# are computed with the decay matrix itself.
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
    x_unpadded = x
    if c * q != l:
        # Padded steps get dt = 0: no decay and no input, so they leave the state unchanged.
        pad = (0, 0, 0, 0, 0, c * q - l)
        x, B, C = F.pad(x, pad), F.pad(B, pad), F.pad(C, pad)
        dt = F.pad(dt, pad[2:])
    dt = dt.view(b, c, q, h)
    x, B, C = x.reshape(b, c, q, h, p), B.reshape(b, c, q, g, n), C.reshape(b, c, q, g, n)

    cs = (dt * A.to(acc)).cumsum(2)  # log decay from the chunk start to step i, inclusive
    total = cs[:, :, -1]  # (b, c, h)
    fast = total >= -2 * FACTOR_LIMIT
    middle = torch.where(fast, total / 2, 0.0)
    left = torch.exp(cs - middle[:, :, None])
    # -inf gives the slow triples zero weight without an exp that could overflow.
    right = dt * torch.exp(torch.where(fast[:, :, None], middle[:, :, None] - cs, -torch.inf))

    def group_major(t):  # (b, c, q, g, ...) -> (b, c, g, q, ...): one matrix per chunk and group
        return t.reshape(b, c, q, g, -1).transpose(2, 3)

    Bg, Cg = group_major(B), group_major(C)
    xr = group_major(x * right[..., None])  # (b, c, g, q, r p)
    # A chunk's own contribution to its end state: sum_j exp(total - cs_j) dt_j x_j B_j^T. Kept
    # as the matmul's own (b, c, g, r p, n) tensor, not a view, so that StatePassing can
    # overwrite it.
    states = scale_(xr.transpose(-1, -2) @ Bg,
                    torch.exp(total - middle).repeat_interleave(p, -1).view(b, c, g, r * p, 1))
    slow = None if bool(fast.all()) else _slow_triples(~fast, cs, dt, x, B, C, r)
    if slow is not None:
        index, slow_y, slow_states = slow
        states.view(b, c, h, p, n)[index] += slow_states
    # States entering each chunk, times exp(middle) so that left * that = exp(cs_i).
    entering, final = StatePassing.apply(states, total, middle, initial_states)

    scores = (Cg @ Bg.transpose(-1, -2)).tril_()  # (b, c, g, q, q): C_i . B_j for j <= i
    y = Cg @ entering.transpose(-1, -2)  # (b, c, g, q, r p)
    y.view(-1, q, r * p).baddbmm_(scores.view(-1, q, q), xr.reshape(-1, q, r * p))
    y = scale_(y.view(b, c, g, q, r, p), group_major(left).unsqueeze(-1))
    y = y.transpose(2, 3).reshape(b, c, q, h, p)
    if slow is not None:
        y[index[0], index[1], :, index[2]] += slow_y
    y = y.reshape(b, c * q, h, p)[:, :l]
    y = skip_and_gate(y, x_unpadded, per_channel(D), z, in_place=True).to(dtype).contiguous()
    return (y, final) if return_final_states else y


def _slow_triples(slow, cs, dt, x, B, C, heads_per_group):
    """Within-chunk output (k, q, p) and chunk-end state (k, p, n) of the k (batch, chunk, head)
    triples marked in ``slow`` (b, c, h), from the decay matrix exp(cs_i - cs_j) entry by entry.
    cs, dt: (b, c, q, h); x: (b, c, q, h, p); B, C: (b, c, q, g, n)."""
    bi, ci, hi = slow.nonzero(as_tuple=True)
    gi = hi // heads_per_group
    cs = cs[bi, ci, :, hi]  # (k, q)
    xdt = x[bi, ci, :, hi] * dt[bi, ci, :, hi, None]  # (k, q, p)
    B, C = B[bi, ci, :, gi], C[bi, ci, :, gi]  # (k, q, n)
    q = cs.shape[-1]
    causal = torch.ones(q, q, dtype=torch.bool, device=cs.device).tril()
    decay = torch.exp((cs[:, :, None] - cs[:, None, :]).masked_fill(~causal, -torch.inf))
    y = (decay * (C @ B.transpose(-1, -2))) @ xdt
    states = (xdt * torch.exp(cs[:, -1:] - cs)[..., None]).transpose(-1, -2) @ B
    return (bi, ci, hi), y, states


class StatePassing(torch.autograd.Function):
    """The recurrence over chunks, in place (a loop of small autograd steps would allocate two
    fresh states per chunk, and fresh memory costs page faults).

    states: (b, c, h * p, n) in any split of h * p, each chunk's own end-state contribution,
    overwritten with the result; log_decay, middle: (b, c, h) each chunk's total log decay and
    factor split; initial: (b, h, p, n) or None. E_0 = initial, E_{k+1} = exp(log_decay_k) E_k +
    states_k. Returns exp(middle_k) E_k for every chunk k (in the memory and shape of states),
    and E_c, the final state (b, h, p, n).
    """

    @staticmethod
    def forward(ctx, states, log_decay, middle, initial):
        b, c, h = log_decay.shape
        chunks = states.view(b, c, h, -1, states.shape[-1])
        decay, scale = (torch.exp(t)[..., None, None] for t in (log_decay, middle))
        state = (chunks.new_zeros(chunks[:, 0].shape) if initial is None
                 else initial.to(states.dtype, copy=True))
        spare = torch.empty_like(state)
        for k in range(c):
            torch.addcmul(chunks[:, k], state, decay[:, k], out=spare)
            torch.mul(state, scale[:, k], out=chunks[:, k])
            state, spare = spare, state
        ctx.mark_dirty(states)
        ctx.save_for_backward(states, log_decay, middle)
        ctx.has_initial = initial is not None
        return states, state

    @staticmethod
    def backward(ctx, grad_entering, grad_final):
        entering, log_decay, middle = ctx.saved_tensors
        shape = entering.shape
        b, c, h = log_decay.shape
        entering, grad_entering = (t.reshape(b, c, h, -1, shape[-1]) for t in (entering, grad_entering))
        decay, scale = (torch.exp(t)[..., None, None] for t in (log_decay, middle))
        # adjoint = d loss / d E_k, swept from the last chunk back; grad_states_k = adjoint_{k+1}.
        adjoint = grad_final.clone()
        grad_states = torch.empty_like(entering)
        for k in reversed(range(c)):
            grad_states[:, k] = adjoint
            adjoint.mul_(decay[:, k]).addcmul_(grad_entering[:, k], scale[:, k])
        # E_k = entering_k / scale_k feeds exp(log_decay_k) E_k into E_{k+1}.
        grad_log_decay = (grad_states * entering).sum((-1, -2)) * (decay / scale)[..., 0, 0]
        grad_middle = (grad_entering * entering).sum((-1, -2))
        return grad_states.view(shape), grad_log_decay, grad_middle, (adjoint if ctx.has_initial else None)


BACKEND = Backend(
    op="ssd", name="torch_chunked", has_backward=True, impl=f"{__name__}:ssd", kind="torch",
    priority=10, description="torch, chunked SSD matrix form (batched matmuls, recurrence over chunks)",
)
