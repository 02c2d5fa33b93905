"""pytest-benchmark interop: a run written as its JSON (so ``pytest-benchmark compare`` and its
histograms work on our runs), and its JSON read back as a gate input."""
from __future__ import annotations

import json
import platform
from pathlib import Path

import numpy as np
import pandas as pd

from .store import ResultsError, load_runs, read_manifest, resolve_runs

# pytest-benchmark's own file format version that these files follow.
FORMAT_VERSION = "5.2.3"


def _stats(samples_s: list[float]) -> dict:
    x = np.asarray(samples_s, dtype=float)
    q1, median, q3 = np.percentile(x, [25, 50, 75])
    iqr = q3 - q1
    std = float(x.std(ddof=1)) if len(x) > 1 else 0.0
    mean = float(x.mean())
    lo, hi = q1 - 1.5 * iqr, q3 + 1.5 * iqr
    return {
        "min": float(x.min()), "max": float(x.max()), "mean": mean, "stddev": std, "rounds": len(x),
        "median": float(median), "iqr": float(iqr), "q1": float(q1), "q3": float(q3),
        "iqr_outliers": int(((x < lo) | (x > hi)).sum()),
        "stddev_outliers": int((np.abs(x - mean) > std).sum()),
        "outliers": f"{int((np.abs(x - mean) > std).sum())};{int(((x < lo) | (x > hi)).sum())}",
        "ld15iqr": float(x[x >= lo].min()), "hd15iqr": float(x[x <= hi].max()),
        "ops": 1.0 / mean if mean > 0 else 0.0, "total": float(x.sum()), "iterations": 1,
        "data": [float(v) for v in x],
    }


def export_run(run_spec: str, out: Path, results_dir: Path | None = None) -> Path:
    """Write the timed (ok) cases of a run as a pytest-benchmark JSON file."""
    (path,) = resolve_runs([run_spec], results_dir)
    manifest = read_manifest(path)
    rows = load_runs(path, with_environment=False)
    env = manifest["environment"]
    benchmarks = []
    for _, row in rows[rows["status"] == "ok"].iterrows() if len(rows) else []:
        samples = row.get("samples_ms")
        if not isinstance(samples, list) or not samples:
            continue
        params = {k: (v.item() if hasattr(v, "item") else v) for k, v in row.items()
                  if k in _param_columns(rows) and not _blank(v)}
        name = f"{row['op'] or row['fn']}[{row['backend']}-{row['case_id']}]"
        benchmarks.append({
            "group": f"{row['suite']}:{row['op'] or row['fn']}", "name": name,
            "fullname": f"ssmbench::{row['suite']}::{name}", "params": params, "param": row["case_id"],
            "extra_info": {"case_id": row["case_id"], "backend": row["backend"],
                           "rel_error": row.get("rel_error")},
            "options": {"disable_gc": False, "timer": "perf_counter" if not env.get("gpu_name") else "cuda_event",
                        "min_rounds": len(samples), "max_time": None, "min_time": None, "warmup": True},
            "stats": _stats([s / 1e3 for s in samples]),
        })
    document = {
        "machine_info": {"node": env.get("hostname"), "processor": env.get("cpu_model"),
                         "machine": platform.machine(), "python_version": env.get("python"),
                         "cpu": {"brand_raw": env.get("cpu_model"), "count": env.get("cpu_count")},
                         "ssmbench_fingerprint": manifest["fingerprint"], "ssmbench_environment": env},
        "commit_info": {"id": (manifest.get("git") or {}).get("commit"),
                        "dirty": (manifest.get("git") or {}).get("dirty"), "project": "ssmbench"},
        "benchmarks": benchmarks,
        "datetime": manifest["created"],
        "version": FORMAT_VERSION,
    }
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(document, indent=2, default=str))
    return out


def _param_columns(rows: pd.DataFrame) -> set[str]:
    from .report import PARAM_EXCLUDE

    return {c for c in rows.columns if c not in PARAM_EXCLUDE}


def _blank(value) -> bool:
    return value is None or (isinstance(value, float) and np.isnan(value))


def read_pytest_benchmark(path: Path):
    """A pytest-benchmark JSON file as a gate input: one ok row per benchmark, keyed by
    fullname (or our case id when the file came from :func:`export_run`)."""
    from .gate_input import GateInput

    try:
        document = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ResultsError(f"{path}: not a readable pytest-benchmark JSON file ({exc})") from None
    if not isinstance(document, dict) or "benchmarks" not in document:
        raise ResultsError(f"{path}: lacks field 'benchmarks' (is it a pytest-benchmark file?)")
    rows = []
    for i, bench in enumerate(document["benchmarks"]):
        for name in ("fullname", "stats"):
            if name not in bench:
                raise ResultsError(f"{path}: benchmarks[{i}] lacks field {name!r}")
        stats = bench["stats"]
        if "median" not in stats:
            raise ResultsError(f"{path}: benchmarks[{i}].stats lacks field 'median'")
        extra = bench.get("extra_info") or {}
        rows.append({
            "case_id": extra.get("case_id", bench["fullname"]), "suite": bench.get("group") or "pytest-benchmark",
            "op": "", "fn": bench["fullname"], "backend": extra.get("backend", ""), "status": "ok", "reason": "",
            "median_ms": stats["median"] * 1e3,
            "samples_ms": [v * 1e3 for v in stats.get("data", [])],
        })
    machine = document.get("machine_info") or {}
    env = machine.get("ssmbench_environment") or {
        "cpu_model": (machine.get("cpu") or {}).get("brand_raw") or machine.get("processor"),
        "python": machine.get("python_version"), "hostname": machine.get("node")}
    from .env import fingerprint_id

    fingerprint = machine.get("ssmbench_fingerprint") or fingerprint_id(env)
    return GateInput(str(path), fingerprint, env, pd.DataFrame(rows), None)
