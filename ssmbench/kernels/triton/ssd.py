"""Chunked Mamba-2 SSD forward in Triton: five kernels and the wrapper that launches them.

With ``Q`` the chunk size, the sequence is cut into chunks of Q steps. Within a chunk the scan
is a masked matrix product (the "dual", attention-like form); across chunks a state (p, n) per
head is carried by a short sequential recurrence:

1. ``_dt_kernel``: dt + dt_bias, optional softplus, zero past the sequence end; the running sum
   of dt * A within each chunk (the log of the decay from the chunk start).
2. ``_cb_kernel``: C_t . B_s for t >= s in each chunk, once per group (shared by its heads).
3. ``_chunk_state_kernel``: the state each chunk would leave from a zero start,
   sum_s exp(cum_last - cum_s) dt_s x_s B_s^T.
4. ``_state_passing_kernel``: the state entering each chunk, sequentially over chunks from
   ``initial_states``, and the final state.
5. ``_chunk_scan_kernel``: y_t = exp(cum_t) C_t . state_in + sum_{s<=t} (C_t . B_s)
   exp(cum_t - cum_s) dt_s x_s, + D x_t, times silu(z_t).

Matrix products use ``tl.dot`` (tensor cores on the GPU) on operands in the input dtype with
float32 accumulation; every intermediate is float32. Float32 operands are multiplied in full
IEEE precision rather than Triton's default TF32, which would round them to 10 mantissa bits
and miss the float32 tolerance of the correctness check (so float32 runs without tensor
cores; half precision uses them).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl
from triton.runtime.interpreter import InterpretedFunction

from .common import Launcher, block_size, silu, softplus, strides


@triton.jit
def _dot(a, b, acc, PRECISION: tl.constexpr):
    if _WIDEN_DOT_OPERANDS:
        acc = tl.dot(a.to(tl.float32), b.to(tl.float32), acc, input_precision="ieee")
    else:
        acc = tl.dot(a, b, acc, input_precision=PRECISION)
    return acc


# The interpreter multiplies bfloat16 blocks as their raw uint16 bits (numpy has no bfloat16;
# triton-lang/triton#11584, closed as unsupported), so there the operands are widened first:
# exact, and the same float32 accumulation as on the GPU.
_WIDEN_DOT_OPERANDS = tl.constexpr(isinstance(_dot, InterpretedFunction))


@triton.jit
def _tile_of_program(rows, cols, nchunks, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """(row tile, column tile, batch, chunk) of this program. The tiles of one chunk are
    neighbours in launch order (they share its operands in L2), and the whole launch is numbered
    along axis 0, which alone admits more than 65535 programs (long sequences have many chunks).
    Batch and chunk are int64 so that the offsets built from them do not overflow."""
    tiles_n = tl.cdiv(cols, BLOCK_N)
    tiles = tl.cdiv(rows, BLOCK_M) * tiles_n
    chunk = (tl.program_id(0) // tiles).to(tl.int64)
    tile = tl.program_id(0) % tiles
    return tile // tiles_n, tile % tiles_n, chunk // nchunks, chunk % nchunks


@triton.jit
def _dt_kernel(
    dt_ptr, A_ptr, bias_ptr, dt_out_ptr, cum_ptr,
    seqlen, nheads, nchunks,
    s_dt_b, s_dt_l, s_dt_h,
    s_o_b, s_o_h, s_o_c,
    HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    CHUNK: tl.constexpr, BLOCK_H: tl.constexpr,
):
    pid_b = (tl.program_id(0) // nchunks).to(tl.int64)
    pid_c = tl.program_id(0) % nchunks
    offs_h = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    offs_t = tl.arange(0, CHUNK)
    pos = pid_c * CHUNK + offs_t
    in_seq = pos[:, None] < seqlen
    head = offs_h[None, :] < nheads
    dt = tl.load(dt_ptr + pid_b * s_dt_b + pos[:, None] * s_dt_l + offs_h[None, :] * s_dt_h,
                 mask=in_seq & head, other=0.0).to(tl.float32)
    if HAS_BIAS:
        dt += tl.load(bias_ptr + offs_h, mask=offs_h < nheads, other=0.0).to(tl.float32)[None, :]
    if SOFTPLUS:
        dt = softplus(dt)
    # Steps past the end get dt = 0: they neither add to a state nor decay it.
    dt = tl.where(in_seq, dt, 0.0)
    A = tl.load(A_ptr + offs_h, mask=offs_h < nheads, other=0.0).to(tl.float32)
    cum = tl.cumsum(dt * A[None, :], axis=0)
    out = pid_b * s_o_b + offs_h[None, :] * s_o_h + pid_c * s_o_c + offs_t[:, None]
    tl.store(dt_out_ptr + out, dt, mask=head)
    tl.store(cum_ptr + out, cum, mask=head)


@triton.jit
def _cb_kernel(
    C_ptr, B_ptr, cb_ptr,
    seqlen, dstate, nchunks,
    s_c_b, s_c_l, s_c_g, s_c_n,
    s_b_b, s_b_l, s_b_g, s_b_n,
    s_cb_b, s_cb_c, s_cb_g, s_cb_t, s_cb_s,
    DOT_PRECISION: tl.constexpr, CHUNK: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    pid_m, pid_n, pid_b, pid_c = _tile_of_program(CHUNK, CHUNK, nchunks, BLOCK_M, BLOCK_N)
    # Only s <= t is ever read: tiles wholly above the diagonal are left unwritten.
    if pid_n * BLOCK_N >= (pid_m + 1) * BLOCK_M:
        return
    pid_g = tl.program_id(1)
    chunk_len = tl.minimum(CHUNK, seqlen - pid_c * CHUNK)
    offs_t = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_s = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    c_ptrs = (C_ptr + pid_b * s_c_b + pid_c * CHUNK * s_c_l + pid_g * s_c_g
              + offs_t[:, None] * s_c_l + offs_k[None, :] * s_c_n)
    b_ptrs = (B_ptr + pid_b * s_b_b + pid_c * CHUNK * s_b_l + pid_g * s_b_g
              + offs_s[None, :] * s_b_l + offs_k[:, None] * s_b_n)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k in range(0, dstate, BLOCK_K):
        c = tl.load(c_ptrs, mask=(offs_t[:, None] < chunk_len) & (offs_k[None, :] < dstate - k), other=0.0)
        b = tl.load(b_ptrs, mask=(offs_s[None, :] < chunk_len) & (offs_k[:, None] < dstate - k), other=0.0)
        acc = _dot(c, b, acc, DOT_PRECISION)
        c_ptrs += BLOCK_K * s_c_n
        b_ptrs += BLOCK_K * s_b_n
    out = (cb_ptr + pid_b * s_cb_b + pid_c * s_cb_c + pid_g * s_cb_g
           + offs_t[:, None] * s_cb_t + offs_s[None, :] * s_cb_s)
    tl.store(out, acc, mask=(offs_t[:, None] < CHUNK) & (offs_s[None, :] < CHUNK))


@triton.jit
def _chunk_state_kernel(
    x_ptr, B_ptr, dt_ptr, cum_ptr, states_ptr,
    seqlen, hdim, dstate, nchunks, heads_per_group,
    s_x_b, s_x_l, s_x_h, s_x_p,
    s_b_b, s_b_l, s_b_g, s_b_n,
    s_dt_b, s_dt_h, s_dt_c,
    s_st_b, s_st_c, s_st_h, s_st_p, s_st_n,
    DOT_PRECISION: tl.constexpr, CHUNK: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    pid_m, pid_n, pid_b, pid_c = _tile_of_program(hdim, dstate, nchunks, BLOCK_M, BLOCK_N)
    pid_h = tl.program_id(1)
    chunk_len = tl.minimum(CHUNK, seqlen - pid_c * CHUNK)
    offs_p = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    x_ptrs = (x_ptr + pid_b * s_x_b + pid_c * CHUNK * s_x_l + pid_h * s_x_h
              + offs_p[:, None] * s_x_p + offs_k[None, :] * s_x_l)
    b_ptrs = (B_ptr + pid_b * s_b_b + pid_c * CHUNK * s_b_l + (pid_h // heads_per_group) * s_b_g
              + offs_k[:, None] * s_b_l + offs_n[None, :] * s_b_n)
    dt_base = pid_b * s_dt_b + pid_h * s_dt_h + pid_c * s_dt_c
    cum_last = tl.load(cum_ptr + dt_base + CHUNK - 1)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k in range(0, chunk_len, BLOCK_K):
        in_chunk = offs_k < chunk_len - k
        x = tl.load(x_ptrs, mask=(offs_p[:, None] < hdim) & in_chunk[None, :], other=0.0)
        b = tl.load(b_ptrs, mask=in_chunk[:, None] & (offs_n[None, :] < dstate), other=0.0)
        dt = tl.load(dt_ptr + dt_base + k + offs_k, mask=in_chunk, other=0.0)
        cum = tl.load(cum_ptr + dt_base + k + offs_k, mask=in_chunk, other=0.0)
        b = (b.to(tl.float32) * (tl.exp(cum_last - cum) * dt)[:, None]).to(x.dtype)
        acc = _dot(x, b, acc, DOT_PRECISION)
        x_ptrs += BLOCK_K * s_x_l
        b_ptrs += BLOCK_K * s_b_l
    out = (states_ptr + pid_b * s_st_b + pid_c * s_st_c + pid_h * s_st_h
           + offs_p[:, None] * s_st_p + offs_n[None, :] * s_st_n)
    tl.store(out, acc, mask=(offs_p[:, None] < hdim) & (offs_n[None, :] < dstate))


@triton.jit
def _state_passing_kernel(
    states_ptr, cum_ptr, init_ptr, final_ptr,
    state_size, nchunks,
    s_st_b, s_st_c, s_st_h,
    s_cum_b, s_cum_h, s_cum_c,
    s_init_b, s_init_h,
    s_fin_b, s_fin_h,
    HAS_INIT: tl.constexpr, CHUNK: tl.constexpr, BLOCK: tl.constexpr,
):
    """Replaces each chunk's own state by the state entering it (in place), in chunk order."""
    pid_b = tl.program_id(1).to(tl.int64)
    pid_h = tl.program_id(2)
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < state_size
    if HAS_INIT:
        state = tl.load(init_ptr + pid_b * s_init_b + pid_h * s_init_h + offs, mask=mask, other=0.0)
        state = state.to(tl.float32)
    else:
        state = tl.zeros((BLOCK,), dtype=tl.float32)
    st_ptrs = states_ptr + pid_b * s_st_b + pid_h * s_st_h + offs
    cum_ptr += pid_b * s_cum_b + pid_h * s_cum_h + CHUNK - 1
    for _ in range(nchunks):
        own = tl.load(st_ptrs, mask=mask, other=0.0)
        tl.store(st_ptrs, state, mask=mask)
        state = tl.exp(tl.load(cum_ptr)) * state + own
        st_ptrs += s_st_c
        cum_ptr += s_cum_c
    tl.store(final_ptr + pid_b * s_fin_b + pid_h * s_fin_h + offs, state, mask=mask)


