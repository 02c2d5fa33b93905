"""The command line (harness/cli.py and its commands): errors that name what is wrong, runs
that keep only what was asked for, the allocator setting, compare; the device-check script."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ssmbench.harness import cli
from ssmbench.harness.store import load_runs


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


def test_list_shows_each_backend_with_its_backward_and_status(capsys):
    assert cli.main(["list", "--op", "selective_scan"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].split() == ["op", "backend", "kind", "devices", "backward", "status", "reason", "/",
                                           "description"]
    fast = next(line for line in out.splitlines() if " torch_fast " in line).split()
    assert fast[4] == "yes" and fast[5] == "ok"
    rows = [line.split() for line in out.splitlines() if line.startswith("selective_scan ")]
    assert {r[1]: r[4] for r in rows}["cuda"] == "no"  # our CUDA scan is forward only
