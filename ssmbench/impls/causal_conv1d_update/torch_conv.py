"""torch, vectorised over the new tokens: one grouped ``F.conv1d`` over the last w - 1 stored
inputs and the new ones."""
from __future__ import annotations

import torch

from ..base import Backend
from ..causal_conv1d import TOLERANCES
from ..causal_conv1d.torch_conv import valid_conv


def causal_conv1d_update(x, conv_state, weight, bias=None, activation=None):
    """Shapes as ``ssmbench.causal_conv1d_update``."""
    tokens = x if x.dim() == 3 else x[..., None]
    l, w = tokens.shape[-1], weight.shape[1]
    window = torch.cat([conv_state, tokens.to(conv_state.dtype)], dim=-1)
    out = valid_conv(window[..., window.shape[-1] - (l + w - 1):], weight, bias, activation)
    conv_state.copy_(window[..., l:])
    return out.to(x.dtype).reshape(x.shape)


BACKEND = Backend(
    op="causal_conv1d_update", name="torch", impl=f"{__name__}:causal_conv1d_update", kind="torch",
    priority=0, tolerances=TOLERANCES,
    description="torch F.conv1d over [state, new tokens]; float32 accumulation",
)
