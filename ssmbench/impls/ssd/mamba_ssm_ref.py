"""mamba-ssm's minimal SSD, ``ssd_minimal_discrete`` (Listing 1 of [M2]; third-party, optional).

It takes the discretised inputs x dt and A dt, B and C per head (b, l, h, n), a length that is a
multiple of the block length, and initial states with a chunk axis (b, 1, h, p, n). The adapter
computes dt (bias, softplus), repeats B and C from groups to heads, pads L with dt = 0 steps
(no decay, no input: the final state is unchanged), and applies D and the silu(z) gate after.
mamba-ssm's package imports its compiled CUDA extension, so on a machine without one the import
fails, and that error is the reason shown.
"""
from __future__ import annotations

from functools import partial

import torch.nn.functional as F

from ..base import Backend, import_failure
from ..checks import weight_dtype
from . import per_channel, skip_and_gate, step_sizes

MODULE = "mamba_ssm.modules.ssd_minimal"


def _pad_length(t, pad: int):
    """Zeros after the last step of t (b, l, ...)."""
    return F.pad(t, (0, 0) * (t.dim() - 2) + (0, pad))


def ssd(x, dt, A, B, C, chunk_size=256, D=None, z=None, dt_bias=None, initial_states=None,
        dt_softplus=False, return_final_states=False):
    """Shapes as ``ssmbench.ssd``; computed in float32 (float64 for float64 inputs)."""
    from mamba_ssm.modules.ssd_minimal import ssd_minimal_discrete

    dtype = x.dtype
    acc = weight_dtype(dtype)
    l, h = x.shape[1], x.shape[2]
    x, dt, A, B, C = (t.to(acc) for t in (x, dt, A, B, C))
    dt = step_sizes(dt, dt_bias, dt_softplus)
    per_group = h // B.shape[2]
    pad = -l % chunk_size
    X, A_dt, B_h, C_h = (_pad_length(t, pad) for t in (
        x * dt[..., None], A * dt, B.repeat_interleave(per_group, dim=2), C.repeat_interleave(per_group, dim=2)))
    initial = None if initial_states is None else initial_states.to(acc)[:, None]
    y, final = ssd_minimal_discrete(X, A_dt, B_h, C_h, chunk_size, initial_states=initial)
    y = skip_and_gate(y[:, :l], x, per_channel(D), z).to(dtype)
    return (y, final) if return_final_states else y


BACKEND = Backend(
    op="ssd", name="mamba_ssm_ref", has_backward=True, impl=f"{__name__}:ssd", kind="third-party",
    requires=("mamba_ssm",), priority=-20, check_available=partial(import_failure, MODULE),
    description="mamba-ssm ssd_minimal_discrete (the paper's minimal chunked SSD); dt, group-to-head "
                "repeat, length padding, D and z in the adapter",
)
