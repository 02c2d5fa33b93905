"""The claim suites (scaling, ssd_speedup, jamba_cache), the model configs and caches they use,
and the paper tables: fast checks, no heavy timing."""
import math
import re
from decimal import Decimal

import numpy as np
import pandas as pd
import pytest
import torch

from ssmbench.harness import cli
from ssmbench.harness.report import paper_tables, write_report
from ssmbench.harness.runner import run_cases
from ssmbench.harness.store import Run
from ssmbench.impls import backends, get_op
from ssmbench.impls.base import load_callable
from ssmbench.models.cache import KVCache, build_cache, kv_cache_bytes, mamba_state_bytes
from ssmbench.models.configs import JAMBA_V01, MODELS
from ssmbench.suites import common, get_suite
from ssmbench.suites.base import Case
from ssmbench.suites.jamba_cache import measure_cache, table1

SUITES = ("scaling", "ssd_speedup", "jamba_cache")
GiB = 2**30


# Presets.
@pytest.mark.parametrize("name", SUITES)
def test_presets_give_valid_cases_with_unique_ids(name):
    suite = get_suite(name)
    for preset in suite.presets:
        cases = suite.cases(preset)
        assert cases, preset
        ids = [c.case_id for c in cases]
        assert len(ids) == len(set(ids)), f"{name}/{preset}: duplicate case ids"
        for case in cases:
            if case.op:
                op = get_op(case.op)
                problem = op.problem_type.from_params(case.params)
                assert case.backend in backends(case.op)
                assert set(case.check_params) <= set(problem.params())
                op.problem_type.from_params({**case.params, **case.check_params})
            else:
                assert callable(load_callable(case.fn))


def test_cpu_presets_check_short_and_time_on_one_thread():
    for name in ("scaling", "ssd_speedup"):
        suite = get_suite(name)
        assert suite.threads["cpu-small"] == 1
        for case in suite.cases("cpu-small"):
            if case.op:
                assert case.params["device"] == "cpu"
                length = case.params.get("seqlen") or case.params.get("seqlen_q")
                assert {**case.params, **case.check_params}.get("seqlen", 0) <= 512 or length <= 512


def test_gpu_presets_use_the_papers_sizes():
    scan = [c for c in get_suite("scaling").cases("paper") if c.op == "selective_scan"]
    lengths = {c.params["seqlen"] for c in scan}
    assert min(lengths) == 2**9 and max(lengths) == 2**19
    assert {(c.params["batch"], c.params["dim"], c.params["dstate"], c.params["dtype"], c.params["device"])
            for c in scan} == {(1, 1024, 16, "bfloat16", "cuda")}
    n_sweep = [c for c in get_suite("ssd_speedup").cases("gpu") if c.series.startswith("N sweep")]
    assert {c.params["dstate"] for c in n_sweep} == {16, 32, 64, 128, 256}
    assert {c.params["seqlen"] for c in n_sweep} == {4096}


def test_kernel_tables_and_the_device_checks_short_comparison():
    full = get_suite("kernels").cases("gpu")

    def sizes(op):
        return {(c.params["dstate"], c.params["seqlen"]) for c in full
                if c.op == op and c.params["dtype"] == "bfloat16"}

    assert sizes("selective_scan") == {(16, 2**k) for k in range(12, 17)}
    assert sizes("ssd") == {(n, 2**k) for n in (64, 128) for k in range(12, 17)}
    # The short comparison is part of the tables: every op, every backend, fewer sizes.
    quick = get_suite("kernels").cases("gpu-quick")
    assert {c.case_id for c in quick} < {c.case_id for c in full}
    assert {(c.op, c.backend) for c in quick} == {(c.op, c.backend) for c in full}


# Configs and caches.
@pytest.mark.parametrize("model", MODELS.values(), ids=lambda m: m.name)
def test_param_counts_round_to_the_published_sizes(model):
    for stated, active in zip(model.stated_params, (False, True)):
        places = -Decimal(stated).as_tuple().exponent
        assert round(model.param_count(active=active) / 1e9, places) == float(stated), (model.name, active)


def test_jamba_layer_pattern():
    assert JAMBA_V01.attention_layers == (4, 12, 20, 28)
    assert len(JAMBA_V01.mamba_layers) == 28
    assert [i for i in range(32) if JAMBA_V01.is_moe(i)] == list(range(1, 32, 2))
    scaled = JAMBA_V01.scaled(16)
    assert scaled.attention_layers == JAMBA_V01.attention_layers and scaled.head_dim == 8
    assert scaled.n_kv_heads == 8 and scaled.d_inner == 512


