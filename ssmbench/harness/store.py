"""Stored runs: one folder per run under results/, a manifest and rows written as cases finish.

    results/<run_id>/manifest.json   run id, git commit + dirty flag, time, command, suite,
                                     preset, environment, fingerprint, ceilings, schema version
    results/<run_id>/cases.jsonl     the cases the run was asked to do (what --resume finishes)
    results/<run_id>/rows.jsonl      one flat JSON object per finished case, appended + fsynced

Rows are flat: scalar columns plus ``samples_ms`` (a list). ``load_runs`` returns one pandas
DataFrame; anything unreadable is an error naming the file, line and field, never skipped.
"""
from __future__ import annotations

import datetime as dt
import json
import os
import secrets
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any, Iterable

from ..suites.base import Case

SCHEMA_VERSION = 1
REQUIRED_ROW_FIELDS = {"schema_version": int, "run_id": str, "case_id": str, "suite": str,
                       "status": str, "reason": str}
STATUSES = ("ok", "incorrect", "unsupported", "unavailable", "oom", "timeout", "failed")
REQUIRED_MANIFEST_FIELDS = ("schema_version", "run_id", "created", "environment", "fingerprint")


class ResultsError(ValueError):
    """A results folder or file that cannot be read as a run; says which file and field."""


def default_results_dir() -> Path:
    return Path(os.environ.get("SSMBENCH_RESULTS", "results"))


def git_state(path: Path | None = None) -> dict[str, Any]:
    where = str(path or Path(__file__).resolve().parent)
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=where, capture_output=True,
                                text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=where,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}
    return {"commit": commit or None, "dirty": bool(dirty) if commit else None}


def new_run_id(label: str) -> str:
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    return f"{stamp}-{label}-{secrets.token_hex(2)}"


