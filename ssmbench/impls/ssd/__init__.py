"""Mamba-2 state-space duality (SSD) scan, with the arguments and layouts of mamba-ssm's
``mamba_chunk_scan_combined``.

x, z: (b, l, h, p); dt: (b, l, h); A, dt_bias: (h,); B, C: (b, l, g, n) with h % g == 0 (head i
reads group i // (h / g)); D: (h,) or (h, p); initial_states: (b, h, p, n). Returns out
(b, l, h, p) in x's dtype, and with return_final_states also the state after the last step,
(b, h, p, n) in float32 (float64 for float64 inputs). chunk_size is the block length of chunked
backends; the result does not depend on it.

Weights (A, D, dt_bias) and initial_states are float32 for half-precision inputs, as in Mamba-2's
mixed precision; x, dt, B, C, z share one dtype.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import torch
import torch.nn.functional as F

from ..base import DTYPES, Op, Problem
from ..checks import Args, element_size, random_tensor, weight_dtype


@dataclass(frozen=True)
class SSDProblem(Problem):
    batch: int = 1
    seqlen: int = 1024
    nheads: int = 8
    headdim: int = 64
    dstate: int = 128
    ngroups: int = 1
    chunk_size: int = 256
    has_D: bool = True
    D_per_channel: bool = False  # D as (h, p) instead of (h,)
    has_z: bool = False
    has_dt_bias: bool = True
    dt_softplus: bool = True
    has_initial_states: bool = False
    return_final_states: bool = False


def step_sizes(dt: torch.Tensor, dt_bias: torch.Tensor | None, softplus: bool) -> torch.Tensor:
    """dt (+ dt_bias), through softplus when asked; dt_bias broadcasts against dt's last dims."""
    if dt_bias is not None:
        dt = dt + dt_bias.to(dt.dtype)
    return F.softplus(dt) if softplus else dt


