"""The store and the runner under faults: kills, interrupts, torn lines, a full disk, a second
writer, a corrupt file. After each, a resume finishes the run with every case exactly once."""
import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from harness_fixtures import custom, new_run, run_in_background, wait_for_rows
from ssmbench.harness import store
from ssmbench.harness.env import environment, fingerprint_id
from ssmbench.harness.runner import run_cases
from ssmbench.harness.schema import COLUMNS, SchemaError, validate_row
from ssmbench.harness.store import ResultsError, Run, load_runs
from ssmbench.suites.base import Case

pytestmark = pytest.mark.slow


def sleeps(n, seconds=0.2):
    return [custom("sleep", seconds=seconds, tag=i) for i in range(n)]


def assert_complete(run, n):
    """Every case of the run has exactly one row, and the file reads back whole."""
    rows = load_runs(run.path)
    assert sorted(rows["tag"]) == list(range(n))
    assert rows["case_id"].is_unique
    assert run.path.joinpath("rows.jsonl").read_bytes().endswith(b"\n")


def ssmbench_cli(*args, **popen):
    """The real command line in a process of its own (SIGINT at its default, as in a terminal)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), *sys.path])}
    return subprocess.Popen([sys.executable, "-m", "ssmbench.harness.cli", *args], env=env,
                            start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL), **popen)


def real_run(tmp_path, cases, threads=None):
    """A run recorded with this machine's real environment (so that it can be resumed here),
    made in a process of its own so that its thread setting does not leak into the tests."""
    code = (f"import sys, torch; sys.path.insert(0, {str(Path(__file__).parent)!r});"
            f"from harness_fixtures import custom; from ssmbench.harness.store import Run;"
            f"from ssmbench.harness.env import environment, fingerprint_id;"
            f"{'torch.set_num_threads(%d);' % threads if threads else ''}"
            f"env = environment();"
            f"cases = [custom('sleep', seconds=s, tag=i) "
            f"for i, s in enumerate({[c.params['seconds'] for c in cases]})];"
            f"print(Run.create({str(tmp_path)!r}, 'real', cases, env, fingerprint_id(env), "
            f"suite='test', preset='p').path)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return Run(Path(out.stdout.strip()))


# --- kills and interrupts ---------------------------------------------------------------------

def test_kill_9_of_the_parent_then_resume(tmp_path):
    run = new_run(tmp_path, sleeps(6, 0.5))
    proc = run_in_background(run, rows=2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    summary = run_cases(Run(run.path), progress=False)
    assert summary.skipped_done >= 2 and sum(summary.counts.values()) == 6 - summary.skipped_done
    assert_complete(run, 6)


def _worker_pid(parent: int, seconds: float = 30) -> int:
    deadline = time.time() + seconds
    while time.time() < deadline:
        children = Path(f"/proc/{parent}/task/{parent}/children").read_text().split()
        for pid in children:
            if "spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace"):
                return int(pid)
        time.sleep(0.1)
    raise AssertionError(f"no worker process under pid {parent}")


def test_kill_9_of_a_worker_is_a_signal_not_oom_and_the_sweep_goes_on(tmp_path):
    cases = [custom("sleep", seconds=0.0, tag=0), custom("sleep", seconds=60.0, tag=1),
             custom("sleep", seconds=0.0, tag=2)]
    run = new_run(tmp_path, cases)
    proc = run_in_background(run, rows=1)
    time.sleep(1.0)  # the long case is in flight
    os.kill(_worker_pid(proc.pid), signal.SIGKILL)
    assert proc.wait(timeout=60) == 0
    rows = load_runs(run.path).set_index("tag")
    assert list(rows["status"]) == ["ok", "failed", "ok"]
    assert "worker killed by signal SIGKILL" in rows.loc[1, "reason"]
    assert "out-of-memory" in rows.loc[1, "reason"]  # says what the kernel's record showed
    assert run_cases(Run(run.path), progress=False).skipped_done == 3
    assert_complete(run, 3)


def test_an_oom_kill_counted_by_the_kernel_is_oom(tmp_path, monkeypatch):
    """The kernel's count of out-of-memory kills, read around the case, decides: a SIGKILL while
    it rises is oom. (The count is made to rise here: an oom kill cannot be ordered in a test.)"""
    from ssmbench.harness import runner

    counts = iter([("memory.events", 3), ("memory.events", 4)])
    monkeypatch.setattr(runner, "oom_kill_count", lambda: next(counts))
    run = new_run(tmp_path, [custom("kill_self", tag=0)])
    run_cases(run, progress=False)
    row = load_runs(run.path).iloc[0]
    assert row["status"] == "oom" and "oom_kill 3 -> 4" in row["reason"]


def test_the_kernels_oom_record_is_read_here():
    from ssmbench.harness.runner import oom_kill_count

    where, count = oom_kill_count()
    assert count >= 0 and Path(where).exists()


def test_sigint_then_resume(tmp_path):
    cases = [custom("sleep", seconds=0.0, tag=0), custom("sleep", seconds=60.0, tag=1),
             custom("sleep", seconds=0.0, tag=2)]
    run = new_run(tmp_path, cases)
    proc = run_in_background(run, rows=1, stderr=subprocess.DEVNULL)
    time.sleep(1.0)
    os.killpg(proc.pid, signal.SIGINT)
    proc.wait(timeout=30)
    assert list(load_runs(run.path)["tag"]) == [0]
    # The case in flight, and only it (and the one after), runs again.
    quick = [c if c.params["tag"] != 1 else custom("sleep", seconds=0.0, tag=1) for c in cases]
    summary = run_cases(Run(run.path), quick, progress=False)
    assert summary.skipped_done == 1 and summary.counts == {"ok": 2}
    assert_complete(run, 3)


def test_sigterm_stops_the_command_line_at_once_and_keeps_what_is_finished(tmp_path):
    run = real_run(tmp_path, [custom("sleep", seconds=0.0), custom("sleep", seconds=60.0)])
    proc = ssmbench_cli("run", "--resume", str(run.path), "--quiet")
    wait_for_rows(run.path, 1)
    time.sleep(1.0)
    sent = time.time()
    proc.terminate()
    _, err = proc.communicate(timeout=30)
    assert time.time() - sent < 5
    assert proc.returncode == 130 and "finished cases are stored" in err and "Traceback" not in err
    assert list(load_runs(run.path)["tag"]) == [0]


# --- torn files and partial cases -------------------------------------------------------------

def test_a_torn_last_line_is_dropped_with_a_warning_before_the_next_append(tmp_path, capfd):
    run = new_run(tmp_path, sleeps(4, 0.0))
    run_cases(run, sleeps(2, 0.0), progress=False)
    with open(run.rows_file, "a") as f:
        f.write('{"schema_version": 1, "run_id": "x", "case_')  # a write cut short
    assert len(load_runs(run.path)) == 2  # readable while torn: the tail is not a row yet
    summary = run_cases(Run(run.path), progress=False)
    err = capfd.readouterr().err
    assert "dropped a torn last line" in err and "rows.jsonl" in err
    assert summary.skipped_done == 2
    assert_complete(run, 4)


def test_an_interleaved_case_cut_off_between_its_rows_runs_again_whole(tmp_path, capfd):
    from ssmbench.impls import get_op

    problem = get_op("causal_conv1d").default_problem.replace(seqlen=32).params()
    case = Case(suite="test", op="causal_conv1d", backends=("torch", "reference"), params=problem,
                budget_s=0.05, min_repeats=3, max_repeats=3)
    run = new_run(tmp_path, [case])
    run_cases(run, progress=False)
    first, second = run.rows_file.read_text().splitlines()
    run.rows_file.write_text(first + "\n")  # the crash came between the two rows
    summary = run_cases(Run(run.path), progress=False)
    assert "dropped 1 rows of 1 interleaved case" in capfd.readouterr().err
    assert summary.skipped_done == 0
    rows = load_runs(run.path)
    assert sorted(rows["backend"]) == ["reference", "torch"] and rows["case_id"].is_unique


def test_a_corrupt_manifest_or_cases_file_names_the_file_line_and_field(tmp_path):
    run = new_run(tmp_path, sleeps(2))
    manifest = json.loads((run.path / "manifest.json").read_text())
    (run.path / "manifest.json").write_text(json.dumps({**manifest, "environment": "none"}))
    with pytest.raises(ResultsError, match=r"manifest.json: field 'environment' must be dict"):
        Run(run.path)
    (run.path / "manifest.json").write_text("[1, 2]")
    with pytest.raises(ResultsError, match=r"manifest.json: expected a JSON object, got list"):
        Run(run.path)
    (run.path / "manifest.json").write_text(json.dumps(manifest))
    cases = (run.path / "cases.jsonl").read_text().splitlines()
    record = json.loads(cases[1])
    (run.path / "cases.jsonl").write_text(cases[0] + "\n" + json.dumps({**record, "speed": 3}) + "\n")
    with pytest.raises(ResultsError, match=r"cases.jsonl, line 2: not a case .*speed"):
        Run(run.path).cases()
    (run.path / "cases.jsonl").write_text(cases[0] + "\n" + json.dumps({**record, "case_id": 7}) + "\n")
    with pytest.raises(ResultsError, match=r"cases.jsonl, line 2: field 'case_id' is 7"):
        Run(run.path).cases()
    (run.path / "cases.jsonl").write_text("\n".join(cases) + "\n")
    run_cases(Run(run.path), progress=False)
    assert_complete(run, 2)


@pytest.mark.parametrize("change, message", [
    ({"status": 1}, "field 'status' must be str, got 1"),
    ({"status": "failed", "reason": ""}, "field 'reason' is empty for a 'failed' row"),
    ({"case_id": 5}, "field 'case_id' must be str"),
    ({"median_ms": "fast"}, "field 'median_ms' must be int or float or null"),
    ({"samples_ms": [1.0, "x"]}, "field 'samples_ms' must hold floats"),
    ({"n_samples": True}, "field 'n_samples' must be int or null"),
    ({"extra": {"a": 1}}, "field 'extra' must be a JSON scalar"),
    ({"schema_version": 9}, "field 'schema_version' is 9"),
])
def test_every_field_is_typed_on_load_and_on_write(tmp_path, change, message):
    run = new_run(tmp_path, [])
    good = {"case_id": "x", "suite": "s", "status": "ok", "reason": "", "median_ms": 1, "samples_ms": [1.0]}
    run.append(good)
    with open(run.rows_file, "a") as f:
        f.write(json.dumps({"schema_version": 1, "run_id": run.run_id, **good, **change}) + "\n")
    with pytest.raises(ResultsError, match=rf"rows.jsonl, line 2: {message}"):
        load_runs(run.path)
    with pytest.raises(ResultsError, match=r"row being written"):
        run.append({**good, **change})


def test_the_schema_knows_the_columns_execute_writes(tmp_path):
    from ssmbench.impls import get_op

    problem = get_op("causal_conv1d").default_problem.replace(seqlen=32).params()
    run = new_run(tmp_path, [Case(suite="test", op="causal_conv1d", backend="torch", params=problem,
                                  budget_s=0.05, min_repeats=3, max_repeats=3)])
    run_cases(run, progress=False)
    row = run.rows()[0]
    measured = {k for k in row if k not in problem and k not in ("slept_s",)}
    assert measured <= set(COLUMNS), measured - set(COLUMNS)
    validate_row(row, "x")
    with pytest.raises(SchemaError):
        validate_row({**row, "gbps": "x"}, "x")


# --- a full disk --------------------------------------------------------------------------------

@pytest.fixture
def small_disk(tmp_path):
    """A 256 KiB tmpfs (root may mount one; elsewhere the test says why it cannot run)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip()}); "
                    f"test_a_writer_that_fails_keeps_every_row_before_it covers the same path")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def _fill(folder: Path) -> Path:
    filler = folder / "filler"
    with open(filler, "wb", buffering=0) as f:
        try:
            while True:
                f.write(b"\0" * 4096)
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
    return filler


