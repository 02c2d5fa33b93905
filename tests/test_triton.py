"""Our Triton kernels beyond the generic correctness test: that the check catches a wrong
kernel, half precision, strided inputs, the reasons given where they cannot run, and the
autotuning candidates.

On a machine without a CUDA GPU the kernels run only under TRITON_INTERPRET=1 (set before the
process imports them); without it these tests skip, giving the backend's reason.
"""
import importlib
import importlib.util
import inspect

import pytest
import torch

from ssmbench.harness.check import check
from ssmbench.impls import get_backend, get_op, reasons
from ssmbench.impls.base import triton_interpreting

HAS_TRITON = importlib.util.find_spec("triton") is not None
DEVICE = "cpu" if triton_interpreting() else "cuda"

# op -> (kernel module, launch wrapper, the tensors it writes that the check compares)
KERNELS = {
    "selective_scan": ("selective_scan", "selective_scan_fwd", ("out", "last_state")),
    "selective_state_update": ("selective_state_update", "selective_state_update_fwd", ("out", "state")),
    "causal_conv1d": ("causal_conv1d", "causal_conv1d_fwd", ("out",)),
    "causal_conv1d_update": ("causal_conv1d", "causal_conv1d_update_fwd", ("out", "conv_state")),
}


def runnable(op_name: str, **problem_changes):
    """The triton backend of ``op_name`` and its first test problem, or a skip saying why not."""
    try:
        op = get_op(op_name)
    except ModuleNotFoundError:
        pytest.skip(f"op {op_name} is not there yet")
    backend = get_backend(op_name, "triton")
    problem = op.test_problems()[0].replace(device=DEVICE, **problem_changes)
    status, why = reasons(backend, problem)
    if status != "ok":
        pytest.skip(f"triton {status}: {'; '.join(why)}")
    return op, backend, problem