class Run:
    """A run folder being written (or resumed)."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.manifest = read_manifest(self.path)
        self.run_id = self.manifest["run_id"]

    @classmethod
    def create(cls, results_dir: Path, label: str, cases: list[Case], environment: dict,
               fingerprint: str, **fields) -> "Run":
        run_id = new_run_id(label)
        path = Path(results_dir) / run_id
        path.mkdir(parents=True, exist_ok=False)
        manifest = {
            "schema_version": SCHEMA_VERSION, "run_id": run_id,
            "created": dt.datetime.now(dt.timezone.utc).isoformat(),
            "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
            "git": git_state(), "environment": environment, "fingerprint": fingerprint, **fields,
        }
        _write_json(path / "manifest.json", manifest)
        with open(path / "cases.jsonl", "w") as f:
            for case in cases:
                f.write(json.dumps(_case_record(case), default=str) + "\n")
        return cls(path)

    def cases(self) -> list[Case]:
        records = _read_jsonl(self.path / "cases.jsonl")
        return [Case(**{k: v for k, v in r.items() if k != "case_id"}) for r in records]

    def done_case_ids(self) -> set[str]:
        rows = self.path / "rows.jsonl"
        # Rows of an interleaved comparison carry the id of the case they came from.
        return {r.get("parent_case_id") or r["case_id"] for r in _read_jsonl(rows)} if rows.exists() else set()

    def append(self, row: dict[str, Any]) -> None:
        row = {"schema_version": SCHEMA_VERSION, "run_id": self.run_id, **row}
        validate_row(row, self.path / "rows.jsonl", None)
        with open(self.path / "rows.jsonl", "a") as f:
            f.write(json.dumps(row, default=_json_default, allow_nan=True) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def update_manifest(self, **fields) -> None:
        self.manifest.update(fields)
        _write_json(self.path / "manifest.json", self.manifest)


def _case_record(case: Case) -> dict[str, Any]:
    return {"case_id": case.case_id, **asdict(case), "params": dict(case.params)}


def _json_default(value):
    if hasattr(value, "item"):
        return value.item()
    return str(value)


def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=_json_default))
    os.replace(tmp, path)


def _read_jsonl(path: Path) -> list[dict]:
    records = []
    try:
        lines = path.read_text().splitlines()
    except OSError as exc:
        raise ResultsError(f"{path}: cannot be read: {exc.strerror or exc}") from None
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            # A line cut short by a crash is the last one; anything else is corruption.
            if number == len(lines):
                continue
            raise ResultsError(f"{path}, line {number}: not valid JSON ({exc.msg})") from None
        if not isinstance(record, dict):
            raise ResultsError(f"{path}, line {number}: expected a JSON object, got {type(record).__name__}")
        records.append(record)
    return records


def validate_row(row: dict, path: Path, line: int | None) -> None:
    where = f"{path}" + (f", line {line}" if line else "")
    for name, kind in REQUIRED_ROW_FIELDS.items():
        if name not in row:
            raise ResultsError(f"{where}: row lacks field {name!r}")
        if not isinstance(row[name], kind):
            raise ResultsError(f"{where}: field {name!r} must be {kind.__name__}, got {row[name]!r}")
    if row["schema_version"] != SCHEMA_VERSION:
        raise ResultsError(f"{where}: field 'schema_version' is {row['schema_version']}, "
                           f"this ssmbench reads {SCHEMA_VERSION}")
    if row["status"] not in STATUSES:
        raise ResultsError(f"{where}: field 'status' is {row['status']!r}, expected one of {STATUSES}")


def read_manifest(path: Path) -> dict:
    file = Path(path) / "manifest.json"
    if not Path(path).is_dir():
        raise ResultsError(f"{path}: no such run folder")
    try:
        manifest = json.loads(file.read_text())
    except OSError as exc:
        raise ResultsError(f"{file}: cannot be read: {exc.strerror or exc}") from None
    except json.JSONDecodeError as exc:
        raise ResultsError(f"{file}: not valid JSON ({exc.msg}, line {exc.lineno})") from None
    for name in REQUIRED_MANIFEST_FIELDS:
        if name not in manifest:
            raise ResultsError(f"{file}: manifest lacks field {name!r}")
    if manifest["schema_version"] != SCHEMA_VERSION:
        raise ResultsError(f"{file}: field 'schema_version' is {manifest['schema_version']}, "
                           f"this ssmbench reads {SCHEMA_VERSION}")
    return manifest


def read_rows(path: Path) -> list[dict]:
    file = Path(path) / "rows.jsonl"
    if not file.exists():
        return []
    rows = _read_jsonl(file)
    for number, row in enumerate(rows, 1):
        validate_row(row, file, number)
    return rows


def resolve_runs(specs: Iterable[str | Path], results_dir: Path | None = None) -> list[Path]:
    """Run folders from paths, run ids, or "latest" (the newest run in the results folder)."""
    base = Path(results_dir or default_results_dir())
    paths = []
    for spec in specs:
        spec = str(spec)
        if spec == "latest" or spec.startswith("latest:"):
            paths.append(latest_run(base, suite=spec.partition(":")[2] or None))
        elif Path(spec).is_dir():
            paths.append(Path(spec))
        elif (base / spec).is_dir():
            paths.append(base / spec)
        else:
            raise ResultsError(f"{spec}: neither a run folder nor a run id under {base}")
    return paths


def latest_run(results_dir: Path, suite: str | None = None) -> Path:
    """The newest run folder directly under ``results_dir`` (of ``suite``, if given)."""
    manifests = [(p.parent, read_manifest(p.parent)) for p in Path(results_dir).glob("*/manifest.json")]
    manifests = [(p, m) for p, m in manifests if suite is None or m.get("suite") == suite]
    if not manifests:
        of = f" of suite {suite!r}" if suite else ""
        raise ResultsError(f"{results_dir}: holds no runs{of}")
    return max(manifests, key=lambda pm: pm[1]["created"])[0]


def _add_ceiling_fractions(frame, ceilings: dict) -> None:
    """pct_bw and pct_flops: the case's GB/s and TFLOP/s over this machine's measured ceilings
    (copy bandwidth; matmul rate in bf16 for half-precision cases, else fp32). floor_ms: the
    longest of the times its bytes, flops and exps take at the copy, matmul and exp rates, a
    time no backend beats on this machine; x_floor: the case's median over that floor."""
    import pandas as pd

    floors = []
    if "gbps" in frame and ceilings.get("copy_gbps"):
        frame["pct_bw"] = 100 * frame["gbps"] / ceilings["copy_gbps"]
        floors.append(pd.to_numeric(frame["bytes"], errors="coerce") / (ceilings["copy_gbps"] * 1e9))
    if "tflops" in frame and "dtype" in frame and ceilings.get("matmul_fp32_tflops"):
        peak = ceilings.get("matmul_bf16_tflops", ceilings["matmul_fp32_tflops"])
        rate = frame["dtype"].map(lambda d: peak if d in ("bfloat16", "float16") else ceilings["matmul_fp32_tflops"])
        frame["pct_flops"] = 100 * frame["tflops"] / rate
        floors.append(pd.to_numeric(frame["flops"], errors="coerce") / (rate * 1e12))
    if "exps" in frame and ceilings.get("exp_gexps"):
        floors.append(pd.to_numeric(frame["exps"], errors="coerce") / (ceilings["exp_gexps"] * 1e9))
    if floors and "median_ms" in frame:
        frame["floor_ms"] = 1e3 * pd.concat(floors, axis=1).max(axis=1)
        frame["x_floor"] = frame["median_ms"] / frame["floor_ms"]


def load_runs(*runs: str | Path, results_dir: Path | None = None, with_environment: bool = True):
    """One DataFrame with the rows of every run given (paths, ids or "latest"); each row carries
    its run's fingerprint, device names and preset so that rows of several runs stay apart."""
    import pandas as pd

    frames = []
    for path in resolve_runs(runs or ["latest"], results_dir):
        manifest = read_manifest(path)
        rows = read_rows(path)
        frame = pd.DataFrame(rows)
        if with_environment and len(frame):
            env = manifest["environment"]
            frame["fingerprint"] = manifest["fingerprint"]
            frame["preset"] = manifest.get("preset")
            frame["cpu_model"] = env.get("cpu_model")
            frame["gpu_name"] = env.get("gpu_name")
            _add_ceiling_fractions(frame, manifest.get("ceilings") or {})
        frames.append(frame)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