def test_table1_regenerated_exactly():
    expected = {"Llama-2-7B": 128, "Mistral-7B": 32, "Mixtral-8x7B": 32, "Jamba-v0.1": 4}
    for name, gib in expected.items():
        assert kv_cache_bytes(MODELS[name], 1, 2**18, 2) == gib * GiB
    table = table1()
    assert table["formula == paper"].all()
    assert list(table["formula"]) == ["128 GiB", "32 GiB", "32 GiB", "4 GiB"]


def test_built_cache_bytes_equal_the_formula():
    for model in ("Llama-2-7B", "Mistral-7B", "Mixtral-8x7B", "Jamba-v0.1"):
        full = measure_cache(model, 2**18, device="meta")
        assert full["equal"] and full["measured_bytes"] == full["formula_bytes"]
        small = measure_cache(model, 5000, divisor=16, device="cpu")
        assert small["equal"], small
    jamba = measure_cache("Jamba-v0.1", 2**18, device="meta")
    # 28 Mamba layers x (d_inner 8192) x (d_state 16 + d_conv 4) x 2 bytes: "about 8.8 MiB".
    assert jamba["mamba_bytes"] == 28 * 8192 * (16 + 4) * 2 == 9175040
    mistral = measure_cache("Mistral-7B", 2**18, device="meta")
    assert mistral["real_kv_bytes"] == 2 * 32 * 8 * 128 * 4096 * 2  # the window caps it at 4096 tokens
    assert mistral["measured_bytes"] // jamba["measured_bytes"] == 8


def test_cache_shapes_follow_mamba_ssm():
    cache = build_cache(JAMBA_V01.scaled(16), batch=3, max_len=10, state_dtype="float32")
    kinds = [type(layer).__name__ for layer in cache.layers]
    assert kinds.count("KVCache") == 4 and kinds.count("MambaState") == 28
    mamba = cache.layers[0]
    assert mamba.conv.shape == (3, 512, 4) and mamba.ssm.shape == (3, 512, 16)
    assert mamba.ssm.dtype == torch.float32 and mamba.conv.dtype == torch.bfloat16
    assert cache.layers[4].k.shape == (3, 10, 8, 8)
    assert cache.nbytes == sum(t.nbytes for layer in cache.layers for t in vars(layer).values()
                               if isinstance(t, torch.Tensor))
    assert mamba_state_bytes(JAMBA_V01.scaled(16), 3, 2, 4) == cache.bytes_by_kind()["mamba"]


def test_kv_cache_update_with_and_without_window():
    cache = KVCache.allocate(1, 4, 1, 2, "float32", "cpu")
    k = torch.arange(6, dtype=torch.float32).reshape(1, 3, 1, 2)
    keys, _ = cache.update(k, -k)
    assert torch.equal(keys, k) and cache.length == 3
    with pytest.raises(ValueError, match="capacity"):
        cache.update(k, k)
    ring = KVCache.allocate(1, 4, 1, 1, "float32", "cpu", window=4)
    for t in range(6):
        keys, _ = ring.update(torch.full((1, 1, 1, 1), float(t)), torch.zeros(1, 1, 1, 1))
    assert sorted(keys.flatten().tolist()) == [2.0, 3.0, 4.0, 5.0]  # the last 4 tokens


# Statistics.
def test_loglog_fit_and_interval():
    L = np.array([512, 1024, 2048, 4096, 8192])
    fit = common.loglog_fit(L, 3e-3 * L**2)
    assert fit.slope == pytest.approx(2) and fit.low == pytest.approx(2) and fit.high == pytest.approx(2)
    noisy = common.loglog_fit(L, L * np.array([1.0, 1.1, 0.9, 1.05, 0.95]))
    assert noisy.low < noisy.slope < noisy.high and 0.8 < noisy.slope < 1.2
    assert math.isnan(common.loglog_fit([1, 2], [1, 4]).low)
    assert common.upper_half(L) == [2048, 4096, 8192]


def test_sweeps_run_outside_in():
    assert common.outside_in([4, 1, 3, 2, 5]) == [1, 5, 2, 4, 3]
    lengths = [c.params["seqlen"] for c in get_suite("scaling").cases("cpu-small")
               if c.op == "selective_scan" and c.backend == "torch_fast"]
    assert lengths[:3] == [512, 8192, 768]


def test_crossover_interpolation():
    L = [512, 1024, 2048, 4096, 8192, 16384]
    ssm = pd.Series([float(x) for x in L], index=L)
    attention = pd.Series([x * x / 4096 for x in L], index=L)
    c = common.crossover(ssm, attention)
    assert c.status == "crossed" and c.length == pytest.approx(4096)
    c = common.crossover(ssm, pd.Series([x * x / 3000 for x in L], index=L))
    assert c.status == "crossed" and c.length == pytest.approx(3000)
    assert common.crossover(ssm, attention * 100).status == "always"
    late = common.crossover(ssm, pd.Series([x * x / 65536 for x in L], index=L))
    assert late.status == "not reached" and late.length == pytest.approx(65536)
    assert "not reached" in late.describe() and "65,536" in late.describe()


