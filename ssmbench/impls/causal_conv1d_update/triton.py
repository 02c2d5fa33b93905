"""Our Triton decode-step convolution (ssmbench/kernels/triton/causal_conv1d.py)."""
from __future__ import annotations

import torch

from ..base import triton_backend
from ..causal_conv1d import TOLERANCES, activation_fn


def causal_conv1d_update(x, conv_state, weight, bias=None, activation=None):
    """Shapes as ``ssmbench.causal_conv1d_update``; conv_state is shifted in place."""
    from ...kernels.triton import causal_conv1d as kernels

    activation_fn(activation)  # an unknown name is a ValueError, as for every backend
    tokens = x if x.dim() == 3 else x.unsqueeze(-1)
    out = torch.empty_like(tokens)
    kernels.causal_conv1d_update_fwd(tokens, conv_state, weight, bias, activation, out)
    return out.reshape(x.shape)


BACKEND = triton_backend(
    "causal_conv1d_update", f"{__name__}:causal_conv1d_update",
    "Triton, one program per channel block: outputs from [state, new tokens], then the shift",
    tolerances=TOLERANCES,
)
