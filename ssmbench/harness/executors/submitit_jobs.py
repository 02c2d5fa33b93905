"""Cases as SLURM jobs through submitit (or submitit's local processes): a job array of case
streams, each job running the local executor's worker loop and appending each case's rows to a
file of its own in the run folder, which this process follows and merges into the run. A
cluster's nodes see the run folder on the shared file system that SLURM sites have; the job
logs are kept beside it (``<run>/submitit``)."""
from __future__ import annotations

import json
import shutil
import time
import uuid
from pathlib import Path
from typing import Iterator, Sequence

from ..case import Case
from ..store import JOB_LOGS, append_synced, json_line
from . import Rows, StreamLost, gather, split


def _file_stream(cases: list[Case], threads: int | None, env: dict, out: str) -> int:
    from ..runner import run_stream

    done = 0
    for case, rows in run_stream(cases, threads, env):
        append_synced(Path(out), json_line({"case_id": case.case_id, "rows": rows}).encode())
        done += 1
    return done


def _new_records(file: Path, offset: int) -> tuple[int, list[dict]]:
    """The whole lines past ``offset`` (a line still being written waits for the next look)."""
    try:
        with open(file, "rb") as f:
            f.seek(offset)
            data = f.read()
    except FileNotFoundError:
        return offset, []
    end = data.rfind(b"\n") + 1
    return offset + end, [json.loads(line) for line in data[:end].splitlines() if line.strip()]


class SubmititExecutor:
    """``cluster``: "slurm", or "local" (submitit's local processes, for trying a setup out).
    ``parameters``: submitit's own (timeout_min, slurm_partition, gpus_per_node, ...)."""
    name = "submitit"

    def __init__(self, cluster: str = "slurm", streams: int | None = None, poll_s: float = 0.5, **parameters):
        self.cluster, self.streams, self.poll_s = cluster, streams, poll_s
        self.parameters = {k: v for k, v in parameters.items() if v is not None}

    def connect(self) -> None:
        """Say in one line, before any case runs, why jobs cannot be submitted here."""
        try:
            import submitit  # noqa: F401
        except ImportError:
            raise ValueError("--executor submitit needs the submitit package: pip install 'ssmbench[slurm]'") from None
        if self.cluster == "slurm" and shutil.which("sbatch") is None:
            raise ValueError("--cluster slurm: sbatch is not on PATH, so SLURM is not installed here "
                             "(--cluster local runs the jobs as processes on this machine)")

    def run(self, cases: Sequence[Case], *, threads: int | None, env: dict, run_path: Path) -> Iterator[Rows]:
        import submitit

        self.connect()
        folder = Path(run_path) / JOB_LOGS
        executor = submitit.AutoExecutor(folder=folder, cluster=self.cluster)
        gpus = 1 if any(c.params.get("device") == "cuda" for c in cases) else 0
        executor.update_parameters(**{"cpus_per_task": threads or 1, "timeout_min": 60,
                                      **({"gpus_per_node": gpus} if gpus else {}), **self.parameters})
        streams = split(cases, self.streams or 2)
        outs = [folder / f"stream-{uuid.uuid4().hex[:8]}.jsonl" for _ in streams]
        with executor.batch():  # one job array
            jobs = [executor.submit(_file_stream, s, threads, env, str(o)) for s, o in zip(streams, outs)]
        submitted = {id(s): (job, out) for s, job, out in zip(streams, jobs, outs)}
        running = list(jobs)

        def follow(stream: list[Case]) -> Iterator[Rows]:
            if id(stream) in submitted:
                job, out = submitted.pop(id(stream))
            else:  # what a lost job left, as a job of its own
                out = folder / f"stream-{uuid.uuid4().hex[:8]}.jsonl"
                job = executor.submit(_file_stream, stream, threads, env, str(out))
                running.append(job)
            by_id = {c.case_id: c for c in stream}
            offset = 0
            while True:
                finished = job.done()
                offset, records = _new_records(out, offset)
                for record in records:
                    yield by_id[record["case_id"]], record["rows"]
                if finished:
                    error = job.exception()
                    if error is not None:
                        first = str(error).strip().splitlines()[-1] if str(error).strip() else type(error).__name__
                        raise StreamLost(f"job {job.job_id} ended {job.state}: {first}")
                    return
                time.sleep(self.poll_s)

        try:
            yield from gather(streams, follow)
        finally:
            for job in running:
                if not job.done():
                    job.cancel(check=False)
