"""Verdicts: stable claim ids, the verdict words, rules that decide only on intervals; and case
versions in the case id. Judged on the stored baselines and on synthetic rows (no timing)."""
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ssmbench.harness.store import load_runs, read_manifest
from ssmbench.suites import available_suites, get_suite
from ssmbench.suites.base import Case, Verdict
from ssmbench.suites.generation import SETTINGS as GENERATION_SETTINGS

BASELINES = Path(__file__).resolve().parent.parent / "results" / "baselines"


def baseline_runs() -> dict[str, Path]:
    """suite -> its stored baseline run folder (the first fingerprint)."""
    out = {}
    for manifest in sorted(BASELINES.glob("*/*/manifest.json")):
        out.setdefault(manifest.parent.parent.name, manifest.parent)
    return out


# The judging suites with a CPU preset keep a stored baseline (what the CI gate judges against);
# quality has none: its checkpoints and datasets come from the hub.
BASELINED = [n for n in available_suites()
             if get_suite(n).judge is not None and any(p.startswith("cpu") for p in get_suite(n).presets)]


def judged(suite: str, rows: pd.DataFrame, manifest: dict) -> list[Verdict]:
    return get_suite(suite).judge(rows, manifest)


# Claim ids.
def test_claim_ids_are_unique_across_all_suites_on_their_baselines():
    runs = baseline_runs()
    assert set(BASELINED) <= set(runs), f"suites without a baseline to judge: {set(BASELINED) - set(runs)}"
    seen: dict[str, str] = {}
    for name in BASELINED:
        verdicts = judged(name, load_runs(runs[name]), read_manifest(runs[name]))
        assert verdicts, name
        for v in verdicts:
            assert v.claim_id not in seen, f"{v.claim_id} given by {seen.get(v.claim_id)} and {name}"
            seen[v.claim_id] = name
    # The paper's claim numbers where the suite reproduces a paper; the suite's name otherwise.
    assert {"C1.scan-linear", "C1.attention-quadratic", "C3.ssd-vs-scan", "C4.table1", "C2.throughput-vs-hf",
            "peers.linear"} <= set(seen)


def test_every_generation_comparison_has_its_own_claim_id():
    ids = [c.claim_id for s in GENERATION_SETTINGS.values() for c in s.comparisons]
    claims = {c.claim_id: c.claim for s in GENERATION_SETTINGS.values() for c in s.comparisons}
    assert len(set(ids)) == len(claims) == len(set(claims.values()))  # one id per sentence, and back


@pytest.mark.parametrize("bad", ["", "C1", "C1.Scan", "c1.scan", "C1.scan linear", "C1.-scan"])
def test_a_malformed_claim_id_is_refused(bad):
    with pytest.raises(ValueError, match="claim_id"):
        Verdict(claim_id=bad, claim="c", paper_setting="", paper_value="", device="", setting="", measured="",
                verdict="holds")


# Case versions.
def test_case_version_changes_the_id_and_version_one_keeps_the_old_ids():
    fields = dict(suite="s", op="selective_scan", backend="torch", params={"seqlen": 8})
    case = Case(**fields)
    assert Case(**fields, version=1).case_id == case.case_id
    assert Case(**fields, version=2).case_id != case.case_id
    assert Case(**fields, version=2).label() == case.label() + " (version 2)"
    with pytest.raises(ValueError, match="version"):
        Case(suite="s", params={}, version=0)


def test_stored_baseline_cases_keep_their_ids():
    """Cases stored before versions existed give the ids stored beside them (Run.cases recomputes
    each id from the case's fields and refuses a mismatch)."""
    from ssmbench.harness.store import Run

    for name, path in baseline_runs().items():
        cases = Run(path).cases()
        assert cases and all(c.version == 1 for c in cases), name


