"""Behaviour of causal_conv1d, causal_conv1d_update and attention beyond agreement with the
reference: decode steps continue a sequence, the causal mask is bottom-right aligned, GQA shares
key/value heads, and bad arguments are named."""
import math

import pytest
import torch
import torch.nn.functional as F

import ssmbench.api as api
from ssmbench.impls import get_op, last_auto_choice, reasons
from ssmbench.impls.attention import AttentionProblem, attended_pairs
from ssmbench.impls.registry import backends

CONV_BACKENDS = ["reference", "torch"]
ATTENTION_CPU = [n for n, b in backends("attention").items() if "cpu" in b.devices]


def conv_inputs(batch=2, dim=6, seqlen=23, width=4, bias=True, dtype=torch.float64):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, dim, seqlen, generator=g, dtype=dtype)
    weight = torch.randn(dim, width, generator=g, dtype=dtype)
    b = torch.randn(dim, generator=g, dtype=dtype) if bias else None
    return x, weight, b


@pytest.mark.parametrize("backend", CONV_BACKENDS)
def test_causal_conv1d_is_torch_causal_convolution(backend):
    x, weight, bias = conv_inputs(width=3)
    expected = F.silu(F.conv1d(x, weight[:, None], bias, padding=2, groups=6)[..., :23])
    out = api.causal_conv1d(x, weight, bias, activation="silu", backend=backend)
    torch.testing.assert_close(out, expected)


def test_causal_conv1d_hand_example():
    x = torch.tensor([[[1.0, 2.0, 3.0, 4.0]]])
    weight = torch.tensor([[10.0, 1.0]])  # out[t] = 10 x[t-1] + x[t]
    for backend in CONV_BACKENDS:
        out = api.causal_conv1d(x, weight, torch.tensor([0.5]), backend=backend)
        assert out.tolist() == [[[1.5, 12.5, 23.5, 34.5]]]


@pytest.mark.parametrize("backend", CONV_BACKENDS)
@pytest.mark.parametrize("width,state_len", [(4, 3), (3, 5), (2, 1), (1, 0)])
def test_token_by_token_update_matches_sequence(backend, width, state_len):
    x, weight, bias = conv_inputs(width=width)
    full = api.causal_conv1d(x, weight, bias, activation="swish", backend=backend)
    state = torch.zeros(2, 6, state_len, dtype=x.dtype)
    steps = [api.causal_conv1d_update(x[..., t], state, weight, bias, "swish", backend=backend)
             for t in range(x.shape[-1])]
    torch.testing.assert_close(torch.stack(steps, dim=-1), full)
    assert torch.equal(state, x[..., x.shape[-1] - state_len:])


@pytest.mark.parametrize("backend", CONV_BACKENDS)
def test_update_in_chunks_matches_sequence(backend):
    x, weight, bias = conv_inputs(seqlen=20)
    full = api.causal_conv1d(x, weight, None, backend=backend)
    state = torch.zeros(2, 6, 5, dtype=x.dtype)
    chunks = [api.causal_conv1d_update(x[..., a:b], state, weight, backend=backend)
              for a, b in [(0, 1), (1, 8), (8, 10), (10, 20)]]
    torch.testing.assert_close(torch.cat(chunks, dim=-1), full)
    assert torch.equal(state, x[..., -5:])


def test_update_keeps_dtype_and_layout():
    x, weight, bias = conv_inputs(dtype=torch.bfloat16)
    state = torch.randn(2, 6, 3).to(torch.bfloat16)
    before = state.clone()
    out = api.causal_conv1d_update(x[..., 0], state, weight, bias, backend="torch")
    assert out.shape == (2, 6) and out.dtype == torch.bfloat16
    assert torch.equal(state[..., :2], before[..., 1:]) and torch.equal(state[..., 2], x[..., 0])


@pytest.mark.parametrize("op,call", [
    ("causal_conv1d", lambda x, w: api.causal_conv1d(x, w, activation="relu")),
    ("causal_conv1d_update", lambda x, w: api.causal_conv1d_update(x[..., 0], x[..., :3], w,
                                                                   activation="gelu")),
])
def test_bad_activation_is_named(op, call):
    x, weight, _ = conv_inputs()
    with pytest.raises(ValueError, match=r"'activation'.*'silu', 'swish'"):
        call(x, weight)


