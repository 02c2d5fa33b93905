"""mamba-ssm's selective scans (third-party, optional): the fused CUDA ``selective_scan_fn`` and
the pure-torch ``selective_scan_ref`` (a Python loop over L).

Both take exactly our arguments (grouped B and C included), so the adapters pass them through.
mamba-ssm's package imports its compiled extension ``selective_scan_cuda``: where it is missing or
was built for another torch, ``import mamba_ssm`` fails and that error is the reason shown (there
is no Triton fallback for this op in the package).
"""
from __future__ import annotations

import importlib
from functools import partial

from ..base import Backend, import_failure

MODULE = "mamba_ssm.ops.selective_scan_interface"


def _call(function: str, u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
          return_last_state=False):
    fn = getattr(importlib.import_module(MODULE), function)
    return fn(u, delta, A, B, C, D=D, z=z, delta_bias=delta_bias, delta_softplus=delta_softplus,
              return_last_state=return_last_state)


selective_scan_fn = partial(_call, "selective_scan_fn")
selective_scan_ref = partial(_call, "selective_scan_ref")

BACKENDS = [
    Backend(
        op="selective_scan", name="mamba_ssm", has_backward=True, impl=f"{__name__}:selective_scan_fn",
        kind="third-party",
        requires=("mamba_ssm",), devices=("cuda",), dtypes=("float32", "bfloat16", "float16"),
        limits={"dstate": 256}, priority=30, fused=True, check_available=partial(import_failure, MODULE),
        description="mamba-ssm selective_scan_fn (fused CUDA scan), arguments passed through",
    ),
    Backend(
        op="selective_scan", name="mamba_ssm_ref", has_backward=True, impl=f"{__name__}:selective_scan_ref",
        kind="third-party",
        requires=("mamba_ssm",), priority=-20, python_loop=True, check_available=partial(import_failure, MODULE),
        description="mamba-ssm selective_scan_ref (a Python loop over L), arguments passed through",
    ),
]
