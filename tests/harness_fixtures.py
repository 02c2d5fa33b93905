"""Custom-case functions the runner's worker process imports by name, and the helpers the tests
use to make runs of them (tests only)."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

FIXTURES = "harness_fixtures"


def new_run(tmp_path, cases):
    from ssmbench.harness.store import Run

    return Run.create(tmp_path, "test", cases, {"cpu_model": "test"}, "fp", suite="test", preset="none")


def custom(fn, **params):
    from ssmbench.suites.base import Case

    return Case(suite="test", fn=f"{FIXTURES}:{fn}", params=params, timeout_s=params.pop("timeout_s", 60))


def run_in_background(run, rows: int, **popen):
    """A process running ``run`` in a session of its own, returned once ``rows`` rows are stored.
    SIGINT is restored to its default in it, as in a terminal: a test started where SIGINT is
    ignored (a background job of a shell without job control) would hand that on, and the
    process would then never see the interrupt it is sent."""
    code = (f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r});"
            f"from ssmbench.harness.store import Run; from ssmbench.harness.runner import run_cases;"
            f"run_cases(Run({str(run.path)!r}), progress=False)")
    proc = subprocess.Popen([sys.executable, "-c", code], start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL), **popen)
    wait_for_rows(run.path, rows)
    return proc


def wait_for_rows(path, rows: int, seconds: float = 120) -> None:
    rows_file = Path(path) / "rows.jsonl"
    deadline = time.time() + seconds
    while time.time() < deadline and (not rows_file.exists() or len(rows_file.read_text().splitlines()) < rows):
        time.sleep(0.1)


def sleep(seconds: float, tag: int = 0) -> dict:
    time.sleep(seconds)
    return {"slept_s": seconds}


def crash(tag: int = 0) -> dict:
    os.kill(os.getpid(), signal.SIGSEGV)
    return {}


def raise_error(tag: int = 0) -> dict:
    raise RuntimeError("planted failure")


def kill_self(tag: int = 0) -> dict:
    os.kill(os.getpid(), signal.SIGKILL)
    return {}


def kill_parent(tag: int = 0) -> dict:
    """Kills the process that started this case's worker: on a cluster executor, its task or job."""
    os.kill(os.getppid(), signal.SIGKILL)
    time.sleep(30)
    return {}
