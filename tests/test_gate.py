"""The gate on real runs: an injected slowdown fails exactly its case; noise-sized changes and
unchanged runs pass; correctness and claim flips fail; fingerprints are respected."""
import json
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
import torch

from ssmbench.harness import cli
from ssmbench.harness.baselines import save_baseline
from ssmbench.harness.gate import GateRefused, gate, portable_figures
from ssmbench.harness.gate_input import GateInput, load_input
from ssmbench.harness import inject
from ssmbench.harness.execute import base_row, prepare, timing_fields
from ssmbench.harness.inject import ENV, slowed
from ssmbench.harness.pytest_benchmark import export_run, read_pytest_benchmark
from ssmbench.harness.timing import measure, measure_interleaved
from ssmbench.harness.store import Run
from ssmbench.impls import get_op
from ssmbench.suites.base import Case


def op_case(op, backend, **params):
    problem = get_op(op).default_problem.replace(**params)
    return Case(suite="gate-test", op=op, backend=backend, params=problem.params(), series=backend,
                budget_s=0.6, max_repeats=200, min_repeats=20)


# Backends whose time is a few large kernels: steadier under a loaded machine than a loop of
# many small dispatches.
CASES = [
    op_case("attention", "torch", batch=1, nheads=4, headdim=64, seqlen_q=256),
    op_case("causal_conv1d", "torch", batch=1, dim=256, seqlen=2048),
    op_case("ssd", "torch_chunked", batch=1, seqlen=256, nheads=2, headdim=32, dstate=32, chunk_size=64),
]
TARGET = "attention/torch"
SLOWDOWN = {"base": 0.0, "plain": 0.0, "slow30": 0.30, "slow3": 0.03}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Four runs of the same cases, the slowdowns applied to TARGET only, measured the way two
    builds are compared: in one process, in rounds (base, plain, slow30, slow3, base, ...), so
    that a change in the machine's load falls on all of them alike."""
    tmp = tmp_path_factory.mktemp("gate")
    made = {name: Run.create(tmp / name, "gate", CASES, {"cpu_model": "test"}, "same", suite="gate-test",
                             preset="test") for name in SLOWDOWN}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a second thread mostly adds scheduling noise at these sizes
    try:
        for case in CASES:
            variants, fields = {}, {}
            for name, fraction in SLOWDOWN.items():
                fields[name], call, op, problem = prepare(case, case.backend)
                assert call is not None, fields[name]
                target = f"{case.op}/{case.backend}" == TARGET
                variants[name] = slowed(call, fraction=fraction if target else 0.0)
            timings = measure_interleaved(variants, "cpu", min_rounds=30, max_rounds=200, budget_s=3.0)
            for name, timing in timings.items():
                made[name].append({**base_row(case, case.backend), **fields[name],
                                   **timing_fields(op, problem, timing)})
    finally:
        torch.set_num_threads(threads)
    return tuple(load_input(str(made[name].path)) for name in SLOWDOWN)


def test_environment_slowdown_applies_to_the_named_case_only(monkeypatch):
    def work():
        end = time.perf_counter() + 0.02
        while time.perf_counter() < end:
            pass

    monkeypatch.setenv(ENV, f"{TARGET}=0.3")
    monkeypatch.setattr(inject, "current", TARGET)
    slow = measure(work, min_repeats=5, max_repeats=5, budget_s=0)
    monkeypatch.setattr(inject, "current", "causal_conv1d/torch")
    plain = measure(work, min_repeats=5, max_repeats=5, budget_s=0)
    assert slow.min_ms >= 1.29 * 20 and plain.min_ms < 1.1 * 20 + 5


def test_injected_30_percent_slowdown_fails_exactly_that_case(runs):
    baseline, _, slow30, _ = runs
    result = gate(baseline, slow30)
    assert result.exit_code == 1
    assert [f.key.split()[0] for f in result.regressions] == [f"gate-test:{TARGET}"]
    (finding,) = result.regressions
    assert finding.change > 0.10 and finding.p_value < 0.01


def test_same_run_without_delay_passes(runs):
    baseline, plain, _, _ = runs
    result = gate(baseline, plain)
    assert result.exit_code == 0, result.table().to_string()
    assert {f.kind for f in result.findings} == {"time"} and len(result.findings) == len(CASES)