# Verdict words and rules that flip only on a decided interval (synthetic rows).
def op_rows(series: dict, lengths, noise: float = 0.01, factors: dict | None = None, device: str = "cpu",
            spread: float = 0.0, **fields) -> pd.DataFrame:
    """Timed op rows: (op, backend) -> time of L; 9 samples with ``noise`` (or, with ``spread``,
    spread evenly +-spread around the time: the median exact); ``factors``: (op, backend) ->
    {L: factor} bends a median off its power law (widens its exponent's interval)."""
    rng = np.random.default_rng(0)
    records = []
    for (op, backend), time_of in series.items():
        for L in lengths:
            bend = (factors or {}).get((op, backend), {}).get(L, 1.0)
            jitter = np.linspace(-spread, spread, 9) if spread else noise * rng.standard_normal(9)
            samples = list(time_of(L) * bend * (1 + jitter))
            records.append({"suite": "t", "run_id": "r", "op": op, "backend": backend, "fn": "",
                            "series": f"{op}/{backend}", "status": "ok", "reason": "", "device": device,
                            "batch": 1, "dim": 256, "dstate": 16, "nheads": 4, "headdim": 64, "dtype": "float32",
                            "chunk_size": 64, "cpu_model": "test CPU", "threads": 1, **fields,
                            ("seqlen_q" if op == "attention" else "seqlen"): L,
                            "median_ms": float(np.median(samples)), "samples_ms": samples})
    return pd.DataFrame(records)


LENGTHS = [512, 1024, 2048, 4096, 8192, 16384]


def by_id(verdicts) -> dict[str, Verdict]:
    return {v.claim_id: v for v in verdicts}


def test_attention_quadratic_is_undecided_when_the_ssm_interval_straddles_the_margin():
    """Attention at L^1.65 against an SSD at L^1.24 whose interval is wide: the point estimates are
    0.41 apart (under the 0.5 margin), but the difference's interval reaches past it."""
    series = {("ssd", "torch_chunked"): lambda L: 1e-4 * L ** 1.24, ("attention", "sdpa"): lambda L: 1e-4 * L ** 1.65}
    wide = op_rows(series, LENGTHS, factors={("ssd", "torch_chunked"): {8192: 1.25}})
    v = by_id(judged("scaling", wide, {}))["C1.attention-quadratic"]
    assert v.verdict == "undecided", v.measured
    assert "attention/sdpa - ssd/torch_chunked: 0.41 [" in v.measured and "too wide" in v.reason
    # The same exponents measured tightly decide it: 0.41 is not 0.5 above.
    tight = by_id(judged("scaling", op_rows(series, LENGTHS), {}))["C1.attention-quadratic"]
    assert tight.verdict == "does not hold", tight.measured


def test_crossover_at_a_tie_is_undecided():
    # Scan and attention take the same time at the longest length: 1% noise cannot say which is faster.
    rows = op_rows({("selective_scan", "torch_fast"): lambda L: 0.01 * L,
                    ("attention", "sdpa"): lambda L: 0.01 * L * L / 16384}, LENGTHS)
    v = by_id(judged("scaling", rows, {}))["C1.scan-attention-crossover"]
    assert v.verdict == "undecided" and "at L=16384: " in v.measured and "too wide" not in v.measured
    assert "not reached" in v.measured  # the point estimates alone said "does not hold"
    # Twice as fast at the longest length: decided.
    rows = op_rows({("selective_scan", "torch_fast"): lambda L: 0.01 * L,
                    ("attention", "sdpa"): lambda L: 0.02 * L * L / 16384}, LENGTHS)
    assert by_id(judged("scaling", rows, {}))["C1.scan-attention-crossover"].verdict == "holds"


def test_gpu_only_mechanisms_are_not_applicable_on_a_cpu_and_not_measured_on_a_gpu():
    series = {("selective_scan", "torch_fast"): lambda L: 0.01 * L}
    cpu = by_id(judged("scaling", op_rows(series, LENGTHS), {}))
    gpu = by_id(judged("scaling", op_rows(series, LENGTHS, device="cuda", gpu_name="test GPU"), {}))
    for claim, mechanism in (("C1.fused-vs-torch-scan", "kernel fusion"), ("C1.scan-memory-linear", "CUDA allocator")):
        assert cpu[claim].verdict == "not applicable" and mechanism in cpu[claim].reason
        assert cpu[claim].reason.startswith("not applicable on this device")
        assert gpu[claim].verdict == "not measured"