def scale_(t: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """t * w, in place when autograd does not need t's old value (w needs no gradient).
    t must be an intermediate of the caller's own."""
    if torch.is_grad_enabled() and w.requires_grad:
        return t * w
    return t.mul_(w)


def skip_and_gate(y: torch.Tensor, x: torch.Tensor, D: torch.Tensor | None,
                  z: torch.Tensor | None, in_place: bool = False) -> torch.Tensor:
    """(y + D x) * silu(z), D broadcasting against x's last dims. With in_place, y is updated
    where autograd allows: only for a y that the caller made and nothing saved for backward."""
    if D is not None:
        x, D = x.to(y.dtype), D.to(y.dtype)
        y = y.addcmul_(x, D) if in_place else torch.addcmul(y, x, D)
    if z is not None:
        gate = F.silu(z.to(y.dtype))
        y = scale_(y, gate) if in_place else y * gate
    return y


def per_channel(D: torch.Tensor | None) -> torch.Tensor | None:
    """D as (h, p) or (h, 1), so that it broadcasts against (..., h, p)."""
    return D if D is None or D.dim() == 2 else D[:, None]


def uniform(shape, gen: torch.Generator, low: float, high: float, dtype: torch.dtype,
            device: str) -> torch.Tensor:
    return (torch.rand(*shape, generator=gen, dtype=torch.float64) * (high - low) + low).to(device, dtype)


def random_step_sizes(dt_shape, bias_shape, gen: torch.Generator, dtype: torch.dtype, device: str,
                      softplus: bool, has_bias: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """dt and dt_bias (bias_shape, the trailing dims of dt_shape; float32 weights) whose step
    sizes after the bias and softplus lie in about [0.001, 0.1], as Mamba initialises them."""
    wdt = weight_dtype(dtype)
    if not softplus:
        dt = uniform(dt_shape, gen, 0.001, 0.1, dtype, device)
        return dt, uniform(bias_shape, gen, 0.0, 0.02, wdt, device) if has_bias else None
    bias = torch.log(torch.expm1(uniform(bias_shape, gen, 0.001, 0.1, torch.float64, device)))  # softplus^-1
    raw = random_tensor(dt_shape, gen, torch.float64, device, scale=0.5)
    if has_bias:
        return raw.to(dtype), bias.to(wdt)
    return (raw + bias).to(dtype), None


def make_inputs(p: SSDProblem, gen: torch.Generator) -> dict[str, Any]:
    dt, wdt, dev = DTYPES[p.dtype], weight_dtype(DTYPES[p.dtype]), p.device
    h = p.nheads
    dt_in, dt_bias = random_step_sizes((p.batch, p.seqlen, h), (h,), gen, dt, dev, p.dt_softplus,
                                       p.has_dt_bias)
    bc = (p.batch, p.seqlen, p.ngroups, p.dstate)
    return {
        "x": random_tensor((p.batch, p.seqlen, h, p.headdim), gen, dt, dev),
        "dt": dt_in,
        "A": -torch.exp(uniform((h,), gen, 0.0, 1.0, wdt, dev)),
        # B, C scaled so that C.B is of order one whatever dstate is.
        "B": random_tensor(bc, gen, dt, dev, scale=p.dstate ** -0.25),
        "C": random_tensor(bc, gen, dt, dev, scale=p.dstate ** -0.25),
        "chunk_size": p.chunk_size,
        "D": random_tensor((h, p.headdim) if p.D_per_channel else (h,), gen, wdt, dev) if p.has_D else None,
        "z": random_tensor((p.batch, p.seqlen, h, p.headdim), gen, dt, dev) if p.has_z else None,
        "dt_bias": dt_bias,
        "initial_states": random_tensor((p.batch, h, p.headdim, p.dstate), gen, wdt, dev)
        if p.has_initial_states else None,
        "dt_softplus": p.dt_softplus,
        "return_final_states": p.return_final_states,
    }


def problem_of(kwargs: Mapping[str, Any]) -> SSDProblem:
    a = Args("ssd", kwargs)
    x = a.tensor("x", "b l h p")
    a.tensor("dt", "b l h")
    a.tensor("A", "h")
    a.tensor("B", "b l g n")
    a.tensor("C", "b l g n")
    D = kwargs.get("D")
    a.tensor("D", "h p" if isinstance(D, torch.Tensor) and D.dim() == 2 else "h", optional=True)
    a.tensor("z", "b l h p", optional=True)
    a.tensor("dt_bias", "h", optional=True)
    a.tensor("initial_states", "b h p n", optional=True)
    for name in ("dt", "B", "C", "z"):
        if kwargs.get(name) is not None and kwargs[name].dtype != x.dtype:
            raise a.fail(f"argument {name!r} has dtype {a.dtype_name(name)}, "
                         f"expected x's {a.dtype_name('x')}")
    a.require(a.sizes["h"] % a.sizes["g"] == 0,
              f"h={a.sizes['h']} heads must be a multiple of the group count g={a.sizes['g']} of B and C")
    chunk = kwargs.get("chunk_size", 256)
    a.require(isinstance(chunk, int) and not isinstance(chunk, bool) and chunk > 0,
              f"argument 'chunk_size' must be a positive int, got {chunk!r}")
    return SSDProblem(
        dtype=a.dtype_name("x"), device=a.device_name(),
        batch=a.sizes["b"], seqlen=a.sizes["l"], nheads=a.sizes["h"], headdim=a.sizes["p"],
        dstate=a.sizes["n"], ngroups=a.sizes["g"], chunk_size=chunk,
        has_D=D is not None, D_per_channel=D is not None and D.dim() == 2,
        has_z=kwargs.get("z") is not None, has_dt_bias=kwargs.get("dt_bias") is not None,
        dt_softplus=a.flag("dt_softplus"), has_initial_states=kwargs.get("initial_states") is not None,
        return_final_states=a.flag("return_final_states"),
    )


def outputs(kwargs: Mapping[str, Any], result) -> dict[str, torch.Tensor]:
    if kwargs.get("return_final_states"):
        out, final = result
        return {"out": out, "final_states": final}
    return {"out": result}


def bytes_moved(p: SSDProblem) -> int:
    e, w = element_size(p.dtype), element_size("float64" if p.dtype == "float64" else "float32")  # weights
    blhp = p.batch * p.seqlen * p.nheads * p.headdim
    total = (2 + p.has_z) * blhp * e  # x, out, z
    total += p.batch * p.seqlen * (p.nheads + 2 * p.ngroups * p.dstate) * e  # dt, B, C
    total += p.nheads * w * (1 + p.has_dt_bias + p.has_D * (p.headdim if p.D_per_channel else 1))
    state = p.batch * p.nheads * p.headdim * p.dstate * w
    return total + state * (p.has_initial_states + p.return_final_states)


def flops(p: SSDProblem) -> int:
    # The recurrence's count, as for selective_scan: per state element and step dt*x*B, h*dA + that,
    # C*h and its sum; per channel and step dt*x, D*x and the gate. Chunked backends do more.
    return p.batch * p.seqlen * p.nheads * p.headdim * (5 * p.dstate + 4)


def exps(p: SSDProblem) -> int:
    # exp(dt * A) once per head and step: A is a scalar per head (chunked backends do more).
    return p.batch * p.seqlen * p.nheads


def test_problems() -> list[SSDProblem]:
    base = SSDProblem(batch=2, seqlen=37, nheads=4, headdim=8, dstate=8, ngroups=1, chunk_size=16)
    return [
        base,
        base.replace(seqlen=1),
        base.replace(ngroups=2, has_z=True, D_per_channel=True, return_final_states=True),
        base.replace(seqlen=64, ngroups=4, has_initial_states=True, return_final_states=True),
        base.replace(has_D=False, has_dt_bias=False, dt_softplus=False, has_initial_states=True),
        base.replace(has_dt_bias=False, has_z=True, chunk_size=8, return_final_states=True),
        base.replace(batch=1, seqlen=70, nheads=6, headdim=4, dstate=16, ngroups=3, chunk_size=32,
                     has_initial_states=True, return_final_states=True),
    ]


OP = Op(
    name="ssd",
    problem_type=SSDProblem,
    make_inputs=make_inputs,
    problem_of=problem_of,
    outputs=outputs,
    reference="ssmbench.impls.ssd.reference:ssd",
    bytes_moved=bytes_moved,
    flops=flops,
    exps=exps,
    default_problem=SSDProblem(),
    test_problems=test_problems,
    doc=__doc__,
)
