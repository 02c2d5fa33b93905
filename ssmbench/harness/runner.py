"""Runs cases one at a time in a worker process, writing each row as soon as it exists.

The worker is reused between cases and replaced when a case times out or kills it (a crash,
or the kernel's out-of-memory killer), so one bad case costs only itself. ``resume`` finishes
a run folder, skipping the cases it already holds; the case that was in flight runs again.
"""
from __future__ import annotations

import multiprocessing as mp
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator

from .case import Case
from .env import SETTINGS
from .store import Run

_CONTEXT = mp.get_context("spawn")


def _worker(conn, threads: int | None, env: dict[str, str | None]) -> None:
    # An interrupt (Ctrl-C, or `timeout -s INT` on the process group) is the parent's to handle:
    # it stops the worker, and the case in flight is simply not recorded.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    for name, value in env.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
    import torch

    if threads:
        torch.set_num_threads(threads)
    from .env import environment, fingerprint_id
    from .execute import execute

    # Each row says what measured it: this process, as set up for the run (on a cluster, the
    # node may differ from the machine that started the run).
    measured_by = fingerprint_id(environment())
    while True:
        try:
            case = conn.recv()
        except EOFError:
            return
        if case is None:
            return
        conn.send([{**row, "fingerprint": measured_by} for row in execute(case)])


class Worker:
    def __init__(self, threads: int | None, env: dict[str, str]):
        self.threads, self.env = threads, env
        self.process = None
        self.conn = None

    def start(self) -> None:
        parent, child = _CONTEXT.Pipe()
        self.process = _CONTEXT.Process(target=_worker, args=(child, self.threads, self.env), daemon=True)
        self.process.start()
        child.close()
        self.conn = parent

    def run(self, case: Case) -> list[dict]:
        if self.process is None or not self.process.is_alive():
            self.start()
        oom_kills = oom_kill_count()
        self.conn.send(case)
        if self.conn.poll(case.timeout_s):
            try:
                return self.conn.recv()
            except EOFError:
                pass
        else:
            self.stop(kill=True)
            return [status_row(case, "timeout",
                               f"no result within the case's {case.timeout_s:g} s limit; worker killed")]
        # The worker died while running the case.
        self.process.join(5)
        code = self.process.exitcode
        self.process = None
        return [_death_row(case, code, oom_kills, oom_kill_count())]

    def stop(self, kill: bool = False) -> None:
        if self.process is None:
            return
        if kill:
            self.process.kill()
        else:
            try:
                self.conn.send(None)
            except (BrokenPipeError, OSError):
                pass
        self.process.join(10)
        if self.process.is_alive():
            self.process.kill()
        self.process = None


def oom_kill_count() -> tuple[str, int] | None:
    """(where, count) of the kernel's out-of-memory kills in this process's memory cgroup (v2
    memory.events or v1 memory.oom_control), else machine-wide (/proc/vmstat); None where no
    such record can be read."""
    try:
        groups = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        groups = []
    candidates = []
    for line in groups:
        _, controllers, where = line.split(":", 2)
        if controllers == "":
            candidates.append(Path("/sys/fs/cgroup", where.lstrip("/"), "memory.events"))
        elif "memory" in controllers.split(","):
            candidates.append(Path("/sys/fs/cgroup/memory", where.lstrip("/"), "memory.oom_control"))
    for file in [*candidates, Path("/proc/vmstat")]:
        try:
            for line in file.read_text().splitlines():
                key, _, value = line.partition(" ")
                if key == "oom_kill":
                    return str(file), int(value)
        except (OSError, ValueError):
            continue
    return None


def _death_row(case: Case, code: int | None, before, after) -> dict:
    """The row of a case whose worker died: ``oom`` only where the kernel counted an
    out-of-memory kill while the case ran, else ``failed`` with the signal or exit code."""
    if code is None or code >= 0:
        return status_row(case, "failed", f"worker process died (exit code {code})")
    name = signal.Signals(-code).name
    if before and after and after[1] > before[1]:
        return status_row(case, "oom", f"worker killed by {name}: the kernel's out-of-memory killer "
                                 f"(oom_kill {before[1]} -> {after[1]} in {after[0]})")
    record = (f"no out-of-memory kill recorded in {after[0]}" if after
              else "the kernel's out-of-memory record could not be read")
    return status_row(case, "failed", f"worker killed by signal {name} ({record})")


def status_row(case: Case, status: str, reason: str) -> dict:
    from .execute import base_row

    return {**base_row(case, case.backend or "+".join(case.backends)), "status": status, "reason": reason}


@dataclass
class Summary:
    run_path: Path
    counts: dict[str, int] = field(default_factory=dict)
    skipped_done: int = 0

    def line(self) -> str:
        parts = ", ".join(f"{n} {s}" for s, n in sorted(self.counts.items()))
        done = f"; {self.skipped_done} already done" if self.skipped_done else ""
        return f"{self.run_path}: {parts or 'no cases run'}{done}"


def worker_env() -> dict[str, str | None]:
    """The settings a worker takes from the process that starts the run, wherever the worker runs:
    the speed-changing variables that are set, and those that are not (None: unset there too)."""
    env: dict[str, str | None] = {name: None for name in SETTINGS}
    env.update({k: v for k, v in os.environ.items() if k.startswith(("TRITON_", "THP_", "OMP_", "CUDA_", "PYTORCH_"))})
    return env


def run_stream(cases: Iterable[Case], threads: int | None, env: dict[str, str | None]
               ) -> Iterator[tuple[Case, list[dict]]]:
    """(case, its rows) for each case in turn, from one worker process: the loop every executor
    runs, here or on a cluster's node."""
    worker = Worker(threads, env)
    try:
        for case in cases:
            t0 = time.perf_counter()
            rows = worker.run(case)
            for row in rows:
                row.setdefault("elapsed_s", time.perf_counter() - t0)
            yield case, rows
    except BaseException:
        # An interrupt, or the consumer gone: the worker may be deep in a long case, not waited for.
        worker.stop(kill=True)
        raise
    worker.stop()


def run_cases(run: Run, cases: Iterable[Case] | None = None, *, threads: int | None = None,
              progress: bool = True, on_row: Callable[[dict], None] | None = None,
              executor=None) -> Summary:
    """Run the cases of ``run`` (default: the ones stored in it) that it does not hold yet, on
    ``executor`` (default: one local worker). This process alone writes the run, whichever
    executor measures: rows come back to it and are appended as each case finishes."""
    from .executors import LocalExecutor

    cases = list(cases if cases is not None else run.cases())
    executor = executor or LocalExecutor()
    with run.writing(cases):
        # Decided under the lock, after the mending: what another writer or a crash left counts.
        done = run.done_case_ids()
        todo = [c for c in cases if c.case_id not in done]
        summary = Summary(run.path, skipped_done=len(cases) - len(todo))
        bar = _progress(len(todo), enabled=progress)
        stream = executor.run(todo, threads=threads, env=worker_env(), run_path=run.path)
        try:
            for case, rows in stream:
                run.append(*rows)
                for row in rows:
                    summary.counts[row["status"]] = summary.counts.get(row["status"], 0) + 1
                    if on_row:
                        on_row(row)
                bar.set_postfix_str(case.label()[:80], refresh=False)
                bar.update(1)
        finally:
            stream.close()  # on an interrupt too: the executor stops what it started
            bar.close()
    return summary


def _progress(total: int, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, disable=not enabled, file=sys.stderr, unit="case", dynamic_ncols=True,
                mininterval=1.0)
