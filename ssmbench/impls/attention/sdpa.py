"""torch's ``scaled_dot_product_attention``. "sdpa" lets torch choose the kernel; each sdpa_<kernel>
variant forces one kernel with ``torch.nn.attention.sdpa_kernel`` and fails rather than let torch
pick another, so its timings are that kernel's."""
from __future__ import annotations

import contextlib
from functools import partial

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from ..base import Backend, cuda_available
from . import TOLERANCES, AttentionProblem, causal_mask


def attention(q, k, v, softmax_scale=None, causal=False, kernel: str | None = None):
    """Shapes as ``ssmbench.attention``; ``kernel`` names an ``SDPBackend`` member to force."""
    lq, lk = q.shape[1], k.shape[1]
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
    if cuda_available() and torch.cuda.get_device_capability() < (8, 0):
        major, minor = torch.cuda.get_device_capability()
        return [f"the flash kernel needs compute capability 8.0 or newer; this GPU has {major}.{minor}"]
    return []


def _cudnn_available() -> list[str]:
    return [] if torch.backends.cudnn.is_available() else ["torch finds no cuDNN"]


def _no_mask(kernel: str):
    def reasons(p: AttentionProblem) -> list[str]:
        if p.causal and p.seqlen_q != p.lk:
            return [f"the {kernel} kernel takes no mask, and causal attention with seqlen_q="
                    f"{p.seqlen_q} != seqlen_k={p.lk} needs the bottom-right one spelled out"]
        return []
    return reasons


sdpa_math = partial(attention, kernel="MATH")
sdpa_flash = partial(attention, kernel="FLASH_ATTENTION")
sdpa_efficient = partial(attention, kernel="EFFICIENT_ATTENTION")
sdpa_cudnn = partial(attention, kernel="CUDNN_ATTENTION")

HALF = ("bfloat16", "float16")

BACKENDS = [
    Backend(op="attention", name="sdpa", impl=f"{__name__}:attention", kind="third-party",
            priority=10, tolerances=TOLERANCES,
            description="torch scaled_dot_product_attention, kernel chosen by torch"),
    Backend(op="attention", name="sdpa_math", impl=f"{__name__}:sdpa_math", kind="third-party",
            priority=-10, tolerances=TOLERANCES,
            description="torch SDPA forced to its math (unfused) kernel"),
    Backend(op="attention", name="sdpa_flash", impl=f"{__name__}:sdpa_flash", kind="third-party",
            priority=-10, devices=("cuda",), dtypes=HALF, limits={"headdim": 256},
            tolerances=TOLERANCES, check_available=_flash_available,
            check_supported=_no_mask("flash"),
            description="torch SDPA forced to its FlashAttention-2 kernel"),
    Backend(op="attention", name="sdpa_efficient", impl=f"{__name__}:sdpa_efficient",
            kind="third-party", priority=-10, devices=("cuda",),
            dtypes=("float32",) + HALF, tolerances=TOLERANCES,
            description="torch SDPA forced to its memory-efficient kernel"),
    Backend(op="attention", name="sdpa_cudnn", impl=f"{__name__}:sdpa_cudnn", kind="third-party",
            priority=-10, devices=("cuda",), dtypes=HALF, tolerances=TOLERANCES,
            check_available=_cudnn_available,
            description="torch SDPA forced to its cuDNN kernel"),
]
