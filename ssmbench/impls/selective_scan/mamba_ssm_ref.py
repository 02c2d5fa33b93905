"""mamba-ssm's own pure-torch reference scan, ``selective_scan_ref`` (third-party, optional).

It takes exactly our arguments (grouped B and C included), so the adapter passes them through.
mamba-ssm's package imports its compiled CUDA extension, so on a machine without one the import
fails, and that error is the reason shown.
"""
from __future__ import annotations

from functools import partial

from ..base import Backend, import_failure

MODULE = "mamba_ssm.ops.selective_scan_interface"


def selective_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                   return_last_state=False):
    """Shapes as ``ssmbench.selective_scan``."""
    from mamba_ssm.ops.selective_scan_interface import selective_scan_ref

    return selective_scan_ref(u, delta, A, B, C, D=D, z=z, delta_bias=delta_bias,
                              delta_softplus=delta_softplus, return_last_state=return_last_state)


BACKEND = Backend(
    op="selective_scan", name="mamba_ssm_ref", impl=f"{__name__}:selective_scan", kind="third-party",
    requires=("mamba_ssm",), priority=-20, check_available=partial(import_failure, MODULE),
    description="mamba-ssm selective_scan_ref (a Python loop over L), arguments passed through",
)
