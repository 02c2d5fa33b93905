"""One decode step of the selective scan, with the arguments and layouts of mamba-ssm's
``selective_state_update``; ``state`` is updated in place.

Mamba-1 layout: state (b, d, n); x, dt, z: (b, d); A: (d, n); B, C: (b, n), or (b, g, n) with
d % g == 0 (channel i reads group i // (d / g)); D, dt_bias: (d,).
Mamba-2 layout: state (b, h, p, n); x, dt, z: (b, h, p); A: (h, p, n); B, C: (b, g, n) with
h % g == 0 (head i reads group i // (h / g)); D, dt_bias: (h, p).

state <- state * exp(dt A) + dt x B;  out = sum_n state C + D x;  out *= silu(z), with
dt <- softplus(dt + dt_bias) when dt_softplus. out has x's shape and dtype. The state keeps its
own dtype, which may differ from x's: Mamba-1 decodes with a float32 state under bfloat16
activations, Mamba-2 with a state in the activations' dtype (the problem's state_dtype says which).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import torch

from ..base import DTYPES, Op, Problem, parse_dtype
from ..checks import Args, element_size, random_tensor, weight_dtype
from ..ssd import random_step_sizes, uniform


@dataclass(frozen=True)
class StateUpdateProblem(Problem):
    batch: int = 16
    nheads: int = 24  # 0: Mamba-1 layout (no head dimension)
    dim: int = 64  # channels per head (Mamba-2's headdim), or all channels (Mamba-1's d)
    dstate: int = 128
    ngroups: int = 1  # groups of B and C; 0 (Mamba-1 only): B, C as (b, n)
    has_D: bool = True
    has_z: bool = False
    has_dt_bias: bool = True
    dt_softplus: bool = True
    state_dtype: str = ""  # "": x's dtype


def as_heads(state, x, dt, A, B, C, D=None, z=None, dt_bias=None):
    """The arguments in Mamba-2's layout, as views: a Mamba-1 call becomes one head per group of
    B and C (one head of d channels when B, C are (b, n)). Writing to the returned state writes
    the caller's."""
    if state.dim() == 4:
        return state, x, dt, A, B, C, D, z, dt_bias
    groups = 1 if B.dim() == 2 else B.shape[1]

    def split(t, dim=0):  # channels d -> (g, d / g)
        return None if t is None else t.unflatten(dim, (groups, -1))

    B, C = (t.unsqueeze(1) if t.dim() == 2 else t for t in (B, C))
    return (split(state, 1), split(x, 1), split(dt, 1), split(A), B, C, split(D), split(z, 1),
            split(dt_bias))


def state_dtype_of(p: StateUpdateProblem) -> torch.dtype:
    return parse_dtype(p.state_dtype or p.dtype)


def make_inputs(p: StateUpdateProblem, gen: torch.Generator) -> dict[str, Any]:
    dt, wdt, dev = DTYPES[p.dtype], weight_dtype(DTYPES[p.dtype]), p.device
    channels = (p.nheads, p.dim) if p.nheads else (p.dim,)
    b_shape = (p.batch, p.dstate) if p.ngroups == 0 else (p.batch, p.ngroups, p.dstate)
    dt_in, dt_bias = random_step_sizes((p.batch, *channels), channels, gen, dt, dev, p.dt_softplus,
                                       p.has_dt_bias)
    return {
        "state": random_tensor((p.batch, *channels, p.dstate), gen, state_dtype_of(p), dev),
        "x": random_tensor((p.batch, *channels), gen, dt, dev),
        "dt": dt_in,
        "A": -torch.exp(uniform((*channels, p.dstate), gen, 0.0, 1.0, wdt, dev)),
        # B, C scaled so that sums over the state are of order one whatever dstate is.
        "B": random_tensor(b_shape, gen, dt, dev, scale=p.dstate ** -0.25),
        "C": random_tensor(b_shape, gen, dt, dev, scale=p.dstate ** -0.25),
        "D": random_tensor(channels, gen, wdt, dev) if p.has_D else None,
        "z": random_tensor((p.batch, *channels), gen, dt, dev) if p.has_z else None,
        "dt_bias": dt_bias,
        "dt_softplus": p.dt_softplus,
    }


