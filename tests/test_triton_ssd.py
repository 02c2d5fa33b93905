"""Our Triton SSD beyond the generic correctness test: that the check catches a wrong kernel, the
paper's correctness anchor, chunk sizes from tiny to longer than the sequence, half precision,
the strided views a Mamba-2 layer passes, and the chunk sizes it refuses.

On a machine without a CUDA GPU the kernels run only under TRITON_INTERPRET=1 (set before the
process imports them); without it these tests skip, giving the backend's reason. The full-size
shapes run on the GPU only: interpreted, the anchor alone takes a minute.
"""
import pytest
import torch

from ssmbench.harness.check import check
from ssmbench.impls import get_backend, get_op, reasons
from ssmbench.impls.base import triton_interpreting
from ssmbench.impls.ssd import SSDProblem

DEVICE = "cpu" if triton_interpreting() else "cuda"
BACKEND = get_backend("ssd", "triton")
SMALL = SSDProblem(batch=2, seqlen=37, nheads=4, headdim=16, dstate=16, ngroups=2, chunk_size=16,
                   has_z=True, D_per_channel=True, has_initial_states=True, return_final_states=True,
                   device=DEVICE)
# [M2]'s correctness anchor (ssd_minimal_discrete against the fused kernel): plain SSD, no D, gate,
# bias or softplus; batch 1, L 2048, chunk 64, 32 heads x 64, one group, N 64, float32.
ANCHOR = SSDProblem(batch=1, seqlen=2048, nheads=32, headdim=64, dstate=64, ngroups=1, chunk_size=64,
                    has_D=False, has_dt_bias=False, dt_softplus=False, return_final_states=True,
                    dtype="float32", device=DEVICE)


def runnable(problem: SSDProblem) -> SSDProblem:
    status, why = reasons(BACKEND, problem)
    if status != "ok":
        pytest.skip(f"triton {status}: {'; '.join(why)}")
    return problem


def assert_passes(problem: SSDProblem, inputs=None):
    result = check(BACKEND, problem, inputs=inputs)
    assert result.passed, result.describe()


@pytest.mark.parametrize("output", ["out", "final_states"])
def test_check_catches_a_perturbed_kernel(output, monkeypatch):
    problem = runnable(SMALL)
    from ssmbench.kernels.triton import ssd as kernels

    launch = kernels.ssd_forward
    index = ("out", "final_states").index(output)

    def perturbed(*args, **kwargs):
        results = launch(*args, **kwargs)
        t = results[index]
        noise = torch.randn(t.shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
        noise *= 1e-3 * t.double().norm().item() / noise.norm().item()
        t.add_(noise.to(t.device, t.dtype))
        return results

    assert_passes(problem)
    monkeypatch.setattr(kernels, "ssd_forward", perturbed)
    result = check(BACKEND, problem)
    assert not result.passed, result.describe()
    assert result.worst_output == output and 5e-4 < result.rel_error < 2e-3, result.describe()


@pytest.mark.parametrize("scale", [
    8,
    pytest.param(1, marks=pytest.mark.skipif(DEVICE != "cuda", reason="full size runs on the GPU only")),
])
def test_paper_anchor(scale):
    """The anchor shape, with L and the heads divided by ``scale``."""
    assert_passes(runnable(ANCHOR.replace(seqlen=ANCHOR.seqlen // scale, nheads=ANCHOR.nheads // scale)))


@pytest.mark.parametrize("chunk_size", [4, 16, 256])
def test_chunk_sizes(chunk_size):
    # 4: many chunks of mostly masked blocks; 16: three chunks, the last one partial;
    # 256: a single chunk longer than the sequence.
    assert_passes(runnable(SMALL.replace(chunk_size=chunk_size)))


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_precision_over_chunks(dtype):
    # Head dim and state as wide as a tensor-core tile, several chunks.
    assert_passes(runnable(SMALL.replace(dtype=dtype, batch=1, seqlen=200, nheads=2, headdim=64,
                                         dstate=32, ngroups=1, chunk_size=64)))


def test_views_of_one_projection():
    """A Mamba-2 layer splits z, x, B, C and dt out of one projection: strided views."""
    problem = runnable(SMALL)
    inputs = get_op("ssd").make_inputs(problem, torch.Generator().manual_seed(0))
    names = ("z", "x", "B", "C", "dt")
    parts = [inputs[n].flatten(2) if inputs[n].dim() == 4 else inputs[n] for n in names]
    packed = torch.cat(parts, dim=-1)
    for name, view in zip(names, packed.split([p.shape[-1] for p in parts], dim=-1)):
        inputs[name] = view.unflatten(-1, inputs[name].shape[2:]) if inputs[name].dim() == 4 else view
        assert not inputs[name].is_contiguous()
    assert_passes(problem, inputs)


@pytest.mark.skipif(DEVICE != "cuda", reason="runs on the GPU only: a minute or more interpreted")
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_released_model_shape(dtype):
    """Mamba-2's released defaults (headdim 64, d_state 128, chunk 256, one group) at an odd L,
    large enough for several tiles along every axis of every kernel."""
    assert_passes(runnable(SSDProblem(batch=2, seqlen=1000, nheads=8, headdim=64, dstate=128,
                                      chunk_size=256, has_z=True, has_initial_states=True,
                                      return_final_states=True, dtype=dtype, device=DEVICE)))


def test_refused_chunk_sizes():
    problem = runnable(SMALL)
    assert BACKEND.unsupported_reasons(problem.replace(chunk_size=48)) == [
        "chunk_size=48 is not a power of two (Triton blocks are)"]
    assert BACKEND.unsupported_reasons(problem.replace(chunk_size=2048)) == [
        "chunk_size=2048 exceeds this backend's limit of 1024"]
