"""The ssd and selective_state_update ops beyond the generic correctness test: chunk-size
independence, chaining through initial states, gradients, the fast-decay path of the chunked
backend, the two layouts of the decode step, and the step as one token of the scan."""
import pytest
import torch

from ssmbench import api
from ssmbench.harness.check import check, rel_error
from ssmbench.impls import get_backend, get_op
from ssmbench.impls.selective_state_update import StateUpdateProblem
from ssmbench.impls.ssd import SSDProblem
from ssmbench.impls.ssd.torch_chunked import FACTOR_LIMIT

SSD_BACKENDS = ["reference", "torch", "torch_chunked"]
STEP_BACKENDS = ["reference", "torch"]
SMALL = SSDProblem(batch=2, seqlen=37, nheads=4, headdim=3, dstate=5, ngroups=2, chunk_size=8,
                   has_z=True, D_per_channel=True, has_initial_states=True, return_final_states=True)


def ssd_inputs(problem: SSDProblem, seed=0):
    return get_op("ssd").make_inputs(problem, torch.Generator().manual_seed(seed))


def run(backend: str, **kwargs):
    return get_backend("ssd", backend)(**kwargs)


def fast_decay(kwargs, head=1, rate=50.0):
    """Inputs where one head decays fast enough that every chunk of 8 steps falls outside the
    chunked backend's factored range: dt = 1, A = -rate."""
    kwargs = dict(kwargs, dt_softplus=False, dt_bias=None)
    kwargs["dt"] = kwargs["dt"].clone()
    kwargs["dt"][:, :, head] = 1.0
    kwargs["A"] = kwargs["A"].clone()
    kwargs["A"][head] = -rate
    assert rate * 8 > 2 * FACTOR_LIMIT
    return kwargs


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_ssd_does_not_depend_on_chunk_size(dtype):
    kwargs = ssd_inputs(SMALL.replace(dtype=dtype))
    expected_out, expected_state = run("reference", **kwargs)
    tol = 1e-12 if dtype == "float64" else 1e-5
    for chunk in (1, 5, 8, 16, 37, 64):
        out, state = run("torch_chunked", **{**kwargs, "chunk_size": chunk})
        assert out.dtype == getattr(torch, dtype) and state.dtype == getattr(torch, dtype)
        assert rel_error(out, expected_out) < tol, chunk
        assert rel_error(state, expected_state) < tol, chunk


@pytest.mark.parametrize("backend", SSD_BACKENDS)
def test_ssd_chains_through_initial_states(backend):
    kwargs = ssd_inputs(SMALL.replace(dtype="float64", seqlen=40))
    full_out, full_state = run(backend, **kwargs)
    cut = 17  # in the middle of a chunk
    halves = [{k: (v[:, s] if k in ("x", "dt", "B", "C", "z") else v) for k, v in kwargs.items()}
              for s in (slice(None, cut), slice(cut, None))]
    first_out, first_state = run(backend, **halves[0])
    second_out, second_state = run(backend, **{**halves[1], "initial_states": first_state})
    assert rel_error(torch.cat([first_out, second_out], 1), full_out) < 1e-12
    assert rel_error(second_state, full_state) < 1e-12


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_ssd_fast_decay_heads_take_the_decay_matrix_path(dtype):
    kwargs = fast_decay(ssd_inputs(SMALL.replace(dtype=dtype)))
    expected_out, expected_state = run("reference", **{k: (v.double() if isinstance(v, torch.Tensor) else v)
                                                       for k, v in kwargs.items()})
    out, state = run("torch_chunked", **kwargs)
    tol = 1e-12 if dtype == "float64" else 1e-5
    assert rel_error(out, expected_out) < tol
    assert rel_error(state, expected_state) < tol


@pytest.mark.parametrize("backend,decay", [("torch_chunked", "slow"), ("torch_chunked", "fast"),
                                           ("torch", "fast")])
def test_ssd_gradients_match_the_reference(backend, decay):
    kwargs = ssd_inputs(SMALL.replace(dtype="float64"))
    if decay == "slow":
        kwargs = fast_decay(kwargs)
    names = [k for k, v in kwargs.items() if isinstance(v, torch.Tensor)]

    def grads(name):
        args = {k: (v.clone().requires_grad_() if k in names else v) for k, v in kwargs.items()}
        out, state = run(name, **args)
        weights = torch.Generator().manual_seed(1)
        loss = sum((t * torch.randn(t.shape, generator=weights, dtype=t.dtype)).sum() for t in (out, state))
        loss.backward()
        return {k: args[k].grad for k in names}

    expected, got = grads("reference"), grads(backend)
    for name in names:
        assert rel_error(got[name], expected[name]) < 1e-10, name


