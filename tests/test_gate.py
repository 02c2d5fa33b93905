"""The gate on real runs: an injected slowdown fails exactly its case; noise-sized changes and
unchanged runs pass; correctness and claim flips fail; fingerprints are respected."""
import json
import math
import shutil
import subprocess
import sys

import pytest

from ssmbench.harness import cli
from ssmbench.harness.gate import GateRefused, gate, load_input, portable_figures, save_baseline
from ssmbench.harness.inject import ENV
from ssmbench.harness.pytest_benchmark import export_run, read_pytest_benchmark
from ssmbench.harness.runner import run_cases
from ssmbench.harness.store import Run
from ssmbench.impls import get_op
from ssmbench.suites.base import Case


def op_case(op, backend, **params):
    problem = get_op(op).default_problem.replace(**params)
    return Case(suite="gate-test", op=op, backend=backend, params=problem.params(), series=backend,
                budget_s=0.6, max_repeats=200, min_repeats=20)


CASES = [
    op_case("selective_scan", "torch", dim=16, seqlen=48),
    op_case("selective_scan", "reference", dim=4, dstate=4, seqlen=16),
    op_case("causal_conv1d", "torch", dim=64, seqlen=256),
]


def measured_run(tmp_path, name, monkeypatch, slowdown=None):
    if slowdown:
        monkeypatch.setenv(ENV, slowdown)
    else:
        monkeypatch.delenv(ENV, raising=False)
    run = Run.create(tmp_path / name, "gate", CASES, {"cpu_model": "test"}, "same", suite="gate-test",
                     preset="test")
    # One thread: a second one mostly adds scheduling noise at these sizes.
    run_cases(run, progress=False, threads=1)
    return load_input(str(run.path))


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    tmp = tmp_path_factory.mktemp("gate")
    try:
        baseline = measured_run(tmp, "base", mp)
        plain = measured_run(tmp, "plain", mp)
        slow30 = measured_run(tmp, "slow30", mp, "selective_scan/torch=0.3")
        slow3 = measured_run(tmp, "slow3", mp, "selective_scan/torch=0.03")
    finally:
        mp.undo()
    return baseline, plain, slow30, slow3


def test_injected_30_percent_slowdown_fails_exactly_that_case(runs):
    baseline, _, slow30, _ = runs
    result = gate(baseline, slow30)
    assert result.exit_code == 1
    assert [f.key.split()[0] for f in result.regressions] == ["selective_scan/torch"]
    (finding,) = result.regressions
    assert finding.change > 0.2 and finding.p_value < 0.01


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


def test_portable_figures_and_their_regressions(runs):
    baseline, plain, slow30, _ = runs
    figures = portable_figures(baseline.rows)
    ratios = {k for kind, k in figures if kind == "ratio"}
    assert ratios == set()  # one backend per problem here: nothing to divide
    rows = baseline.rows.copy()
    twin = rows[rows["backend"] == "torch"].copy()
    twin["backend"], twin["case_id"] = "fast", twin["case_id"] + "-fast"
    twin["median_ms"] = twin["median_ms"] / 4
    both = rows._append(twin, ignore_index=True)
    figures = portable_figures(both)
    assert any(kind == "ratio" and "fast/torch" in key and math.isclose(v, 0.25) for (kind, key), v in figures.items())
    worse = both.copy()
    worse.loc[worse["backend"] == "fast", "median_ms"] *= 1.5
    base_in = type(baseline)("b", "x", {}, both, None)
    cur_in = type(baseline)("c", "y", {}, worse, None)
    result = gate(base_in, cur_in, portable=True)
    assert [f.kind for f in result.regressions] == ["ratio", "ratio"]


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
    compare = subprocess.run([sys.executable, "-m", "pytest_benchmark.cli", "compare", str(base_json),
                              str(slow_json)], capture_output=True, text=True)
    assert compare.returncode == 0, compare.stderr
    assert "selective_scan" in compare.stdout


def test_cli_gate_with_saved_baseline(tmp_path, runs, capsys):
    baseline, plain, slow30, _ = runs
    store = tmp_path / "baselines"
    saved = save_baseline(baseline.name, baselines=store)
    assert saved.parent.name == "gate-test" and saved.name == "same"
    assert cli.main(["gate", "--baselines", str(store), "--run", plain.name]) == 0
    assert cli.main(["gate", "--baselines", str(store), "--run", slow30.name]) == 1
    out = capsys.readouterr().out
    assert "regression" in out and "selective_scan/torch" in out and "gate FAIL" in out
