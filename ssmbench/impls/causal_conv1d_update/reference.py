"""Float64 reference: the causal convolution of the stored inputs followed by the new ones."""
from __future__ import annotations

import torch

from ..base import Backend
from ..causal_conv1d.reference import causal_conv1d


def causal_conv1d_update(x, conv_state, weight, bias=None, activation=None):
    """window = [conv_state, x] along time; out = causal_conv1d(window)[-l:]; conv_state = window[-s:].

    x: (b, d) or (b, d, l); conv_state: (b, d, s), s >= w - 1, updated in place; weight: (d, w);
    bias: (d,). The last l outputs read only stored or new inputs (s >= w - 1), never padding.
    Computed in float64; out is returned in x's dtype.
    """
    tokens = x if x.dim() == 3 else x[..., None]
    l, s = tokens.shape[-1], conv_state.shape[-1]
    window = torch.cat([conv_state.double(), tokens.double()], dim=-1)
    out = causal_conv1d(window, weight, bias, activation)[..., s:]
    conv_state.copy_(window[..., l:])
    return out.to(x.dtype).reshape(x.shape)


BACKEND = Backend(
    op="causal_conv1d_update", name="reference", impl=f"{__name__}:causal_conv1d_update",
    kind="reference", priority=-100, description="float64 causal convolution over state and new tokens",
)
