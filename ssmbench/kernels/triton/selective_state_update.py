"""One decode step of the selective scan, updating the state in place.

The kernel takes Mamba-2's layout, which holds Mamba-1's as one head: state (b, h, p, n); x, dt,
z, out: (b, h, p); A: (h, p, n); B, C: (b, g, n) shared by h/g consecutive heads; D, dt_bias:
(h, p). One program owns one batch element, one head and BLOCK_P rows of its state.
"""
from __future__ import annotations

import triton
import triton.language as tl

from .common import Launcher, block_size, product, prune_to_budget, silu, softplus, strides


@triton.jit
def selective_state_update_kernel(
    state_ptr, x_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, dt_bias_ptr, out_ptr,
    nheads, heads_per_group, headdim, dstate,
    stride_state_b, stride_state_h, stride_state_p, stride_state_n,
    stride_x_b, stride_x_h, stride_x_p,
    stride_dt_b, stride_dt_h, stride_dt_p,
    stride_A_h, stride_A_p, stride_A_n,
    stride_B_b, stride_B_g, stride_B_n,
    stride_C_b, stride_C_g, stride_C_n,
    stride_D_h, stride_D_p,
    stride_z_b, stride_z_h, stride_z_p,
    stride_dt_bias_h, stride_dt_bias_p,
    stride_out_b, stride_out_h, stride_out_p,
    DT_SOFTPLUS: tl.constexpr,
    BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """h = exp(dt A) h + dt x B;  out = (C . h + D x) silu(z). D, z and dt_bias may be None."""
    pid_p = tl.program_id(0)
    pid_bh = tl.program_id(1)
    batch = (pid_bh // nheads).to(tl.int64)
    head = pid_bh % nheads
    group = head // heads_per_group
    offs_p = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)
    mask_p = offs_p < headdim
    offs_n = tl.arange(0, BLOCK_N)
    mask_n = offs_n < dstate
    mask_pn = mask_p[:, None] & mask_n[None, :]

    state_ptrs = (state_ptr + batch * stride_state_b + head * stride_state_h
                  + offs_p[:, None] * stride_state_p + offs_n[None, :] * stride_state_n)
    state = tl.load(state_ptrs, mask=mask_pn, other=0.0).to(tl.float32)
    x = tl.load(x_ptr + batch * stride_x_b + head * stride_x_h + offs_p * stride_x_p,
                mask=mask_p, other=0.0).to(tl.float32)
    dt = tl.load(dt_ptr + batch * stride_dt_b + head * stride_dt_h + offs_p * stride_dt_p,
                 mask=mask_p, other=0.0).to(tl.float32)
    if dt_bias_ptr is not None:
        dt += tl.load(dt_bias_ptr + head * stride_dt_bias_h + offs_p * stride_dt_bias_p,
                      mask=mask_p, other=0.0).to(tl.float32)
    if DT_SOFTPLUS:
        dt = softplus(dt)
    A = tl.load(A_ptr + head * stride_A_h + offs_p[:, None] * stride_A_p + offs_n[None, :] * stride_A_n,
                mask=mask_pn, other=0.0).to(tl.float32)
    B = tl.load(B_ptr + batch * stride_B_b + group * stride_B_g + offs_n * stride_B_n,
                mask=mask_n, other=0.0).to(tl.float32)
    C = tl.load(C_ptr + batch * stride_C_b + group * stride_C_g + offs_n * stride_C_n,
                mask=mask_n, other=0.0).to(tl.float32)

    state = tl.exp(dt[:, None] * A) * state + (dt * x)[:, None] * B[None, :]
    tl.store(state_ptrs, state.to(state_ptr.dtype.element_ty), mask=mask_pn)
    out = tl.sum(state * C[None, :], axis=1)
    if D_ptr is not None:
        out += tl.load(D_ptr + head * stride_D_h + offs_p * stride_D_p, mask=mask_p, other=0.0).to(tl.float32) * x
    if z_ptr is not None:
        z = tl.load(z_ptr + batch * stride_z_b + head * stride_z_h + offs_p * stride_z_p,
                    mask=mask_p, other=0.0).to(tl.float32)
        out *= silu(z)
    tl.store(out_ptr + batch * stride_out_b + head * stride_out_h + offs_p * stride_out_p,
             out.to(out_ptr.dtype.element_ty), mask=mask_p)


def _tile(c):
    return product(c, "BLOCK_P", "BLOCK_N")


_BUDGET = 4096  # float32 elements of the (BLOCK_P, BLOCK_N) state tile for 4 warps

_KERNEL = Launcher(
    selective_state_update_kernel,
    configs=[triton.Config({"BLOCK_P": p}, num_warps=w) for p in (1, 2, 4, 8, 16, 32, 64) for w in (2, 4)],
    key=["headdim", "dstate"],
    # Small tiles too: a decode step at batch 1 has few rows to spread over the GPU.
    prune=prune_to_budget(_tile, _BUDGET, least=256),
    fixed={"BLOCK_P": 4},
    # Autotuning runs the kernel several times; each run must see the original state.
    restore_value=("state_ptr",),
)


def selective_state_update_fwd(state, x, dt, A, B, C, D, z, dt_bias, dt_softplus: bool, out) -> None:
    """Updates state (b, h, p, n) in place and writes out (b, h, p); shapes as the module says."""
    batch, nheads, headdim, dstate = state.shape
    heads_per_group = nheads // B.shape[1]

    def grid(meta):
        return (triton.cdiv(headdim, meta["BLOCK_P"]), batch * nheads)

    _KERNEL[grid](
        state, x, dt, A, B, C, D, z, dt_bias, out,
        nheads, heads_per_group, headdim, dstate,
        *state.stride(), *x.stride(), *dt.stride(), *A.stride(), *B.stride(), *C.stride(),
        *strides(D, 2), *strides(z, 3), *strides(dt_bias, 2), *out.stride(),
        DT_SOFTPLUS=dt_softplus, BLOCK_N=block_size(dstate),
    )
