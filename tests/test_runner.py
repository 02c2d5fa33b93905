"""The runner and the worker on real processes: statuses recorded and the sweep going on, the
check before the timing, the cold first call, inputs drawn once per problem, resume and interrupt."""
import dataclasses
import os
import signal
import subprocess
import time

import pytest
import torch

from harness_fixtures import custom, new_run, run_in_background
from ssmbench.harness import execute as execute_module
from ssmbench.harness.execute import execute
from ssmbench.harness.runner import run_cases
from ssmbench.harness.store import ResultsError, Run, load_runs
from ssmbench.impls import get_backend, get_op
from ssmbench.suites.base import Case


def test_statuses_are_recorded_and_the_sweep_goes_on(tmp_path):
    cases = [
        custom("sleep", seconds=0.0, tag=1),
        dataclasses.replace(custom("sleep", seconds=30.0, tag=2), timeout_s=3),
        custom("crash", tag=3),
        custom("raise_error", tag=4),
        Case(suite="test", op="selective_scan", backend="torch",
             params=get_op("selective_scan").default_problem.replace(device="cuda").params()),
        custom("sleep", seconds=0.0, tag=5),
    ]
    run = new_run(tmp_path, cases)
    summary = run_cases(run, progress=False)
    rows = load_runs(run.path).set_index("tag", drop=False)
    assert rows.loc[1, "status"] == "ok" and rows.loc[5, "status"] == "ok"
    assert rows.loc[2, "status"] == "timeout" and "3 s" in rows.loc[2, "reason"]
    assert rows.loc[3, "status"] == "failed" and "SIGSEGV" in rows.loc[3, "reason"]
    assert rows.loc[4, "status"] == "failed" and "planted failure" in rows.loc[4, "reason"]
    scan = load_runs(run.path).query("op == 'selective_scan'").iloc[0]
    expected = "unsupported" if not torch.cuda.is_available() else "ok"
    assert scan["status"] == expected
    assert summary.counts["ok"] >= 2


def test_op_case_is_checked_then_timed(tmp_path):
    problem = get_op("selective_scan").default_problem.replace(seqlen=64)
    run = new_run(tmp_path, [Case(suite="test", op="selective_scan", backend="torch", params=problem.params(),
                                  budget_s=0.2)])
    run_cases(run, progress=False)
    row = load_runs(run.path).iloc[0]
    assert row["status"] == "ok", row["reason"]
    assert row["rel_error"] < 1e-4
    assert len(row["samples_ms"]) == row["n_samples"] >= 3
    assert row["ci_low_ms"] <= row["median_ms"] <= row["ci_high_ms"]
    assert row["gbps"] > 0 and row["first_call_ms"] > 0


def test_first_call_is_the_cold_one(monkeypatch):
    """A one-time cost (compiling, autotuning) lands in first_call_ms, not in the samples."""
    backend = get_backend("selective_scan", "torch")
    cold = dataclasses.replace(backend)
    calls = []

    def fn(**kwargs):
        if not calls:
            time.sleep(0.3)
        calls.append(1)
        return backend.fn(**kwargs)

    cold.__dict__["fn"] = fn
    monkeypatch.setattr("ssmbench.harness.execute.get_backend", lambda op, name: cold)
    case = Case(suite="t", op="selective_scan", backend="torch", budget_s=0.05,
                params=get_op("selective_scan").default_problem.replace(seqlen=16).params())
    (row,) = execute(case)
    assert row["status"] == "ok", row["reason"]
    assert row["first_call_ms"] >= 300
    assert max(row["samples_ms"]) < 300


def test_cases_of_one_problem_draw_inputs_and_reference_once(monkeypatch):
    """Backends of one long problem, checked at a shorter length, share its inputs and the
    reference: each is drawn once, not once per backend."""
    op = get_op("selective_scan")
    drawn, referenced = [], []
    reference = execute_module.reference_outputs
    counted = dataclasses.replace(op, make_inputs=lambda p, g: drawn.append(p.seqlen) or op.make_inputs(p, g))
    monkeypatch.setattr(execute_module, "get_op", lambda name: counted)
    monkeypatch.setattr(execute_module, "reference_outputs",
                        lambda p, i: referenced.append(p.seqlen) or reference(p, i))
    params = op.default_problem.replace(seqlen=128).params()
    for backend in ("torch", "torch_fast", "torch"):
        (row,) = execute(Case(suite="t", op="selective_scan", backend=backend, params=params,
                              check_params={"seqlen": 32}, budget_s=0.02))
        assert row["status"] == "ok" and row["checked_at"] == "seqlen=32", row["reason"]
    assert sorted(drawn) == [32, 128] and referenced == [32]


def test_resume_after_kill_has_every_case_once(tmp_path):
    cases = [custom("sleep", seconds=0.5, tag=i) for i in range(6)]
    run = new_run(tmp_path, cases)
    proc = run_in_background(run, rows=2)
    rows_file = run.path / "rows.jsonl"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    before = len(rows_file.read_text().splitlines())
    assert 2 <= before < len(cases)
    summary = run_cases(Run(run.path), progress=False)
    assert summary.skipped_done == before
    rows = load_runs(run.path)
    assert sorted(rows["tag"]) == list(range(6))
    assert rows["case_id"].is_unique


def test_resume_refuses_a_run_of_another_machine(tmp_path):
    from ssmbench.harness.session import resume_run

    run = new_run(tmp_path, [custom("sleep", seconds=0.0)])
    with pytest.raises(ResultsError, match="cpu_model: 'test' there"):
        resume_run(str(run.path), progress=False)
    assert not (run.path / "rows.jsonl").exists() or not (run.path / "rows.jsonl").read_text()


def test_an_interrupt_stops_the_run_at_once_and_keeps_what_is_finished(tmp_path):
    """SIGINT to the process group (Ctrl-C, the device check's step limits) while a long case
    runs: the run stops within seconds, without the worker's traceback, and keeps the rows of the
    cases finished before it."""
    cases = [custom("sleep", seconds=0.0, tag=0), custom("sleep", seconds=60.0, tag=1),
             custom("sleep", seconds=0.0, tag=2)]
    run = new_run(tmp_path, cases)
    proc = run_in_background(run, rows=1, stderr=subprocess.PIPE, text=True)
    time.sleep(1.0)  # the long case is in flight
    interrupted = time.time()
    os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    assert time.time() - interrupted < 5
    assert proc.returncode != 0 and err.count("KeyboardInterrupt") == 1 and "harness_fixtures" not in err
    assert list(load_runs(run.path)["tag"]) == [0]
