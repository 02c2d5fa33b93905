"""Our CUDA extension's decode step (ssmbench/kernels/cuda/selective_state_update.cu), built on
first use: a group of lanes per (batch, head, channel) row reads the state along its contiguous
axis, updates it in float32 and writes it back in place, in its own dtype and at any strides.
Both layouts (Mamba-1 viewed as heads, see ``as_heads``)."""
from __future__ import annotations

import torch

from ...kernels.cuda import build
from ..base import Backend
from . import as_heads


def selective_state_update(state, x, dt, A, B, C, D=None, z=None, dt_bias=None, dt_softplus=False):
    """Shapes as ``ssmbench.selective_state_update``; A, D and dt_bias are used in float32."""
    # Views of the caller's tensors: the kernel writes the caller's state.
    state_h, x_h, dt, A, B, C, D, z, dt_bias = as_heads(state, x, dt, A, B, C, D, z, dt_bias)
    dtype, f32, dense = x.dtype, torch.float32, build.contiguous
    out = build.run(
        "selective_state_update", x.device, state_h,
        dense(x_h, dtype), dense(dt, dtype), dense(A, f32), dense(B, dtype), dense(C, dtype),
        dense(D, f32), dense(z, dtype), dense(dt_bias, f32), bool(dt_softplus))
    return out.reshape(x.shape)


BACKEND = Backend(
    op="selective_state_update", name="cuda", impl=f"{__name__}:selective_state_update",
    kind="cuda", devices=("cuda",), dtypes=("float32", "bfloat16", "float16"),
    limits={"dstate": build.MAX_DSTATE}, priority=20, fused=True,
    check_available=build.unavailable_reasons,
    description="our CUDA extension: decode step, state updated in place, both layouts",
)
