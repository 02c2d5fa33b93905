"""The training suite: the exact memory count of a training step, its cases, its verdict, the
crossover interval, the gate on exact figures, and a small run end to end."""
import dataclasses

import numpy as np
import pandas as pd
import pytest
import torch

from ssmbench.harness import cli
from ssmbench.harness.gate import _figure_findings, portable_figures
from ssmbench.models.generate import case_config
from ssmbench.models.layers import MLP
from ssmbench.models.train import SavedActivations, StepMemory, count_step, extended_count
from ssmbench.suites import common, get_suite, training

MAMBA = "selective_scan=torch_fast,causal_conv1d=torch"
ATTENTION = "attention=sdpa_flash_cpu"


def tiny(model: str, layers: int = 2):
    return case_config(model, scale=16, layers=layers, vocab=256, max_len=64)


@pytest.mark.parametrize("model,ops", [("Mamba-130M", MAMBA), ("Transformer-125M", ATTENTION)])
def test_meta_count_equals_the_count_on_real_tensors(model, ops):
    config = tiny(model)
    meta = count_step(config, 3, 40, ops, device="meta")
    real = count_step(config, 3, 40, ops, device="cpu")
    assert meta == real and meta.by_module == real.by_module
    assert meta.activations > 0 and sum(meta.by_module.values()) == meta.activations


def test_sdpa_saves_more_on_meta_than_the_cpu_flash_kernel():
    # Why the Transformer is counted with sdpa_flash_cpu: plain SDPA takes its math path on meta.
    config = tiny("Transformer-125M")
    assert count_step(config, 2, 64, "attention=sdpa", device="meta").activations > \
        count_step(config, 2, 64, ATTENTION, device="meta").activations


@pytest.mark.parametrize("model,ops", [("Mamba-130M", MAMBA), ("Transformer-125M", ATTENTION)])
def test_params_grads_and_two_adamw_states_counted_exactly(model, ops):
    config = tiny(model)
    count = count_step(config, 2, 32, ops, device="meta")
    tensors = sum(1 for _ in training_params(config))
    assert count.params == 4 * config.param_count()  # float32, the tied embedding once
    assert count.grads == count.params
    # exp_avg and exp_avg_sq per weight, and one float32 step counter per weight tensor.
    assert count.optimizer == 2 * count.params + 4 * tensors


def training_params(config):
    from ssmbench.models.lm import build_model

    return build_model(config, device="meta").parameters()


def test_saved_activations_of_an_mlp_equal_the_hand_count():
    b, l, d, f = 2, 5, 8, 24
    mlp = MLP(d, f, "gelu", bias=True)
    x = torch.randn(b, l, d, requires_grad=True)
    with SavedActivations(exclude=mlp.parameters()) as saved:
        mlp(x).sum().backward()
    # The up projection saves its input x, GELU its input (up's output), the down projection its
    # input (GELU's output); the weights are parameters, not activations.
    assert saved.nbytes == 4 * (b * l * d + 2 * b * l * f)
    with SavedActivations(exclude=mlp.parameters(), model=mlp) as saved:
        mlp(x).sum()
    # GELU is a function inside MLP.forward, the projections are Linear modules.
    assert saved.by_module() == {"Linear": 4 * (b * l * d + b * l * f), "MLP": 4 * b * l * f}


def test_a_view_is_counted_with_its_storage_once():
    x = torch.randn(6, 4, requires_grad=True)
    with SavedActivations() as saved:
        (x[:3] * x[3:]).sum().backward()
    assert saved.nbytes == x.nbytes


def test_count_extended_from_depths_one_and_two_equals_the_full_depth():
    config = tiny("Mamba-130M", layers=4)
    extended, full = extended_count(config, 2, 32, MAMBA), count_step(config, 2, 32, MAMBA, device="meta")
    assert extended == full and extended.by_module == full.by_module


def test_extension_refuses_a_stack_whose_layers_differ():
    hybrid = dataclasses.replace(case_config("Jamba-v0.1", scale=64, layers=8, vocab=256), n_experts=1)
    with pytest.raises(ValueError, match="layers differ"):
        extended_count(hybrid, 1, 16)