def test_speedup_interval():
    ratio, low, high = common.speedup([4.0] * 10, [1.0] * 10)
    assert ratio == low == high == 4.0
    rng = np.random.default_rng(1)
    ratio, low, high = common.speedup(8 + rng.normal(0, 0.2, 30), 2 + rng.normal(0, 0.05, 30))
    assert low < ratio < high and 3.5 < low and high < 4.5


# Verdicts on synthetic rows.
def _rows(series: dict, lengths, key="seqlen", **fields) -> pd.DataFrame:
    """Timed op rows: series (op, backend) -> time as a function of the swept value."""
    rng = np.random.default_rng(0)
    records = []
    for (op, backend), time_of in series.items():
        for x in lengths:
            samples = list(time_of(x) * (1 + 0.01 * rng.standard_normal(7)))
            length = "seqlen_q" if op == "attention" and key == "seqlen" else key
            records.append({"suite": "t", "run_id": "r", "op": op, "backend": backend, "fn": "",
                            "series": f"{op}/{backend}", "status": "ok", "reason": "", "device": "cpu",
                            "batch": 1, "dim": 256, "dstate": 16, "nheads": 4, "headdim": 64, "dtype": "float32",
                            "cpu_model": "test CPU", "threads": 1, **fields, length: x,
                            "median_ms": float(np.median(samples)), "samples_ms": samples})
    return pd.DataFrame(records)


LENGTHS = [512, 1024, 2048, 4096, 8192, 16384]


def _verdicts(suite, rows):
    return {v.claim: v for v in get_suite(suite).judge(rows, {})}


def test_scaling_judge_linear_against_quadratic():
    rows = _rows({("selective_scan", "torch_fast"): lambda L: 0.01 * L,
                  ("ssd", "torch_chunked"): lambda L: 0.002 * L,
                  ("attention", "sdpa"): lambda L: 0.01 * L * L / 2048}, LENGTHS)
    v = _verdicts("scaling", rows)
    scan = v["C1: selective scan time grows linearly in L"]
    assert scan.verdict == "holds" and "1.00 [" in scan.measured
    assert v["C1: SSD scan time grows linearly in L"].verdict == "holds"
    quad = v["C1: causal attention time grows quadratically in L, faster than the SSMs'"]
    assert quad.verdict == "holds" and "2.00 [" in quad.measured
    cross = v["C1: the selective scan is faster than attention beyond a crossover length"]
    assert cross.verdict == "holds" and "L ≈ 2,04" in cross.measured  # 2048, up to the 1% noise
    assert "CPU: test CPU" in cross.device and "not the paper's GPU" in cross.device
    fused = v["C1: the fused scan is 20-40x faster than a standard PyTorch scan"]
    assert fused.verdict == "not applicable" and "SRAM" in fused.reason  # no fused kernel runs on a CPU


def test_scan_linearity_is_judged_on_the_fastest_backend_and_shows_the_others():
    rows = _rows({("selective_scan", "torch_fast"): lambda L: 0.01 * L,
                  ("selective_scan", "torch"): lambda L: 0.1 * L ** 1.3}, LENGTHS)
    scan = _verdicts("scaling", rows)["C1: selective scan time grows linearly in L"]
    assert scan.verdict == "holds"
    assert "fastest backend at the longest L: selective_scan/torch_fast: 1.00 [" in scan.measured
    assert "also timed: selective_scan/torch: 1.30 [" in scan.measured
    # The same growth in the fastest backend decides the other way.
    slow = _rows({("selective_scan", "torch_fast"): lambda L: 0.001 * L ** 1.3}, LENGTHS)
    assert _verdicts("scaling", slow)["C1: selective scan time grows linearly in L"].verdict == "does not hold"


def test_scaling_judge_rejects_a_quadratic_ssm():
    rows = _rows({("selective_scan", "torch"): lambda L: 0.01 * L * L,
                  ("attention", "sdpa"): lambda L: 0.01 * L * L}, LENGTHS)
    v = _verdicts("scaling", rows)
    assert v["C1: selective scan time grows linearly in L"].verdict == "does not hold"
    assert v["C1: causal attention time grows quadratically in L, faster than the SSMs'"].verdict == "does not hold"
    assert v["C1: SSD scan time grows linearly in L"].verdict == "not measured"


