"""Depthwise causal convolution over a sequence, and its decode step that shifts a state.

Both compute out[t] = act(bias + sum_k weight[k] x[t - (w-1) + k]) per channel with the width w
a compile-time constant (the taps unroll); the decode step reads x from the stored state followed
by the new tokens.
"""
from __future__ import annotations

import triton
import triton.language as tl

from .common import Launcher, silu, strides


@triton.jit
def causal_conv1d_kernel(
    x_ptr, weight_ptr, bias_ptr, out_ptr,
    dim, seqlen,
    stride_x_b, stride_x_d, stride_x_l,
    stride_w_d, stride_w_k,
    stride_bias,
    stride_out_b, stride_out_d, stride_out_l,
    WIDTH: tl.constexpr, SILU: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_L: tl.constexpr,
):
    """x, out: (b, d, l); weight: (d, w); bias: (d,) or None. One program: one batch element,
    BLOCK_D channels, BLOCK_L positions."""
    pid_l = tl.program_id(0)
    pid_d = tl.program_id(1)
    batch = tl.program_id(2).to(tl.int64)
    offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    mask_d = offs_d < dim
    pos = pid_l * BLOCK_L + tl.arange(0, BLOCK_L)
    x_rows = x_ptr + batch * stride_x_b + offs_d[:, None] * stride_x_d

    acc = tl.zeros((BLOCK_D, BLOCK_L), dtype=tl.float32)
    for k in tl.static_range(WIDTH):
        w = tl.load(weight_ptr + offs_d * stride_w_d + k * stride_w_k, mask=mask_d, other=0.0).to(tl.float32)
        src = pos - (WIDTH - 1) + k
        # Zero before the first position; the other loads of a tile hit the cache.
        mask = mask_d[:, None] & ((src >= 0) & (src < seqlen))[None, :]
        acc += w[:, None] * tl.load(x_rows + src[None, :] * stride_x_l, mask=mask, other=0.0).to(tl.float32)
    if bias_ptr is not None:
        acc += tl.load(bias_ptr + offs_d * stride_bias, mask=mask_d, other=0.0).to(tl.float32)[:, None]
    if SILU:
        acc = silu(acc)
    tl.store(out_ptr + batch * stride_out_b + offs_d[:, None] * stride_out_d + pos[None, :] * stride_out_l,
             acc.to(out_ptr.dtype.element_ty), mask=mask_d[:, None] & (pos < seqlen)[None, :])


@triton.jit
def _state_or_x(state_rows, stride_state_s, x_rows, stride_x_l, src, state_len, mask):
    """Element ``src`` of the sequence (stored state ++ new tokens), per channel row."""
    in_state = src < state_len
    from_state = tl.load(state_rows + src[None, :] * stride_state_s, mask=mask & in_state[None, :], other=0.0)
    from_x = tl.load(x_rows + (src - state_len)[None, :] * stride_x_l, mask=mask & (src >= state_len)[None, :],
                     other=0.0)
    return from_state.to(tl.float32) + from_x.to(tl.float32)


