"""Models built on ssmbench's ops: the decode path (prefill + step ops) against the parallel
path, for every model family and every backend the family's ops have here; exact byte
accounting of weights and caches; greedy generation; the generation suites' plumbing."""
from __future__ import annotations

import dataclasses

import pandas as pd
import pytest
import torch

from ssmbench.impls.base import BackendError
from ssmbench.impls.registry import backends
from ssmbench.models.cache import build_cache
from ssmbench.models.configs import MODELS
from ssmbench.models.generate import (Generator, case_config, footprint, generation_case, hf_model, max_batch,
                                      max_context)
from ssmbench.models.layers import MoE, OpBackends
from ssmbench.models.lm import LanguageModel, build_model

# Each family at a tiny width (published config, widths divided, few layers, small vocabulary).
FAMILIES = {
    "mamba": ("Mamba-130M", 16, 2),
    "mamba2": ("Mamba-2-130M", 16, 2),
    "transformer": ("Transformer-125M", 16, 2),
    "llama_gqa": ("Mistral-7B", 64, 2),
    "jamba": ("Jamba-v0.1", 64, 5),  # the first 5 layers of a block: attention at 4, experts at 1 and 3
    "mixtral": ("Mixtral-8x7B", 64, 2),
}
FAMILY_OPS = {
    "mamba": ("selective_scan", "causal_conv1d", "causal_conv1d_update", "selective_state_update"),
    "mamba2": ("ssd", "causal_conv1d", "causal_conv1d_update", "selective_state_update"),
    "transformer": ("attention",),
    "llama_gqa": ("attention",),
    "jamba": ("selective_scan", "causal_conv1d", "causal_conv1d_update", "selective_state_update", "attention"),
    "mixtral": ("attention",),
}
PROMPT, STEPS, BATCH, VOCAB = 13, 4, 2, 96


def tiny(family: str, chunk_size: int = 8):
    name, scale, layers = FAMILIES[family]
    config = case_config(name, scale, layers, VOCAB)
    if config.mamba is not None and config.mamba.version == 2:
        # Short chunks, so the prompt spans several and a partial one.
        config = dataclasses.replace(config, mamba=dataclasses.replace(config.mamba, chunk_size=chunk_size))
    return config


def _cpu_backends(op: str) -> list[str]:
    """The backends of ``op`` that run on this machine's CPU (the reference excepted: it is what
    the backends are checked against elsewhere)."""
    try:
        table = backends(op)
    except ModuleNotFoundError:
        return []
    return [name for name, b in table.items()
            if b.kind != "reference" and "cpu" in b.devices and not b.unavailable_reasons()]


def _variants():
    for family, ops in FAMILY_OPS.items():
        yield pytest.param(family, "auto", id=f"{family}-auto")
        for op in ops:
            for name in _cpu_backends(op):
                yield pytest.param(family, f"{op}={name}", id=f"{family}-{op}={name}")


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


@pytest.mark.parametrize("family,ops", list(_variants()))
def test_prefill_then_decode_matches_full_forward(family, ops):
    # Interpreted Triton kernels cost seconds per call at these sizes: one sequence, shorter.
    batch, prompt, steps, chunk = (1, 6, 2, 4) if "triton" in ops else (BATCH, PROMPT, STEPS, 8)
    config = tiny(family, chunk)
    model = build_model(config, ops=ops)
    ids = torch.randint(0, config.vocab_size, (batch, prompt + steps), generator=torch.Generator().manual_seed(1))
    try:
        with torch.inference_mode():
            full = model(ids)
            cache = model.new_cache(batch, prompt + steps)
            got = [model.prefill(ids[:, :prompt], cache)]
            for pos in range(prompt, prompt + steps):
                got.append(model.step(ids[:, pos], cache, pos))
    except BackendError as exc:  # a backend that declares it cannot run this call, in its words
        pytest.skip(str(exc))
    for i, logits in enumerate(got):
        expected = full[:, prompt - 1 + i]
        assert rel(logits, expected) < 1e-4, f"{family} [{ops}]: position {prompt - 1 + i}"


