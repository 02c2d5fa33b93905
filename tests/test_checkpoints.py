"""Checkpoints into our models: tiny random transformers models of every supported architecture,
saved with save_pretrained and loaded with from_pretrained, compute transformers' logits and greedy
tokens; the original mamba-ssm layout; errors for missing, extra and unsupported weights and
configs; tokenizers."""
from __future__ import annotations

import json

import pytest
import torch

transformers = pytest.importorskip("transformers", reason="checkpoints are read with transformers")
safetensors_torch = pytest.importorskip("safetensors.torch", reason="checkpoints are read with safetensors")

from ssmbench.models import CheckpointError, from_pretrained, load_tokenizer, read_config  # noqa: E402
from ssmbench.models.generate import Generator, hf_generate  # noqa: E402
from ssmbench.impls.registry import OP_NAMES  # noqa: E402

VOCAB, PROMPT, GEN = 64, 9, 4
ATTENTION = dict(num_attention_heads=4, num_key_value_heads=2, intermediate_size=48)
# One tiny config per architecture; each keeps the features that distinguish it.
TINY = {
    "mamba": ("MambaConfig", dict(hidden_size=32, num_hidden_layers=2, state_size=8, time_step_rank=4)),
    "mamba2": ("Mamba2Config", dict(hidden_size=32, num_hidden_layers=2, state_size=8, num_heads=4, head_dim=16,
                                    n_groups=2, chunk_size=4, tie_word_embeddings=True)),
    # Attention at layers 1 and 3, experts at 0 and 2: every kind of block.
    "jamba": ("JambaConfig", dict(hidden_size=32, num_hidden_layers=4, **ATTENTION, num_experts=4,
                                  attn_layer_period=2, attn_layer_offset=1, expert_layer_period=2,
                                  expert_layer_offset=0, mamba_d_state=8, mamba_dt_rank=4)),
    "llama": ("LlamaConfig", dict(hidden_size=32, num_hidden_layers=2, **ATTENTION, head_dim=8, rms_norm_eps=1e-5,
                                  rope_theta=500.0, attention_bias=True, mlp_bias=True)),
    "mistral": ("MistralConfig", dict(hidden_size=32, num_hidden_layers=2, **ATTENTION, sliding_window=64)),
    "mixtral": ("MixtralConfig", dict(hidden_size=32, num_hidden_layers=2, **ATTENTION, num_local_experts=4)),
    "gpt_neox": ("GPTNeoXConfig", dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                       intermediate_size=48, rotary_pct=0.5)),
    "gpt_neox_sequential": ("GPTNeoXConfig", dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                                  intermediate_size=48, use_parallel_residual=False)),
    "gpt2": ("GPT2Config", dict(n_embd=32, n_layer=2, n_head=4, n_positions=32, bos_token_id=0, eos_token_id=0)),
}
REFERENCE = ",".join(f"{op}=reference" for op in OP_NAMES)


def tiny_hf(arch: str, seed: int = 0):
    config_class, kwargs = TINY[arch]
    config = getattr(transformers, config_class)(vocab_size=VOCAB, pad_token_id=0, **kwargs)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = transformers.AutoModelForCausalLM.from_config(config)
    return model.float().eval()


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """arch -> (folder, transformers model loaded back from it)."""
    cache = {}

    def get(arch):
        if arch not in cache:
            folder = tmp_path_factory.mktemp(arch)
            tiny_hf(arch).save_pretrained(folder)
            cache[arch] = folder, transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
        return cache[arch]
    return get


def ids(batch=2, length=PROMPT, seed=1):
    return torch.randint(1, VOCAB, (batch, length), generator=torch.Generator().manual_seed(seed))


def rel(a, b) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


@pytest.mark.parametrize("arch", list(TINY))
def test_logits_and_greedy_tokens_match_transformers(arch, saved):
    folder, hf = saved(arch)
    prompt = ids()
    with torch.inference_mode():
        expected = hf(prompt).logits
    want = hf_generate(hf, prompt[:1], GEN)
    for ops in ("auto", REFERENCE):
        model = from_pretrained(folder, ops=ops)
        assert model.config.name == folder.name
        assert sum(p.numel() for p in model.parameters()) == model.config.param_count() == hf.num_parameters()
        with torch.inference_mode():
            assert rel(model(prompt), expected) < 1e-5, f"{arch} [{ops}]"
        got = Generator(model, 1, PROMPT + GEN).generate(prompt[:1], GEN).tokens
        assert torch.equal(got, want), f"{arch} [{ops}]: {got.tolist()} != {want.tolist()}"