def test_fused_speedup_decides_on_its_interval():
    def rows(ratio, noise):
        return op_rows({("selective_scan", "torch"): lambda L: ratio * 0.01 * L,
                        ("selective_scan", "cuda"): lambda L: 0.01 * L}, LENGTHS, noise=noise, device="cuda")

    assert by_id(judged("scaling", rows(30, 0.01), {}))["C1.fused-vs-torch-scan"].verdict == "holds"
    assert by_id(judged("scaling", rows(12, 0.01), {}))["C1.fused-vs-torch-scan"].verdict == "does not hold"
    assert by_id(judged("scaling", rows(20, 0.2), {}))["C1.fused-vs-torch-scan"].verdict == "undecided"


def test_ssd_speedup_and_state_size_rules():
    def verdicts(speed, ssd_in_n, spread=0.0):
        L_rows = op_rows({("selective_scan", "torch_fast"): lambda L: speed * 0.01 * L,
                          ("ssd", "torch_chunked"): lambda L: 0.01 * L}, LENGTHS, spread=spread, dstate=64)
        N_rows = op_rows({("selective_scan", "torch_fast"): lambda n: 2.0 * n,
                          ("ssd", "torch_chunked"): lambda n: 10.0 * n ** ssd_in_n}, [16, 32, 64, 128, 256])
        N_rows = N_rows.assign(dstate=N_rows["seqlen"], seqlen=2048)
        L_rows["series"] = "L sweep: " + L_rows["series"]
        N_rows["series"] = "N sweep: " + N_rows["series"]
        return by_id(judged("ssd_speedup", pd.concat([L_rows, N_rows], ignore_index=True), {}))

    v = verdicts(4.0, 0.0)
    assert v["C3.ssd-vs-scan"].verdict == v["C3.state-size"].verdict == "holds"
    v = verdicts(1.5, 0.6)
    assert v["C3.ssd-vs-scan"].verdict == v["C3.state-size"].verdict == "does not hold"
    v = verdicts(2.0, 0.0, spread=0.1)  # exactly 2x, samples 10% apart: every interval straddles 2
    assert v["C3.ssd-vs-scan"].verdict == "undecided"
    # No attention in these rows: nothing timed for the crossover.
    assert v["C3.ssd-attention-crossover"].verdict == "not measured"


def test_generation_ratio_decides_on_the_interval_of_its_repeats():
    def rows(spread):
        records = []
        for series, tps in (("Mamba-1.4B (ours)", 50.0), ("Transformer-1.3B (ours)", 10.0),
                            ("Transformer-1.3B (HF generate())", 10.0)):
            time_ms = 4 * 32 / tps * 1e3
            records.append({"series": series, "batch": 4, "gen": 32, "prompt": 128, "status": "ok", "reason": "",
                            "tokens_per_s": tps, "model_name": series.split(" ")[0], "n_params": 1,
                            "prefill_ms": 1.0, "decode_ms_per_token": 1.0, "dtype": "float32", "repeats": 3,
                            "device": "cpu", "scale": 8,
                            "samples_ms": [time_ms * (1 - spread), time_ms, time_ms * (1 + spread)]})
        return pd.DataFrame(records)

    tight = by_id(judged("generation", rows(0.01), {"preset": "cpu-small"}))
    assert tight["C2.throughput-vs-ours"].verdict == "holds"  # 5x, its interval above 4x
    wide = by_id(judged("generation", rows(0.3), {"preset": "cpu-small"}))  # 5x, its interval reaching below 4x
    assert wide["C2.throughput-vs-ours"].verdict == "undecided"
    v = wide["C2.throughput-vs-hf"]
    assert "Mamba-1.4B /8 width (ours)" in v.measured and "Transformer-1.3B /8 width (HF generate())" in v.measured
    assert wide["C2.mamba-6.9b-vs-transformer-1.3b"].verdict == "not measured"