@triton.jit
def causal_conv1d_update_kernel(
    x_ptr, state_ptr, weight_ptr, bias_ptr, out_ptr,
    dim, seqlen, state_len,
    stride_x_b, stride_x_d, stride_x_l,
    stride_state_b, stride_state_d, stride_state_s,
    stride_w_d, stride_w_k,
    stride_bias,
    stride_out_b, stride_out_d, stride_out_l,
    WIDTH: tl.constexpr, SILU: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_L: tl.constexpr, BLOCK_S: tl.constexpr,
):
    """x, out: (b, d, l); state: (b, d, s), s >= w - 1, updated in place to the last s elements
    of state ++ x. One program: one batch element and BLOCK_D channels, all positions."""
    pid_d = tl.program_id(0)
    batch = tl.program_id(1).to(tl.int64)
    offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    mask_d = offs_d < dim
    x_rows = x_ptr + batch * stride_x_b + offs_d[:, None] * stride_x_d
    state_rows = state_ptr + batch * stride_state_b + offs_d[:, None] * stride_state_d
    out_rows = out_ptr + batch * stride_out_b + offs_d[:, None] * stride_out_d
    if bias_ptr is not None:
        bias = tl.load(bias_ptr + offs_d * stride_bias, mask=mask_d, other=0.0).to(tl.float32)

    for start in range(0, seqlen, BLOCK_L):
        pos = start + tl.arange(0, BLOCK_L)
        mask = mask_d[:, None] & (pos < seqlen)[None, :]
        acc = tl.zeros((BLOCK_D, BLOCK_L), dtype=tl.float32)
        for k in tl.static_range(WIDTH):
            w = tl.load(weight_ptr + offs_d * stride_w_d + k * stride_w_k, mask=mask_d, other=0.0).to(tl.float32)
            src = state_len + pos - (WIDTH - 1) + k
            acc += w[:, None] * _state_or_x(state_rows, stride_state_s, x_rows, stride_x_l, src, state_len, mask)
        if bias_ptr is not None:
            acc += bias[:, None]
        if SILU:
            acc = silu(acc)
        tl.store(out_rows + pos[None, :] * stride_out_l, acc.to(out_ptr.dtype.element_ty), mask=mask)

    # Shift: state[j] = (state ++ x)[seqlen + j]. Ascending blocks only read positions above those
    # already written, and within a block every thread reads (the outputs' inputs too) before
    # any thread writes.
    for start in range(0, state_len, BLOCK_S):
        j = start + tl.arange(0, BLOCK_S)
        mask = mask_d[:, None] & (j < state_len)[None, :]
        shifted = _state_or_x(state_rows, stride_state_s, x_rows, stride_x_l, j + seqlen, state_len, mask)
        tl.debug_barrier()
        tl.store(state_rows + j[None, :] * stride_state_s, shifted.to(state_ptr.dtype.element_ty), mask=mask)


_CONV = Launcher(
    causal_conv1d_kernel,
    configs=[triton.Config({"BLOCK_D": d, "BLOCK_L": l}, num_warps=4)
             for d, l in ((16, 64), (32, 64), (16, 128), (32, 128), (64, 64), (8, 256))],
    key=["dim", "seqlen"],
    fixed={"BLOCK_D": 4, "BLOCK_L": 16},
)

_UPDATE = Launcher(
    causal_conv1d_update_kernel,
    configs=[triton.Config({"BLOCK_D": d, "BLOCK_L": l, "BLOCK_S": 8}, num_warps=w)
             for d in (32, 64, 128, 256) for l in (1, 8) for w in (1, 4)],
    key=["dim", "seqlen", "state_len"],
    fixed={"BLOCK_D": 4, "BLOCK_L": 4, "BLOCK_S": 4},
    restore_value=("state_ptr",),
)


def _is_silu(activation) -> bool:
    return activation in ("silu", "swish")


def causal_conv1d_fwd(x, weight, bias, activation, out) -> None:
    """Writes out (b, d, l); x (b, d, l), weight (d, w), bias (d,) or None."""
    batch, dim, seqlen = x.shape

    def grid(meta):
        return (triton.cdiv(seqlen, meta["BLOCK_L"]), triton.cdiv(dim, meta["BLOCK_D"]), batch)

    _CONV[grid](
        x, weight, bias, out, dim, seqlen,
        *x.stride(), *weight.stride(), *strides(bias, 1), *out.stride(),
        WIDTH=weight.shape[1], SILU=_is_silu(activation),
    )


def causal_conv1d_update_fwd(x, conv_state, weight, bias, activation, out) -> None:
    """Writes out (b, d, l) and shifts conv_state (b, d, s) in place; x (b, d, l)."""
    batch, dim, seqlen = x.shape

    def grid(meta):
        return (triton.cdiv(dim, meta["BLOCK_D"]), batch)

    _UPDATE[grid](
        x, conv_state, weight, bias, out, dim, seqlen, conv_state.shape[2],
        *x.stride(), *conv_state.stride(), *weight.stride(), *strides(bias, 1), *out.stride(),
        WIDTH=weight.shape[1], SILU=_is_silu(activation),
    )