@pytest.mark.parametrize("family", ["mamba", "transformer", "jamba"])
def test_decoding_from_a_written_cache_continues_as_a_computed_prefill_would(family):
    """``prefill=False`` runs the prompt's last token as a decode step over the cache as written:
    over the cache a prefill of the other tokens wrote, the tokens are those of the full prefill."""
    config = tiny(family)
    model = build_model(config)
    ids = torch.randint(0, config.vocab_size, (BATCH, PROMPT), generator=torch.Generator().manual_seed(2))
    generator = Generator(model, BATCH, PROMPT + STEPS)
    computed = generator.generate(ids, STEPS).tokens
    with torch.inference_mode():
        model.prefill(ids[:, :-1], generator.cache)
    written = generator.generate(ids, STEPS, prefill=False)
    assert torch.equal(written.tokens, computed)
    assert written.prefill_s > 0 and written.decode_s > 0


def test_the_hf_baseline_decodes_from_a_written_cache():
    pytest.importorskip("transformers")
    from ssmbench.models.generate import hf_generate, hf_written_cache

    model = hf_model(tiny("transformer"))
    ids = torch.randint(0, VOCAB, (BATCH, PROMPT), generator=torch.Generator().manual_seed(3))
    cache = hf_written_cache(model, BATCH, PROMPT - 1)
    assert cache.get_seq_length() == PROMPT - 1
    assert hf_generate(model, ids, STEPS, cache).shape == (BATCH, STEPS)
    assert cache.get_seq_length() == PROMPT + STEPS - 1  # one prompt token and STEPS - 1 decode steps


@pytest.mark.parametrize("family", list(FAMILIES))
def test_weight_and_cache_bytes_match_the_formulas(family):
    config = tiny(family)
    for dtype, size in (("float32", 4), ("bfloat16", 2)):
        model = build_model(config, dtype=dtype)
        assert model.weight_bytes == config.param_count() * size
        for batch, length in ((1, 7), (3, 40)):
            cache = model.new_cache(batch, length)
            fp = footprint(config, batch, length, dtype)
            assert cache.nbytes == fp.cache
            by_kind = cache.bytes_by_kind()
            assert (by_kind["kv"], by_kind["mamba"]) == (fp.kv, fp.mamba)
            assert fp.total == model.weight_bytes + cache.nbytes


@pytest.mark.parametrize("name", list(MODELS))
def test_published_shapes_allocate_their_formula_bytes(name):
    """Every published config, full size, built on the meta device (nothing allocated): the model's
    parameters are the config's count, the cache at 2048 tokens is the formula's."""
    config = case_config(name, max_len=2048 + 128)
    with torch.device("meta"):
        model = LanguageModel(config)
    assert sum(p.numel() for p in model.parameters()) == config.param_count()
    cache = build_cache(config, 2, 2048, dtype="bfloat16", device="meta", honour_window=False)
    assert cache.nbytes == footprint(config, 2, 2048, "bfloat16").cache


def test_layer_pattern_of_the_hybrid():
    model = build_model(case_config("Jamba-v0.1", 64, 8, VOCAB))
    kinds = [type(block.mixer).__name__ for block in model.layers]
    experts = [isinstance(block.mlp, MoE) for block in model.layers]
    assert kinds == ["MambaMixer"] * 4 + ["Attention"] + ["MambaMixer"] * 3
    assert experts == [i % 2 == 1 for i in range(8)]
    assert model.layers[1].mlp.n_experts == 16 and model.layers[1].mlp.top_k == 2


def test_moe_paths_compute_the_same_function():
    torch.manual_seed(0)
    moe = MoE(dim=16, d_ff=24, n_experts=6, top_k=2)
    x = torch.randn(5, 16)
    probs = torch.softmax(moe.router(x), dim=-1)
    weight, chosen = probs.topk(2, dim=-1)
    weight = weight / weight.sum(-1, keepdim=True)
    expected = moe._by_index(x, weight, chosen)
    assert rel(moe._gathered(x, weight, chosen), expected) < 1e-6
    assert rel(moe._dense(x, weight, chosen), expected) < 1e-6
    assert rel(moe(x), expected) < 1e-6