def test_ssd_float32_gradients_are_close():
    kwargs = ssd_inputs(SMALL)
    x = kwargs["x"].clone().requires_grad_()
    run("torch_chunked", **{**kwargs, "x": x})[0].square().sum().backward()
    x64 = kwargs["x"].double().requires_grad_()
    run("reference", **{k: (v.double() if isinstance(v, torch.Tensor) else v)
                        for k, v in {**kwargs, "x": x64}.items()})[0].square().sum().backward()
    assert rel_error(x.grad, x64.grad) < 1e-4


def test_ssd_the_benchmark_shape_is_accurate():
    # One full chunk of 256 at the released models' sizes, and a partial second chunk.
    problem = SSDProblem(batch=1, seqlen=264, nheads=2, headdim=64, dstate=128, chunk_size=256,
                         has_initial_states=True, return_final_states=True)
    assert check(get_backend("ssd", "torch_chunked"), problem).passed


@pytest.mark.parametrize("change,message", [
    (dict(dt=torch.zeros(2, 37, 3)), r"'dt' must have shape \(b l h\) = \(2, 37, 4\), got \(2, 37, 3\)"),
    (dict(B=torch.zeros(2, 37, 3, 5), C=torch.zeros(2, 37, 3, 5)), r"h=4 heads must be a multiple of .* g=3"),
    (dict(D=torch.zeros(4, 2)), r"'D' must have shape \(h p\) = \(4, 3\), got \(4, 2\)"),
    (dict(chunk_size=0), r"'chunk_size' must be a positive int, got 0"),
    (dict(z=torch.zeros(2, 37, 4, 3, dtype=torch.float64)), r"'z' has dtype float64, expected x's float32"),
])
def test_ssd_bad_arguments_are_named(change, message):
    with pytest.raises(ValueError, match=message):
        api.ssd(**{**ssd_inputs(SMALL), **change})


def test_ssd_problem_round_trip():
    op = get_op("ssd")
    for problem in op.test_problems():
        assert op.problem_of(ssd_inputs(problem)) == problem


# ---------------------------------------------------------------- selective_state_update

def step_inputs(problem: StateUpdateProblem, seed=0):
    return get_op("selective_state_update").make_inputs(problem, torch.Generator().manual_seed(seed))


def step(backend: str, **kwargs):
    return get_backend("selective_state_update", backend)(**kwargs)


@pytest.mark.parametrize("backend", STEP_BACKENDS)
@pytest.mark.parametrize("groups", [1, 2, 4])
def test_state_update_layouts_agree(backend, groups):
    # Mamba-1 with d = h p channels in g groups is Mamba-2 with h heads of p channels.
    b, h, p, n = 3, 4, 5, 6
    m2 = step_inputs(StateUpdateProblem(batch=b, nheads=h, dim=p, dstate=n, ngroups=groups,
                                        has_z=True, dtype="float64"))
    m1 = dict(m2, state=m2["state"].flatten(1, 2).clone(), x=m2["x"].flatten(1), dt=m2["dt"].flatten(1),
              z=m2["z"].flatten(1), A=m2["A"].flatten(0, 1), D=m2["D"].flatten(),
              dt_bias=m2["dt_bias"].flatten())
    if groups == 1:
        m1.update(B=m2["B"][:, 0], C=m2["C"][:, 0])  # Mamba-1's ungrouped (b, n)
    state2 = m2["state"].clone()
    out2 = step(backend, **dict(m2, state=state2))
    out1 = step(backend, **m1)
    assert out1.shape == (b, h * p) and out2.shape == (b, h, p)
    assert rel_error(out1, out2.flatten(1)) < 1e-14
    assert rel_error(m1["state"], state2.flatten(1, 2)) < 1e-14