def test_configs_carry_what_the_checkpoint_says(saved):
    neox = read_config(saved("gpt_neox")[0])
    assert (neox.rotary_fraction, neox.rotary_dim, neox.parallel_residual, neox.norm) == (0.5, 4, True, "layernorm")
    llama = read_config(saved("llama")[0])
    assert (llama.rope_theta, llama.norm_eps, llama.bias, llama.head_dim) == (500.0, 1e-5, True, 8)
    jamba = read_config(saved("jamba")[0])
    assert (jamba.router_renormalise, jamba.attention_layers, jamba.rotary_dim) == (False, (1, 3), 0)
    assert [jamba.is_moe(i) for i in range(4)] == [True, False, True, False]
    assert read_config(saved("mixtral")[0]).router_renormalise
    assert read_config(saved("mistral")[0]).sliding_window == 64
    gpt2 = read_config(saved("gpt2")[0])
    assert (gpt2.mlp, gpt2.learned_positions, gpt2.tie_embeddings) == ("gelu_tanh", 32, True)


def _original_mamba(folder, hf, pad_multiple=8):
    """``hf`` (a MambaForCausalLM or Mamba2ForCausalLM) written as mamba-ssm's MambaLMHeadModel
    saves it: its own config.json and names, the tied head stored too, a pytorch_model.bin."""
    c = hf.config
    if c.model_type == "mamba":
        ssm_cfg = {"d_state": c.state_size, "dt_rank": c.time_step_rank}
    else:
        ssm_cfg = {"layer": "Mamba2", "d_state": c.state_size, "headdim": c.head_dim, "ngroups": c.n_groups,
                   "chunk_size": c.chunk_size}
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({
        "d_model": c.hidden_size, "n_layer": c.num_hidden_layers, "vocab_size": VOCAB - 3, "ssm_cfg": ssm_cfg,
        "d_intermediate": 0, "attn_layer_idx": [], "rms_norm": True, "residual_in_fp32": True,
        "fused_add_norm": True, "pad_vocab_size_multiple": pad_multiple, "tie_embeddings": True}))
    state = {k.replace("backbone.embeddings.", "backbone.embedding."): v for k, v in hf.state_dict().items()}
    state["lm_head.weight"] = state["backbone.embedding.weight"]
    torch.save(state, folder / "pytorch_model.bin")


@pytest.mark.parametrize("arch,layer", [("mamba", "Mamba1"), ("mamba2", "Mamba2")])
def test_original_mamba_layout(arch, layer, saved, tmp_path):
    _, hf = saved(arch)
    folder = tmp_path / f"{arch}-tiny"
    _original_mamba(folder, hf)
    model = from_pretrained(folder)
    # The vocabulary as allocated: 61 tokens padded to a multiple of 8.
    assert model.config.vocab_size == VOCAB and model.config.source.endswith(f"(mamba_ssm:{layer})")
    prompt = ids()
    with torch.inference_mode():
        assert rel(model(prompt), hf(prompt).logits) < 1e-5
    assert torch.equal(Generator(model, 1, PROMPT + GEN).generate(prompt[:1], GEN).tokens,
                       hf_generate(hf, prompt[:1], GEN))


def _rewrite(src, dst, edit):
    """A copy of the checkpoint folder ``src`` with its weights passed through ``edit``."""
    dst.mkdir()
    for f in src.iterdir():
        (dst / f.name).write_bytes(f.read_bytes())
    state = safetensors_torch.load_file(dst / "model.safetensors")
    safetensors_torch.save_file(edit(dict(state)), dst / "model.safetensors", metadata={"format": "pt"})
    return dst


def test_missing_and_extra_weights_are_named(saved, tmp_path):
    folder, _ = saved("llama")
    name = "model.layers.1.self_attn.k_proj.weight"
    missing = _rewrite(folder, tmp_path / "missing", lambda s: {k: v for k, v in s.items() if k != name})
    with pytest.raises(CheckpointError, match=r"missing weight model\.layers\.1\.self_attn\.k_proj\.weight"):
        from_pretrained(missing)
    extra = _rewrite(folder, tmp_path / "extra", lambda s: {**s, "model.layers.0.adapter.weight": torch.ones(3)})
    with pytest.raises(CheckpointError, match=r"extra weight model\.layers\.0\.adapter\.weight"):
        from_pretrained(extra)
    wrong = _rewrite(folder, tmp_path / "shape", lambda s: {**s, name: s[name][:8]})
    with pytest.raises(CheckpointError, match=r"wrong shape: .*k_proj\.weight \(8, 32\).*as \(64, 32\)"):
        from_pretrained(wrong)


def test_a_tied_head_that_differs_from_the_embeddings_is_an_error(saved, tmp_path):
    folder, _ = saved("gpt2")
    untied = _rewrite(folder, tmp_path / "untied",
                      lambda s: {**s, "lm_head.weight": torch.randn_like(s["transformer.wte.weight"])})
    with pytest.raises(CheckpointError, match="ties the embeddings but lm_head.weight differs"):
        from_pretrained(untied)


def test_gpt2_saved_without_its_base_prefix(saved, tmp_path):
    # The hub's gpt2 stores h.0.attn..., wte.weight (no "transformer.") and its attention masks.
    folder, hf = saved("gpt2")
    bare = _rewrite(folder, tmp_path / "bare", lambda s: {
        **{k.removeprefix("transformer."): v for k, v in s.items()}, "h.0.attn.bias": torch.ones(1, 1, 4, 4)})
    prompt = ids()
    with torch.inference_mode():
        assert rel(from_pretrained(bare)(prompt), hf(prompt).logits) < 1e-5


