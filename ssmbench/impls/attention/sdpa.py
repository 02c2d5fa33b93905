"""torch's ``scaled_dot_product_attention``. "sdpa" lets torch choose the kernel; each sdpa_<kernel>
variant forces one kernel with ``torch.nn.attention.sdpa_kernel`` and fails rather than let torch
pick another, so its timings are that kernel's. "sdpa_flash_cpu" calls torch's CPU flash kernel
itself: on the "meta" device SDPA always takes its math path (which saves the L x L weights for
the backward), so only the direct call counts on meta what a CPU training step saves."""
from __future__ import annotations

import contextlib
from functools import partial

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from ..base import Backend
from ..third_party import capability_failure
from . import TOLERANCES, AttentionProblem, causal_mask


def attention(q, k, v, softmax_scale=None, causal=False, kernel: str | None = None):
    """Shapes as ``ssmbench.attention``; ``kernel`` names an ``SDPBackend`` member to force."""
    lq, lk = q.shape[1], k.shape[1]
    if causal and lq > lk:
        # The first lq - lk queries have no key to attend and output zeros, as in flash-attn
        # (SDPA's kernels disagree on such rows: cuDNN's are not zero); the rest are square causal.
        rest = attention(q[:, lq - lk:], k, v, softmax_scale, causal, kernel)
        return torch.cat([rest.new_zeros(q.shape[0], lq - lk, *rest.shape[2:]), rest], dim=1)
    # SDPA's is_causal aligns the mask to the top left; flash-attn's (ours) to the bottom right.
    # They agree only for lq == lk; otherwise the mask goes in explicitly.
    mask = causal_mask(lq, lk, q.device) if causal and lq != lk else None
    forced = sdpa_kernel(getattr(SDPBackend, kernel)) if kernel else contextlib.nullcontext()
    with forced:
        out = F.scaled_dot_product_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=mask,
            is_causal=causal and mask is None, scale=softmax_scale, enable_gqa=q.shape[2] != k.shape[2])
    return out.transpose(1, 2)


def _flash_available() -> list[str]:
    if not torch.backends.cuda.is_flash_attention_available():
        return ["this torch build has no flash attention kernel"]
    return capability_failure("SDPA's flash kernel", (8, 0))


def _cudnn_available() -> list[str]:
    return [] if torch.backends.cudnn.is_available() else ["torch finds no cuDNN"]


# What each forced kernel refused ("No available kernel") when tried on an H200.
def _flash_supported(p: AttentionProblem) -> list[str]:
    if p.causal and p.seqlen_q < p.lk:
        return [f"the flash kernel takes no mask, and causal attention with seqlen_q={p.seqlen_q} < "
                f"seqlen_k={p.lk} needs the bottom-right one spelled out"]
    return []


def _efficient_supported(p: AttentionProblem) -> list[str]:
    if p.hk != p.nheads:
        return [f"the memory-efficient kernel needs as many key/value heads as query heads "
                f"(nheads_kv={p.hk}, nheads={p.nheads})"]
    return []


def _cudnn_supported(p: AttentionProblem) -> list[str]:
    return ["the cuDNN kernel does not take a key/value length of 1"] if p.lk == 1 else []


def flash_cpu(q, k, v, softmax_scale=None, causal=False):
    """Shapes as ``ssmbench.attention``. Grouped-query heads are repeated to the query heads (the
    kernel takes equal counts); a bottom-right causal mask goes in as an additive mask."""
    lq, lk = q.shape[1], k.shape[1]
    if causal and lq > lk:
        rest = flash_cpu(q[:, lq - lk:], k, v, softmax_scale, causal)
        return torch.cat([rest.new_zeros(q.shape[0], lq - lk, *rest.shape[2:]), rest], dim=1)
    group = q.shape[2] // k.shape[2]
    if group > 1:
        k, v = k.repeat_interleave(group, dim=2), v.repeat_interleave(group, dim=2)
    mask = None
    if causal and lq != lk:
        mask = torch.zeros(lq, lk, dtype=q.dtype, device=q.device).masked_fill(
            ~causal_mask(lq, lk, q.device), -torch.inf)
    out = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), 0.0, causal and mask is None,
        attn_mask=mask, scale=softmax_scale)[0]
    return out.transpose(1, 2)


sdpa_math = partial(attention, kernel="MATH")
sdpa_flash = partial(attention, kernel="FLASH_ATTENTION")
sdpa_efficient = partial(attention, kernel="EFFICIENT_ATTENTION")
sdpa_cudnn = partial(attention, kernel="CUDNN_ATTENTION")

HALF = ("bfloat16", "float16")

BACKENDS = [
    Backend(op="attention", name="sdpa", has_backward=True, impl=f"{__name__}:attention", kind="third-party",
            priority=10, tolerances=TOLERANCES,
            description="torch scaled_dot_product_attention, kernel chosen by torch"),
    Backend(op="attention", name="sdpa_math", has_backward=True, impl=f"{__name__}:sdpa_math", kind="third-party",
            priority=-10, tolerances=TOLERANCES, max_sensible_len=2**14,
            description="torch SDPA forced to its math (unfused) kernel"),
    Backend(op="attention", name="sdpa_flash", has_backward=True, impl=f"{__name__}:sdpa_flash", kind="third-party",
            priority=-10, fused=True, devices=("cuda",), dtypes=HALF, limits={"headdim": 256},
            tolerances=TOLERANCES, check_available=_flash_available,
            check_supported=_flash_supported,
            description="torch SDPA forced to its FlashAttention-2 kernel"),
    Backend(op="attention", name="sdpa_flash_cpu", has_backward=True, impl=f"{__name__}:flash_cpu",
            kind="third-party", priority=-10, devices=("cpu",), tolerances=TOLERANCES,
            description="torch's CPU flash-attention kernel called directly (saves q, k, v, out and the "
                        "log-sum-exp for the backward; runs on the meta device too)"),
    Backend(op="attention", name="sdpa_efficient", has_backward=True, impl=f"{__name__}:sdpa_efficient", fused=True,
            kind="third-party", priority=-10, devices=("cuda",),
            dtypes=("float32",) + HALF, tolerances=TOLERANCES, check_supported=_efficient_supported,
            description="torch SDPA forced to its memory-efficient kernel"),
    Backend(op="attention", name="sdpa_cudnn", has_backward=True, impl=f"{__name__}:sdpa_cudnn", kind="third-party",
            priority=-10, fused=True, devices=("cuda",), dtypes=HALF, tolerances=TOLERANCES,
            check_available=_cudnn_available, check_supported=_cudnn_supported,
            description="torch SDPA forced to its cuDNN kernel"),
]
