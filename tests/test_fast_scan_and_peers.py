"""The blocked torch selective scan (forward at extreme decay, backward against the reference's
autograd) and the third-party peer backends (reasons, and never chosen by "auto" over ours)."""
import importlib.util

import pytest
import torch

from ssmbench.harness.check import rel_error
from ssmbench.impls import backends, choose, get_op, reasons
from ssmbench.impls.selective_scan import SelectiveScanProblem
from ssmbench.impls.selective_scan import reference, torch_chunked

OP = get_op("selective_scan")
TENSORS = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")


@pytest.fixture
def block_steps(monkeypatch):
    """Sets how many steps a block holds, so that tiny problems cross block boundaries."""
    def set_steps(steps: int, problem: SelectiveScanProblem):
        state_bytes = problem.batch * problem.dim * problem.dstate * (8 if problem.dtype == "float64" else 4)
        monkeypatch.setattr(torch_chunked, "BLOCK_BYTES", steps * state_bytes)
    return set_steps


def inputs(problem, seed=0):
    return OP.make_inputs(problem, torch.Generator().manual_seed(seed))


def gradients(fn, args, seed=0):
    """Gradients of a random linear function of (out, last_state) w.r.t. every tensor argument."""
    leaves = {k: v.detach().clone().requires_grad_() if isinstance(v, torch.Tensor) else v
              for k, v in args.items()}
    out, last = fn(**leaves)
    weights = torch.Generator().manual_seed(seed + 100)
    loss = sum((t * torch.randn(t.shape, generator=weights, dtype=torch.float64).to(t.dtype)).sum()
               for t in (out, last))
    loss.backward()
    return {k: leaves[k].grad for k in TENSORS}


@pytest.mark.parametrize("groups", [0, 1, 2])
@pytest.mark.parametrize("steps", [1, 5, 64])
def test_gradients_match_reference_autograd(groups, steps, block_steps):
    problem = SelectiveScanProblem(batch=2, dim=8, dstate=4, seqlen=23, groups=groups,
                                   return_last_state=True, dtype="float64")
    block_steps(steps, problem)
    args = inputs(problem)
    expected = gradients(reference.selective_scan, args)
    for dtype, tolerance in (("float64", 1e-12), ("float32", 1e-4)):
        cast = {k: v.to(getattr(torch, dtype)) if isinstance(v, torch.Tensor) else v for k, v in args.items()}
        actual = gradients(torch_chunked.selective_scan, cast)
        for name in TENSORS:
            assert actual[name].dtype == cast[name].dtype
            assert rel_error(actual[name], expected[name]) < tolerance, (dtype, name)


def test_gradcheck(block_steps):
    problem = SelectiveScanProblem(batch=1, dim=4, dstate=3, seqlen=9, groups=2, dtype="float64")
    block_steps(4, problem)
    args = inputs(problem)
    leaves = tuple(args[k].clone().requires_grad_() for k in TENSORS)

    def scan(*tensors):
        return torch_chunked.selective_scan(**dict(zip(TENSORS, tensors)), delta_softplus=True,
                                            return_last_state=True)

    assert torch.autograd.gradcheck(scan, leaves)


@pytest.mark.parametrize("steps", [3, 256])
def test_strong_decay_stays_exact(steps, block_steps):
    """delta up to ~3 and A down to -20 (60 nats of decay per step) stay finite and exact."""
    problem = SelectiveScanProblem(batch=2, dim=16, dstate=8, seqlen=200, return_last_state=True)
    block_steps(steps, problem)
    args = inputs(problem)
    gen = torch.Generator().manual_seed(7)
    args["delta"] = torch.rand(args["delta"].shape, generator=gen) * 3.0  # softplus(3) ~ 3.05
    args["A"] = -torch.rand(args["A"].shape, generator=gen) * 20.0
    args["A"][:, 0] = -1e-4  # next to states that barely decay over the whole sequence
    expected = OP.outputs(args, reference.selective_scan(**args))
    actual = OP.outputs(args, torch_chunked.selective_scan(**args))
    for name in expected:
        assert torch.isfinite(actual[name]).all()
        assert rel_error(actual[name], expected[name]) < 1e-4, name


def test_block_length_follows_the_byte_budget():
    state = 1536 * 16
    steps = torch_chunked.block_steps(state, 4, 8192)
    assert steps * state * 4 <= torch_chunked.BLOCK_BYTES
    assert torch_chunked.block_steps(state, 4, 5) == 5
    assert torch_chunked.block_steps(10 ** 9, 4, 100) == 1


def test_the_states_saved_for_backward_grow_linearly_in_the_batch():
    """Cache-sized blocks shrink as the batch grows; the states saved at their boundaries must not
    then grow as the batch's square (batch 32 of a 125M model once saved 225 GiB)."""
    def saved_bytes(batch):
        problem = SelectiveScanProblem(batch=batch, dim=1536, dstate=16, seqlen=256)
        leaves = {k: v.requires_grad_() if k in TENSORS else v for k, v in inputs(problem).items()}
        total = []
        with torch.autograd.graph.saved_tensors_hooks(lambda t: total.append(t.numel() * t.element_size()) or t,
                                                      lambda t: t):
            torch_chunked.selective_scan(**leaves)
        return sum(total)

    # At batch 8 the blocks are n = 16 steps long (cache-sized ones would be 4): the states saved
    # at their boundaries are then at most one more (b, d, l) input beyond 8x batch 1's.
    assert saved_bytes(8) <= 8 * saved_bytes(1) + 8 * 1536 * 256 * 4


PEERS = {
    "selective_scan": ("transformers", "mambapy_pscan", "mambapy_seq", "mamba_ssm_ref"),
    "ssd": ("transformers", "mamba_ssm_ref"),
}


@pytest.mark.parametrize("op", sorted(PEERS))
def test_peers_rank_below_ours_and_say_why_they_are_missing(op):
    table = backends(op)
    ours = [b for b in table.values() if b.kind not in ("third-party", "reference")]
    for name in PEERS[op]:
        peer = table[name]
        assert peer.kind == "third-party" and peer.requires
        assert peer.priority < min(b.priority for b in ours)
        status, why = reasons(peer)
        assert status in ("ok", "unavailable")
        if status == "unavailable":
            assert any(peer.requires[0] in reason for reason in why), why
    problem = get_op(op).default_problem.replace(seqlen=64)
    assert choose(op, "auto", problem).name not in PEERS[op]


@pytest.mark.parametrize("op", sorted(PEERS))
def test_mamba_ssm_reason_names_the_failure(op):
    backend = backends(op)["mamba_ssm_ref"]
    status, why = reasons(backend)
    if importlib.util.find_spec("mamba_ssm") is None:
        assert why == ["mamba_ssm is not installed"]
        return
    if status == "unavailable":  # installed, but e.g. its compiled CUDA extension is missing
        module = backend.check_available.args[0]
        assert why[0].startswith(f"{module} fails to import: "), why


@pytest.mark.parametrize("name", ["mambapy_pscan", "mambapy_seq"])
def test_mambapy_refuses_last_state_in_words(name):
    backend = backends("selective_scan")[name]
    if reasons(backend)[0] != "ok":
        pytest.skip(f"{name}: {'; '.join(reasons(backend)[1])}")
    status, why = reasons(backend, SelectiveScanProblem(return_last_state=True))
    assert status == "unsupported" and "last state" in why[0]
    assert reasons(backend, SelectiveScanProblem())[0] == "ok"