def test_sharded_checkpoint(tmp_path):
    hf = tiny_hf("mixtral")
    hf.save_pretrained(tmp_path, max_shard_size="40KB")
    assert (tmp_path / "model.safetensors.index.json").exists()
    prompt = ids()
    with torch.inference_mode():
        assert rel(from_pretrained(tmp_path)(prompt), hf(prompt).logits) < 1e-5


def test_unsupported_architecture_and_config_values(tmp_path):
    opt = transformers.OPTForCausalLM(transformers.OPTConfig(
        vocab_size=VOCAB, hidden_size=16, num_hidden_layers=1, ffn_dim=32, num_attention_heads=2,
        word_embed_proj_dim=16))
    opt.save_pretrained(tmp_path / "opt")
    with pytest.raises(CheckpointError, match="architecture 'OPTForCausalLM' is not supported; supported: .*Llama"):
        from_pretrained(tmp_path / "opt")
    llama3 = transformers.LlamaForCausalLM(transformers.LlamaConfig(
        vocab_size=VOCAB, hidden_size=32, num_hidden_layers=1, **ATTENTION,
        rope_scaling={"rope_type": "linear", "factor": 2.0}))
    llama3.save_pretrained(tmp_path / "scaled")
    with pytest.raises(CheckpointError, match="rope_type='linear' is not supported"):
        from_pretrained(tmp_path / "scaled")


def test_missing_folder_and_offline_hub_id(tmp_path, monkeypatch):
    import huggingface_hub.constants

    with pytest.raises(CheckpointError, match="no config.json in the checkpoint folder"):
        from_pretrained(tmp_path)
    with pytest.raises(CheckpointError, match="no checkpoint folder './no/such/folder'"):
        from_pretrained("./no/such/folder")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(CheckpointError, match=r"state-spaces/mamba-130m-hf: config\.json is not in the Hugging Face "
                                              r"cache .*offline"):
        from_pretrained("state-spaces/mamba-130m-hf")


def test_tokenizer_from_the_same_folder(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers

    folder = tmp_path / "checkpoint"
    tiny_hf("llama").save_pretrained(folder)
    assert load_tokenizer(folder) is None
    words = ["<unk>", "the", "cat", "sat"]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    transformers.PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>").save_pretrained(folder)
    assert load_tokenizer(folder)("the cat sat on")["input_ids"] == [1, 2, 3, 0]


def test_generation_suites_run_a_checkpoint_beside_the_random_configs(saved):
    import pandas as pd

    from ssmbench.harness.cli import main
    from ssmbench.models.generate import generation_case
    from ssmbench.suites import get_suite

    folder, _ = saved("jamba")
    suite = get_suite("generation")
    cases = suite.checkpoint_cases("cpu-small", str(folder))
    assert {c.series for c in cases} == {f"{folder.name} (ours)", f"{folder.name} (HF generate())"}
    assert all(c.params["checkpoint"] == str(folder) and c.params["scale"] == 1 for c in cases)
    assert not {c.series for c in cases} & {c.series for c in suite.cases("cpu-small")}
    throughput = get_suite("jamba_throughput").checkpoint_cases("cpu-small", str(folder))
    assert {c.series for c in throughput} == {f"{folder.name} (ours)"}
    from ssmbench.suites.jamba_throughput import preset_context_table

    fits = preset_context_table(pd.DataFrame([{**c.params, "series": c.series} for c in throughput]))
    assert fits["params"].tolist() == [read_config(folder).param_count()]
    rows = []
    for impl in ("ssmbench", "hf"):
        case = next(c for c in cases if c.params["impl"] == impl)
        params = {**case.params, "batch": 2, "prompt": 8, "gen": 4, "repeats": 1, "prefill": True}
        row = generation_case(**params)
        assert row.get("status", "ok") == "ok", row.get("reason")
        assert row["model_name"] == folder.name and row["tokens_per_s"] > 0
        rows.append({**params, "series": case.series, "status": "ok", **row})
    assert rows[0]["equal"]  # the cache allocated for the checkpoint's shape is the formula's
    # The preset decodes from a written cache; transformers' hybrid cache cannot be written so.
    hf = generation_case(**{**next(c for c in cases if c.params["impl"] == "hf").params,
                            "batch": 2, "prompt": 8, "gen": 4, "repeats": 1})
    assert hf["status"] == "unsupported" and "Mamba layers" in hf["reason"]
    memory = suite.tables(pd.DataFrame(rows))["Memory: weights + cache, exact bytes"]
    assert memory["params"].tolist() == [rows[0]["n_params"]] * 2
    assert main(["run", "--suite", "scaling", "--model", str(folder)]) == 2  # a suite that builds no models
