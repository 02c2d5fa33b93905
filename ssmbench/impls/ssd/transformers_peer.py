"""Adapter for the pure-torch SSD scan of Hugging Face transformers (third-party, optional).

transformers' Mamba2Mixer runs its full-sequence scan through the module-level function
``transformers.models.mamba2.modeling_mamba2.mamba2_chunk_scan`` (the chunked form of [M2],
with the arguments of mamba-ssm's mamba_chunk_scan_combined). It is wrapped to dispatch to a
hub kernel or to mamba-ssm when one is present; the adapter calls the function beneath those
wrappers (``inspect.unwrap``), the torch path a CPU user of Mamba2Mixer runs. It applies dt_bias,
softplus, initial_states and a per-head D itself; the adapter applies a per-channel D (h, p)
(the function broadcasts only D (h,)) and the silu(z) gate (the function ignores z: the mixer
gates in its norm instead), and casts the float32 output back to x's dtype.
"""
from __future__ import annotations

from functools import partial

from ..base import Backend
from ..third_party import transformers_missing, transformers_torch_path
from . import skip_and_gate

MODULE = "transformers.models.mamba2.modeling_mamba2"
FUNCTION = "mamba2_chunk_scan"


def _torch_path():
    return transformers_torch_path(MODULE, FUNCTION)


_available = partial(transformers_missing, MODULE, FUNCTION, "Mamba2Mixer.torch_forward")


def ssd(x, dt, A, B, C, chunk_size=256, D=None, z=None, dt_bias=None, initial_states=None,
        dt_softplus=False, return_final_states=False):
    """Shapes as ``ssmbench.ssd``."""
    per_head = D is not None and D.dim() == 1
    result = _torch_path()(x, dt, A, B, C, chunk_size, D=D if per_head else None, dt_bias=dt_bias,
                           initial_states=initial_states, dt_softplus=dt_softplus,
                           return_final_states=return_final_states)
    out, final = result if return_final_states else (result, None)
    out = skip_and_gate(out, x, None if per_head else D, z).to(x.dtype)
    return (out, final) if return_final_states else out


BACKEND = Backend(
    op="ssd", name="transformers", has_backward=True, impl=f"{__name__}:ssd", kind="third-party",
    requires=("transformers",), priority=-20, check_available=_available,
    description=f"transformers {MODULE}.{FUNCTION} beneath its kernel wrappers (Mamba2Mixer's torch "
                "path, chunked); per-channel D and the z gate in the adapter",
)
