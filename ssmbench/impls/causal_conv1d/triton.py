"""Our Triton causal convolution (ssmbench/kernels/triton/causal_conv1d.py)."""
from __future__ import annotations

import torch

from ..base import triton_backend
from . import TOLERANCES, activation_fn


def causal_conv1d(x, weight, bias=None, activation=None):
    """Shapes as ``ssmbench.causal_conv1d``."""
    from ...kernels.triton import causal_conv1d as kernels

    activation_fn(activation)  # an unknown name is a ValueError, as for every backend
    out = torch.empty_like(x)
    kernels.causal_conv1d_fwd(x, weight, bias, activation, out)
    return out


BACKEND = triton_backend(
    "causal_conv1d", f"{__name__}:causal_conv1d",
    "Triton, taps unrolled over (channel, position) tiles; float32 accumulation",
    tolerances=TOLERANCES,
)
