"""Our Triton backward kernel (the selective scan's, which the SSD backend also runs) beyond the
generic gradient check of tests/test_backward.py: half precision, every chunk length the
autotuner may pick, a perturbed kernel caught, what autograd keeps between the passes, whole
training steps through it, and the memory count on meta.

Without a CUDA GPU the kernels run only under TRITON_INTERPRET=1; without it these tests skip,
giving the backend's reason.
"""
import pytest
import torch

from ssmbench.harness.check import check_backward, reference_grads
from ssmbench.impls import get_backend, get_op, reasons
from ssmbench.impls.base import triton_interpreting

DEVICE = "cpu" if triton_interpreting() else "cuda"
# Each op's third test problem has groups, D, z, delta bias (dt bias), softplus and a returned
# last state, whose gradient the backward also takes.
PROBLEM = 2
TORCH_BACKEND = {"selective_scan": "torch_fast", "ssd": "torch_chunked"}  # compositions of torch ops


def runnable(op_name: str, **changes):
    backend = get_backend(op_name, "triton")
    problem = get_op(op_name).test_problems()[PROBLEM].replace(device=DEVICE, **changes)
    status, why = reasons(backend, problem)
    if status != "ok":
        pytest.skip(f"triton {status}: {'; '.join(why)}")
    return backend, problem


@pytest.mark.parametrize("op_name", ["selective_scan", "ssd"])
@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_half_precision_gradients(op_name, dtype):
    backend, problem = runnable(op_name, dtype=dtype)
    result = check_backward(backend, problem, seed=1)
    assert result.passed, result.describe()


def test_every_backward_chunk_length_gives_the_gradients(monkeypatch):
    """Each chunk length the GPU autotuner may pick, with channel blocks that 6 channels of two
    groups fill partly (so that several programs add into one group's dB and dC), over a length
    that none divides; run at fixed block sizes, as the interpreter's time grows with the tile."""
    from ssmbench.kernels.triton import selective_scan_backward as kernels

    backend, problem = runnable("selective_scan", batch=1, dim=6, dstate=4, seqlen=150)
    inputs = get_op("selective_scan").make_inputs(problem, torch.Generator().manual_seed(0))
    expected = reference_grads(problem, inputs, seed=0)
    chunks = sorted({c.kwargs["BLOCK_L"] for c in kernels._KERNEL.configs})
    assert chunks == list(kernels._CHUNKS)
    monkeypatch.setenv("SSMBENCH_TRITON_AUTOTUNE", "0")
    for chunk in chunks:
        monkeypatch.setattr(kernels._KERNEL, "fixed", {"BLOCK_D": 2, "BLOCK_L": chunk})
        result = check_backward(backend, problem, inputs=inputs, expected=expected)
        assert result.passed, f"BLOCK_L={chunk}: {result.describe()}"


@pytest.mark.parametrize("op_name,grad,name", [("selective_scan", "du", "u"), ("selective_scan", "dB", "B"),
                                               ("ssd", "dA", "A"), ("ssd", "dh0", "initial_states")])
def test_check_catches_a_perturbed_backward(op_name, grad, name, monkeypatch):
    from ssmbench.kernels.triton import selective_scan_backward as kernels

    backend, problem = runnable(op_name, **({"has_initial_states": True} if op_name == "ssd" else {}))
    launch = kernels.selective_scan_bwd

    def perturbed(*args, **kwargs):
        grads = launch(*args, **kwargs)
        t = grads[grad]
        noise = torch.randn(t.shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
        t += (noise * 1e-3 * t.double().norm() / noise.norm()).to(t.dtype)
        return grads

    monkeypatch.setattr(kernels, "selective_scan_bwd", perturbed)
    result = check_backward(backend, problem, seed=0)
    assert not result.passed and result.worst_input == name, result.describe()


@pytest.mark.parametrize("op_name", ["selective_scan", "ssd"])
def test_autograd_keeps_only_the_inputs(op_name):
    """The backward rebuilds the states: between the passes autograd holds the inputs alone,
    where a composition of torch ops keeps its intermediates too."""
    from ssmbench.harness.check import with_grad

    backend, problem = runnable(op_name)
    inputs = with_grad(get_op(op_name).make_inputs(problem, torch.Generator().manual_seed(0)))
    given = {t.data_ptr() for t in inputs.values() if isinstance(t, torch.Tensor)}
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        backend(**inputs)
    assert saved and {t.data_ptr() for t in saved} <= given

    saved.clear()
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        get_backend(op_name, TORCH_BACKEND[op_name])(**inputs)
    assert {t.data_ptr() for t in saved} - given


# (model, width divisor, its op backends with the one under test left open)
MODELS = [("Mamba-130M", 48, "selective_scan={},causal_conv1d=torch"),
          ("Mamba-2-130M", 16, "ssd={},causal_conv1d=torch")]


def _op(model: str) -> str:
    return "selective_scan" if model == "Mamba-130M" else "ssd"


def small_config(model: str, scale: int):
    """The model at widths / scale, 2 layers and a 64-token vocabulary; Mamba-2 with 8 states
    (the interpreter's scans take minutes over its 128)."""
    import dataclasses

    from ssmbench.models.generate import case_config

    runnable(_op(model))
    config = case_config(model, scale=scale, layers=2, vocab=64, max_len=24)
    return dataclasses.replace(config, mamba=dataclasses.replace(config.mamba, d_state=min(config.mamba.d_state, 8)))


@pytest.mark.parametrize("model,scale,backends", MODELS)
def test_a_training_step_through_the_triton_kernels(model, scale, backends):
    """A backend swap reaches a whole model's training: the loss and every weight's gradient of a
    small Mamba and Mamba-2 step through the Triton kernels equal those through torch ops."""
    from ssmbench.models.train import lm_loss, train_model

    config = small_config(model, scale)
    ids = torch.randint(0, 64, (2, 24), generator=torch.Generator().manual_seed(0)).to(DEVICE)
    grads = {}
    for name in ("triton", TORCH_BACKEND[_op(model)]):
        net, _ = train_model(config, backends.format(name), device=DEVICE, seed=0)
        loss = lm_loss(net, ids)
        loss.backward()
        grads[name] = (loss.detach(), {k: p.grad for k, p in net.named_parameters()})
    (loss, mine), (want_loss, want) = grads.values()
    torch.testing.assert_close(loss, want_loss, rtol=1e-5, atol=0)
    assert mine.keys() == want.keys()
    for k in want:
        torch.testing.assert_close(mine[k], want[k], rtol=1e-4, atol=1e-6, msg=k)


@pytest.mark.parametrize("model,scale,backends", MODELS)
def test_the_memory_count_runs_the_triton_kernels_on_meta(model, scale, backends):
    """On meta a launch computes nothing, so a step through the Triton scan and SSD can be
    counted there (Mamba-2's too, which the chunked torch SSD cannot): the count equals the one
    on real tensors, and it is below that through torch ops, which keep their intermediates."""
    from ssmbench.models.train import count_step

    config = small_config(model, scale)
    meta = count_step(config, 2, 24, backends.format("triton"), device="meta")
    assert meta == count_step(config, 2, 24, backends.format("triton"), device=DEVICE)
    through_torch = backends.format(TORCH_BACKEND[_op(model)])
    if model == "Mamba-130M":
        assert meta.activations < count_step(config, 2, 24, through_torch, device="meta").activations
    else:
        with pytest.raises(RuntimeError, match="meta"):  # it reads values: why Mamba-2 is counted through Triton
            count_step(config, 2, 24, through_torch, device="meta")