@pytest.mark.parametrize("family", ["mamba", "transformer", "jamba"])
def test_greedy_generation_matches_greedy_full_forward(family):
    config = tiny(family)
    model = build_model(config)
    prompt = torch.randint(0, config.vocab_size, (BATCH, PROMPT), generator=torch.Generator().manual_seed(2))
    generator = Generator(model, BATCH, PROMPT + 6)
    for _ in range(2):  # the cache is reused: a second call starts afresh
        result = generator.generate(prompt, 6)
        ids = prompt
        with torch.inference_mode():
            for _ in range(6):
                ids = torch.cat([ids, model(ids)[:, -1].argmax(-1, keepdim=True)], dim=1)
        assert torch.equal(result.tokens, ids[:, PROMPT:])
        assert result.prefill_s > 0 and result.decode_s > 0


def test_backend_choice_reaches_every_layer():
    config = tiny("mamba")
    model = build_model(config, ops="selective_scan=no_such_backend")
    with pytest.raises(ValueError, match="no_such_backend"):
        model(torch.zeros(1, 4, dtype=torch.long))
    model.ops = "selective_scan=torch"
    assert model.ops == OpBackends(selective_scan="torch")
    model(torch.zeros(1, 4, dtype=torch.long))


def test_op_backends_parse_and_refuse_unknown_ops():
    assert OpBackends.of("auto") == OpBackends()
    assert OpBackends.of("selective_scan=torch, attention=sdpa").text() == "selective_scan=torch,attention=sdpa"
    with pytest.raises(ValueError, match="unknown op"):
        OpBackends.of("scan=torch")
    with pytest.raises(ValueError, match="op=backend"):
        OpBackends.of("torch")


def test_budget_arithmetic():
    transformer, mamba = tiny("transformer"), tiny("mamba")
    budget = footprint(transformer, 5, 100, "float16").total + 1
    b = max_batch(transformer, budget, 100, "float16")
    assert b == 5
    assert footprint(transformer, b + 1, 100, "float16").total > budget
    length = max_context(transformer, budget, 5, "float16")
    assert length == 100 and footprint(transformer, 5, length + 1, "float16").total > budget
    assert max_context(mamba, 10**12, 64, "float16") is None
    assert max_context(mamba, 10, 64, "float16") == 0


def test_generation_case_over_budget_is_oom_and_builds_nothing():
    row = generation_case("Transformer-1.3B", batch=64, prompt=2048, gen=128, dtype="float16", device="cpu",
                          budget_gib=1.0)
    assert row["status"] == "oom"
    assert "exceed the stated budget of 1 GiB" in row["reason"]
    assert row["footprint_bytes"] == footprint(case_config("Transformer-1.3B", max_len=2176), 64, 2176,
                                               "float16").total


@pytest.mark.parametrize("impl", ["ssmbench", "hf"])
def test_generation_case_measures(impl):
    if impl == "hf":
        pytest.importorskip("transformers")
    row = generation_case("Transformer-125M", impl=impl, batch=2, prompt=8, gen=24, dtype="float32", device="cpu",
                          scale=16, layers=1, vocab=64, repeats=1)
    assert row["tokens_per_s"] > 0 and row["prefill_ms"] > 0 and row["decode_ms_per_token"] > 0
    assert row["total_ms"] == pytest.approx(row["samples_ms"][0])
    # The decode step's work at the mean context (8 + 24 // 2), for its floors in the report.
    assert row["step_bytes"] == row["weight_bytes"] + row["kv_bytes"] * 20 // 32 and row["step_flops"] > 0
    if impl == "ssmbench":
        assert row["cache_bytes"] == row["kv_bytes"] and row["ops"].startswith("attention=")


@pytest.mark.parametrize("name,scale", [("Transformer-125M", 16), ("Mistral-7B", 64)])
def test_hf_baseline_has_the_same_shape(name, scale):
    pytest.importorskip("transformers")
    config = dataclasses.replace(case_config(name, scale, 2, VOCAB), sliding_window=0)  # Llama-style with GQA
    model = hf_model(config)
    assert sum(p.numel() for p in model.parameters()) == config.param_count()


