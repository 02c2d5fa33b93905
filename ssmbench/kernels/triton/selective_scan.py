"""Mamba-1 selective scan forward: discretisation, scan and output fused in one kernel.

One program owns one batch element and a block of BLOCK_D channels of one group of B/C, and walks
the sequence in chunks of BLOCK_L steps, keeping the state h (BLOCK_D, n) in float32 registers
from chunk to chunk. Within a chunk each step is the affine map h -> exp(dt A) h + dt u B; the
maps of the chunk are composed by a parallel prefix scan (``tl.associative_scan``) over a
(BLOCK_D, n, BLOCK_L) tile, the carried state is pushed through the prefix products, and
y = C . h + D u, gated by silu(z), is written for the whole chunk at once.

With few channels (b=1, d=1024) this leaves a few hundred programs, each a long serial chain.
Cutting the sequence into segments (scan each from zero, chain the segments' states, scan again
from the chained states) gives many more programs, and is what our CUDA kernel does; here it ran
1.3x slower on an H100 (6.75 against 4.98 ms at L=65536, bf16): this kernel, with chunks of
at most 64 steps then, was bound by the serial chain of its chunks and the arithmetic of its scan
tiles, which the second pass doubles, not by too few programs. Chunks of up to 256 steps are now
among the autotuning candidates; ``kernels/PERF.md`` says what is measured and what is not.
"""
from __future__ import annotations

import triton
import triton.language as tl

from .common import Launcher, block_size, product, prune_to_budget, silu, softplus, strides


@triton.jit
def _compose(decay_first, drive_first, decay_then, drive_then):
    # h -> decay_first h + drive_first, followed by h -> decay_then h + drive_then.
    return decay_first * decay_then, decay_then * drive_first + drive_then


@triton.jit
def chunk_states(h, dt, u, A, B):
    """The states after each step of a chunk, (BLOCK_D, BLOCK_N, BLOCK_L), from the state h
    (BLOCK_D, BLOCK_N) entering it; with the steps' decays exp(dt A) and drives dt u B."""
    decay = tl.exp(dt[:, None, :] * A[:, :, None])
    drive = (dt * u)[:, None, :] * B[None, :, :]
    decay_prefix, drive_prefix = tl.associative_scan((decay, drive), axis=2, combine_fn=_compose)
    return decay_prefix * h[:, :, None] + drive_prefix, decay, drive


@triton.jit
def column(tile, offs_l, index):
    """Column ``index`` of a (BLOCK_D, BLOCK_N, BLOCK_L) tile: a state of the chunk."""
    return tl.sum(tl.where(offs_l[None, None, :] == index, tile, 0.0), axis=2)