def test_three_percent_change_does_not_fail(runs):
    baseline, _, _, slow3 = runs
    assert gate(baseline, slow3).exit_code == 0


def test_correctness_regression_fails_whatever_the_time(runs):
    baseline, plain, _, _ = runs
    broken = plain.rows.copy()
    index = broken.index[broken["op"] == "causal_conv1d"][0]
    broken.loc[index, "status"] = "incorrect"
    broken.loc[index, "reason"] = "relative error 0.1 exceeds tolerance 1e-4"
    plain_broken = type(plain)(plain.name, plain.fingerprint, plain.environment, broken, plain.suite)
    result = gate(baseline, plain_broken)
    assert result.exit_code == 1
    (finding,) = result.regressions
    assert finding.kind == "status" and finding.current == "incorrect"
    assert gate(baseline, plain_broken, portable=True).exit_code == 1


def test_timings_across_fingerprints_are_refused(runs):
    baseline, plain, _, _ = runs
    other = type(plain)(plain.name, "other", {"cpu_model": "another cpu"}, plain.rows, plain.suite)
    with pytest.raises(GateRefused, match="cpu_model: 'test' vs 'another cpu'"):
        gate(baseline, other)
    assert gate(baseline, other, portable=True).mode == "portable"


def synthetic_rows(medians: dict[tuple[str, int], float], spread: float = 0.05, seed: int = 0,
                   op: str = "causal_conv1d") -> pd.DataFrame:
    """Rows of ``op`` cases {(backend, seqlen): median ms} with 30 samples each."""
    rng = np.random.default_rng(seed)
    rows = []
    for (backend, seqlen), median in medians.items():
        samples = list(median * (1 + spread * rng.standard_normal(30)))
        rows.append({"case_id": f"{backend}-{seqlen}", "suite": "s", "op": op, "backend": backend,
                     "fn": "", "dim": 64, "seqlen": seqlen, "status": "ok", "reason": "",
                     "median_ms": float(np.median(samples)), "samples_ms": samples})
    return pd.DataFrame(rows)


def test_portable_figures_and_their_regressions():
    lengths = (512, 1024, 2048, 4096)
    base = synthetic_rows({**{("torch", L): L / 100 for L in lengths}, **{("fast", L): L / 1000 for L in lengths}})
    figures = portable_figures(base)
    ratio = figures[("ratio", "causal_conv1d fast/torch")]
    assert ratio.lo < 0.1 < ratio.hi and ratio.hi - ratio.lo < 0.03
    slope = figures[("exponent", "causal_conv1d dim=64,backend=fast")]
    assert abs(slope.value - 1) < 0.03 and slope.lo <= slope.value <= slope.hi
    # Another machine, twice as slow overall: no machine-independent figure moves.
    other = synthetic_rows({k: 2 * v for k, v in
                            {**{("torch", L): L / 100 for L in lengths},
                             **{("fast", L): L / 1000 for L in lengths}}.items()},
                           seed=1)
    assert gate(GateInput("b", "x", {}, base, None), GateInput("c", "y", {}, other, None), portable=True).exit_code == 0
    # fast 2x slower at one length only: an outlier of one run, not a regression.
    spike = synthetic_rows({**{("torch", L): L / 100 for L in lengths},
                            **{("fast", L): L / 1000 * (2 if L == 4096 else 1) for L in lengths}}, seed=2)
    assert gate(GateInput("b", "x", {}, base, None), GateInput("c", "y", {}, spike, None), portable=True).exit_code == 0
    # fast 2x slower everywhere: its ratio regresses.
    worse = synthetic_rows({**{("torch", L): L / 100 for L in lengths},
                            **{("fast", L): L / 500 for L in lengths}}, seed=2)
    result = gate(GateInput("b", "x", {}, base, None), GateInput("c", "y", {}, worse, None), portable=True)
    assert {(f.kind, f.key) for f in result.regressions} == {("ratio", "causal_conv1d fast/torch")}
    steeper = synthetic_rows({**{("torch", L): L / 100 for L in lengths},
                              **{("fast", L): (L / 1000) ** 1.5 for L in lengths}}, seed=3)
    result = gate(GateInput("b", "x", {}, base, None), GateInput("c", "y", {}, steeper, None), portable=True)
    assert ("exponent", "causal_conv1d dim=64,backend=fast") in {(f.kind, f.key) for f in result.regressions}