def test_bad_activation_refused_by_backends_directly():
    x, weight, _ = conv_inputs(dtype=torch.float32)
    problem = get_op("causal_conv1d").problem_of(dict(x=x, weight=weight))
    runnable = [b for b in backends("causal_conv1d").values() if reasons(b, problem)[0] == "ok"]
    assert {"reference", "torch"} <= {b.name for b in runnable}
    for backend in runnable:
        with pytest.raises(ValueError, match="'activation'"):
            backend(x=x, weight=weight, bias=None, activation="tanh")


def test_update_state_too_short_is_named():
    x, weight, _ = conv_inputs(width=4)
    with pytest.raises(ValueError, match=r"'conv_state'.*w - 1 = 3.*\(2, 6, 2\)"):
        api.causal_conv1d_update(x[..., 0], x[..., :2].clone(), weight)


def test_conv_shape_errors_are_named():
    x, weight, _ = conv_inputs()
    with pytest.raises(ValueError,
                       match=r"'weight' must have shape \(d w\) = \(6, 4\), got \(5, 4\) \(sizes from 'x'\)"):
        api.causal_conv1d(x, weight[:5])
    with pytest.raises(ValueError, match=r"'conv_state' has dtype float32, expected float64"):
        api.causal_conv1d_update(x[..., 0], x[..., :3].float(), weight)


def test_conv_problem_round_trip():
    for name in ("causal_conv1d", "causal_conv1d_update"):
        op = get_op(name)
        for problem in op.test_problems():
            inputs = op.make_inputs(problem, torch.Generator().manual_seed(0))
            assert op.problem_of(inputs) == problem


# ---------------------------------------------------------------- attention

def qkv(b=2, lq=9, lk=9, h=4, hk=4, d=16, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(b, lq, h, d, generator=g, dtype=dtype),
            torch.randn(b, lk, hk, d, generator=g, dtype=dtype),
            torch.randn(b, lk, hk, d, generator=g, dtype=dtype))


@pytest.mark.parametrize("backend", ATTENTION_CPU)
def test_causal_suffix_of_queries_sees_the_same_keys(backend):
    # Bottom-right alignment: the last lq queries of a causal lk x lk attention.
    q, k, v = qkv(lq=17, lk=17)
    full = api.attention(q, k, v, causal=True, backend=backend)
    for lq in (1, 5, 16):
        part = api.attention(q[:, -lq:], k, v, causal=True, backend=backend)
        torch.testing.assert_close(part, full[:, -lq:])


@pytest.mark.parametrize("backend", ATTENTION_CPU)
def test_decode_step_attends_every_key(backend):
    q, k, v = qkv(lq=1, lk=30)
    torch.testing.assert_close(api.attention(q, k, v, causal=True, backend=backend),
                               api.attention(q, k, v, causal=False, backend=backend))


@pytest.mark.parametrize("backend", ATTENTION_CPU)
def test_queries_without_keys_output_zeros(backend):
    q, k, v = qkv(lq=7, lk=4)
    out = api.attention(q, k, v, causal=True, backend=backend)
    assert torch.equal(out[:, :3], torch.zeros_like(out[:, :3]))
    torch.testing.assert_close(out[:, 3:], api.attention(q[:, 3:], k, v, causal=True, backend=backend))


