"""What a gate compares: a stored run, or a pytest-benchmark JSON file, as rows with their
environment and the labels of their cases."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from .store import Run, load_runs, read_manifest, resolve_runs


@dataclass
class GateInput:
    """A run (or a pytest-benchmark file) as the gate reads it."""

    name: str
    fingerprint: str
    environment: dict
    rows: pd.DataFrame
    suite: str | None
    labels: dict[str, str] = field(default_factory=dict)  # case id -> what the case is, in words

    def label(self, case_id: str, row=None) -> str:
        if case_id in self.labels:
            return self.labels[case_id]
        parent = row.get("parent_case_id") if row is not None else None
        if isinstance(parent, str) and parent in self.labels:
            return f"{self.labels[parent]} [{row.get('backend')}]"
        return case_id


def load_input(spec: str | Path, results_dir: Path | None = None) -> GateInput:
    """A run folder, run id, "latest", "latest:<suite>", or a pytest-benchmark JSON file."""
    spec = str(spec)
    if spec.endswith(".json") and Path(spec).is_file():
        # Imported here: that module builds GateInputs, so it imports this one.
        from .pytest_benchmark import read_pytest_benchmark

        return read_pytest_benchmark(Path(spec))
    (path,) = resolve_runs([spec], results_dir)
    manifest = read_manifest(path)
    labels = {case.case_id: case.label() for case in Run(path).cases()}
    return GateInput(str(path), manifest["fingerprint"], manifest["environment"],
                     load_runs(path, with_environment=False), manifest.get("suite"), labels)