def test_an_exponent_rising_to_the_ops_own_is_not_a_regression_but_one_past_it_is():
    lengths = (512, 1024, 2048, 4096)
    torch_rows = {("torch", L): L / 100 for L in lengths}
    # A baseline whose short lengths were dominated by a fixed per-call cost: slope about 0.6.
    overhead = synthetic_rows({**torch_rows, **{("fast", L): 3 + L / 1000 for L in lengths}})
    linear = synthetic_rows({**torch_rows, **{("fast", L): L / 1000 for L in lengths}}, seed=1)
    key = ("exponent", "causal_conv1d dim=64,backend=fast")
    b, c = portable_figures(overhead)[key], portable_figures(linear)[key]
    assert c.value - b.value > 0.15 and c.lo > b.hi and c.due == 1.0  # what the plain rule would fail
    result = gate(GateInput("b", "x", {}, overhead, None), GateInput("c", "y", {}, linear, None), portable=True)
    assert key not in {(f.kind, f.key) for f in result.regressions}
    steeper = synthetic_rows({**torch_rows, **{("fast", L): (L / 1000) ** 1.5 for L in lengths}}, seed=2)
    result = gate(GateInput("b", "x", {}, overhead, None), GateInput("c", "y", {}, steeper, None), portable=True)
    assert key in {(f.kind, f.key) for f in result.regressions}


def test_a_python_loop_backend_has_an_exponent_but_no_ratio():
    lengths = (512, 1024, 2048)
    rows = synthetic_rows({**{("torch", L): L / 10 for L in lengths}, **{("torch_fast", L): L / 1000 for L in lengths}},
                          op="selective_scan")  # selective_scan's torch steps over L in Python
    figures = portable_figures(rows)
    assert not [key for kind, key in figures if kind == "ratio"]
    assert {key for kind, key in figures if kind == "exponent"} == {
        "selective_scan dim=64,backend=torch", "selective_scan dim=64,backend=torch_fast"}
    # An op timed only on others' backends has no figure of ours, and no error either.
    assert portable_figures(synthetic_rows({("mambapy_seq", L): L / 300 for L in lengths}, op="selective_scan")) == {}


def test_third_party_backends_are_measured_but_not_gated():
    lengths = (512, 1024, 2048)
    base = synthetic_rows({**{("torch_fast", L): L / 100 for L in lengths},
                           **{("mambapy_seq", L): L / 300 for L in lengths}}, op="selective_scan")
    slower_peer = synthetic_rows({**{("torch_fast", L): L / 100 for L in lengths},
                                  **{("mambapy_seq", L): L / 50 for L in lengths}}, seed=1, op="selective_scan")
    assert not [k for k in portable_figures(base) if "mambapy_seq" in k[1]]
    result = gate(GateInput("b", "x", {}, base, None), GateInput("c", "y", {}, slower_peer, None), portable=True)
    assert result.exit_code == 0


def test_labels_are_the_cases_parameters_not_their_results(runs):
    baseline, plain, _, _ = runs
    for case in CASES:
        assert baseline.label(case.case_id) == plain.label(case.case_id) == case.label()
        assert "median" not in case.label()


def test_pytest_benchmark_roundtrip(tmp_path, runs):
    baseline, _, slow30, _ = runs
    base_json = export_run(baseline.name, tmp_path / "base.json")
    slow_json = export_run(slow30.name, tmp_path / "slow.json")
    document = json.loads(base_json.read_text())
    assert len(document["benchmarks"]) == len(CASES)
    assert all(len(b["stats"]["data"]) == b["stats"]["rounds"] for b in document["benchmarks"])
    back = read_pytest_benchmark(base_json)
    assert gate(back, read_pytest_benchmark(base_json)).exit_code == 0
    assert gate(back, read_pytest_benchmark(slow_json)).exit_code == 1
    compare = subprocess.run([sys.executable, "-c", "from pytest_benchmark.cli import main; main()", "compare",
                              str(base_json), str(slow_json)], capture_output=True, text=True)
    assert compare.returncode == 0, compare.stderr
    assert "attention" in compare.stdout