def test_a_full_disk_stops_the_run_with_one_line_and_resume_finishes_it(small_disk):
    run = new_run(small_disk, sleeps(40, 0.0))
    run_cases(run, sleeps(2, 0.0), progress=False)
    filler = _fill(small_disk)
    with pytest.raises(ResultsError) as stopped:
        run_cases(Run(run.path), progress=False)
    message = str(stopped.value)
    assert "the disk is full" in message and "rows written before are kept" in message and "\n" not in message
    kept = len(load_runs(run.path))
    assert 2 <= kept < 40 and run.rows_file.read_bytes().endswith(b"\n")
    filler.unlink()
    assert run_cases(Run(run.path), progress=False).skipped_done == kept
    assert_complete(run, 40)


def test_a_disk_full_while_the_run_folder_is_made_leaves_no_run(small_disk):
    filler = _fill(small_disk)
    with pytest.raises(ResultsError, match="could not be written .*disk is full.*nothing is kept"):
        new_run(small_disk, sleeps(400, 0.0))
    assert [p.name for p in small_disk.iterdir()] == ["filler"]
    filler.unlink()


def test_a_writer_that_fails_keeps_every_row_before_it(tmp_path, monkeypatch):
    run = new_run(tmp_path, sleeps(3, 0.0))
    run_cases(run, sleeps(1, 0.0), progress=False)

    def half_then_full(fd, data):
        os.write(fd, data[: len(data) // 2])  # part of the line reaches the disk
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(store, "_write_synced", half_then_full)
    with pytest.raises(ResultsError, match=r"disk is full \(no space left on device\); the 1 rows written before"):
        run_cases(Run(run.path), progress=False)
    monkeypatch.undo()
    assert len(load_runs(run.path)) == 1 and run.rows_file.read_bytes().endswith(b"\n")
    run_cases(Run(run.path), progress=False)
    assert_complete(run, 3)


# --- two writers, and resume on this machine ------------------------------------------------------

def test_a_second_writer_is_refused_with_the_holders_pid(tmp_path):
    run = new_run(tmp_path, [custom("sleep", seconds=0.0, tag=0), custom("sleep", seconds=3.0, tag=1),
                             custom("sleep", seconds=0.0, tag=2)])
    proc = run_in_background(run, rows=1)
    with pytest.raises(ResultsError, match=rf"another ssmbench process \(pid {proc.pid}\) is writing this run"):
        run_cases(Run(run.path), progress=False)
    assert proc.wait(timeout=60) == 0
    assert run_cases(Run(run.path), progress=False).skipped_done == 3
    assert_complete(run, 3)


def test_a_lock_left_by_a_killed_writer_does_not_block_the_resume(tmp_path):
    run = new_run(tmp_path, sleeps(4, 0.5))
    proc = run_in_background(run, rows=1)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert (run.path / store.LOCK).exists()
    run_cases(Run(run.path), progress=False)
    assert_complete(run, 4)


def test_resume_of_a_run_with_its_own_thread_count(tmp_path):
    """A preset that sets threads records the environment after setting them; resume applies
    the run's count before comparing, so that this machine's run resumes here."""
    run = real_run(tmp_path, [custom("sleep", seconds=0.0), custom("sleep", seconds=0.0)], threads=1)
    assert run.manifest["environment"]["torch_threads"] == 1
    proc = ssmbench_cli("run", "--resume", str(run.path), "--quiet")
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert "2 ok" in out
    assert set(load_runs(run.path)["threads"]) == {1}


def test_resume_still_refuses_another_stack(tmp_path):
    env = environment()
    other = {**env, "packages": {**env["packages"], "torch": "0.0.1"}}
    run = Run.create(tmp_path, "x", sleeps(1), other, fingerprint_id(other), suite="test", preset="p")
    proc = ssmbench_cli("run", "--resume", str(run.path), "--quiet")
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 2 and "packages" in err and "Traceback" not in err


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