def perturbed(launch, name):
    """``launch``, followed by noise of 1e-3 of the norm of its argument ``name``."""
    signature = inspect.signature(launch)

    def wrapper(*args, **kwargs):
        launch(*args, **kwargs)
        t = signature.bind(*args, **kwargs).arguments[name]
        noise = torch.randn(t.shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
        noise *= 1e-3 * t.double().norm().item() / noise.norm().item()
        t.add_(noise.to(t.device, t.dtype))
    return wrapper


@pytest.mark.parametrize("op_name,written", [(op, name) for op, (_, _, names) in KERNELS.items()
                                             for name in names])
def test_check_catches_a_perturbed_kernel(op_name, written, monkeypatch):
    changes = {"return_last_state": True} if written == "last_state" else {}
    _, backend, problem = runnable(op_name, **changes)
    module_name, launch_name, _ = KERNELS[op_name]
    module = importlib.import_module(f"ssmbench.kernels.triton.{module_name}")
    assert check(backend, problem).passed
    monkeypatch.setattr(module, launch_name, perturbed(getattr(module, launch_name), written))
    result = check(backend, problem)
    assert not result.passed, result.describe()
    assert 5e-4 < result.rel_error < 2e-3, result.describe()


@pytest.mark.parametrize("op_name", list(KERNELS))
def test_float16(op_name):
    _, backend, problem = runnable(op_name, dtype="float16")
    result = check(backend, problem)
    assert result.passed, result.describe()


def _strided(t: torch.Tensor) -> torch.Tensor:
    """The same values with the last two dimensions swapped in memory (as a model's (b, l, d)
    activations give (b, d, l) views)."""
    return t.transpose(-1, -2).contiguous().transpose(-1, -2)


@pytest.mark.parametrize("op_name,names", [
    ("selective_scan", ("u", "delta", "z", "B", "C")),
    ("causal_conv1d", ("x",)),
])
def test_strided_inputs(op_name, names):
    op, backend, problem = runnable(op_name)
    inputs = op.make_inputs(problem, torch.Generator().manual_seed(0))
    inputs.update({name: _strided(inputs[name]) for name in names})
    assert not inputs[names[0]].is_contiguous()
    result = check(backend, problem, inputs=inputs)
    assert result.passed, result.describe()


@pytest.mark.skipif(not HAS_TRITON, reason="triton is not installed")
@pytest.mark.parametrize("op_name", list(KERNELS))
def test_where_it_runs(op_name):
    try:
        backend = get_backend(op_name, "triton")
    except ModuleNotFoundError:
        pytest.skip(f"op {op_name} is not there yet")
    if triton_interpreting():
        assert backend.devices == ("cpu", "cuda") and backend.unavailable_reasons() == []
    else:
        assert backend.devices == ("cuda",)
        expected = [] if torch.cuda.is_available() else [
            "needs a CUDA GPU, or TRITON_INTERPRET=1 to run interpreted on the CPU"]
        assert backend.unavailable_reasons() == expected


@pytest.mark.skipif(not HAS_TRITON, reason="triton is not installed")
@pytest.mark.parametrize("module", ["selective_scan", "selective_scan_backward"])
@pytest.mark.parametrize("dstate", [1, 4, 16, 64, 256])
def test_scan_candidates_fit_the_budget(dstate, module):
    kernels = importlib.import_module(f"ssmbench.kernels.triton.{module}")
    launcher = kernels._KERNEL
    kept = launcher.prune(launcher.configs, {"dstate": dstate}, BLOCK_N=kernels.block_size(dstate))
    assert kept
    per_warp = [c.kwargs["BLOCK_D"] * c.kwargs["BLOCK_L"] * kernels.block_size(dstate) // c.num_warps for c in kept]
    smallest = min(launcher.configs, key=lambda c: c.kwargs["BLOCK_D"] * c.kwargs["BLOCK_L"] // c.num_warps)
    assert all(t <= kernels._BUDGET for t in per_warp) or kept == [smallest]


def test_every_scan_chunk_length_computes_the_scan(monkeypatch):
    """Each chunk length the GPU autotuner may pick at n=16 gives the reference's result over a
    length that none divides, with channel blocks that 3 channels fill partly (run here at fixed
    block sizes, the narrowest kept for each chunk length: the interpreter's time grows with the
    tile; on the GPU the benchmark also checks the config picked)."""
    from ssmbench.harness.check import reference_outputs
    from ssmbench.kernels.triton import selective_scan as kernels

    op, backend, problem = runnable("selective_scan", batch=1, dim=3, dstate=16, seqlen=260, return_last_state=True)
    inputs = op.make_inputs(problem, torch.Generator().manual_seed(0))
    expected = reference_outputs(problem, inputs)
    launcher = kernels._KERNEL
    narrowest = {}
    for c in launcher.prune(launcher.configs, {"dstate": 16}, BLOCK_N=16):
        narrowest[c.kwargs["BLOCK_L"]] = min(narrowest.get(c.kwargs["BLOCK_L"], 16), c.kwargs["BLOCK_D"])
    assert sorted(narrowest) == [16, 32, 64, 128, 256]
    monkeypatch.setenv("SSMBENCH_TRITON_AUTOTUNE", "0")
    for chunk, channels in narrowest.items():
        monkeypatch.setattr(launcher, "fixed", {"BLOCK_D": channels, "BLOCK_L": chunk})
        result = check(backend, problem, inputs=inputs, expected=expected)
        assert result.passed, f"BLOCK_D={channels}, BLOCK_L={chunk}: {result.describe()}"


def test_rows_record_the_block_sizes_the_kernel_ran_with():
    from ssmbench.harness.execute import execute
    from ssmbench.suites.base import Case

    _, _, problem = runnable("selective_scan")
    (row,) = execute(Case(suite="t", op="selective_scan", backend="triton", params=problem.params(), budget_s=0.01,
                          max_repeats=3))
    assert row["status"] == "ok", row["reason"]
    assert row["kernel_configs"].startswith("selective_scan_fwd_kernel: BLOCK_D=")
