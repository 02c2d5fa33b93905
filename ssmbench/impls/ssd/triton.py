"""Our chunked Triton SSD (ssmbench/kernels/triton/ssd.py): five kernels, the matrix products on
tensor cores for half precision and in IEEE float32 for float32 inputs."""
from __future__ import annotations

from ..base import triton_backend
from . import SSDProblem

# The kernels hold a whole chunk of step sizes in one tile and a (chunk, chunk) block of C.B per
# chunk in scratch memory (L x chunk floats per group); sizes above this are not tested.
MAX_CHUNK = 1024


def ssd(x, dt, A, B, C, chunk_size=256, D=None, z=None, dt_bias=None, initial_states=None,
        dt_softplus=False, return_final_states=False):
    """Shapes as ``ssmbench.ssd``; the final states are float32."""
    from ...kernels.triton.ssd import ssd_forward

    out, final = ssd_forward(x, dt, A, B, C, chunk_size, D=D, z=z, dt_bias=dt_bias,
                             initial_states=initial_states, dt_softplus=dt_softplus)
    return (out, final) if return_final_states else out


def _unsupported(problem: SSDProblem) -> list[str]:
    q = problem.chunk_size
    if q & (q - 1):
        return [f"chunk_size={q} is not a power of two (Triton blocks are)"]
    return []


BACKEND = triton_backend(
    "ssd", f"{__name__}:ssd",
    "Triton, chunked SSD: per-chunk states and outputs as tl.dot products, states passed between chunks",
    limits={"chunk_size": MAX_CHUNK}, check_supported=_unsupported, first_call_s=7.5,
)
