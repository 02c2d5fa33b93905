"""Starting, resuming and finishing a run: environment, ceilings, store, runner."""
from __future__ import annotations

import os
from pathlib import Path

from .case import Case
from .env import environment, fingerprint_diff, fingerprint_id, measure_ceilings
from .runner import Summary, run_cases
from .store import ResultsError, Run, default_results_dir, resolve_runs

RUN_SETTINGS = ("THP_MEM_ALLOC_ENABLE",)  # the environment settings that ssmbench's own options set (--thp)


def start_run(label: str, cases: list[Case], *, suite: str, preset: str, device: str = "cpu",
              results_dir: Path | None = None, threads: int | None = None, progress: bool = True,
              ceilings: bool = True, executor=None, job_id: str | None = None) -> Summary:
    import torch

    if threads:
        torch.set_num_threads(threads)
    env = environment()
    run = Run.create(Path(results_dir or default_results_dir()), label, cases, env, fingerprint_id(env),
                     suite=suite, preset=preset, device=device, **({"job_id": job_id} if job_id else {}),
                     ceilings=measure_ceilings(device) if ceilings else {})
    return run_cases(run, threads=threads, progress=progress, executor=executor)


def resume_run(spec: str, *, results_dir: Path | None = None, threads: int | None = None,
               progress: bool = True, executor=None) -> Summary:
    import torch

    (path,) = resolve_runs([spec], results_dir)
    run = Run(path)
    recorded = run.manifest["environment"]
    # What the run's own command set (its preset's threads, --thp) is applied before comparing, as
    # start_run applied it before recording: the comparison is then of the machine and stack alone.
    threads = threads or recorded.get("torch_threads")
    if threads:
        torch.set_num_threads(threads)
    for name in RUN_SETTINGS:
        if name in (recorded.get("settings") or {}):
            os.environ[name] = recorded["settings"][name]
        else:
            os.environ.pop(name, None)
    here = environment()
    if fingerprint_id(here) != run.manifest["fingerprint"]:
        # Rows of one run must be comparable: finishing it elsewhere would mix two machines.
        differs = "; ".join(f"{k}: {a!r} there, {b!r} here"
                            for k, (a, b) in fingerprint_diff(run.manifest["environment"], here).items())
        raise ResultsError(f"{path}: measured on another machine or software stack ({differs}); "
                           f"start a new run instead of resuming this one")
    return run_cases(run, threads=threads, progress=progress, executor=executor)