def problem_of(kwargs: Mapping[str, Any]) -> StateUpdateProblem:
    a = Args("selective_state_update", kwargs)
    state = kwargs.get("state")
    mamba2 = isinstance(state, torch.Tensor) and state.dim() == 4
    ch = "h p" if mamba2 else "d"
    a.tensor("state", f"b {ch} n")
    x = a.tensor("x", f"b {ch}")
    a.tensor("dt", f"b {ch}")
    a.tensor("A", f"{ch} n")
    B = kwargs.get("B")
    grouped = mamba2 or (isinstance(B, torch.Tensor) and B.dim() == 3)
    a.tensor("B", "b g n" if grouped else "b n")
    a.tensor("C", "b g n" if grouped else "b n")
    a.tensor("D", ch, optional=True)
    a.tensor("z", f"b {ch}", optional=True)
    a.tensor("dt_bias", ch, optional=True)
    for name in ("dt", "B", "C", "z"):
        if kwargs.get(name) is not None and kwargs[name].dtype != x.dtype:
            raise a.fail(f"argument {name!r} has dtype {a.dtype_name(name)}, "
                         f"expected x's {a.dtype_name('x')}")
    if grouped:
        split = "h" if mamba2 else "d"
        a.require(a.sizes[split] % a.sizes["g"] == 0,
                  f"{split}={a.sizes[split]} must be a multiple of the group count "
                  f"g={a.sizes['g']} of B and C")
    dtype = a.dtype_name("x")
    return StateUpdateProblem(
        dtype=dtype, device=a.device_name(),
        batch=a.sizes["b"], nheads=a.sizes["h"] if mamba2 else 0,
        dim=a.sizes["p" if mamba2 else "d"], dstate=a.sizes["n"],
        ngroups=a.sizes["g"] if grouped else 0,
        has_D=kwargs.get("D") is not None, has_z=kwargs.get("z") is not None,
        has_dt_bias=kwargs.get("dt_bias") is not None, dt_softplus=a.flag("dt_softplus"),
        state_dtype="" if a.dtype_name("state") == dtype else a.dtype_name("state"),
    )


def outputs(kwargs: Mapping[str, Any], result) -> dict[str, torch.Tensor]:
    return {"out": result, "state": kwargs["state"]}


def bytes_moved(p: StateUpdateProblem) -> int:
    e, w = element_size(p.dtype), element_size("float64" if p.dtype == "float64" else "float32")  # weights
    channels = p.batch * max(p.nheads, 1) * p.dim
    total = 2 * channels * p.dstate * element_size(p.state_dtype or p.dtype)
    total += (3 + p.has_z) * channels * e  # x, dt, out, z
    total += 2 * p.batch * max(p.ngroups, 1) * p.dstate * e  # B, C
    total += max(p.nheads, 1) * p.dim * (p.dstate + p.has_D + p.has_dt_bias) * w  # A, D, dt_bias
    return total


def flops(p: StateUpdateProblem) -> int:
    # As selective_scan's count for one step: per state element dt*A, exp, dt*x*B, h*dA + that,
    # C*h and its sum; per channel dt*x, D*x and the gate.
    return p.batch * max(p.nheads, 1) * p.dim * (7 * p.dstate + 4)


def test_problems() -> list[StateUpdateProblem]:
    mamba1 = StateUpdateProblem(batch=3, nheads=0, dim=12, dstate=8, ngroups=0, has_z=True)
    mamba2 = StateUpdateProblem(batch=3, nheads=4, dim=6, dstate=8, ngroups=1)
    return [
        mamba1,
        mamba1.replace(ngroups=3, state_dtype="float32"),
        mamba1.replace(has_D=False, has_z=False, has_dt_bias=False, dt_softplus=False),
        mamba2,
        mamba2.replace(ngroups=2, has_z=True, state_dtype="float32"),
        mamba2.replace(batch=1, nheads=6, ngroups=6, dstate=16, has_D=False, dt_softplus=False),
        mamba2.replace(nheads=2, dim=1, dstate=1, has_dt_bias=False, has_z=True),
    ]


OP = Op(
    name="selective_state_update",
    problem_type=StateUpdateProblem,
    make_inputs=make_inputs,
    problem_of=problem_of,
    outputs=outputs,
    reference="ssmbench.impls.selective_state_update.reference:selective_state_update",
    bytes_moved=bytes_moved,
    flops=flops,
    default_problem=StateUpdateProblem(),
    test_problems=test_problems,
    doc=__doc__,
)
