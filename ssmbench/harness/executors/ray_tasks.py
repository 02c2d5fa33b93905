"""Cases on a Ray cluster: one task per stream of cases, each yielding its rows as cases finish
(a streaming generator task), each running the local executor's worker loop on its node."""
from __future__ import annotations

import os
import socket
import sys
from pathlib import Path
from typing import Iterator, Sequence

from ..case import Case
from . import Rows, StreamLost, gather, split


def _stream_task(cases: list[Case], threads: int | None, env: dict):
    from ..runner import run_stream

    yield from run_stream(cases, threads, env)


class RayExecutor:
    """``address``: a running cluster (else ``RAY_ADDRESS``, else a Ray started here for the run).
    Each task asks for ``threads`` CPUs (one GPU where the cases run on CUDA)."""
    name = "ray"

    def __init__(self, address: str | None = None, streams: int | None = None, local_cpus: int | None = None):
        self.address = address or os.environ.get("RAY_ADDRESS") or None
        self.streams, self.local_cpus = streams, local_cpus
        self.started_here = False

    def connect(self) -> None:
        """Reach the cluster, or say in one line why not, before any case runs."""
        try:
            import ray
        except ImportError:
            raise ValueError("--executor ray needs the ray package: pip install 'ssmbench[ray]'") from None
        if ray.is_initialized():
            return
        where = self.address or "a local Ray started for this run"
        if self.address:
            self._reachable(self.address)
        try:
            if self.address:
                ray.init(address=self.address, log_to_driver=False)
            else:
                # The workers import what this process imports (the project, a test's fixtures).
                ray.init(num_cpus=self.local_cpus, include_dashboard=False, log_to_driver=False,
                         runtime_env={"env_vars": {"PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}})
                self.started_here = True
        except Exception as exc:  # noqa: BLE001 - Ray raises several kinds; each is said in one line
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ValueError(f"--executor ray: no Ray cluster could be reached at {where} ({first})") from None

    @staticmethod
    def _reachable(address: str) -> None:
        """A host:port that does not answer within seconds is refused here: ray.init would wait
        on it for minutes."""
        host, sep, port = address.removeprefix("ray://").rpartition(":")
        if not sep or not port.isdigit():
            return  # "auto", or a form Ray resolves itself
        try:
            socket.create_connection((host, int(port)), timeout=5).close()
        except OSError as exc:
            raise ValueError(f"--executor ray: no Ray cluster could be reached at {address} "
                             f"({exc.strerror or exc})") from None

    def run(self, cases: Sequence[Case], *, threads: int | None, env: dict, run_path: Path) -> Iterator[Rows]:
        import ray

        self.connect()
        gpus = 1 if any(c.params.get("device") == "cuda" for c in cases) else 0
        # A retried generator would yield its rows again: a lost task is handled by gather.
        task = ray.remote(num_returns="streaming", max_retries=0)(_stream_task).options(
            num_cpus=threads or 1, num_gpus=gpus)
        cpus = int(ray.cluster_resources().get("CPU", 1))
        streams = split(cases, self.streams or max(1, cpus // (threads or 1)))
        running = []

        def follow(stream: list[Case]) -> Iterator[Rows]:
            generator = task.remote(stream, threads, env)
            running.append(generator)
            try:
                for ref in generator:
                    yield ray.get(ref)
            except ray.exceptions.RayError as exc:
                raise StreamLost(f"Ray task lost ({type(exc).__name__}: {str(exc).strip().splitlines()[0]})") from None

        try:
            yield from gather(streams, follow)
        finally:
            for generator in running:
                try:
                    ray.cancel(generator, force=True)
                except Exception:  # noqa: BLE001 - a finished task cannot be cancelled; nothing to stop
                    pass
            if self.started_here:
                ray.shutdown()
                self.started_here = False
