"""Runner, store, resume and CLI behaviour on real worker processes."""
import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from harness_fixtures import custom, new_run, run_in_background

import ssmbench
from ssmbench.harness import cli
from ssmbench.harness import execute as execute_module
from ssmbench.harness.check import check
from ssmbench.harness.execute import execute
from ssmbench.harness.runner import run_cases
from ssmbench.harness.stats import median_ci
from ssmbench.harness.store import ResultsError, Run, load_runs
from ssmbench.harness.timing import measure
from ssmbench.impls import OP_NAMES, BackendError, backends, get_backend, get_op
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


def test_wrong_backend_is_incorrect_and_not_timed(monkeypatch):
    backend = get_backend("selective_scan", "torch")
    bad = dataclasses.replace(backend)
    bad.__dict__["fn"] = lambda **kw: backend.fn(**kw) * 1.01
    monkeypatch.setattr("ssmbench.harness.execute.get_backend", lambda op, name: bad)
    case = Case(suite="t", op="selective_scan", backend="torch",
                params=get_op("selective_scan").default_problem.replace(seqlen=16).params())
    (row,) = execute(case)
    assert row["status"] == "incorrect"
    assert "exceeds tolerance" in row["reason"]
    assert "median_ms" not in row


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


def perturbed(backend, scale):
    """The backend with every output tensor moved by ``scale`` of its norm (random direction)."""
    copy = dataclasses.replace(backend)

    def fn(**kwargs):
        result = backend.fn(**kwargs)
        outs = result if isinstance(result, tuple) else (result,)
        moved = []
        for t in outs:
            noise = torch.randn_like(t, dtype=torch.float64)
            moved.append((t.double() + scale * t.double().norm() * noise / noise.norm()).to(t.dtype))
        return tuple(moved) if isinstance(result, tuple) else moved[0]

    copy.__dict__["fn"] = fn
    return copy


@pytest.mark.parametrize("op", OP_NAMES)
def test_check_fails_when_output_is_perturbed_by_1e3(op):
    spec = get_op(op)
    for backend in backends(op).values():
        if backend.kind == "reference" or backend.unavailable_reasons():
            continue
        problem = spec.test_problems()[0]
        if backend.unsupported_reasons(problem):
            continue
        assert check(backend, problem).passed
        assert not check(perturbed(backend, 1e-3), problem).passed, backend.name


def test_unwritten_output_is_caught():
    backend = get_backend("selective_scan", "torch")
    lazy = dataclasses.replace(backend)
    lazy.__dict__["fn"] = lambda u, **kw: torch.empty_like(u)
    assert not check(lazy, get_op("selective_scan").test_problems()[0]).passed


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


def test_store_errors_name_the_file_and_field(tmp_path):
    run = new_run(tmp_path, [])
    run.append({"case_id": "x", "suite": "s", "status": "ok", "reason": ""})
    with open(run.path / "rows.jsonl", "a") as f:
        f.write(json.dumps({"schema_version": 1, "run_id": run.run_id, "case_id": "y", "suite": "s",
                            "status": "fast", "reason": ""}) + "\n")
    with pytest.raises(ResultsError, match=r"rows.jsonl, line 2: field 'status'"):
        load_runs(run.path)
    manifest = json.loads((run.path / "manifest.json").read_text())
    del manifest["fingerprint"]
    (run.path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ResultsError, match=r"manifest.json: manifest lacks field 'fingerprint'"):
        load_runs(run.path)
    (run.path / "manifest.json").write_text("{")
    with pytest.raises(ResultsError, match="not valid JSON"):
        load_runs(run.path)
    with pytest.raises(ResultsError, match="neither a run folder"):
        load_runs(tmp_path / "missing")


def test_truncated_last_row_from_a_crash_is_ignored(tmp_path):
    run = new_run(tmp_path, [])
    run.append({"case_id": "x", "suite": "s", "status": "ok", "reason": ""})
    with open(run.path / "rows.jsonl", "a") as f:
        f.write('{"schema_version": 1, "run_')
    assert list(load_runs(run.path)["case_id"]) == ["x"]


def test_explicit_backend_never_falls_back():
    kw = get_op("selective_scan").make_inputs(get_op("selective_scan").default_problem,
                                              torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="unknown backend of selective_scan 'nope'; known: .*torch"):
        ssmbench.selective_scan(**kw, backend="nope")
    unavailable = [b for b in backends("selective_scan").values() if b.unavailable_reasons()]
    for backend in unavailable:
        with pytest.raises(BackendError, match=f"'{backend.name}' is unavailable"):
            ssmbench.selective_scan(**kw, backend=backend.name)
    ssmbench.selective_scan(**kw)
    assert ssmbench.last_auto_choice("selective_scan") in backends("selective_scan")


def test_bad_shapes_name_the_argument():
    op = get_op("selective_scan")
    kw = op.make_inputs(op.default_problem, torch.Generator().manual_seed(0))
    with pytest.raises(ValueError,
                       match=r"argument 'delta' must have shape \(b d l\) = \(1, 64, 128\), got \(1, 64, 127\)"):
        ssmbench.selective_scan(**{**kw, "delta": kw["delta"][..., :-1]})
    with pytest.raises(ValueError, match="argument 'A' must have shape"):
        ssmbench.selective_scan(**{**kw, "A": kw["A"][None]})
    with pytest.raises(ValueError, match="argument 'z' has dtype bfloat16, expected u's float32"):
        ssmbench.selective_scan(**{**kw, "z": kw["z"].bfloat16()})


