"""Baselines: results/baselines/<suite>/<fingerprint>/ holds a copy of a run folder, the
reference a gate judges later runs of that suite against."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

from .gate import GateRefused
from .gate_input import GateInput
from .store import JOB_LOGS, LOCK, ResultsError, read_manifest, resolve_runs

BASELINES = Path("results") / "baselines"


def save_baseline(run_spec: str, results_dir: Path | None = None, baselines: Path | None = None) -> Path:
    (path,) = resolve_runs([run_spec], results_dir)
    manifest = read_manifest(path)
    target = Path(baselines or BASELINES) / (manifest.get("suite") or "adhoc") / manifest["fingerprint"]
    if target.exists():
        shutil.rmtree(target)
    # The writer's lock and a cluster's job logs belong to the run's life, not to its results.
    shutil.copytree(path, target, ignore=shutil.ignore_patterns("*.tmp", LOCK, JOB_LOGS))
    return target


def find_baseline(run: GateInput, portable: bool, baselines: Path | None = None) -> Path:
    """The stored baseline for a run: same suite and fingerprint; for portable gates, else the
    newest baseline of the suite."""
    root = Path(baselines or BASELINES) / (run.suite or "adhoc")
    exact = root / run.fingerprint
    if exact.is_dir():
        return exact
    candidates = sorted(root.glob("*/manifest.json"))
    if not candidates:
        raise ResultsError(f"{root}: no baseline stored for suite {run.suite!r}; "
                           f"record one with: ssmbench baseline save RUN")
    if not portable:
        have = ", ".join(p.parent.name for p in candidates)
        raise GateRefused(f"no baseline of suite {run.suite!r} has fingerprint {run.fingerprint} "
                          f"(stored: {have}); use --portable or save a baseline on this machine")
    return max(candidates, key=lambda p: json.loads(p.read_text())["created"]).parent
