"""The same cases on each executor (a local worker, a real local Ray, submitit's local jobs)
into one run folder; lost tasks and jobs, resumes across executors, and refusals up front."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from harness_fixtures import custom, new_run, wait_for_rows
from ssmbench.harness import cli
from ssmbench.harness.executors import LocalExecutor, StreamLost, gather, split
from ssmbench.harness.runner import run_cases
from ssmbench.harness.store import Run, load_runs

pytestmark = pytest.mark.slow
HERE = str(Path(__file__).parent)


def make(name):
    if name == "local":
        return LocalExecutor()
    if name == "ray":
        pytest.importorskip("ray", reason="the [ray] extra is not installed")
        from ssmbench.harness.executors.ray_tasks import RayExecutor

        return RayExecutor(streams=2, local_cpus=2)
    pytest.importorskip("submitit", reason="the [slurm] extra is not installed")
    from ssmbench.harness.executors.submitit_jobs import SubmititExecutor

    return SubmititExecutor(cluster="local", streams=2, poll_s=0.2)


@pytest.fixture(autouse=True)
def _fixtures_importable(monkeypatch):
    # Jobs and tasks start fresh interpreters: they find the test's fixtures as the user's code would.
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([HERE, os.environ.get("PYTHONPATH", "")]))


EXECUTORS = ["local", "ray", "submitit"]


def cases(n=4):
    return [custom("sleep", seconds=0.2, tag=i) for i in range(n)]


def test_streams_keep_neighbours_together_and_cover_every_case():
    items = list(range(7))
    assert split(items, 3) == [[0, 1, 2], [3, 4], [5, 6]]
    assert split(items, 10) == [[i] for i in items] and split(items[:0], 2) == []


def test_a_case_sent_but_lost_with_its_stream_is_run_again_and_only_the_killer_fails():
    # A worker that dies can take the rows it already sent with it (Ray's streaming generator
    # does, now and then): the first case not heard from is then not the one that killed it.
    todo = [custom("sleep", seconds=0.0, tag=i) for i in range(4)]
    killer = todo[1].case_id

    def follow(stream):
        if any(c.case_id == killer for c in stream):
            raise StreamLost("worker died")
        for case in stream:
            yield case, [{"tag": case.params["tag"], "status": "ok"}]

    rows = {case.params["tag"]: rows[0] for case, rows in gather([todo], follow)}
    assert sorted(rows) == [0, 1, 2, 3]
    assert {t: r["status"] for t, r in rows.items()} == {0: "ok", 1: "failed", 2: "ok", 3: "ok"}
    assert "the executor lost this case: worker died" in rows[1]["reason"]


@pytest.mark.parametrize("name", EXECUTORS)
def test_each_executor_gives_the_same_case_ids_all_ok(tmp_path, name, capsys):
    run = new_run(tmp_path, cases())
    started = time.perf_counter()
    summary = run_cases(run, executor=make(name), progress=False)
    wall = time.perf_counter() - started
    rows = load_runs(run.path)
    assert sorted(rows["case_id"]) == sorted(c.case_id for c in cases())
    assert summary.counts == {"ok": 4} and set(rows["status"]) == {"ok"}
    assert rows["fingerprint"].notna().all()  # each row names what measured it
    with capsys.disabled():
        print(f"\n{name}: {len(rows)} rows, statuses {dict(rows['status'].value_counts())}, {wall:.1f} s")


def test_a_suite_preset_on_each_executor_from_the_command_line_gives_the_local_rows(tmp_path):
    make("ray"), make("submitit")  # both must be installed
    flags = {"local": [], "ray": ["--executor", "ray"], "submitit": ["--executor", "submitit", "--cluster", "local"]}
    by_executor = {}
    for name, extra in flags.items():
        argv = ["--results-dir", str(tmp_path / name), "run", "--suite", "jamba_cache", "--preset", "cpu-small",
                "--quiet", *extra]
        assert cli.main(argv) == 0, name
        rows = load_runs(next((tmp_path / name).iterdir()))
        by_executor[name] = rows.set_index("case_id").sort_index()
    local = by_executor["local"]
    assert len(local) > 10 and set(local["status"]) == {"ok"}
    for name in ("ray", "submitit"):
        rows = by_executor[name]
        assert list(rows.index) == list(local.index), name
        assert (rows["status"] == "ok").all(), name
        # What the workers measured (bytes each cache allocated) is the same wherever they ran.
        assert rows["measured_bytes"].notna().any(), name
        assert (rows["measured_bytes"].fillna(-1) == local["measured_bytes"].fillna(-1)).all(), name


@pytest.mark.parametrize("name", ["ray", "submitit"])
def test_a_lost_task_or_job_is_a_failed_row_and_the_sweep_goes_on(tmp_path, name):
    todo = [custom("sleep", seconds=0.0, tag=0), custom("kill_parent", tag=1), custom("sleep", seconds=0.0, tag=2),
            custom("sleep", seconds=0.0, tag=3)]
    run = new_run(tmp_path, todo)
    executor = make(name)
    executor.streams = 1  # the lost case's neighbours are in its stream: they must run all the same
    run_cases(run, executor=executor, progress=False)
    rows = load_runs(run.path).set_index("tag").sort_index()
    assert list(rows["status"]) == ["ok", "failed", "ok", "ok"]
    assert "the executor lost this case" in rows.loc[1, "reason"]
    assert rows.index.is_unique


def _background(run_path, executor):
    code = (f"import sys; sys.path.insert(0, {HERE!r});"
            f"from ssmbench.harness.store import Run; from ssmbench.harness.runner import run_cases;"
            f"from test_executors import make; "
            f"run_cases(Run({str(run_path)!r}), executor=make({executor!r}), progress=False)")
    return subprocess.Popen([sys.executable, "-c", code], start_new_session=True)


@pytest.mark.parametrize("first, then", [("ray", "local"), ("submitit", "local"), ("local", "ray")])
def test_resume_on_another_executor_after_the_run_was_killed(tmp_path, first, then):
    make(first), make(then)  # both must be installed
    run = new_run(tmp_path, [custom("sleep", seconds=1.0, tag=i) for i in range(6)])
    proc = _background(run.path, first)
    wait_for_rows(run.path, 1, seconds=180)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    before = len(load_runs(run.path))
    summary = run_cases(Run(run.path), executor=make(then), progress=False)
    rows = load_runs(run.path)
    assert summary.skipped_done == before >= 1
    assert sorted(rows["tag"]) == list(range(6)) and rows["case_id"].is_unique


def test_missing_slurm_and_an_unreachable_ray_are_one_line_before_any_case(tmp_path, capsys):
    pytest.importorskip("submitit", reason="the [slurm] extra is not installed")
    pytest.importorskip("ray", reason="the [ray] extra is not installed")
    for argv, said in [(["--executor", "submitit", "--cluster", "slurm"], "--cluster slurm: sbatch is not on PATH"),
                       (["--executor", "ray", "--ray-address", "127.0.0.1:1"], "--executor ray: no Ray cluster"),
                       (["--executor", "ray", "--ray-address", "auto"], "no Ray cluster could be reached at auto")]:
        code = cli.main(["--results-dir", str(tmp_path), "run", "--suite", "kernels", "--quiet", *argv])
        err = capsys.readouterr().err
        assert code == 2 and said in err and len(err.strip().splitlines()) == 1, err
        assert not list(tmp_path.iterdir())
