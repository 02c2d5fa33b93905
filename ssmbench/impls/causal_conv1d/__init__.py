"""Depthwise causal convolution, with the arguments and layouts of causal-conv1d's
``causal_conv1d_fn``.

x: (b, d, l); weight: (d, w); bias: (d,) or None; activation None, "silu" or "swish" (the same
function). Returns out (b, d, l) in x's dtype: out[t] = act(bias + sum_k weight[k] x[t - (w-1) + k]),
with x zero before the first position.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping

import torch
import torch.nn.functional as F

from ..base import DTYPES, Op, Problem
from ..checks import Args, element_size, random_tensor

ACTIVATIONS = (None, "silu", "swish")

# Relative-norm error allowed for half inputs: accumulation is float32, so the error is the
# rounding of the output to the input dtype (a unit of bf16 is 2^-8, of fp16 2^-11).
TOLERANCES = {"bfloat16": 1e-2, "float16": 2e-3}


def activation_fn(activation) -> Callable[[torch.Tensor], torch.Tensor]:
    """The function an ``activation`` argument names; anything else is a ValueError."""
    if activation is None:
        return lambda y: y
    if activation in ("silu", "swish"):
        return F.silu
    raise ValueError(f"argument 'activation' must be one of {ACTIVATIONS}, got {activation!r}")


@dataclass(frozen=True)
class CausalConv1dProblem(Problem):
    batch: int = 1
    dim: int = 1024
    seqlen: int = 2048
    width: int = 4
    has_bias: bool = True
    activation: str = "silu"  # "" for none


def conv_weights(p, gen: torch.Generator) -> dict[str, Any]:
    """weight, bias and activation for a problem with dim, width, has_bias and activation fields.

    Weights come in x's dtype, as in a model cast to half precision; the taps are scaled so the
    output has the input's magnitude.
    """
    dt, dev = DTYPES[p.dtype], p.device
    return {
        "weight": random_tensor((p.dim, p.width), gen, dt, dev, scale=p.width ** -0.5),
        "bias": random_tensor((p.dim,), gen, dt, dev) if p.has_bias else None,
        "activation": p.activation or None,
    }


def check_weights(a: Args) -> dict[str, Any]:
    """Validates weight (d, w), bias (d,) and activation; the problem fields they give."""
    a.tensor("weight", "d w")
    a.tensor("bias", "d", optional=True)
    activation = a.kwargs.get("activation")
    activation_fn(activation)
    return {"width": a.sizes["w"], "has_bias": a.kwargs.get("bias") is not None,
            "activation": activation or ""}


def make_inputs(p: CausalConv1dProblem, gen: torch.Generator) -> dict[str, Any]:
    x = random_tensor((p.batch, p.dim, p.seqlen), gen, DTYPES[p.dtype], p.device)
    return {"x": x, **conv_weights(p, gen)}


def problem_of(kwargs: Mapping[str, Any]) -> CausalConv1dProblem:
    a = Args("causal_conv1d", kwargs)
    a.tensor("x", "b d l")
    weights = check_weights(a)
    return CausalConv1dProblem(
        dtype=a.dtype_name("x"), device=a.device_name(),
        batch=a.sizes["b"], dim=a.sizes["d"], seqlen=a.sizes["l"], **weights,
    )


def outputs(kwargs: Mapping[str, Any], result) -> dict[str, torch.Tensor]:
    return {"out": result}


def weight_bytes(p) -> int:
    return (p.width + p.has_bias) * p.dim * element_size(p.dtype)


def bytes_moved(p: CausalConv1dProblem) -> int:
    return 2 * p.batch * p.dim * p.seqlen * element_size(p.dtype) + weight_bytes(p)


def conv_flops(p, outputs_per_channel: int) -> int:
    # A multiply and an add per tap, one add for the bias; the activation is not counted.
    return p.batch * p.dim * outputs_per_channel * (2 * p.width + p.has_bias)


def flops(p: CausalConv1dProblem) -> int:
    return conv_flops(p, p.seqlen)


def test_problems() -> list[CausalConv1dProblem]:
    base = CausalConv1dProblem(batch=2, dim=8, seqlen=37, width=4)
    return [
        base,
        base.replace(seqlen=1),
        base.replace(seqlen=2, width=3),
        base.replace(width=2, has_bias=False, activation=""),
        base.replace(width=3, activation="swish"),
        base.replace(batch=1, dim=5, seqlen=129, has_bias=False),
        base.replace(width=1, seqlen=16, activation=""),
    ]


OP = Op(
    name="causal_conv1d",
    problem_type=CausalConv1dProblem,
    make_inputs=make_inputs,
    problem_of=problem_of,
    outputs=outputs,
    reference="ssmbench.impls.causal_conv1d.reference:causal_conv1d",
    bytes_moved=bytes_moved,
    flops=flops,
    default_problem=CausalConv1dProblem(),
    test_problems=test_problems,
    doc=__doc__,
)