def test_cpu_small_cases():
    cases = get_suite("training").cases("cpu-small")
    memory = [c for c in cases if c.fn == training.MEMORY_FN]
    steps = [c for c in cases if c.fn == training.STEP_FN]
    assert sorted({c.params["model"] for c in memory}) == ["Mamba-130M", "Transformer-125M"]
    assert sorted(c.params["batch"] for c in memory) == sorted([1, 2, 4, 8, 16, 32] * 2)
    assert {(c.params["seqlen"], c.params["device"]) for c in memory} == {(2048, "meta")}
    assert {c.params["backends"] for c in memory if c.params["model"] == "Transformer-125M"} == {ATTENTION}
    assert sorted({c.params["model"] for c in steps}) == ["Mamba-130M", "Mamba-2-130M", "Transformer-125M"]
    assert {c.params["device"] for c in steps} == {"cpu"}
    assert sorted({c.params["seqlen"] for c in steps}) == [256, 512, 1024, 2048]
    assert len({c.case_id for c in cases}) == len(cases)
    from ssmbench.models.train import layer_params

    # Equal size: the layers' weights of the tiny models within 5% of each other.
    sizes = {layer_params(case_config(c.params["model"], c.params["scale"], c.params["layers"], c.params["vocab"],
                                      c.params["seqlen"])) for c in steps}
    assert max(sizes) / min(sizes) < 1.05


def memory_row(model: str, batch: int, total: float, **extra) -> dict:
    return {"case_id": f"{model}-{batch}", "suite": "training", "fn": training.MEMORY_FN, "status": "ok",
            "reason": "", "model": model, "batch": batch, "seqlen": 2048, "device": "meta", "dtype": "float32",
            "backends": "x", "total_bytes": total, **extra}


@pytest.mark.parametrize("ratio,expected", [(1.05, "holds"), (0.95, "holds"), (1.2, "does not hold"),
                                            (0.8, "does not hold")])
def test_verdict_rule_on_synthetic_rows(ratio, expected):
    rows = pd.DataFrame([memory_row("Transformer-125M", b, 1e9 * b) for b in (1, 2, 4)]
                        + [memory_row("Mamba-130M", b, 1e9 * b * (ratio if b == 4 else 1.05)) for b in (1, 2, 4)])
    (verdict,) = training.judge(rows, {})
    assert verdict.verdict == expected
    assert "batch 4: " + f"{ratio:.3f}" in verdict.measured


def test_the_verdict_names_where_mambas_activations_are_saved_at_the_largest_batch():
    rows = pd.DataFrame(
        [memory_row("Transformer-125M", b, 2e9 * b, activation_bytes=1e9 * b, saved_in_Attention_bytes=6e8 * b)
         for b in (1, 4)]
        + [memory_row("Mamba-130M", b, 5e9 * b, activation_bytes=4e9 * b, saved_in_MambaMixer_bytes=3e9 * b,
                      saved_in_Linear_bytes=1e9 * b) for b in (1, 4)])
    (verdict,) = training.judge(rows, {})
    assert verdict.verdict == "does not hold"
    assert ("at batch 4: Mamba's step saves 16 GB of activations against the Transformer's 4 GB, 12 GB of them "
            "in its MambaMixer modules (75%)") in verdict.reason


def test_verdict_not_measured_without_both_models():
    rows = pd.DataFrame([memory_row("Transformer-125M", 1, 1e9)])
    (verdict,) = training.judge(rows, {})
    assert verdict.verdict == "not measured"


def test_table15_puts_the_paper_beside_the_count():
    rows = pd.DataFrame([memory_row("Transformer-125M", 1, 2e9), memory_row("Mamba-130M", 1, 2.2e9)])
    table = training.table15(rows).set_index("batch")
    assert table.loc[1, "paper Mamba (GB)"] == 4.8 and table.loc[1, "Mamba counted (GB)"] == 2.2
    assert table.loc[1, "counted ratio"] == 1.1
    assert np.isnan(table.loc[32, "counted ratio"])


