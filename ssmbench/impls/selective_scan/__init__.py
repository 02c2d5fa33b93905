"""Mamba-1 selective scan, with the arguments and layouts of mamba-ssm's ``selective_scan_fn``.

u, delta, z: (b, d, l); A: (d, n); B, C: (b, n, l) or grouped (b, g, n, l) with d % g == 0;
D, delta_bias: (d,). Returns out (b, d, l) in u's dtype, and with return_last_state also the
state after the last step, (b, d, n) in float32 (float64 for float64 inputs).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import torch

from ..base import DTYPES, Op, Problem
from ..checks import Args, element_size, random_tensor, weight_dtype


@dataclass(frozen=True)
class SelectiveScanProblem(Problem):
    batch: int = 1
    dim: int = 64
    dstate: int = 16
    seqlen: int = 128
    groups: int = 0  # 0: B, C as (b, n, l); g > 0: grouped (b, g, n, l)
    has_D: bool = True
    has_z: bool = True
    has_delta_bias: bool = True
    delta_softplus: bool = True
    return_last_state: bool = False


def make_inputs(p: SelectiveScanProblem, gen: torch.Generator) -> dict[str, Any]:
    dt, dev = DTYPES[p.dtype], p.device
    bc_shape = (p.batch, p.dstate, p.seqlen) if p.groups == 0 else (p.batch, p.groups, p.dstate, p.seqlen)
    x = {
        "u": random_tensor((p.batch, p.dim, p.seqlen), gen, dt, dev),
        # Positive step sizes of the size trained models use; softplus keeps them positive too.
        "delta": (torch.rand(p.batch, p.dim, p.seqlen, generator=gen, dtype=torch.float64) * 0.5)
        .to(dev, dt),
        # Weights stay float32 for half inputs, as in Mamba's mixed precision (A is kept real).
        "A": -(0.25 + torch.rand(p.dim, p.dstate, generator=gen, dtype=torch.float64)).to(dev, weight_dtype(dt)),
        "B": random_tensor(bc_shape, gen, dt, dev),
        "C": random_tensor(bc_shape, gen, dt, dev),
        "D": random_tensor((p.dim,), gen, weight_dtype(dt), dev) if p.has_D else None,
        "z": random_tensor((p.batch, p.dim, p.seqlen), gen, dt, dev) if p.has_z else None,
        "delta_bias": (torch.rand(p.dim, generator=gen, dtype=torch.float64) * 0.5 - 1.0).to(dev, weight_dtype(dt))
        if p.has_delta_bias else None,
        "delta_softplus": p.delta_softplus,
        "return_last_state": p.return_last_state,
    }
    return x


def problem_of(kwargs: Mapping[str, Any]) -> SelectiveScanProblem:
    a = Args("selective_scan", kwargs)
    u = a.tensor("u", "b d l")
    a.tensor("delta", "b d l")
    a.tensor("A", "d n")
    B = kwargs.get("B")
    grouped = isinstance(B, torch.Tensor) and B.dim() == 4
    bc = "b g n l" if grouped else "b n l"
    a.tensor("B", bc)
    a.tensor("C", bc)
    a.tensor("D", "d", optional=True)
    a.tensor("z", "b d l", optional=True)
    a.tensor("delta_bias", "d", optional=True)
    for name in ("u", "delta", "B", "C", "z"):
        if kwargs.get(name) is not None and kwargs[name].dtype != u.dtype:
            raise a.fail(f"argument {name!r} has dtype {a.dtype_name(name)}, expected u's {a.dtype_name('u')}")
    if grouped:
        a.require(a.sizes["d"] % a.sizes["g"] == 0,
                  f"d={a.sizes['d']} must be a multiple of the group count g={a.sizes['g']} of B and C")
    return SelectiveScanProblem(
        dtype=a.dtype_name("u"), device=a.device_name(),
        batch=a.sizes["b"], dim=a.sizes["d"], dstate=a.sizes["n"], seqlen=a.sizes["l"],
        groups=a.sizes["g"] if grouped else 0,
        has_D=kwargs.get("D") is not None, has_z=kwargs.get("z") is not None,
        has_delta_bias=kwargs.get("delta_bias") is not None,
        delta_softplus=a.flag("delta_softplus"), return_last_state=a.flag("return_last_state"),
    )


def outputs(kwargs: Mapping[str, Any], result) -> dict[str, torch.Tensor]:
    if kwargs.get("return_last_state"):
        out, last = result
        return {"out": out, "last_state": last}
    return {"out": result}


def bytes_moved(p: SelectiveScanProblem) -> int:
    e = element_size(p.dtype)
    bdl = p.batch * p.dim * p.seqlen
    bc = p.batch * max(p.groups, 1) * p.dstate * p.seqlen
    tensors = (2 + p.has_z + 1) * bdl * e + 2 * bc * e  # u, delta, z, out; B, C
    tensors += p.dim * p.dstate * 4 + (p.has_D + p.has_delta_bias) * p.dim * 4
    if p.return_last_state:
        tensors += p.batch * p.dim * p.dstate * 4
    return tensors


def flops(p: SelectiveScanProblem) -> int:
    # Per state element and step: delta*A, exp, delta*u*B, h*dA + dBu, C*h and its sum.
    return p.batch * p.dim * p.seqlen * (7 * p.dstate + 4)


def exps(p: SelectiveScanProblem) -> int:
    # exp(delta * A) per state element and step: A is diagonal but differs per (channel, state).
    return p.batch * p.dim * p.seqlen * p.dstate


def test_problems() -> list[SelectiveScanProblem]:
    base = SelectiveScanProblem(batch=2, dim=8, dstate=4, seqlen=37)
    return [
        base,
        base.replace(seqlen=1),
        base.replace(seqlen=64, groups=2, return_last_state=True),
        base.replace(seqlen=130, groups=1),
        base.replace(has_D=False, has_z=False, has_delta_bias=False, delta_softplus=False),
        base.replace(batch=1, dim=12, dstate=16, seqlen=100, return_last_state=True),
    ]


OP = Op(
    name="selective_scan",
    problem_type=SelectiveScanProblem,
    make_inputs=make_inputs,
    problem_of=problem_of,
    outputs=outputs,
    reference="ssmbench.impls.selective_scan.reference:selective_scan",
    bytes_moved=bytes_moved,
    flops=flops,
    exps=exps,
    default_problem=SelectiveScanProblem(),
    test_problems=test_problems,
    doc=__doc__,
)