@triton.jit
def _chunk_scan_kernel(
    x_ptr, z_ptr, C_ptr, cb_ptr, dt_ptr, cum_ptr, states_ptr, D_ptr, out_ptr,
    seqlen, hdim, dstate, nchunks, heads_per_group,
    s_x_b, s_x_l, s_x_h, s_x_p,
    s_z_b, s_z_l, s_z_h, s_z_p,
    s_c_b, s_c_l, s_c_g, s_c_n,
    s_cb_b, s_cb_c, s_cb_g, s_cb_t, s_cb_s,
    s_dt_b, s_dt_h, s_dt_c,
    s_st_b, s_st_c, s_st_h, s_st_p, s_st_n,
    s_D_h, s_o_b, s_o_l, s_o_h, s_o_p,
    HAS_D: tl.constexpr, D_PER_CHANNEL: tl.constexpr, HAS_Z: tl.constexpr,
    DOT_PRECISION: tl.constexpr, CHUNK: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    pid_m, pid_n, pid_b, pid_c = _tile_of_program(CHUNK, hdim, nchunks, BLOCK_M, BLOCK_N)
    pid_h = tl.program_id(1)
    pid_g = pid_h // heads_per_group
    chunk_len = tl.minimum(CHUNK, seqlen - pid_c * CHUNK)
    offs_t = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_p = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    row = offs_t < chunk_len
    col = offs_p < hdim
    dt_base = pid_b * s_dt_b + pid_h * s_dt_h + pid_c * s_dt_c
    cum_t = tl.load(cum_ptr + dt_base + offs_t, mask=offs_t < CHUNK, other=0.0)
    x_base = x_ptr + pid_b * s_x_b + pid_c * CHUNK * s_x_l + pid_h * s_x_h

    # What the state entering the chunk contributes: exp(cum_t) C_t . state_in.
    c_ptrs = (C_ptr + pid_b * s_c_b + pid_c * CHUNK * s_c_l + pid_g * s_c_g
              + offs_t[:, None] * s_c_l + offs_k[None, :] * s_c_n)
    st_ptrs = (states_ptr + pid_b * s_st_b + pid_c * s_st_c + pid_h * s_st_h
               + offs_k[:, None] * s_st_n + offs_p[None, :] * s_st_p)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k in range(0, dstate, BLOCK_K):
        in_state = offs_k < dstate - k
        c = tl.load(c_ptrs, mask=row[:, None] & in_state[None, :], other=0.0)
        st = tl.load(st_ptrs, mask=in_state[:, None] & col[None, :], other=0.0).to(c.dtype)
        acc = _dot(c, st, acc, DOT_PRECISION)
        c_ptrs += BLOCK_K * s_c_n
        st_ptrs += BLOCK_K * s_st_n
    acc *= tl.exp(cum_t)[:, None]

    # Within the chunk: sum over s <= t of (C_t . B_s) exp(cum_t - cum_s) dt_s x_s.
    cb_ptrs = (cb_ptr + pid_b * s_cb_b + pid_c * s_cb_c + pid_g * s_cb_g
               + offs_t[:, None] * s_cb_t + offs_k[None, :] * s_cb_s)
    x_ptrs = x_base + offs_k[:, None] * s_x_l + offs_p[None, :] * s_x_p
    hi = tl.minimum((pid_m + 1) * BLOCK_M, chunk_len)
    for k in range(0, hi, BLOCK_K):
        offs_s = k + offs_k
        causal = (offs_s[None, :] <= offs_t[:, None]) & row[:, None] & (offs_s[None, :] < chunk_len)
        cb = tl.load(cb_ptrs, mask=causal, other=0.0)
        dt_s = tl.load(dt_ptr + dt_base + offs_s, mask=offs_s < chunk_len, other=0.0)
        cum_s = tl.load(cum_ptr + dt_base + offs_s, mask=offs_s < chunk_len, other=0.0)
        decay = tl.exp(tl.where(causal, cum_t[:, None] - cum_s[None, :], float("-inf")))
        x = tl.load(x_ptrs, mask=(offs_s[:, None] < chunk_len) & col[None, :], other=0.0)
        weights = (cb * decay * dt_s[None, :]).to(x.dtype)
        acc = _dot(weights, x, acc, DOT_PRECISION)
        cb_ptrs += BLOCK_K * s_cb_s
        x_ptrs += BLOCK_K * s_x_l

    tile = row[:, None] & col[None, :]
    if HAS_D:
        x_t = tl.load(x_base + offs_t[:, None] * s_x_l + offs_p[None, :] * s_x_p, mask=tile, other=0.0)
        if D_PER_CHANNEL:
            D = tl.load(D_ptr + pid_h * s_D_h + offs_p, mask=col, other=0.0).to(tl.float32)[None, :]
        else:
            D = tl.load(D_ptr + pid_h * s_D_h).to(tl.float32)
        acc += x_t.to(tl.float32) * D
    pos = pid_c * CHUNK + offs_t
    if HAS_Z:
        z = tl.load(z_ptr + pid_b * s_z_b + pos[:, None] * s_z_l + pid_h * s_z_h + offs_p[None, :] * s_z_p,
                    mask=tile, other=0.0).to(tl.float32)
        acc *= silu(z)
    out = out_ptr + pid_b * s_o_b + pos[:, None] * s_o_l + pid_h * s_o_h + offs_p[None, :] * s_o_p
    tl.store(out, acc.to(out_ptr.dtype.element_ty), mask=tile)


def _configs(*candidates: dict) -> list[triton.Config]:
    """GPU autotuning candidates: block sizes, with optional "warps" and "stages".

    Every block is at least 32 wide: tl.dot needs 16 on the GPU, and smaller sizes (a head dim
    or state of 8, say) are masked inside one block.
    """
    return [triton.Config({k: v for k, v in c.items() if k not in ("warps", "stages")},
                          num_warps=c.get("warps", 4), num_stages=c.get("stages", 3))
            for c in candidates]


# Large tiles: under the interpreter, few numpy programs, each vectorised; on the GPU, one
# config that suits every shape.
_FIXED_TILES = dict(BLOCK_M=64, BLOCK_N=64, BLOCK_K=64)

_CB = Launcher(
    _cb_kernel,
    _configs(dict(BLOCK_M=64, BLOCK_N=64, BLOCK_K=32), dict(BLOCK_M=128, BLOCK_N=64, BLOCK_K=32, warps=8),
             dict(BLOCK_M=64, BLOCK_N=64, BLOCK_K=64, stages=4)),
    key=["CHUNK", "dstate", "DOT_PRECISION"], fixed=_FIXED_TILES,
)
_CHUNK_STATE = Launcher(
    _chunk_state_kernel,
    _configs(dict(BLOCK_M=64, BLOCK_N=64, BLOCK_K=32), dict(BLOCK_M=64, BLOCK_N=128, BLOCK_K=32, warps=8),
             dict(BLOCK_M=128, BLOCK_N=64, BLOCK_K=64, warps=8)),
    key=["CHUNK", "hdim", "dstate", "DOT_PRECISION"], fixed=_FIXED_TILES,
)
_STATE_PASSING = Launcher(
    _state_passing_kernel,
    _configs(dict(BLOCK=256), dict(BLOCK=1024, warps=8)),
    key=["state_size"], fixed=dict(BLOCK=1024),
    # It rewrites the states in place: each autotuning trial must start from the same ones.
    restore_value=("states_ptr",),
)
_CHUNK_SCAN = Launcher(
    _chunk_scan_kernel,
    _configs(dict(BLOCK_M=64, BLOCK_N=64, BLOCK_K=32), dict(BLOCK_M=128, BLOCK_N=64, BLOCK_K=32, warps=8),
             dict(BLOCK_M=64, BLOCK_N=64, BLOCK_K=64, stages=4),
             dict(BLOCK_M=128, BLOCK_N=128, BLOCK_K=32, warps=8)),
    key=["CHUNK", "hdim", "dstate", "DOT_PRECISION"], fixed=_FIXED_TILES,
)


def ssd_forward(x, dt, A, B, C, chunk_size, D=None, z=None, dt_bias=None, initial_states=None,
                dt_softplus=False):
    """Launch the five kernels on validated arguments (shapes as ``ssmbench.ssd``; chunk_size a
    power of two).

    Returns out (b, l, h, p) in x's dtype and the final states (b, h, p, n) in float32.
    """
    batch, seqlen, nheads, hdim = x.shape
    ngroups, dstate = B.shape[2], B.shape[3]
    nchunks = triton.cdiv(seqlen, chunk_size)
    heads_per_group = nheads // ngroups
    # Float32 operands in full precision: Triton's default TF32 rounds them to 10 mantissa bits.
    precision = "ieee" if x.dtype == torch.float32 else "tf32"
    f32 = dict(device=x.device, dtype=torch.float32)
    dt_out = torch.empty(batch, nheads, nchunks, chunk_size, **f32)
    cum = torch.empty_like(dt_out)
    cb = torch.empty(batch, nchunks, ngroups, chunk_size, chunk_size, **f32)
    states = torch.empty(batch, nchunks, nheads, hdim, dstate, **f32)
    final = torch.empty(batch, nheads, hdim, dstate, **f32)
    out = torch.empty_like(x)
    if x.device.type == "meta":  # shapes alone, as a memory count runs: nothing to launch
        return out, final
    # The small per-head vectors and the initial states are read with unit inner stride.
    A, D, dt_bias, initial_states = (t.contiguous() if t is not None else None
                                     for t in (A, D, dt_bias, initial_states))

    # Enough heads per program to keep a (chunk, heads) tile near 4K elements.
    block_h = min(block_size(nheads), max(1, 4096 // chunk_size))
    _dt_kernel[(batch * nchunks, triton.cdiv(nheads, block_h))](
        dt, A, dt_bias, dt_out, cum, seqlen, nheads, nchunks, *dt.stride(), *dt_out.stride()[:3],
        HAS_BIAS=dt_bias is not None, SOFTPLUS=dt_softplus, CHUNK=chunk_size, BLOCK_H=block_h,
    )

    def tiles(rows, cols, heads):
        return lambda meta: (triton.cdiv(rows, meta["BLOCK_M"]) * triton.cdiv(cols, meta["BLOCK_N"])
                             * batch * nchunks, heads)

    _CB[tiles(chunk_size, chunk_size, ngroups)](
        C, B, cb, seqlen, dstate, nchunks, *C.stride(), *B.stride(), *cb.stride(),
        DOT_PRECISION=precision, CHUNK=chunk_size,
    )
    _CHUNK_STATE[tiles(hdim, dstate, nheads)](
        x, B, dt_out, cum, states, seqlen, hdim, dstate, nchunks, heads_per_group,
        *x.stride(), *B.stride(), *dt_out.stride()[:3], *states.stride(),
        DOT_PRECISION=precision, CHUNK=chunk_size,
    )
    state_size = hdim * dstate
    _STATE_PASSING[lambda meta: (triton.cdiv(state_size, meta["BLOCK"]), batch, nheads)](
        states, cum, initial_states, final, state_size, nchunks,
        *states.stride()[:3], *cum.stride()[:3], *strides(initial_states, 4)[:2], *final.stride()[:2],
        HAS_INIT=initial_states is not None, CHUNK=chunk_size,
    )
    _CHUNK_SCAN[tiles(chunk_size, hdim, nheads)](
        x, z, C, cb, dt_out, cum, states, D, out, seqlen, hdim, dstate, nchunks, heads_per_group,
        *x.stride(), *strides(z, 4), *C.stride(), *cb.stride(), *dt_out.stride()[:3], *states.stride(),
        D.stride(0) if D is not None else 0, *out.stride(),
        HAS_D=D is not None, D_PER_CHANNEL=D is not None and D.dim() == 2, HAS_Z=z is not None,
        DOT_PRECISION=precision, CHUNK=chunk_size,
    )
    return out, final
