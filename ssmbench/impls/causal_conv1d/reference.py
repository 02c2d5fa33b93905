"""Float64 reference: one shifted multiply-add per tap."""
from __future__ import annotations

from ..base import Backend
from . import activation_fn


def causal_conv1d(x, weight, bias=None, activation=None):
    """out[:, c, t] = act(bias[c] + sum_k weight[c, k] * x[:, c, t - (w-1) + k]), x[..., <0] = 0.

    x: (b, d, l); weight: (d, w); bias: (d,). Computed in float64, returned in x's dtype.
    """
    act = activation_fn(activation)
    dtype = x.dtype
    x, weight = x.double(), weight.double()
    w, l = weight.shape[1], x.shape[-1]
    out = x.new_zeros(x.shape)
    if bias is not None:
        out += bias.double()[:, None]
    for k in range(w):
        shift = w - 1 - k  # tap k reads the input `shift` steps back
        if shift < l:
            out[..., shift:] += weight[:, k, None] * x[..., : l - shift]
    return act(out).to(dtype)


BACKEND = Backend(
    op="causal_conv1d", name="reference", has_backward=True, impl=f"{__name__}:causal_conv1d", kind="reference",
    priority=-100, description="float64 loop over the taps; the ground truth",
)
