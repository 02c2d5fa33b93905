"""The public ops. Each takes the arguments of the ecosystem function it mirrors, plus
``backend``: a backend name (used or refused, never replaced) or "auto"."""
from __future__ import annotations

from .impls.registry import dispatch


def selective_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                   return_last_state=False, *, backend="auto"):
    """Mamba-1 selective scan, as mamba-ssm's ``selective_scan_fn``.

    u, delta, z: (b, d, l); A: (d, n); B, C: (b, n, l) or (b, g, n, l); D, delta_bias: (d,).
    Returns out (b, d, l), and the last state (b, d, n) with return_last_state.
    """
    return dispatch("selective_scan", backend, dict(
        u=u, delta=delta, A=A, B=B, C=C, D=D, z=z, delta_bias=delta_bias,
        delta_softplus=delta_softplus, return_last_state=return_last_state))


def ssd(x, dt, A, B, C, chunk_size=256, D=None, z=None, dt_bias=None, initial_states=None,
        dt_softplus=False, return_final_states=False, *, backend="auto"):
    """Mamba-2 state-space duality scan, as mamba-ssm's ``mamba_chunk_scan_combined``.

    x, z: (b, l, h, p); dt: (b, l, h); A, dt_bias: (h,); B, C: (b, l, g, n); D: (h,) or (h, p);
    initial_states: (b, h, p, n). Returns out (b, l, h, p), and the final states (b, h, p, n)
    with return_final_states.
    """
    return dispatch("ssd", backend, dict(
        x=x, dt=dt, A=A, B=B, C=C, chunk_size=chunk_size, D=D, z=z, dt_bias=dt_bias,
        initial_states=initial_states, dt_softplus=dt_softplus, return_final_states=return_final_states))


def selective_state_update(state, x, dt, A, B, C, D=None, z=None, dt_bias=None, dt_softplus=False,
                           *, backend="auto"):
    """One decode step of the selective scan, updating ``state`` in place.

    Mamba-1 layout: state (b, d, n); x, dt, z: (b, d); A: (d, n); B, C: (b, n); D, dt_bias: (d,).
    Mamba-2 layout: state (b, h, p, n); x, dt, z: (b, h, p); A: (h, p, n); B, C: (b, g, n);
    D, dt_bias: (h, p). Returns out shaped like x.
    """
    return dispatch("selective_state_update", backend, dict(
        state=state, x=x, dt=dt, A=A, B=B, C=C, D=D, z=z, dt_bias=dt_bias, dt_softplus=dt_softplus))


def causal_conv1d(x, weight, bias=None, activation=None, *, backend="auto"):
    """Depthwise causal convolution, as causal-conv1d's ``causal_conv1d_fn``.

    x: (b, d, l); weight: (d, w); bias: (d,); activation None, "silu" or "swish".
    """
    return dispatch("causal_conv1d", backend, dict(x=x, weight=weight, bias=bias, activation=activation))


def causal_conv1d_update(x, conv_state, weight, bias=None, activation=None, *, backend="auto"):
    """Decode step of the causal convolution, as causal-conv1d's ``causal_conv1d_update``.

    x: (b, d) or (b, d, l); conv_state: (b, d, s) with s >= w - 1, shifted in place;
    weight: (d, w); bias: (d,). Returns out shaped like x.
    """
    return dispatch("causal_conv1d_update", backend, dict(
        x=x, conv_state=conv_state, weight=weight, bias=bias, activation=activation))


def attention(q, k, v, softmax_scale=None, causal=False, *, backend="auto"):
    """Softmax attention in flash-attn's layout: q (b, lq, h, d); k, v (b, lk, hk, d), h % hk == 0
    (grouped-query attention). With causal and lq < lk the mask is aligned to the bottom right,
    as flash-attn does (the queries are the last lq positions). Returns (b, lq, h, d)."""
    return dispatch("attention", backend, dict(q=q, k=k, v=v, softmax_scale=softmax_scale, causal=causal))