def test_ssd_speedup_judge():
    L_rows = _rows({("selective_scan", "torch_fast"): lambda L: 0.04 * L, ("ssd", "torch_chunked"): lambda L: 0.01 * L,
                    ("attention", "sdpa"): lambda L: 0.01 * L * L / 2048}, LENGTHS, dstate=64, chunk_size=64)
    N = [16, 32, 64, 128, 256]
    N_rows = _rows({("selective_scan", "torch_fast"): lambda n: 2.0 * n, ("ssd", "torch_chunked"): lambda n: 10.0},
                   N, key="dstate", seqlen=2048, chunk_size=64)
    L_rows["series"] = "L sweep: " + L_rows["series"]
    N_rows["series"] = "N sweep: " + N_rows["series"]
    v = _verdicts("ssd_speedup", pd.concat([L_rows, N_rows], ignore_index=True))
    speed = v["C3: SSD is 2-8x faster than Mamba-1's selective scan at N=64"]
    assert speed.verdict == "holds" and "4.0x" in speed.measured
    assert v["C3: SSD becomes faster than attention beyond a crossover length"].verdict == "holds"
    flat = v["C3: at fixed L, scan time grows linearly in N while SSD stays nearly flat"]
    assert flat.verdict == "holds" and re.search(r"scan 1\.00 .*SSD -?0\.00 ", flat.measured)


def test_jamba_judge_and_paper_tables(tmp_path):
    rows = pd.DataFrame([{"suite": "jamba_cache", "run_id": "r", "status": "ok", "reason": "", "model": m,
                          "context": c, "divisor": 1, "device": "meta", "fn": "x",
                          **measure_cache(m, c, device="meta")}
                         for m in ("Llama-2-7B", "Mistral-7B", "Mixtral-8x7B", "Jamba-v0.1") for c in (4096, 2**18)])
    verdicts = get_suite("jamba_cache").judge(rows, {})
    assert [v.verdict for v in verdicts] == ["holds"] * 3
    assert "8x" in verdicts[2].measured
    assert table1(rows)["built == formula"].all()
    tables = paper_tables(results_dir=tmp_path)  # no runs stored: the analytic tables, "not measured" beside
    stated = tables["Numbers the papers state, next to what was measured"]
    assert set(stated["claim"]) == {"C1", "C3", "C4", "C5"}
    assert tables["Mamba Table 15: training memory, 125M models, L=2048"]["paper Mamba (GB)"].tolist() == \
        [4.8, 5.8, 7.3, 12.3, 23.1, 38.2]
    assert (stated.loc[stated["claim"] == "C1", "measured"] == "not measured").all()
    assert tables["Jamba Table 1: KV cache at 256K tokens, 16-bit"]["formula == paper"].all()


def test_tables_command_writes_and_prints(tmp_path, capsys):
    assert cli.main(["--results-dir", str(tmp_path / "results"), "--reports-dir", str(tmp_path / "reports"),
                     "tables"]) == 0
    out = capsys.readouterr().out
    assert "Jamba Table 1" in out and "128 GiB" in out and "4 of 32" in out
    assert (tmp_path / "reports" / "tables" / "index.md").exists()
    assert (tmp_path / "reports" / "tables" / "table1.csv").exists()


# A tiny real run through the runner and the report.
def test_report_of_a_tiny_scaling_run(tmp_path):
    cases = []
    for L in (32, 64, 128):
        cases += common.op_cases("scaling", "selective_scan", ["torch_fast"],
                                 [{"dim": 8, "dstate": 4, "seqlen": L}], check_params={"seqlen": 32}, budget_s=0.05)
        cases += common.op_cases("scaling", "attention", ["sdpa"],
                                 [{"nheads": 2, "headdim": 8, "seqlen_q": L}], budget_s=0.05)
        cases.append(Case(suite="scaling", fn="ssmbench.suites.scaling:decode_state_bytes", series="decode state",
                          params={"kind": "attention", "seqlen": L, "batch": 1, "dim": 16, "dstate": 4, "d_conv": 4,
                                  "headdim": 8, "dtype": "float32", "device": "cpu"}))
    run = Run.create(tmp_path / "results", "tiny", cases, {"cpu_model": "test", "packages": {}}, "fp",
                     suite="scaling", preset="tiny")
    summary = run_cases(run, progress=False)
    assert summary.counts == {"ok": len(cases)}
    folder = write_report([run.path], out_dir=tmp_path / "reports")
    text = (folder / "index.md").read_text()
    assert "### Claims" in text and "C1: selective scan time grows linearly in L" in text
    assert "checked_at" in text  # the longer scans were checked at L=32
    assert (folder / "index.html").exists()
    pngs = sorted(p.name for p in folder.glob("*.png"))
    assert pngs == ["scaling_memory.png", "scaling_time.png"]
    assert all(f"![{p}]({p})" in text for p in pngs)