def test_crossover_interval_brackets_a_known_crossing():
    rng = np.random.default_rng(0)
    lengths = [256, 512, 1024, 2048, 4096]
    # a: linear, b: quadratic, equal at L = 1024.
    a = {L: L * (1 + 0.02 * rng.standard_normal(15)) for L in lengths}
    b = {L: L * L / 1024 * (1 + 0.02 * rng.standard_normal(15)) for L in lengths}
    interval = common.crossover_interval(a, b)
    assert interval.low < 1024 < interval.high
    assert interval.share > 0.9


def test_gate_fails_when_an_exact_figure_grows():
    row = memory_row("Mamba-130M", 1, 100.0, activation_bytes=60.0, exact_columns="activation_bytes,total_bytes")
    base = portable_figures(pd.DataFrame([row]))
    grown = portable_figures(pd.DataFrame([{**row, "activation_bytes": 61.0, "total_bytes": 101.0}]))
    assert {k for k in base if k[0] == "exact"} == {("exact", "Mamba-130M-1 activation_bytes"),
                                                    ("exact", "Mamba-130M-1 total_bytes")}
    outcomes = {f.key: f.outcome for f in _figure_findings(base, grown, 0.5, 0.15)}
    assert outcomes == {"Mamba-130M-1 activation_bytes": "regression", "Mamba-130M-1 total_bytes": "regression"}
    same = {f.outcome for f in _figure_findings(base, base, 0.5, 0.15)}
    assert same == {"unchanged"}


def test_small_run_end_to_end(tmp_path, capsys):
    from ssmbench.harness.session import start_run
    from ssmbench.harness.store import load_runs

    small = training.Model("Mamba-130M", MAMBA), training.Model("Transformer-125M", ATTENTION)
    setting = dataclasses.replace(
        training.SETTINGS["cpu-small"], memory_models=small, batches=(1,), seqlen=32,
        step_models=(training.Model("Mamba-130M", MAMBA, 2), training.Model("Transformer-125M", "attention=sdpa", 1)),
        lengths=(16, 32, 64), budget_s=0.05, max_repeats=3)
    summary = start_run("training-test", training.cases(setting), suite="training", preset="adhoc", device="cpu",
                        results_dir=tmp_path, threads=1, progress=False)
    rows = load_runs(summary.run_path)
    assert set(rows["status"]) == {"ok"}, rows[["series", "reason"]].to_string()
    table = training.table15(rows).set_index("batch")
    assert table.loc[1, "Mamba counted (GB)"] > 0 and table.loc[1, "Transformer counted (GB)"] > 0
    (verdict,) = training.judge(rows, {})
    assert verdict.verdict in ("holds", "does not hold")
    steps = training.step_rows(rows)
    assert len(steps) == 6 and (steps["tokens_per_s"] > 0).all()
    assert len(training.crossovers(rows)) == 1
    exact = [k for k in portable_figures(rows) if k[0] == "exact"]
    assert len(exact) == 2 * 5
    # `ssmbench tables RUN` regenerates Table 15 from this run, the paper's value beside ours.
    assert cli.main(["--reports-dir", str(tmp_path / "reports"), "tables", str(summary.run_path)]) == 0
    out = capsys.readouterr().out
    assert "Mamba Table 15" in out and "38.2" in out
    assert f"{table.loc[1, 'Mamba counted (GB)']:.4g}" in out


def test_layer_params_leave_out_the_embeddings():
    from ssmbench.models.train import layer_params

    for model in ("Mamba-130M", "Transformer-125M"):
        with_vocab, without = case_config(model, 16, 2, 512, 64), case_config(model, 16, 2, 256, 64)
        assert layer_params(with_vocab) == layer_params(without) > 0
    longer = case_config("Transformer-125M", 16, 2, 256, 4096)  # more learned positions
    assert layer_params(longer) == layer_params(case_config("Transformer-125M", 16, 2, 256, 64))


def test_step_memory_total_is_the_sum():
    m = StepMemory(1, 2, 3, 4, {"A": 4})
    assert m.total == 10
    grown = m.extended(StepMemory(1, 3, 5, 7, {"A": 5, "B": 2}), 4)
    assert grown == StepMemory(1, 5, 9, 13) and grown.by_module == {"A": 7, "B": 6}
