"""Adapters for mambapy's pure-torch selective scans (third-party, optional).

mambapy (github.com/alxndrTL/mamba.py) scans inside ``mambapy.mamba.MambaBlock``:
``selective_scan`` (discretise, then its parallel Blelloch ``pscan``) and ``selective_scan_seq``
(discretise, then a Python loop over L), both ``(x, delta, A, B, C, D) -> y`` in the (b, l, d)
layout with B, C (b, l, n), delta already biased and softplus-ed. The adapters call those two
methods unbound (they read nothing from the block but config.d_inner and config.d_state), and
do the rest around them: transposes to (b, l, d) and back, delta_bias and softplus, one call per
group of grouped B and C, D u (passed to mambapy as D=0) and the silu(z) gate.
"""
from __future__ import annotations

from functools import partial
from types import SimpleNamespace

import torch

from ..base import Backend, Problem, import_failure
from . import _common as common

MODULE = "mambapy.mamba"


def _core(method: str, u, delta, A, B, C):
    from mambapy.mamba import MambaBlock

    scan = getattr(MambaBlock, method)
    b, d, l = u.shape
    ys = []
    for group, channels in enumerate(common.group_slices(d, B.shape[1])):
        block = SimpleNamespace(config=SimpleNamespace(d_inner=channels.stop - channels.start,
                                                       d_state=A.shape[1]))
        y = scan(block, u[:, channels].transpose(1, 2).contiguous(),
                 delta[:, channels].transpose(1, 2).contiguous(), A[channels],
                 B[:, group].transpose(1, 2).contiguous(), C[:, group].transpose(1, 2).contiguous(), 0.0)
        ys.append(y)
    return torch.cat(ys, dim=2).transpose(1, 2), None


def _scan(method: str):
    def selective_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                       return_last_state=False):
        """Shapes as ``ssmbench.selective_scan``; return_last_state is unsupported."""
        return common.run(partial(_core, method), u, delta, A, B, C, D, z, delta_bias,
                          delta_softplus, return_last_state)
    return selective_scan


selective_scan_pscan = _scan("selective_scan")
selective_scan_seq = _scan("selective_scan_seq")


def _no_last_state(problem: Problem) -> list[str]:
    if problem.return_last_state:
        return ["return_last_state: mambapy's scans return only the output, not the last state"]
    return []


BACKENDS = [
    Backend(
        op="selective_scan", name=name, has_backward=True, impl=f"{__name__}:{impl}", kind="third-party",
        requires=("mambapy",), priority=-20, check_available=partial(import_failure, MODULE),
        check_supported=_no_last_state, description=description, python_loop=loop,
    )
    for name, impl, loop, description in [
        ("mambapy_pscan", "selective_scan_pscan", False,
         "mambapy MambaBlock.selective_scan: discretisation over all of L, then its parallel "
         "(Blelloch) pscan; delta_bias, softplus, groups, D and z in the adapter"),
        ("mambapy_seq", "selective_scan_seq", True,
         "mambapy MambaBlock.selective_scan_seq: discretisation over all of L, then a Python loop "
         "over L in the (b, l, d) layout; delta_bias, softplus, groups, D and z in the adapter"),
    ]
]
