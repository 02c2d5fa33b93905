"""The timer (harness/timing.py) and its statistics: interleaved rounds with a stability copy,
the median's distribution-free interval."""
from harness_fixtures import new_run
from ssmbench.harness.runner import run_cases
from ssmbench.harness.stats import median_ci
from ssmbench.harness.store import load_runs
from ssmbench.harness.timing import measure
from ssmbench.impls import get_op
from ssmbench.suites.base import Case


def test_interleaved_comparison_with_stability(tmp_path):
    problem = get_op("selective_scan").default_problem.replace(dim=8, seqlen=32)
    case = Case(suite="test", op="selective_scan", backends=("torch", "reference", "nope_not_real"),
                params=problem.params(), stability=True, budget_s=0.1, min_repeats=5)
    run = new_run(tmp_path, [case])
    run_cases(run, progress=False)
    rows = load_runs(run.path).set_index("backend")
    assert rows.loc["torch", "status"] == "ok" and rows.loc["reference", "status"] == "ok"
    assert rows.loc["nope_not_real", "status"] == "failed"
    assert "unknown backend" in rows.loc["nope_not_real", "reason"]
    assert rows.loc["torch", "n_samples"] == rows.loc["reference", "n_samples"] >= 5
    assert abs(rows.loc["torch", "self_spread"]) < 1 and 0 <= rows.loc["torch", "self_p"] <= 1
    assert run.done_case_ids() == {case.case_id}


def test_timing_statistics():
    t = measure(lambda: sum(range(1000)), "cpu", min_repeats=5, max_repeats=20, budget_s=0.05)
    assert 5 <= t.n <= 20 and t.first_call_ms > 0
    lo, hi = median_ci(list(range(100)))
    assert lo < 49.5 < hi and hi - lo < 30