def test_generation_suite_cases_and_verdicts():
    from ssmbench.suites import get_suite

    suite = get_suite("generation")
    for preset in suite.presets:
        cases = suite.cases(preset)
        assert cases and all(c.fn.endswith(":generation_case") for c in cases)
    rows = pd.DataFrame([
        {"series": s, "batch": b, "status": "ok", "tokens_per_s": t, "model_name": s, "n_params": 1,
         "prefill_ms": 1.0, "decode_ms_per_token": 1.0, "prompt": 128, "gen": 32, "dtype": "float32",
         "repeats": 2, "device": "cpu", "reason": "", "samples_ms": _repeats(b, 32, t)}
        for s, b, t in [("Mamba-1.4B (ours)", 1, 10.0), ("Mamba-1.4B (ours)", 8, 50.0),
                        ("Transformer-1.3B (ours)", 1, 8.0), ("Transformer-1.3B (ours)", 8, 20.0),
                        ("Transformer-1.3B (HF generate())", 1, 2.0), ("Transformer-1.3B (HF generate())", 8, 10.0)]])
    verdicts = {v.claim: v for v in suite.judge(rows, {"preset": "cpu-small"})}
    hf = next(v for c, v in verdicts.items() if "HF" in c)
    ours = next(v for c, v in verdicts.items() if "static-cache" in c)
    big = next(v for c, v in verdicts.items() if "6.9B" in c)
    assert hf.verdict == "holds" and hf.measured.startswith("5.00x")
    assert ours.verdict == "does not hold" and ours.measured.startswith("2.50x")
    assert big.verdict == "not measured" and "no Mamba-6.9B (ours) cases" in big.reason
    assert "CPU" in hf.device


def _repeats(batch: int, gen: int, tokens_per_s: float) -> list[float]:
    """Three timed calls (ms) that give ``tokens_per_s``, 1% apart."""
    return [batch * gen / tokens_per_s * 1e3 * f for f in (0.99, 1.0, 1.01)]


def _rows(records, **fixed):
    return pd.DataFrame([{"status": "ok", "n_params": 1, "prefill_ms": 1.0, "decode_ms_per_token": 1.0, "gen": 16,
                          "dtype": "float32", "repeats": 2, "device": "cpu", "reason": "", "scale": 32, "layers": 8,
                          "budget_gib": 1.0, "equal": True, **fixed, **r,
                          "samples_ms": _repeats(r["batch"], 16, r["tokens_per_s"])} for r in records])


def test_jamba_throughput_suite_cases_and_verdicts(tmp_path):
    from ssmbench.suites import get_suite
    from ssmbench.suites.jamba_throughput import SETTINGS

    suite = get_suite("jamba_throughput")
    for preset, setting in SETTINGS.items():
        cases = suite.cases(preset)
        assert len({c.case_id for c in cases}) == len(cases)  # the two sweeps share one case, run once
        assert len(cases) == 3 * len(set([(1, c) for c in setting.contexts]
                                         + [(b, setting.batch_context) for b in setting.batches]))
    series = {m: f"{m} (ours)" for m in ("Jamba-v0.1", "Mixtral-8x7B", "Llama-2-7B")}
    speed = {"Jamba-v0.1": 3.0, "Mixtral-8x7B": 1.0, "Llama-2-7B": 0.5}
    records = [{"series": series[m], "model": m, "model_name": m, "batch": b, "prompt": L,
                "tokens_per_s": speed[m] * b * ((L / 512) ** 2 if m == "Jamba-v0.1" else 1)}
               for m in series for b, L in [(1, 128), (1, 512), (2, 256), (4, 256), (1, 256)]]
    rows = _rows(records)
    rows.loc[(rows["model"] == "Mixtral-8x7B") & (rows["batch"] == 4), ["status", "tokens_per_s"]] = ("oom", None)
    verdicts = suite.judge(rows, {})
    assert [v.verdict for v in verdicts] == ["holds", "does not hold", "holds"]
    assert verdicts[0].measured.startswith("3.00x") and "context 512" in verdicts[0].setting
    assert "4 (oom)" in verdicts[1].measured
    tables = suite.tables(rows)
    assert "Longest context on one 80 GB GPU, published shapes (8-bit weights, 16-bit cache)" in tables
    assert set(tables["Throughput (tokens/s) by batch, fixed context"]["batch"]) == {1, 2, 4}
    assert all(p.exists() for p in suite.figures(rows, tmp_path))


