"""Where a run's cases are measured: here (:class:`LocalExecutor`), on a Ray cluster
(:mod:`.ray_tasks`) or as SLURM jobs through submitit (:mod:`.submitit_jobs`).

Every executor runs the same loop, :func:`ssmbench.harness.runner.run_stream`, over streams of
cases, and hands each case's rows back to the process that started the run, which alone writes
the run folder (one writer: the lock, the torn-line mending and the exactly-once rule stay in
one place, and a node needs no access to the results folder). A stream whose task or job is
lost has its case in flight run again alone (a loss can take rows already sent with it, so the
first case not heard from is not always the one that killed it); lost alone, that case is recorded
as ``failed`` with the reason. The rest of the stream is started again.
"""
from __future__ import annotations

import queue
import threading
from pathlib import Path
from typing import Callable, Iterator, Sequence

from ..case import Case
from ..runner import run_stream, status_row

Rows = tuple[Case, list[dict]]


class StreamLost(RuntimeError):
    """The task or job running a stream ended before the stream did; says why."""


class LocalExecutor:
    """One worker process on this machine, cases in order."""
    name = "local"

    def run(self, cases: Sequence[Case], *, threads: int | None, env: dict, run_path: Path) -> Iterator[Rows]:
        return run_stream(cases, threads, env)


def split(cases: Sequence[Case], streams: int) -> list[list[Case]]:
    """``streams`` runs of neighbouring cases (cases of one problem follow each other and share
    inputs inside a worker), as equal in length as can be."""
    streams = max(1, min(streams, len(cases)))
    size, extra = divmod(len(cases), streams)
    out, start = [], 0
    for i in range(streams):
        end = start + size + (i < extra)
        out.append(list(cases[start:end]))
        start = end
    return [s for s in out if s]


def gather(streams: list[list[Case]], follow: Callable[[list[Case]], Iterator[Rows]]) -> Iterator[Rows]:
    """The rows of every stream as they arrive, each stream followed in a thread of its own
    (``follow`` starts it remotely and yields its (case, rows)). A lost stream: its case in
    flight is started again as a stream of its own, or, when it was alone, becomes a failed row
    with the reason; its remaining cases become a new stream."""
    arrived: queue.Queue = queue.Queue()
    pending = [0]
    count = threading.Lock()

    def start(stream: list[Case]) -> None:
        with count:
            pending[0] += 1
        threading.Thread(target=pump, args=(stream,), daemon=True).start()

    def pump(stream: list[Case]) -> None:
        reported = 0
        try:
            try:
                for case, rows in follow(stream):
                    arrived.put((case, rows))
                    reported += 1
                if reported < len(stream):
                    raise StreamLost(f"it ended after {reported} of its {len(stream)} cases")
            except Exception as exc:  # noqa: BLE001 - a lost task or job is recorded, the sweep goes on
                lost, rest = stream[reported], stream[reported + 1:]
                if len(stream) == 1:
                    arrived.put((lost, [status_row(lost, "failed", f"the executor lost this case: {exc}")]))
                else:
                    start([lost])
                if rest:
                    start(rest)
        finally:
            arrived.put(None)

    for stream in streams:
        start(stream)
    while True:
        item = arrived.get()
        if item is None:
            with count:
                pending[0] -= 1
                if pending[0] == 0:
                    return
            continue
        yield item


def from_options(executor: str, *, streams: int | None = None, ray_address: str | None = None,
                 cluster: str = "slurm", **submitit_parameters):
    """The executor the command line names, connected (or refused in one line) before any case runs."""
    if executor == "local":
        return LocalExecutor()
    if executor == "ray":
        from .ray_tasks import RayExecutor

        chosen = RayExecutor(address=ray_address, streams=streams)
    elif executor == "submitit":
        from .submitit_jobs import SubmititExecutor

        chosen = SubmititExecutor(cluster=cluster, streams=streams, **submitit_parameters)
    else:
        raise ValueError(f"--executor: unknown {executor!r}; expected local, ray or submitit")
    chosen.connect()
    return chosen