def test_cli_gate_with_saved_baseline(tmp_path, runs, capsys):
    baseline, plain, slow30, _ = runs
    store = tmp_path / "baselines"
    saved = save_baseline(baseline.name, baselines=store)
    assert saved.parent.name == "gate-test" and saved.name == "same"
    # The regression logic on its own; the noise check has its tests (test_gate_integrity.py).
    assert cli.main(["gate", "--no-noise", "--baselines", str(store), "--run", plain.name]) == 0
    assert cli.main(["gate", "--no-noise", "--baselines", str(store), "--run", slow30.name]) == 1
    out = capsys.readouterr().out
    assert "regression" in out and TARGET in out and "gate FAIL" in out


def _input(rows, name="r", suite="s", fingerprint="x") -> GateInput:
    return GateInput(name, fingerprint, {}, rows, suite)


LENGTHS = (512, 1024, 2048, 4096)
BASE = {**{("torch", L): L / 100 for L in LENGTHS}, **{("fast", L): L / 1000 for L in LENGTHS}}


def test_a_run_missing_cases_fails_unless_missing_is_allowed():
    base = synthetic_rows(BASE)
    partial = base[base["seqlen"] != 4096]
    result = gate(_input(base), _input(partial), portable=True)
    missing = result.outcomes("missing")
    assert result.exit_code == 1 and not result.regressions
    assert {f.key for f in missing if f.kind == "status"} == {"torch-4096", "fast-4096"}
    (ratio,) = [f for f in result.findings if f.kind == "ratio"]
    assert "over 4 problem(s)" in ratio.baseline and "over 3 problem(s)" in ratio.current
    allowed = gate(_input(base), _input(partial), portable=True, allow_missing=True)
    assert allowed.exit_code == 0 and "missing allowed" in allowed.summary()
    # Cases the baseline lacks are listed as new and fail nothing.
    grown = gate(_input(partial), _input(base), portable=True)
    assert grown.exit_code == 0
    assert {f.key for f in grown.outcomes("new") if f.kind == "status"} == {"torch-4096", "fast-4096"}


def test_claims_are_matched_by_id_and_a_dropped_one_is_missing(monkeypatch):
    import ssmbench.harness.gate as gate_module
    from ssmbench.suites.base import Verdict

    def verdicts(*claims):
        return {i: Verdict(claim_id=i, claim=text, paper_setting="", paper_value="", device="cpu", setting="",
                           measured=f"figure of {i}", verdict="holds") for i, text in claims}

    rows = synthetic_rows(BASE)
    base, run = _input(rows, name="base"), _input(rows, name="run")
    judged = {"base": verdicts(("C1.a", "C1: a"), ("C1.b", "C1: b"), ("C1.c", "C1: c")),
              "run": verdicts(("C1.a", "C1: a"), ("C1.b", "C1: b, reworded"), ("C1.d", "C1: d"))}
    monkeypatch.setattr(gate_module, "_verdicts", lambda entry: judged[entry.name])
    result = gate(base, run, portable=True)
    by_claim = {f.key: f for f in result.findings if f.kind == "verdict"}
    assert by_claim["C1.b"].outcome == "unchanged" and "C1: b, reworded" in by_claim["C1.b"].detail
    assert by_claim["C1.c"].outcome == "missing" and by_claim["C1.d"].outcome == "new"
    assert "run: figure of C1.a" in by_claim["C1.a"].detail
    assert result.exit_code == 1


def test_a_compare_run_or_another_suite_is_refused_as_baseline():
    rows = synthetic_rows(BASE)
    with pytest.raises(GateRefused, match="compare run"):
        gate(_input(rows, suite="compare"), _input(rows), portable=True)
    with pytest.raises(GateRefused, match="suite 'scaling'.*suite 'ssd_speedup'"):
        gate(_input(rows, suite="scaling"), _input(rows, suite="ssd_speedup"), portable=True)


