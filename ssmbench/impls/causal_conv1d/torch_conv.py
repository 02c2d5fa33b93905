"""torch's grouped ``F.conv1d`` (one group per channel) on a left-padded input."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..base import Backend
from . import TOLERANCES, activation_fn


def valid_conv(window, weight, bias, activation):
    """Depthwise convolution over ``window`` (b, d, l + w - 1) without padding: (b, d, l).

    Half inputs accumulate in float32; the result stays in the accumulation dtype.
    """
    act = activation_fn(activation)
    acc = torch.float64 if window.dtype == torch.float64 else torch.float32
    y = F.conv1d(window.to(acc), weight.to(acc)[:, None, :],
                 None if bias is None else bias.to(acc), groups=weight.shape[0])
    return act(y)


def causal_conv1d(x, weight, bias=None, activation=None):
    """Shapes as ``ssmbench.causal_conv1d``."""
    padded = F.pad(x, (weight.shape[1] - 1, 0))
    return valid_conv(padded, weight, bias, activation).to(x.dtype)


BACKEND = Backend(
    op="causal_conv1d", name="torch", has_backward=True, impl=f"{__name__}:causal_conv1d", kind="torch",
    priority=0, tolerances=TOLERANCES,
    description="torch F.conv1d, groups=d, left padding; float32 accumulation",
)