@pytest.mark.parametrize("backend", STEP_BACKENDS)
def test_state_update_is_one_token_of_ssd(backend):
    # L decode steps from the initial state reproduce ssd's outputs and final state. The step's
    # Mamba-2 layout carries dt, A, D and dt_bias per channel: broadcast views of ssd's per head.
    problem = SSDProblem(batch=2, seqlen=6, nheads=4, headdim=3, dstate=5, ngroups=2, chunk_size=4,
                         has_z=True, has_initial_states=True, return_final_states=True, dtype="float64")
    kw = ssd_inputs(problem)
    expected_out, expected_state = run("reference", **kw)
    p, n = problem.headdim, problem.dstate
    state = kw["initial_states"].clone()
    outs = []
    for t in range(problem.seqlen):
        outs.append(step(backend, state=state, x=kw["x"][:, t], dt=kw["dt"][:, t, :, None].expand(-1, -1, p),
                         A=kw["A"][:, None, None].expand(-1, p, n), B=kw["B"][:, t], C=kw["C"][:, t],
                         D=kw["D"][:, None].expand(-1, p), z=kw["z"][:, t],
                         dt_bias=kw["dt_bias"][:, None].expand(-1, p), dt_softplus=True))
    assert rel_error(torch.stack(outs, 1), expected_out) < 1e-12
    assert rel_error(state, expected_state) < 1e-12


@pytest.mark.parametrize("backend", STEP_BACKENDS)
def test_state_update_is_one_step_of_the_selective_scan(backend):
    # From a zero state, Mamba-1's step is selective_scan over one step.
    kw = step_inputs(StateUpdateProblem(batch=2, nheads=0, dim=6, dstate=4, ngroups=0, has_z=True,
                                        dtype="float64"))
    state = torch.zeros_like(kw["state"])
    out = step(backend, **dict(kw, state=state))
    scan_out, scan_state = api.selective_scan(
        kw["x"][..., None], kw["dt"][..., None], kw["A"], kw["B"][..., None], kw["C"][..., None], kw["D"],
        kw["z"][..., None], kw["dt_bias"], delta_softplus=True, return_last_state=True, backend="reference")
    assert rel_error(out, scan_out[..., 0]) < 1e-14
    assert rel_error(state, scan_state) < 1e-14


@pytest.mark.parametrize("backend", STEP_BACKENDS)
def test_state_update_writes_a_strided_float32_state(backend):
    # bfloat16 activations, a float32 state that is a slice of a larger cache.
    kw = step_inputs(StateUpdateProblem(batch=2, nheads=4, dim=3, dstate=8, ngroups=2, has_z=True,
                                        dtype="bfloat16", state_dtype="float32"))
    cache = torch.randn(2, 4, 3, 13)
    state = cache[..., 2:10]
    before = cache.clone()
    expected_state = state.double()
    expected = step("reference", **dict(kw, state=expected_state))
    out = step(backend, **dict(kw, state=state))
    assert out.dtype == torch.bfloat16 and state.dtype == torch.float32
    assert rel_error(out, expected) < 1e-2
    assert rel_error(state, expected_state) < 1e-6
    assert torch.equal(cache[..., :2], before[..., :2]) and torch.equal(cache[..., 10:], before[..., 10:])


def test_state_update_bad_arguments_are_named():
    kw = step_inputs(StateUpdateProblem(batch=2, nheads=4, dim=3, dstate=8, ngroups=2))
    with pytest.raises(ValueError, match=r"'A' must have shape \(h p n\) = \(4, 3, 8\), got \(4, 8\)"):
        api.selective_state_update(**dict(kw, A=kw["A"][:, 0]))
    with pytest.raises(ValueError, match=r"h=4 must be a multiple of the group count g=3"):
        api.selective_state_update(**dict(kw, B=torch.zeros(2, 3, 8), C=torch.zeros(2, 3, 8)))
    m1 = step_inputs(StateUpdateProblem(batch=2, nheads=0, dim=6, dstate=8, ngroups=0))
    with pytest.raises(ValueError, match=r"'C' must have shape \(b n\) = \(2, 8\), got \(2, 7\)"):
        api.selective_state_update(**dict(m1, C=torch.zeros(2, 7)))


def test_state_update_problem_round_trip():
    op = get_op("selective_state_update")
    for problem in op.test_problems():
        same = problem.state_dtype == problem.dtype  # problem_of names the state's dtype only if it differs
        canonical = problem.replace(state_dtype="" if same else problem.state_dtype)
        assert op.problem_of(step_inputs(problem)) == canonical
