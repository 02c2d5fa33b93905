"""Adapter for the pure-torch selective scan of Hugging Face transformers (third-party, optional).

transformers' MambaMixer runs its full-sequence scan through the module-level function
``transformers.models.mamba.modeling_mamba.mamba_selective_scan``, which takes the arguments of
mamba-ssm's selective_scan_fn. It is wrapped to dispatch to a hub kernel or to mamba-ssm when
one is present; the adapter calls the function beneath those wrappers (``inspect.unwrap``), the
torch path a CPU user of MambaMixer runs: discretisation over all of L, then a Python loop over
L (use_mambapy and use_associative_scan left off, as MambaMixer does by default). The function
applies delta_bias, softplus, D and z itself; B and C have no group dimension there, so the
adapter calls it once per group of grouped B and C and concatenates along d.
"""
from __future__ import annotations

from functools import partial

import torch

from ..base import Backend
from ..third_party import transformers_missing, transformers_torch_path
from . import _common as common

MODULE = "transformers.models.mamba.modeling_mamba"
FUNCTION = "mamba_selective_scan"


def _torch_path():
    return transformers_torch_path(MODULE, FUNCTION)


_available = partial(transformers_missing, MODULE, FUNCTION, "MambaMixer.slow_forward")


def selective_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                   return_last_state=False):
    """Shapes as ``ssmbench.selective_scan``."""
    scan = _torch_path()
    if B.dim() == 3:
        return scan(u, delta, A, B, C, D=D, z=z, delta_bias=delta_bias, delta_softplus=delta_softplus,
                    return_last_state=return_last_state)
    outs, lasts = [], []
    for group, ch in enumerate(common.group_slices(u.shape[1], B.shape[1])):
        result = scan(u[:, ch], delta[:, ch], A[ch], B[:, group], C[:, group],
                      D=None if D is None else D[ch], z=None if z is None else z[:, ch],
                      delta_bias=None if delta_bias is None else delta_bias[ch],
                      delta_softplus=delta_softplus, return_last_state=return_last_state)
        out, last = result if return_last_state else (result, None)
        outs.append(out)
        lasts.append(last)
    out = torch.cat(outs, dim=1)
    return (out, torch.cat(lasts, dim=1)) if return_last_state else out


BACKEND = Backend(
    op="selective_scan", name="transformers", has_backward=True, impl=f"{__name__}:selective_scan", kind="third-party",
    requires=("transformers",), priority=-20, python_loop=True, check_available=_available,
    description=f"transformers {MODULE}.{FUNCTION} beneath its kernel wrappers (MambaMixer's torch "
                "path: a Python loop over L); called once per group for grouped B and C",
)
