"""Selective scan backward: the input gradients of h_t = a_t h_{t-1} + b_t, y_t = C_t . h_t, with
a_t = exp(dt_t A) and b_t = dt_t u_t B_t, recomputing the states rather than reading stored ones.

One program owns one batch element and a block of channels of one group of B/C, as in the
forward kernel, and makes two passes over the sequence in chunks of BLOCK_L steps:

1. forward, from the initial state: the state entering each chunk is written to a scratch
   buffer, (b, L / 16, d, n) float32 (16: the shortest chunk), a sixteenth of all the states;
2. backward, chunk by chunk from the end: the chunk's states are rebuilt from the one entering
   it (the forward's prefix scan), and the adjoint lambda_t = dL/dh_t, which obeys
   lambda_t = C_t dy_t + a_{t+1} lambda_{t+1}, is a reverse prefix scan of the same affine maps
   with the decays shifted by one step (a_{t+1} is read at position t + 1), carried across
   chunks as the forward carries h, and starting from the last state's gradient.

From lambda and the states, with a_t h_{t-1} = h_t - b_t (no division by a decay that may
underflow):
  dC_t = sum_d dy_t h_t            du_t = dt_t sum_n lambda_t B_t + D dy_t
  dB_t = sum_d lambda_t dt_t u_t   ddt_t = sum_n lambda_t (u_t B_t + A (h_t - b_t))
  dA = sum_t lambda_t dt_t (h_t - b_t)     d h_init = a_0 lambda_0 (steps numbered from 0)
Sums over channels (dB, dC) and over the batch (dA, dD, d delta_bias) cross programs and are
added atomically into float32 buffers.

Channels may share one step size: channel c reads delta, delta_bias and A's row at c // HEAD_DIM
(HEAD_DIM = 1 for Mamba-1; Mamba-2's SSD is this scan over its heads' p channels, with A a scalar
per head). The per-channel ddelta, dA and d delta_bias are then summed over a head's channels by
the caller.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .common import Launcher, block_size, product, prune_to_budget, softplus, strides
from .selective_scan import _compose, chunk_states, column


@triton.jit
def _step_sizes(delta_rows, delta_bias, pos, stride_l, mask, SOFTPLUS: tl.constexpr):
    """(dt, d dt / d delta) at positions pos; dt = 0 (an identity step) where masked."""
    raw = tl.load(delta_rows + pos[None, :] * stride_l, mask=mask, other=0.0).to(tl.float32)
    raw += delta_bias[:, None]
    if SOFTPLUS:
        return tl.where(mask, softplus(raw), 0.0), tl.sigmoid(raw)
    return tl.where(mask, raw, 0.0), raw * 0.0 + 1.0


@triton.jit
def selective_scan_bwd_kernel(
    u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, delta_bias_ptr, h0_ptr, dout_ptr, dlast_ptr,
    chunk_state_ptr,
    du_ptr, ddelta_ptr, dA_ptr, dB_ptr, dC_ptr, dD_ptr, dz_ptr, ddelta_bias_ptr, dh0_ptr,
    n_groups, dim_per_group, dstate, seqlen,
    stride_u_b, stride_u_d, stride_u_l,
    stride_delta_b, stride_delta_d, stride_delta_l,
    stride_A_d, stride_A_n,
    stride_B_b, stride_B_g, stride_B_n, stride_B_l,
    stride_C_b, stride_C_g, stride_C_n, stride_C_l,
    stride_D, stride_delta_bias,
    stride_z_b, stride_z_d, stride_z_l,
    stride_h0_b, stride_h0_d, stride_h0_n,
    stride_dout_b, stride_dout_d, stride_dout_l,
    stride_dlast_b, stride_dlast_d, stride_dlast_n,
    stride_cs_b, stride_cs_c, stride_cs_d, stride_cs_n,
    stride_du_b, stride_du_d, stride_du_l,
    stride_dz_b, stride_dz_d, stride_dz_l,
    stride_dh0_b, stride_dh0_d, stride_dh0_n,
    DELTA_SOFTPLUS: tl.constexpr, HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_L: tl.constexpr,
):
    """Inputs as the forward kernel's, and h0, dlast: (b, d, n) float32, dout: (b, d, l).
    Gradients: du, dz (b, d, l) in u's dtype; ddelta (b, d, l) float32 contiguous, per channel;
    dA (d, n), dB, dC (b, g, n, l), dD, d delta_bias (d,), float32, contiguous and zeroed by the
    caller; dh0 (b, d, n) float32. z, D, delta_bias, h0 and dlast may be None, and dz, dh0 with
    z and h0."""
    pid_d = tl.program_id(0)
    pid_bg = tl.program_id(1)
    batch = (pid_bg // n_groups).to(tl.int64)
    group = pid_bg % n_groups
    offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    mask_d = offs_d < dim_per_group
    chan = group * dim_per_group + offs_d
    head = chan // HEAD_DIM
    offs_n = tl.arange(0, BLOCK_N)
    mask_n = offs_n < dstate
    mask_dn = mask_d[:, None] & mask_n[None, :]
    offs_l = tl.arange(0, BLOCK_L)
    dim = n_groups * dim_per_group

    # Padded channels and states get A = 0 and zero inputs and output gradients: their
    # states and adjoints stay zero and add nothing to any sum.
    A = tl.load(A_ptr + head[:, None] * stride_A_d + offs_n[None, :] * stride_A_n,
                mask=mask_dn, other=0.0).to(tl.float32)
    D = tl.zeros((BLOCK_D,), tl.float32)
    if D_ptr is not None:
        D = tl.load(D_ptr + chan * stride_D, mask=mask_d, other=0.0).to(tl.float32)
    delta_bias = tl.zeros((BLOCK_D,), tl.float32)
    if delta_bias_ptr is not None:
        delta_bias = tl.load(delta_bias_ptr + head * stride_delta_bias, mask=mask_d, other=0.0).to(tl.float32)

    u_rows = u_ptr + batch * stride_u_b + chan[:, None] * stride_u_d
    delta_rows = delta_ptr + batch * stride_delta_b + head[:, None] * stride_delta_d
    dout_rows = dout_ptr + batch * stride_dout_b + chan[:, None] * stride_dout_d
    B_rows = B_ptr + batch * stride_B_b + group * stride_B_g + offs_n[:, None] * stride_B_n
    C_rows = C_ptr + batch * stride_C_b + group * stride_C_g + offs_n[:, None] * stride_C_n
    state_tiles = (chunk_state_ptr + batch * stride_cs_b + chan[:, None] * stride_cs_d
                   + offs_n[None, :] * stride_cs_n)

    # Pass 1: the state entering each chunk.
    h = tl.zeros((BLOCK_D, BLOCK_N), dtype=tl.float32)
    if h0_ptr is not None:
        h = tl.load(h0_ptr + batch * stride_h0_b + chan[:, None] * stride_h0_d + offs_n[None, :] * stride_h0_n,
                    mask=mask_dn, other=0.0).to(tl.float32)
    for start in range(0, seqlen, BLOCK_L):
        tl.store(state_tiles + (start // BLOCK_L) * stride_cs_c, h, mask=mask_dn)
        pos = start + offs_l
        mask_dl = mask_d[:, None] & (pos < seqlen)[None, :]
        mask_nl = mask_n[:, None] & (pos < seqlen)[None, :]
        u = tl.load(u_rows + pos[None, :] * stride_u_l, mask=mask_dl, other=0.0).to(tl.float32)
        dt, _ = _step_sizes(delta_rows, delta_bias, pos, stride_delta_l, mask_dl, DELTA_SOFTPLUS)
        B = tl.load(B_rows + pos[None, :] * stride_B_l, mask=mask_nl, other=0.0).to(tl.float32)
        hs, _, _ = chunk_states(h, dt, u, A, B)
        h = column(hs, offs_l, BLOCK_L - 1)

    # Pass 2: lambda from the end; `carry` is lambda at the first step of the chunk after this.
    carry = tl.zeros((BLOCK_D, BLOCK_N), dtype=tl.float32)
    if dlast_ptr is not None:
        carry = tl.load(dlast_ptr + batch * stride_dlast_b + chan[:, None] * stride_dlast_d
                        + offs_n[None, :] * stride_dlast_n, mask=mask_dn, other=0.0).to(tl.float32)
    dA = tl.zeros((BLOCK_D, BLOCK_N), dtype=tl.float32)
    dh0 = tl.zeros((BLOCK_D, BLOCK_N), dtype=tl.float32)
    dD = tl.zeros((BLOCK_D,), dtype=tl.float32)
    ddelta_bias = tl.zeros((BLOCK_D,), dtype=tl.float32)
    dB_rows = dB_ptr + (batch * n_groups + group) * dstate * seqlen + offs_n[:, None] * seqlen
    dC_rows = dC_ptr + (batch * n_groups + group) * dstate * seqlen + offs_n[:, None] * seqlen
    n_chunks = tl.cdiv(seqlen, BLOCK_L)
    for back in range(0, n_chunks):
        chunk = n_chunks - 1 - back
        pos = chunk * BLOCK_L + offs_l
        mask_l = pos < seqlen
        mask_dl = mask_d[:, None] & mask_l[None, :]
        mask_nl = mask_n[:, None] & mask_l[None, :]
        u = tl.load(u_rows + pos[None, :] * stride_u_l, mask=mask_dl, other=0.0).to(tl.float32)
        dt, dt_slope = _step_sizes(delta_rows, delta_bias, pos, stride_delta_l, mask_dl, DELTA_SOFTPLUS)
        dt_next, _ = _step_sizes(delta_rows, delta_bias, pos + 1, stride_delta_l,
                                 mask_d[:, None] & (pos + 1 < seqlen)[None, :], DELTA_SOFTPLUS)
        B = tl.load(B_rows + pos[None, :] * stride_B_l, mask=mask_nl, other=0.0).to(tl.float32)
        C = tl.load(C_rows + pos[None, :] * stride_C_l, mask=mask_nl, other=0.0).to(tl.float32)
        dout = tl.load(dout_rows + pos[None, :] * stride_dout_l, mask=mask_dl, other=0.0).to(tl.float32)

        h = tl.load(state_tiles + chunk * stride_cs_c, mask=mask_dn, other=0.0)
        hs, decay, drive = chunk_states(h, dt, u, A, B)
        y = tl.sum(hs * C[None, :, :], axis=1) + D[:, None] * u

        dy = dout
        if z_ptr is not None:
            z = tl.load(z_ptr + batch * stride_z_b + chan[:, None] * stride_z_d + pos[None, :] * stride_z_l,
                        mask=mask_dl, other=0.0).to(tl.float32)
            gate = tl.sigmoid(z)
            dz = dout * y * gate * (1.0 + z * (1.0 - gate))
            tl.store(dz_ptr + batch * stride_dz_b + chan[:, None] * stride_dz_d + pos[None, :] * stride_dz_l,
                     dz.to(dz_ptr.dtype.element_ty), mask=mask_dl)
            dy = dout * z * gate
        dD += tl.sum(dy * u, axis=1)

        shifted_decay = tl.exp(dt_next[:, None, :] * A[:, :, None])
        adj_decay, adj_drive = tl.associative_scan(
            (shifted_decay, C[None, :, :] * dy[:, None, :]), axis=2, combine_fn=_compose, reverse=True)
        lam = adj_decay * carry[:, :, None] + adj_drive
        carry = column(lam, offs_l, 0)
        if h0_ptr is not None:  # the initial state enters step 0 as a_0 h0: its gradient a_0 lambda_0
            dh0 = column(decay * lam, offs_l, 0)

        before = hs - drive  # a_t h_{t-1}
        lam_B = tl.sum(lam * B[None, :, :], axis=1)
        du = dt * lam_B + D[:, None] * dy
        ddt = u * lam_B + tl.sum(lam * A[:, :, None] * before, axis=1)
        ddelta = tl.where(mask_dl, ddt * dt_slope, 0.0)
        ddelta_bias += tl.sum(ddelta, axis=1)
        dA += tl.sum(lam * before * dt[:, None, :], axis=2)
        tl.store(du_ptr + batch * stride_du_b + chan[:, None] * stride_du_d + pos[None, :] * stride_du_l,
                 du.to(du_ptr.dtype.element_ty), mask=mask_dl)
        tl.store(ddelta_ptr + batch * dim * seqlen + chan[:, None] * seqlen + pos[None, :],
                 ddelta.to(ddelta_ptr.dtype.element_ty), mask=mask_dl)
        tl.atomic_add(dB_rows + pos[None, :], tl.sum(lam * (dt * u)[:, None, :], axis=0), mask=mask_nl)
        tl.atomic_add(dC_rows + pos[None, :], tl.sum(hs * dy[:, None, :], axis=0), mask=mask_nl)

    tl.atomic_add(dA_ptr + chan[:, None] * dstate + offs_n[None, :], dA, mask=mask_dn)
    tl.atomic_add(dD_ptr + chan, dD, mask=mask_d)
    tl.atomic_add(ddelta_bias_ptr + chan, ddelta_bias, mask=mask_d)
    if h0_ptr is not None:
        tl.store(dh0_ptr + batch * stride_dh0_b + chan[:, None] * stride_dh0_d + offs_n[None, :] * stride_dh0_n,
                 dh0, mask=mask_dn)


def _tile_per_warp(c):
    return product(c, "BLOCK_D", "BLOCK_N", "BLOCK_L") // c["num_warps"]


# Float32 elements of one (BLOCK_D, BLOCK_N, BLOCK_L) tile per warp: the backward keeps about
# twice the forward's tiles alive (states, adjoints and their scans), so half its budget.
_BUDGET = 512
_CHUNKS = (16, 32, 64, 128)

_KERNEL = Launcher(
    selective_scan_bwd_kernel,
    configs=[triton.Config({"BLOCK_D": d, "BLOCK_L": l}, num_warps=4) for d in (1, 2, 4, 8) for l in _CHUNKS],
    key=["dim_per_group", "dstate", "seqlen"],
    prune=prune_to_budget(_tile_per_warp, _BUDGET, least=_BUDGET // 4),
    # The dB, dC, dA, dD and delta-bias buffers are accumulated into: zeroed between trials.
    restore_value=("dA_ptr", "dB_ptr", "dC_ptr", "dD_ptr", "ddelta_bias_ptr"),
    fixed={"BLOCK_D": 4, "BLOCK_L": 16},
)


def selective_scan_bwd(u, delta, A, B, C, D, z, delta_bias, delta_softplus: bool, dout,
                       h0=None, dlast=None, head_dim: int = 1):
    """The input gradients of ``selective_scan_fwd`` for the output gradient dout (b, d, l) and,
    unless None, the last state's dlast (b, d, n).

    B, C grouped (b, g, n, l); h0 (b, d, n) the initial state or None. With head_dim > 1, delta
    (b, d / head_dim, l), delta_bias (d / head_dim,) and A (d / head_dim, n) are read at channel
    // head_dim (A may be a broadcast view). Returns a dict of du, dz in u's dtype and, in
    float32, ddelta (b, d, l), dA (d, n) and ddelta_bias (d,) per channel, dB, dC, dD and dh0.
    dz and dh0 are None without z and h0; dD and ddelta_bias are to be dropped without D and
    delta_bias.
    """
    batch, dim, seqlen = u.shape
    n_groups, dstate = B.shape[1], B.shape[2]
    per_group = dim // n_groups
    f32 = {"device": u.device, "dtype": torch.float32}
    zeros = torch.zeros

    grads = {
        "du": torch.empty_like(u, memory_format=torch.contiguous_format),
        "ddelta": torch.empty(batch, dim, seqlen, **f32),
        "dz": torch.empty_like(z, memory_format=torch.contiguous_format) if z is not None else None,
        "dA": zeros(dim, dstate, **f32),
        "dB": zeros(batch, n_groups, dstate, seqlen, **f32),
        "dC": zeros(batch, n_groups, dstate, seqlen, **f32),
        # Summed whether or not D and delta_bias are given: the atomics need somewhere to go.
        "dD": zeros(dim, **f32),
        "ddelta_bias": zeros(dim, **f32),
        "dh0": torch.empty(batch, dim, dstate, **f32) if h0 is not None else None,
    }
    chunk_states = torch.empty(batch, triton.cdiv(seqlen, min(_CHUNKS)), dim, dstate, **f32)

    def grid(meta):
        return (triton.cdiv(per_group, meta["BLOCK_D"]), batch * n_groups)

    g = grads
    _KERNEL[grid](
        u, delta, A, B, C, D, z, delta_bias, h0, dout, dlast, chunk_states,
        g["du"], g["ddelta"], g["dA"], g["dB"], g["dC"], g["dD"], g["dz"], g["ddelta_bias"], g["dh0"],
        n_groups, per_group, dstate, seqlen,
        *u.stride(), *delta.stride(), *A.stride(), *B.stride(), *C.stride(),
        *strides(D, 1), *strides(delta_bias, 1), *strides(z, 3), *strides(h0, 3), *dout.stride(),
        *strides(dlast, 3), *chunk_states.stride(), *g["du"].stride(), *strides(g["dz"], 3),
        *strides(g["dh0"], 3),
        DELTA_SOFTPLUS=delta_softplus, HEAD_DIM=head_dim, BLOCK_N=block_size(dstate),
    )
    return grads