@pytest.mark.parametrize("backend", ATTENTION_CPU)
@pytest.mark.parametrize("hk", [1, 2])
def test_gqa_equals_repeated_heads(backend, hk):
    q, k, v = qkv(h=4, hk=hk, lq=6, lk=11)
    repeated = api.attention(q, k.repeat_interleave(4 // hk, 2), v.repeat_interleave(4 // hk, 2),
                             causal=True, backend=backend)
    torch.testing.assert_close(api.attention(q, k, v, causal=True, backend=backend), repeated)


@pytest.mark.parametrize("backend", ATTENTION_CPU)
def test_softmax_scale(backend):
    q, k, v = qkv(d=16)
    default = api.attention(q, k, v, backend=backend)
    torch.testing.assert_close(api.attention(q, k, v, softmax_scale=0.25, backend=backend), default)
    torch.testing.assert_close(api.attention(q, k, v, softmax_scale=0.5, backend=backend),
                               api.attention(q * 2, k, v, backend=backend))


def test_single_key_returns_its_value():
    q, k, v = qkv(lq=3, lk=1)
    for backend in ATTENTION_CPU:
        out = api.attention(q, k, v, backend=backend)
        torch.testing.assert_close(out, v.expand(-1, 3, -1, -1))


def test_attention_errors_are_named():
    q, k, v = qkv(h=4, hk=3)
    with pytest.raises(ValueError, match=r"h=4 of 'q' must be a multiple of .* hk=3"):
        api.attention(q, k, v)
    q, k, v = qkv()
    with pytest.raises(ValueError,
                       match=r"'v' must have shape \(b lk hk d\) = \(2, 9, 4, 16\), got \(2, 8, 4, 16\)"):
        api.attention(q, k, v[:, :8])
    with pytest.raises(ValueError, match="'softmax_scale'"):
        api.attention(q, k, v, softmax_scale="0.1")
    with pytest.raises(ValueError, match="'k' has dtype float32, expected float64"):
        api.attention(q, k.float(), v)


def test_auto_picks_sdpa_and_records_it():
    q, k, v = qkv(dtype=torch.float32)
    api.attention(q, k, v, causal=True)
    assert last_auto_choice("attention") == "sdpa"


def test_forced_kernels_say_why_on_this_machine():
    problem = AttentionProblem(dtype="bfloat16", seqlen_q=1, seqlen_k=64, causal=True)
    table = backends("attention")
    if not torch.cuda.is_available():
        for name in ("sdpa_flash", "sdpa_efficient", "sdpa_cudnn"):
            status, why = reasons(table[name], problem)
            assert status == "unavailable" and "needs a CUDA GPU" in why[0]
    flash = table["sdpa_flash"]
    assert any("bottom-right" in r for r in flash.check_supported(problem))
    assert flash.check_supported(problem.replace(seqlen_k=1)) == []
    assert any("headdim=512" in r for r in flash.unsupported_reasons(problem.replace(headdim=512)))
    assert any("float32 not supported" in r
               for r in flash.unsupported_reasons(problem.replace(dtype="float32")))
    assert "nheads_kv=2" in table["sdpa_efficient"].check_supported(problem.replace(nheads_kv=2))[0]
    assert table["sdpa_efficient"].check_supported(problem) == []
    assert "length of 1" in table["sdpa_cudnn"].check_supported(problem.replace(seqlen_k=1))[0]


def test_attention_cost_model():
    p = AttentionProblem(batch=2, seqlen_q=8, nheads=3, headdim=4, causal=False)
    op = get_op("attention")
    assert op.flops(p) == 4 * 2 * 3 * 8 * 8 * 4
    assert attended_pairs(p.replace(causal=True)) == 8 * 9 // 2
    assert attended_pairs(p.replace(causal=True, seqlen_q=1, seqlen_k=100)) == 100
    assert attended_pairs(p.replace(causal=True, seqlen_q=5, seqlen_k=2)) == 1 + 2
    # Memory-bound decode: q and out are small next to the KV cache.
    decode = p.replace(seqlen_q=1, seqlen_k=4096, nheads_kv=1, dtype="bfloat16")
    assert op.bytes_moved(decode) == (2 * 2 * 3 * 4 + 2 * 2 * 4096 * 4) * 2
    assert math.isclose(op.flops(p.replace(seqlen_q=4096, causal=True)) / op.flops(p.replace(seqlen_q=4096)),
                        0.5, rel_tol=1e-3)


def test_attention_problem_round_trip():
    op = get_op("attention")
    for problem in op.test_problems():
        inputs = op.make_inputs(problem, torch.Generator().manual_seed(0))
        found = op.problem_of(inputs)
        assert found.replace(seqlen_k=found.lk, nheads_kv=found.hk) == \
            problem.replace(seqlen_k=problem.lk, nheads_kv=problem.hk)