def test_generation_suite_tables_and_figure(tmp_path):
    from ssmbench.suites import get_suite

    suite = get_suite("generation")
    runs = [("Mamba-1.4B", 1, 5.0), ("Mamba-1.4B", 2, 9.0), ("Transformer-1.3B", 1, 4.0)]
    rows = _rows([{"series": f"{m} (ours)", "model": m, "model_name": m, "batch": b, "prompt": 128, "tokens_per_s": t}
                  for m, b, t in runs], scale=8, layers=0)
    tables = suite.tables(rows)
    memory = tables["Memory: weights + cache, exact bytes"].set_index("series")
    mamba = case_config("Mamba-1.4B", 8, max_len=144)
    # A scaled model is named with its scale wherever it is shown.
    assert memory.loc["Mamba-1.4B /8 width (ours)", "max batch in budget"] == max_batch(mamba, 2**30, 144, "float32")
    assert memory.loc["Mamba-1.4B /8 width (ours)", "allocated cache = formula"] == "2/2 equal"
    assert "Mamba-1.4B /8 width (ours)" in tables["Generation throughput (tokens/s) by batch"].columns
    assert tables["Generation throughput (tokens/s) by batch"].shape == (2, 3)
    assert all(p.exists() for p in suite.figures(rows, tmp_path))


CUDA = torch.cuda.is_available()


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
@pytest.mark.parametrize("family", list(FAMILIES))
def test_cuda_prefill_then_decode_matches_full_forward_in_bf16(family):
    config = tiny(family)
    model = build_model(config, dtype="bfloat16", device="cuda")
    ids = torch.randint(0, config.vocab_size, (BATCH, PROMPT + STEPS), generator=torch.Generator().manual_seed(1))
    ids = ids.cuda()
    with torch.inference_mode():
        full = model(ids)
        cache = model.new_cache(BATCH, PROMPT + STEPS)
        got = [model.prefill(ids[:, :PROMPT], cache)]
        got += [model.step(ids[:, pos], cache, pos) for pos in range(PROMPT, PROMPT + STEPS)]
    for i, logits in enumerate(got):
        assert rel(logits, full[:, PROMPT - 1 + i]) < 3e-2, f"{family}: position {PROMPT - 1 + i}"


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
@pytest.mark.parametrize("family", list(FAMILIES))
def test_cuda_graph_decoding_matches_eager(family):
    config = tiny(family)
    model = build_model(config, device="cuda")
    prompt = torch.randint(0, config.vocab_size, (BATCH, PROMPT), generator=torch.Generator().manual_seed(3)).cuda()
    eager = Generator(model, BATCH, PROMPT + 8, cuda_graphs=False).generate(prompt, 8).tokens
    graphs = Generator(model, BATCH, PROMPT + 8, cuda_graphs=True)
    for _ in range(2):  # the first call captures, the second only replays
        assert torch.equal(graphs.generate(prompt, 8).tokens, eager)
    assert len(graphs.graphs) == (7 if model.step_uses_position else 1)


def test_moe_router_renormalisation_follows_the_config():
    torch.manual_seed(0)
    x = torch.randn(5, 8)
    mixtral, jamba = MoE(8, 16, 4, 2, renormalise=True), MoE(8, 16, 4, 2, renormalise=False)
    jamba.load_state_dict(mixtral.state_dict())
    probs = torch.softmax(mixtral.router(x), -1)
    top = probs.topk(2, -1).values.sum(-1, keepdim=True)
    torch.testing.assert_close(jamba(x), mixtral(x) * top, rtol=1e-5, atol=1e-6)


def test_attention_uses_the_configs_rotary_base():
    config = dataclasses.replace(MODELS["Mixtral-8x7B"].scaled(64), n_layers=1)
    assert config.rope_theta == 1e6
    assert build_model(config).layers[0].mixer.rope_theta == 1e6


def test_hf_baseline_takes_the_configs_norm_eps_and_rotary_base():
    config = dataclasses.replace(MODELS["Llama-2-7B"].scaled(64), n_layers=1, norm_eps=3e-6, rope_theta=5e5)
    hf = hf_model(config).config
    assert (hf.rms_norm_eps, hf.rope_parameters["rope_theta"]) == (3e-6, 5e5)
