"""fla-core's ``chunk_simple_gla`` (flash-linear-attention, Triton) used as an SSD scan.

Simple gated linear attention keeps, per head, S_t = exp(g_t) S_{t-1} + k_t^T v_t and returns
o_t = scale q_t S_t with S_t of shape (K, V). SSD is that recurrence with q = C, k = B (the head's
group, expanded to every head), v = dt x, g = dt A (the per-head log decay), scale = 1, K = dstate
and V = headdim; S_t is our state transposed, (n, p) instead of (p, n). What fla does not do is
done here around it: dt_bias and softplus before, D x and the silu(z) gate after. chunk_size is
fla's own block length (64), not ours: the result does not depend on it.
"""
from __future__ import annotations

from functools import partial

from ..base import Backend, import_failure
from . import per_channel, skip_and_gate, step_sizes

MODULE = "fla.ops.simple_gla"
# Triton's tl.dot rounds float32 operands to TF32 (10-bit mantissa) on Ampere and newer GPUs.
TOLERANCES = {"float32": 5e-3}


def ssd(x, dt, A, B, C, chunk_size=256, D=None, z=None, dt_bias=None, initial_states=None,
        dt_softplus=False, return_final_states=False):
    """Shapes as ``ssmbench.ssd``; the final states are float32."""
    from fla.ops.simple_gla import chunk_simple_gla

    heads = x.shape[2]
    dt = step_sizes(dt.float(), None if dt_bias is None else dt_bias.float(), dt_softplus)
    q = C.repeat_interleave(heads // C.shape[2], dim=2)
    k = B.repeat_interleave(heads // B.shape[2], dim=2)
    v = (x * dt[..., None]).to(x.dtype)
    h0 = None if initial_states is None else initial_states.float().transpose(-1, -2).contiguous()
    o, final = chunk_simple_gla(q, k, v, g=dt * A.float(), scale=1.0, initial_state=h0,
                                output_final_state=return_final_states)
    y = skip_and_gate(o.float(), x, per_channel(D), z).to(x.dtype)
    return (y, final.float().transpose(-1, -2)) if return_final_states else y


BACKEND = Backend(
    op="ssd", name="fla", has_backward=True, impl=f"{__name__}:ssd", kind="third-party",
    requires=("fla",), devices=("cuda",), dtypes=("float32", "bfloat16", "float16"),
    tolerances=TOLERANCES, priority=5, fused=True, first_call_s=32.0, check_available=partial(import_failure, MODULE),
    description="fla-core chunk_simple_gla (Triton) as SSD: q=C, k=B, v=dt x, g=dt A, scale 1",
)