def test_the_timing_gate_refuses_a_run_measured_on_two_machines():
    rows = synthetic_rows(BASE)
    mixed = rows.assign(fingerprint=["aaa"] * 5 + ["bbb"] * 3)
    with pytest.raises(GateRefused, match=r"2 machines \(aaa \(5 rows\), bbb \(3 rows\)\)"):
        gate(_input(rows), _input(mixed))
    # Machine-independent figures do not depend on which machine measured a row.
    assert gate(_input(rows), _input(mixed), portable=True).exit_code == 0


def _slower_fast():
    return synthetic_rows({**{("torch", L): L / 100 for L in LENGTHS}, **{("fast", L): L / 500 for L in LENGTHS}},
                          seed=2)


def test_noise_above_the_threshold_makes_timed_regressions_too_noisy():
    from ssmbench.harness.noise import Noise

    base, worse = synthetic_rows(BASE), _slower_fast()
    quiet = gate(_input(base), _input(worse), portable=True, noise=Noise(0.2, 150))
    assert quiet.exit_code == 1 and quiet.regressions
    noisy = gate(_input(base), _input(worse), portable=True, noise=Noise(0.8, 150))
    (finding,) = noisy.outcomes("too noisy")
    assert noisy.exit_code == 3 and not noisy.regressions
    assert finding.kind == "ratio" and "machine noise 80%" in finding.detail and finding.current
    assert "TOO NOISY TO JUDGE" in noisy.summary()
    # A broken case is broken however noisy the machine: it still fails.
    broken = worse.copy()
    broken.loc[0, ["status", "reason"]] = ["incorrect", "relative error 1 exceeds tolerance 1e-4"]
    assert gate(_input(base), _input(broken), portable=True, noise=Noise(0.8, 150)).exit_code == 1
    # The timing gate is judged against its own (tighter) threshold.
    assert gate(_input(base), _input(base), noise=Noise(0.2, 150)).exit_code == 0


def test_a_retry_confirms_only_regressions_of_both_attempts():
    from ssmbench.harness.gate import confirm

    base, worse = synthetic_rows(BASE), _slower_fast()
    first = gate(_input(base), _input(worse), portable=True)
    assert first.exit_code == 1
    again = confirm(gate(_input(base), _input(worse), portable=True), first.to_json())
    assert again.exit_code == 1 and again.regressions
    passed_first = gate(_input(base), _input(base), portable=True).to_json()
    unconfirmed = confirm(gate(_input(base), _input(worse), portable=True), passed_first)
    assert unconfirmed.exit_code == 0 and unconfirmed.outcomes("unconfirmed")
    assert "not so in the first attempt" in unconfirmed.outcomes("unconfirmed")[0].detail


def test_cli_findings_then_confirm(tmp_path, runs, capsys):
    baseline, plain, slow30, _ = runs
    first, second = tmp_path / "first.json", tmp_path / "second.json"
    common = ["gate", "--no-noise", "--baseline", baseline.name]
    assert cli.main([*common, "--run", slow30.name, "--findings", str(first)]) == 1
    written = json.loads(first.read_text())
    assert written["exit_code"] == 1
    (result,) = written["results"].values()
    assert any(f["outcome"] == "regression" for f in result["findings"])
    assert cli.main([*common, "--run", slow30.name, "--confirm", str(first), "--findings", str(second)]) == 1
    assert cli.main([*common, "--run", plain.name, "--confirm", str(first)]) == 0
    (tmp_path / "torn.json").write_text('{"exit_code": 1, "res')
    capsys.readouterr()
    assert cli.main([*common, "--run", plain.name, "--confirm", str(tmp_path / "torn.json")]) == 2
    assert "--confirm" in capsys.readouterr().err


def test_a_saved_baseline_leaves_the_lock_and_job_logs_behind(tmp_path, runs):
    baseline, _, _, _ = runs
    from pathlib import Path

    source = Path(baseline.name)
    (source / "submitit").mkdir(exist_ok=True)
    (source / "submitit" / "log.out").write_text("job log")
    (source / "writer.lock").write_text("123")
    saved = save_baseline(baseline.name, baselines=tmp_path / "b")
    assert sorted(p.name for p in saved.iterdir()) == ["cases.jsonl", "manifest.json", "rows.jsonl"]
