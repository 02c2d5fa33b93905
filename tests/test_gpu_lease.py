"""The gpu-lease presets and their one-command run, as far as a CPU shows them: the case lists
(no GPU needed to list cases), the third-party kernels among their backends, the dry run's plan
and estimate, and a suite stopped at its time limit."""
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ssmbench.harness import gpu_lease
from ssmbench.impls import backends, get_backend, get_op
from ssmbench.suites import get_suite

ROOT = Path(__file__).resolve().parents[1]
CLAIMS = ("scaling", "ssd_speedup", "generation", "jamba_throughput", "jamba_cache", "training")


@pytest.mark.parametrize("name", CLAIMS)
def test_every_claim_suite_has_a_gpu_lease_preset_of_valid_gpu_cases(name):
    assert name in gpu_lease.lease_suites()
    cases = get_suite(name).cases(gpu_lease.PRESET)
    assert cases
    assert len({c.case_id for c in cases}) == len(cases)
    for case in cases:
        if case.op:
            assert case.backend in backends(case.op)
            problem = get_op(case.op).problem_type.from_params(case.params)
            assert problem.device == "cuda"
        elif name != "jamba_cache":  # its full-width caches are counted on the meta device
            assert case.params["device"] == "cuda", case


@pytest.mark.parametrize("name", ["scaling", "ssd_speedup"])
def test_kernel_suites_time_mamba_ssm_next_to_the_others(name):
    cases = get_suite(name).cases(gpu_lease.PRESET)
    for op in ("selective_scan", "ssd"):
        timed = {c.backend for c in cases if c.op == op}
        assert "mamba_ssm" in timed and "triton" in timed, (op, timed)
        lengths = {c.params["seqlen"] for c in cases if c.op == op and c.backend == "mamba_ssm"}
        assert len(lengths) >= 3  # enough for an exponent with an interval


@pytest.mark.parametrize("name", ["generation", "jamba_throughput"])
def test_model_suites_let_auto_choose_the_third_party_kernels(name):
    # The models' ops run under backend="auto": where mamba-ssm and causal-conv1d were built they
    # rank first, so the Mamba layers run on them.
    cases = get_suite(name).cases(gpu_lease.PRESET)
    assert {c.params.get("backends", "auto") for c in cases} == {"auto"}
    for op, package in (("selective_scan", "mamba_ssm"), ("selective_state_update", "mamba_ssm"),
                        ("causal_conv1d", "causal_conv1d"), ("causal_conv1d_update", "causal_conv1d")):
        assert next(iter(backends(op))) == package


def test_training_steps_its_mamba_models_through_kernels_that_need_no_build():
    # Our Triton scan and SSD recompute their states in the backward pass, as mamba-ssm's kernels
    # do, and a lease rarely finishes building mamba-ssm.
    cases = get_suite("training").cases(gpu_lease.PRESET)
    mamba = {c.params["backends"] for c in cases if c.params["model"].startswith("Mamba")}
    assert mamba == {"selective_scan=triton,causal_conv1d=torch", "ssd=triton,causal_conv1d=torch"}
    for spec in mamba:
        for op, name in (pair.split("=") for pair in spec.split(",")):
            assert get_backend(op, name).has_backward


def test_generation_lease_uses_the_smallest_published_sizes():
    models = {c.params["model"] for c in get_suite("generation").cases(gpu_lease.PRESET)}
    assert models == {"Mamba-130M", "Transformer-125M"}


def test_dry_run_lists_each_suite_its_cases_and_the_estimate(capsys):
    assert gpu_lease.main(["--dry-run", "--no-build", "--budget", "300"]) == 0
    out = capsys.readouterr().out
    for name in CLAIMS:
        count = len(get_suite(name).cases(gpu_lease.PRESET))
        [line] = [line for line in out.splitlines() if line.startswith(name + " ")]
        assert line.split()[1] == str(count), line
    assert "suites: estimate" in out and "(budget 300 s)" in out
    plans = gpu_lease.plan(300)
    assert sum(p.limit_s for p in plans) <= 300 + gpu_lease.MIN_LIMIT_S * len(plans)
    assert all(p.limit_s >= gpu_lease.MIN_LIMIT_S for p in plans)


def test_the_estimate_counts_budgets_first_calls_and_not_absent_packages():
    cases = [c for c in get_suite("scaling").cases(gpu_lease.PRESET) if c.op == "ssd"]
    mamba = [c for c in cases if c.backend == "mamba_ssm"]
    first = backends("ssd")["mamba_ssm"].first_call_s
    assert gpu_lease.estimate_s("scaling", mamba) == pytest.approx(
        first + sum(c.budget_s + gpu_lease.CASE_S for c in mamba))
    absent = [c for c in cases if c.backend == "fla"]
    if gpu_lease._absent(backends("ssd")["fla"]):
        assert gpu_lease.estimate_s("scaling", absent) == 0


def test_the_shell_script_dry_run_and_a_bad_suite_name():
    out = subprocess.run(["bash", str(ROOT / "scripts" / "gpu-lease.sh"), "--dry-run", "--no-build"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "scaling" in out.stdout and "worst case in all" in out.stdout
    bad = subprocess.run([sys.executable, "-m", "ssmbench.harness.gpu_lease", "--dry-run", "--suites", "nope"],
                         capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert bad.returncode == 2 and "--suites: nope" in bad.stderr


def test_a_suite_past_its_limit_is_stopped_and_the_next_one_goes_on(tmp_path):
    started = time.perf_counter()
    code, seconds = gpu_lease._run_limited([sys.executable, "-c", "import time; time.sleep(60)"], 1.0,
                                           {}, tmp_path / "log")
    assert code is None and seconds < 30 and time.perf_counter() - started < 30
    code, _ = gpu_lease._run_limited([sys.executable, "-c", "print('ok')"], 30.0, {}, tmp_path / "log")
    assert code == 0 and (tmp_path / "log").read_text().strip() == "ok"


def test_gpu_folder_names():
    assert gpu_lease.gpu_folder_name("NVIDIA H200") == "nvidia-h200"
    assert gpu_lease.gpu_folder_name("NVIDIA H100 80GB HBM3") == "nvidia-h100-80gb-hbm3"


def test_a_suite_that_cannot_start_is_reported_and_the_run_goes_on(tmp_path, monkeypatch):
    # The lease's own process believes in a GPU; the suite's process sees none and refuses, with
    # its reason in lease.md.
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "Fake GPU 9")
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: (9, 0))
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    assert gpu_lease.main(["--no-build", "--suites", "jamba_cache", "--budget", "60", "--out", str(tmp_path)]) == 0
    lease = (tmp_path / "fake-gpu-9" / "lease.md").read_text()
    for name in ("jamba_cache",):
        [row] = [line for line in lease.splitlines() if line.startswith(f"| {name} |")]
        assert "exit 2" in row and "CUDA GPU" in row, row