def test_cli_errors_name_what_is_wrong(capsys, tmp_path):
    assert cli.main(["--results-dir", str(tmp_path), "compare", "--op", "scan"]) == 2
    assert "unknown op 'scan'; known:" in capsys.readouterr().err
    assert cli.main(["--results-dir", str(tmp_path), "compare", "--op", "selective_scan", "--backends", "x"]) == 2
    assert "unknown backend of selective_scan 'x'" in capsys.readouterr().err
    assert cli.main(["--results-dir", str(tmp_path), "compare", "--op", "selective_scan", "--shape", "dimm=3"]) == 2
    assert "unknown parameter(s) dimm" in capsys.readouterr().err
    assert cli.main(["--results-dir", str(tmp_path), "report", "nope"]) == 2
    assert "neither a run folder nor a run id" in capsys.readouterr().err
    run = ["--results-dir", str(tmp_path), "run", "--suite", "kernels"]
    assert cli.main([*run, "--ops", "scan"]) == 2
    assert "--ops: unknown scan; expected some of: attention," in capsys.readouterr().err
    assert cli.main([*run, "--backends", "torhc"]) == 2
    assert "--backends: unknown torhc; expected some of:" in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the answer on a machine without a GPU")
def test_a_gpu_preset_without_a_gpu_says_so(capsys, tmp_path):
    assert cli.main(["--results-dir", str(tmp_path), "run", "--suite", "kernels", "--preset", "gpu"]) == 2
    assert "--preset gpu of suite kernels runs on a CUDA GPU" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


def test_run_keeps_only_the_ops_and_backends_asked_for(capsys, tmp_path):
    assert cli.main(["--results-dir", str(tmp_path), "run", "--suite", "kernels", "--preset", "cpu-small",
                     "--ops", "causal_conv1d_update", "--backends", "torch", "--quiet"]) == 0
    rows = load_runs("latest", results_dir=tmp_path)
    assert set(zip(rows["op"], rows["backend"])) == {("causal_conv1d_update", "torch")}


def test_allocator_setting_is_chosen_and_recorded(capsys, tmp_path, monkeypatch):
    monkeypatch.delenv("THP_MEM_ALLOC_ENABLE", raising=False)
    code = cli.main(["--results-dir", str(tmp_path), "--thp", "on", "compare", "--op", "causal_conv1d",
                     "--backends", "torch", "--shape", "dim=8,seqlen=16", "--budget", "0.05", "--quiet"])
    monkeypatch.delenv("THP_MEM_ALLOC_ENABLE")
    assert code == 0
    manifest = json.loads(next(tmp_path.glob("*/manifest.json")).read_text())
    assert manifest["environment"]["settings"]["THP_MEM_ALLOC_ENABLE"] == "1"


def test_cli_compare_prints_table_and_stores_run(capsys, tmp_path):
    code = cli.main(["--results-dir", str(tmp_path), "compare", "--op", "selective_scan", "--backends", "torch",
                     "--shape", "dim=16,seqlen=32", "--budget", "0.1", "--quiet"])
    out = capsys.readouterr().out
    assert code == 0
    assert "| torch" in out and "ok" in out
    rows = load_runs("latest", results_dir=tmp_path)
    assert list(rows["backend"]) == ["torch"] and rows["dim"].iloc[0] == 16


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


def _device_check(**env):
    script = Path(__file__).parents[1] / "scripts" / "device-check.sh"
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
    return subprocess.run(["bash", str(script)], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PATH": path, **env})


def test_device_check_names_an_unknown_step():
    done = _device_check(STEPS="tests bnech")
    assert done.returncode == 2 and "STEPS: unknown step 'bnech'; expected tests and/or bench" in done.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the answer on a machine without a GPU")
def test_device_check_says_it_needs_a_gpu(tmp_path):
    done = _device_check(OUT=str(tmp_path))
    assert done.returncode == 2 and "torch sees no CUDA GPU on this machine" in done.stderr
    assert not list(tmp_path.iterdir())


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


@pytest.mark.parametrize("argv, flag", [
    (["compare", "--op", "selective_scan", "--threads", "0"], "--threads"),
    (["compare", "--op", "selective_scan", "--threads", "-1"], "--threads"),
    (["compare", "--op", "selective_scan", "--budget", "-1"], "--budget"),
    (["compare", "--op", "selective_scan", "--timeout", "-1"], "--timeout"),
    (["compare", "--op", "selective_scan", "--timeout", "nan"], "--timeout"),
    (["run", "--suite", "kernels", "--threads", "two"], "--threads"),
])
def test_cli_refuses_sizes_that_are_not_positive(capsys, tmp_path, argv, flag):
    with pytest.raises(SystemExit) as stop:
        cli.main(["--results-dir", str(tmp_path), *argv])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {flag}: expected a positive" in err
    assert "Traceback" not in err
    assert not any(tmp_path.iterdir())  # refused before a run folder was made
