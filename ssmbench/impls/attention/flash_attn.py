"""flash-attn's kernels (third-party, optional): FlashAttention-2 ``flash_attn.flash_attn_func``
and, where the Hopper build is installed, FlashAttention-3 ``flash_attn_interface.flash_attn_func``.

Both take our layout and GQA convention, with the causal mask aligned to the bottom right, so
q, k, v, softmax_scale and causal pass through. FA2 needs compute capability 8.0 (Ampere) or
newer, FA3 9.0 (Hopper); both take float16 and bfloat16 and head dims up to 256. Each package
imports its compiled extension at import time; that error, where there is one, is the reason shown.
"""
from __future__ import annotations

from ..base import Backend, import_failure
from ..third_party import capability_failure
from . import TOLERANCES

HALF = ("bfloat16", "float16")


def flash_attn2(q, k, v, softmax_scale=None, causal=False):
    """Shapes as ``ssmbench.attention``."""
    from flash_attn import flash_attn_func

    return flash_attn_func(q, k, v, softmax_scale=softmax_scale, causal=causal)


def flash_attn3(q, k, v, softmax_scale=None, causal=False):
    """Shapes as ``ssmbench.attention``."""
    from flash_attn_interface import flash_attn_func

    out = flash_attn_func(q, k, v, softmax_scale=softmax_scale, causal=causal)
    # Early FA3 releases returned (out, softmax_lse); later ones return out alone.
    return out[0] if isinstance(out, tuple) else out


def _fa2_available() -> list[str]:
    return import_failure("flash_attn") + capability_failure("flash-attn 2", (8, 0))


def _fa3_available() -> list[str]:
    return import_failure("flash_attn_interface") + capability_failure("flash-attn 3", (9, 0))


BACKENDS = [
    Backend(op="attention", name="flash_attn", has_backward=True, impl=f"{__name__}:flash_attn2", kind="third-party",
            fused=True, requires=("flash_attn",), devices=("cuda",), dtypes=HALF, limits={"headdim": 256},
            tolerances=TOLERANCES, priority=20, check_available=_fa2_available,
            description="flash-attn 2 flash_attn_func, arguments passed through"),
    Backend(op="attention", name="flash_attn3", has_backward=True, impl=f"{__name__}:flash_attn3", kind="third-party",
            fused=True,
            requires=("flash_attn_interface",), devices=("cuda",), dtypes=HALF,
            limits={"headdim": 256}, tolerances=TOLERANCES, priority=25,
            check_available=_fa3_available,
            description="flash-attn 3 (Hopper build) flash_attn_func, arguments passed through"),
]
