"""Decode step of the causal convolution, with the arguments and layouts of causal-conv1d's
``causal_conv1d_update``.

x: (b, d) for one new token or (b, d, l) for l new tokens; conv_state: (b, d, s) with s >= w - 1,
the last s inputs seen, updated in place (shifted left by l, the new tokens appended at the end);
weight: (d, w); bias: (d,) or None; activation None, "silu" or "swish". Returns out shaped like x
and in its dtype: the causal convolution of the new tokens continuing the stored inputs.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import torch

from ..base import DTYPES, Op, Problem
from ..causal_conv1d import check_weights, conv_flops, conv_weights, weight_bytes
from ..checks import Args, element_size, random_tensor


@dataclass(frozen=True)
class CausalConv1dUpdateProblem(Problem):
    batch: int = 64
    dim: int = 4096
    width: int = 4
    state_len: int = 3
    new_tokens: int = 0  # 0: x is (b, d), one token; l > 0: x is (b, d, l)
    has_bias: bool = True
    activation: str = "silu"  # "" for none


def make_inputs(p: CausalConv1dUpdateProblem, gen: torch.Generator) -> dict[str, Any]:
    dt, dev = DTYPES[p.dtype], p.device
    x_shape = (p.batch, p.dim) + ((p.new_tokens,) if p.new_tokens else ())
    return {
        "x": random_tensor(x_shape, gen, dt, dev),
        "conv_state": random_tensor((p.batch, p.dim, p.state_len), gen, dt, dev),
        **conv_weights(p, gen),
    }


def problem_of(kwargs: Mapping[str, Any]) -> CausalConv1dUpdateProblem:
    a = Args("causal_conv1d_update", kwargs)
    x = kwargs.get("x")
    tokens = isinstance(x, torch.Tensor) and x.dim() == 3
    a.tensor("x", "b d l" if tokens else "b d", same_dtype=True)
    # The state is written in place, so it must hold exactly what x holds.
    a.tensor("conv_state", "b d s", same_dtype=True, may_be_empty="s")
    weights = check_weights(a)
    a.require(a.sizes["s"] >= a.sizes["w"] - 1,
              f"argument 'conv_state' must keep at least w - 1 = {a.sizes['w'] - 1} steps, "
              f"got shape {tuple(kwargs['conv_state'].shape)}")
    a.require(not tokens or a.sizes["l"] > 0, "argument 'x' must hold at least one new token")
    return CausalConv1dUpdateProblem(
        dtype=a.dtype_name("x"), device=a.device_name(),
        batch=a.sizes["b"], dim=a.sizes["d"], state_len=a.sizes["s"],
        new_tokens=a.sizes["l"] if tokens else 0, **weights,
    )


def outputs(kwargs: Mapping[str, Any], result) -> dict[str, torch.Tensor]:
    return {"out": result, "conv_state": kwargs["conv_state"]}


def bytes_moved(p: CausalConv1dUpdateProblem) -> int:
    e = element_size(p.dtype)
    tokens = max(p.new_tokens, 1)
    # x read and out written; the whole state read and written back, since it shifts.
    return (2 * tokens + 2 * p.state_len) * p.batch * p.dim * e + weight_bytes(p)


def flops(p: CausalConv1dUpdateProblem) -> int:
    return conv_flops(p, max(p.new_tokens, 1))


def test_problems() -> list[CausalConv1dUpdateProblem]:
    base = CausalConv1dUpdateProblem(batch=2, dim=8, width=4, state_len=3)
    return [
        base,
        base.replace(state_len=7),
        base.replace(new_tokens=1),
        base.replace(new_tokens=5, state_len=6, activation=""),
        base.replace(new_tokens=9, width=3, state_len=4),
        base.replace(width=2, state_len=1, has_bias=False),
        base.replace(width=3, state_len=2, new_tokens=3, activation="swish", has_bias=False),
        base.replace(batch=3, dim=5, width=1, state_len=0, new_tokens=2),
    ]


OP = Op(
    name="causal_conv1d_update",
    problem_type=CausalConv1dUpdateProblem,
    make_inputs=make_inputs,
    problem_of=problem_of,
    outputs=outputs,
    reference="ssmbench.impls.causal_conv1d_update.reference:causal_conv1d_update",
    bytes_moved=bytes_moved,
    flops=flops,
    default_problem=CausalConv1dUpdateProblem(),
    test_problems=test_problems,
    doc=__doc__,
)