@triton.jit
def selective_scan_fwd_kernel(
    u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, delta_bias_ptr, out_ptr, last_state_ptr,
    n_groups, dim_per_group, dstate, seqlen,
    stride_u_b, stride_u_d, stride_u_l,
    stride_delta_b, stride_delta_d, stride_delta_l,
    stride_A_d, stride_A_n,
    stride_B_b, stride_B_g, stride_B_n, stride_B_l,
    stride_C_b, stride_C_g, stride_C_n, stride_C_l,
    stride_D, stride_delta_bias,
    stride_z_b, stride_z_d, stride_z_l,
    stride_out_b, stride_out_d, stride_out_l,
    stride_last_b, stride_last_d, stride_last_n,
    DELTA_SOFTPLUS: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_L: tl.constexpr,
):
    """u, delta, z, out: (b, d, l); A: (d, n); B, C: (b, g, n, l); D, delta_bias: (d,);
    last_state: (b, d, n) float32. D, z, delta_bias and last_state may be None."""
    pid_d = tl.program_id(0)
    pid_bg = tl.program_id(1)
    batch = (pid_bg // n_groups).to(tl.int64)
    group = pid_bg % n_groups
    offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    mask_d = offs_d < dim_per_group
    chan = group * dim_per_group + offs_d
    offs_n = tl.arange(0, BLOCK_N)
    mask_n = offs_n < dstate
    offs_l = tl.arange(0, BLOCK_L)

    # Padded channels and states get A = 0, B = C = 0: they stay zero and add nothing.
    A = tl.load(A_ptr + chan[:, None] * stride_A_d + offs_n[None, :] * stride_A_n,
                mask=mask_d[:, None] & mask_n[None, :], other=0.0).to(tl.float32)
    if D_ptr is not None:
        D = tl.load(D_ptr + chan * stride_D, mask=mask_d, other=0.0).to(tl.float32)
    if delta_bias_ptr is not None:
        delta_bias = tl.load(delta_bias_ptr + chan * stride_delta_bias, mask=mask_d, other=0.0).to(tl.float32)

    u_rows = u_ptr + batch * stride_u_b + chan[:, None] * stride_u_d
    delta_rows = delta_ptr + batch * stride_delta_b + chan[:, None] * stride_delta_d
    out_rows = out_ptr + batch * stride_out_b + chan[:, None] * stride_out_d
    B_rows = B_ptr + batch * stride_B_b + group * stride_B_g + offs_n[:, None] * stride_B_n
    C_rows = C_ptr + batch * stride_C_b + group * stride_C_g + offs_n[:, None] * stride_C_n
    if z_ptr is not None:
        z_rows = z_ptr + batch * stride_z_b + chan[:, None] * stride_z_d

    h = tl.zeros((BLOCK_D, BLOCK_N), dtype=tl.float32)
    for start in range(0, seqlen, BLOCK_L):
        pos = start + offs_l
        mask_l = pos < seqlen
        mask_dl = mask_d[:, None] & mask_l[None, :]
        mask_nl = mask_n[:, None] & mask_l[None, :]
        u = tl.load(u_rows + pos[None, :] * stride_u_l, mask=mask_dl, other=0.0).to(tl.float32)
        dt = tl.load(delta_rows + pos[None, :] * stride_delta_l, mask=mask_dl, other=0.0).to(tl.float32)
        if delta_bias_ptr is not None:
            dt += delta_bias[:, None]
        if DELTA_SOFTPLUS:
            dt = softplus(dt)
        # dt = 0 past the end of the sequence makes those steps the identity, so the state at
        # the last column of the chunk is the state after the last real step.
        dt = tl.where(mask_dl, dt, 0.0)
        B = tl.load(B_rows + pos[None, :] * stride_B_l, mask=mask_nl, other=0.0).to(tl.float32)
        C = tl.load(C_rows + pos[None, :] * stride_C_l, mask=mask_nl, other=0.0).to(tl.float32)

        hs, _, _ = chunk_states(h, dt, u, A, B)
        y = tl.sum(hs * C[None, :, :], axis=1)
        if D_ptr is not None:
            y += D[:, None] * u
        if z_ptr is not None:
            z = tl.load(z_rows + pos[None, :] * stride_z_l, mask=mask_dl, other=0.0).to(tl.float32)
            y *= silu(z)
        tl.store(out_rows + pos[None, :] * stride_out_l, y.to(out_ptr.dtype.element_ty), mask=mask_dl)
        h = column(hs, offs_l, BLOCK_L - 1)

    if last_state_ptr is not None:
        tl.store(last_state_ptr + batch * stride_last_b + chan[:, None] * stride_last_d
                 + offs_n[None, :] * stride_last_n, h, mask=mask_d[:, None] & mask_n[None, :])


def _tile_per_warp(c):
    return product(c, "BLOCK_D", "BLOCK_N", "BLOCK_L") // c["num_warps"]


# Float32 elements of one (BLOCK_D, BLOCK_N, BLOCK_L) tile per warp: about 32 a thread for each of
# the few tiles alive at once.
_BUDGET = 1024

# Long chunks (BLOCK_L of 128 and 256) make fewer serial steps per program, which is what a
# program with few channels waits on; they get 8 warps too, to keep the tile per thread small.
_KERNEL = Launcher(
    selective_scan_fwd_kernel,
    configs=[triton.Config({"BLOCK_D": d, "BLOCK_L": l}, num_warps=4)
             for d in (1, 2, 4, 8, 16) for l in (16, 32, 64, 128, 256)]
    + [triton.Config({"BLOCK_D": d, "BLOCK_L": l}, num_warps=8) for d in (1, 2, 4) for l in (128, 256)],
    key=["dim_per_group", "dstate", "seqlen"],
    prune=prune_to_budget(_tile_per_warp, _BUDGET, least=_BUDGET // 4),
    fixed={"BLOCK_D": 4, "BLOCK_L": 16},
)


def selective_scan_fwd(u, delta, A, B, C, D, z, delta_bias, delta_softplus: bool, out, last_state) -> None:
    """Writes out (b, d, l) and, unless None, last_state (b, d, n) float32.

    B and C are grouped, (b, g, n, l); the other shapes as ``ssmbench.selective_scan``.
    """
    batch, dim, seqlen = u.shape
    n_groups, dstate = B.shape[1], B.shape[2]
    per_group = dim // n_groups

    def grid(meta):
        return (triton.cdiv(per_group, meta["BLOCK_D"]), batch * n_groups)

    _KERNEL[grid](
        u, delta, A, B, C, D, z, delta_bias, out, last_state,
        n_groups, per_group, dstate, seqlen,
        *u.stride(), *delta.stride(), *A.stride(), *B.stride(), *C.stride(),
        *strides(D, 1), *strides(delta_bias, 1), *strides(z, 3), *out.stride(),
        *strides(last_state, 3),
        DELTA_SOFTPLUS=delta_softplus, BLOCK_N=block_size(dstate),
    )