@pytest.mark.parametrize("suite", ["generation", "jamba_throughput"])
def test_a_throughput_verdict_names_what_bound_each_decode_step_at_the_runs_ceilings(suite):
    """A step of 40 ms whose work takes at most 4 ms at the run's ceilings is above its floors,
    and the verdict's reason says so with the measured floors; without ceilings it says nothing."""
    pairs = {"generation": ("Mamba-1.4B (ours)", "Transformer-1.3B (ours)"),
             "jamba_throughput": ("Jamba-v0.1 (ours)", "Mixtral-8x7B (ours)")}[suite]
    records = []
    for series, tps, step_ms in zip(pairs, (10.0, 20.0), (40.0, 8.0)):
        for batch, prompt in ((1, 128), (4, 128)):
            records.append({"series": series, "batch": batch, "gen": 32, "prompt": prompt, "status": "ok",
                            "reason": "", "tokens_per_s": tps * batch, "model_name": series.split(" ")[0],
                            "n_params": 1, "prefill_ms": 1.0, "decode_ms_per_token": step_ms, "dtype": "float32",
                            "repeats": 3, "device": "cpu", "scale": 8, "layers": 0,
                            "step_flops": 1e8, "step_bytes": 4e7, "step_kv_bytes": 1e7,
                            "samples_ms": [batch * 32 / (tps * batch) * 1e3 * f for f in (0.99, 1.0, 1.01)]})
    rows = pd.DataFrame(records)
    manifest = {"preset": "cpu-small", "ceilings": {"copy_gbps": 10.0, "matmul_fp32_tflops": 0.1},
                "environment": {"torch_threads": 2}}
    judged_rows = [v for v in judged(suite, rows, manifest) if v.verdict == "does not hold"]
    assert judged_rows
    for v in judged_rows:
        # 4e7 B at 10 GB/s = 4 ms, 1e8 FLOP at 0.1 TFLOP/s = 1 ms: 40 ms is 10x the floor, 8 ms only 2x
        assert "above its floors (10.0x its memory floor, KV cache 25% of its bytes)" in v.measured
        assert "memory-bound (2.0x its memory floor" in v.measured
        assert "copy 10 GB/s" in v.reason and "KV cache 25% of its bytes" in v.reason
        assert "above its floors: step 40 ms, 10.0x its higher floor" in v.reason
        assert "per-operation overhead or by kernels running below this machine's peak rates" in v.reason
        # Both best at batch 4 with 4 ms floors: at their floors the two would decode alike.
        assert "with both steps at their floors, decode throughput would be 1.00x" in v.reason
    bare = [v for v in judged(suite, rows, {"preset": "cpu-small"}) if v.verdict == "does not hold"]
    assert bare and not any("floor" in v.measured or "floor" in v.reason for v in bare)


def test_a_slope_without_an_interval_leaves_the_peers_linearity_undecided():
    rows = op_rows({("selective_scan", "torch_fast"): lambda L: 1e-3 * L ** 1.3}, [512, 1024], dim=1536)
    v = by_id(judged("peers", rows, {}))["peers.linear"]
    assert v.verdict == "undecided" and "no interval: 2 points" in v.measured


@pytest.mark.parametrize("name", BASELINED)
def test_figure_of_names_claims_the_judge_gives_and_figures_the_suite_writes(name, tmp_path):
    suite = get_suite(name)
    path = baseline_runs()[name]
    rows = load_runs(path)
    ids = {v.claim_id for v in judged(name, rows, read_manifest(path))}
    if name == "generation":  # the paper preset's comparisons too
        ids |= {c.claim_id for s in GENERATION_SETTINGS.values() for c in s.comparisons}
    assert set(suite.figure_of) <= ids
    written = {p.name for p in suite.figures(rows, tmp_path)}
    assert {f for names in suite.figure_of.values() for f in names} <= written


@pytest.mark.parametrize("name", BASELINED)
def test_a_run_whose_cases_all_failed_gives_every_claim_and_no_verdict_from_nothing(name):
    """The baseline's cases as rows that failed (parameters kept, nothing measured): the judge
    gives the same claim ids as for the measured run, none holding or failing from data it has not."""
    from ssmbench.harness.schema import CaseColumns, columns

    path = baseline_runs()[name]
    rows, manifest = load_runs(path), read_manifest(path)
    params = {c for case in get_suite(name).cases(manifest["preset"]) for c in case.params}
    kept = [c for c in rows.columns if c in params or c in columns(CaseColumns) + ("cpu_model", "gpu_name")]
    failed = rows[kept].assign(status="failed", reason="worker died")
    given = judged(name, failed, manifest)
    assert [v.claim_id for v in given] == [v.claim_id for v in judged(name, rows, manifest)]
    from_data = {v.claim_id: v.verdict for v in given if v.verdict in ("holds", "does not hold")}
    # Only claims decided by the configs alone (exact byte accounting of published shapes).
    assert set(from_data) <= {"C4.table1", "C4.context-fits-80gb"}, from_data
