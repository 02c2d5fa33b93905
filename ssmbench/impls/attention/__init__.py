"""Softmax attention, with the arguments and layouts of flash-attn's ``flash_attn_func``.

q: (b, lq, h, d); k, v: (b, lk, hk, d) with h % hk == 0 (grouped-query attention: query head i
reads key/value head i // (h / hk)); softmax_scale None means 1 / sqrt(d). With causal, query i
attends keys j <= i + lk - lq: the mask is aligned to the bottom right, as in flash-attn, so the
queries are the last lq positions of the keys' sequence (lq = 1, causal: a KV-cache decode step).
A query with no key to attend (causal, lq > lk) outputs zeros, as flash-attn's does.
Returns (b, lq, h, d) in q's dtype.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from numbers import Real
from typing import Any, Mapping

import torch

from ..base import DTYPES, Op, Problem
from ..checks import Args, element_size, random_tensor


@dataclass(frozen=True)
class AttentionProblem(Problem):
    batch: int = 1
    seqlen_q: int = 2048
    seqlen_k: int = 0  # 0: same as seqlen_q
    nheads: int = 16
    nheads_kv: int = 0  # 0: same as nheads
    headdim: int = 64
    causal: bool = True

    @property
    def lk(self) -> int:
        return self.seqlen_k or self.seqlen_q

    @property
    def hk(self) -> int:
        return self.nheads_kv or self.nheads


# Relative-norm error allowed for half inputs. Kernels round the output, and flash-style kernels
# also the softmax weights, to the input dtype: a few units of its epsilon (bf16 2^-8, fp16 2^-11).
TOLERANCES = {"bfloat16": 1e-2, "float16": 2e-3}


def causal_mask(lq: int, lk: int, device=None) -> torch.Tensor:
    """(lq, lk) bool, True where query i may attend key j: j <= i + lk - lq (bottom right)."""
    return torch.ones(lq, lk, dtype=torch.bool, device=device).tril(lk - lq)


def default_scale(softmax_scale, headdim: int) -> float:
    return 1.0 / math.sqrt(headdim) if softmax_scale is None else softmax_scale


def make_inputs(p: AttentionProblem, gen: torch.Generator) -> dict[str, Any]:
    dt, dev = DTYPES[p.dtype], p.device
    return {
        "q": random_tensor((p.batch, p.seqlen_q, p.nheads, p.headdim), gen, dt, dev),
        "k": random_tensor((p.batch, p.lk, p.hk, p.headdim), gen, dt, dev),
        "v": random_tensor((p.batch, p.lk, p.hk, p.headdim), gen, dt, dev),
        "softmax_scale": None,
        "causal": p.causal,
    }


def problem_of(kwargs: Mapping[str, Any]) -> AttentionProblem:
    a = Args("attention", kwargs)
    a.tensor("q", "b lq h d", same_dtype=True)
    a.tensor("k", "b lk hk d", same_dtype=True)
    a.tensor("v", "b lk hk d", same_dtype=True)
    h, hk = a.sizes["h"], a.sizes["hk"]
    a.require(h % hk == 0, f"the query head count h={h} of 'q' must be a multiple of the key/value "
                           f"head count hk={hk} of 'k' and 'v'")
    scale = kwargs.get("softmax_scale")
    a.require(scale is None or (isinstance(scale, Real) and not isinstance(scale, bool)),
              f"argument 'softmax_scale' must be None or a number, got {scale!r}")
    return AttentionProblem(
        dtype=a.dtype_name("q"), device=a.device_name(),
        batch=a.sizes["b"], seqlen_q=a.sizes["lq"], seqlen_k=a.sizes["lk"], nheads=h, nheads_kv=hk,
        headdim=a.sizes["d"], causal=a.flag("causal"),
    )


def outputs(kwargs: Mapping[str, Any], result) -> dict[str, torch.Tensor]:
    return {"out": result}


def bytes_moved(p: AttentionProblem) -> int:
    q_and_out = 2 * p.batch * p.seqlen_q * p.nheads * p.headdim
    k_and_v = 2 * p.batch * p.lk * p.hk * p.headdim
    return (q_and_out + k_and_v) * element_size(p.dtype)


def attended_pairs(p: AttentionProblem) -> int:
    """How many (query, key) pairs the mask keeps, per batch and head."""
    lq, lk = p.seqlen_q, p.lk
    if not p.causal:
        return lq * lk
    # Query i keeps min(lk, max(0, i + lk - lq + 1)) keys; about half of lq * lk when lq == lk.
    return sum(min(lk, max(0, i + lk - lq + 1)) for i in range(lq))


def flops(p: AttentionProblem) -> int:
    # q k^T and p v: two multiply-adds of length d per kept pair (the usual 4 b h lq lk d, which
    # counts the causal mask as keeping lq (lq + 1) / 2 pairs, and every key for a decode step).
    return 4 * p.batch * p.nheads * attended_pairs(p) * p.headdim


def test_problems() -> list[AttentionProblem]:
    base = AttentionProblem(batch=2, seqlen_q=37, nheads=4, headdim=32, causal=True)
    return [
        base,
        base.replace(causal=False),
        base.replace(seqlen_q=1, seqlen_k=45),  # KV-cache decode
        base.replace(seqlen_q=1, seqlen_k=45, nheads_kv=1, causal=False),
        base.replace(seqlen_q=1),
        base.replace(seqlen_q=13, seqlen_k=70, nheads_kv=2),  # chunked prefill
        base.replace(seqlen_q=70, seqlen_k=13, nheads_kv=2, causal=False),
        base.replace(seqlen_q=20, seqlen_k=13, nheads_kv=1),  # queries with no key to attend
        base.replace(batch=1, seqlen_q=129, nheads=2, nheads_kv=1, headdim=64),
        base.replace(seqlen_q=65, nheads_kv=2, headdim=16, causal=False),
    ]


OP = Op(
    name="attention",
    length_field="seqlen_q",
    length_exponent=2.0,
    problem_type=AttentionProblem,
    make_inputs=make_inputs,
    problem_of=problem_of,
    outputs=outputs,
    reference="ssmbench.impls.attention.reference:attention",
    bytes_moved=bytes_moved,
    flops=flops,
    default_problem=AttentionProblem(),
    test_problems=test_problems,
    doc=__doc__,
)
