"""Reports: tables, verdicts, plots and the environment of one or more runs, as a folder
(index.md, index.html, PNG figures) that needs nothing else to be read."""
from __future__ import annotations

import html
import json
from pathlib import Path

import pandas as pd

from .schema import COLUMNS
from .store import load_runs, read_manifest, resolve_runs

TIMING_COLUMNS = ["backend", "pass_mode", "status", "median_ms", "ci_low_ms", "ci_high_ms", "iqr_ms", "gbps", "pct_bw",
                  "tflops", "pct_flops", "floor_ms", "x_floor", "rel_error", "checked_at", "first_call_ms", "self_spread",
                  "reason"]


def timing_table(rows: pd.DataFrame, by: list[str] | None = None) -> pd.DataFrame:
    """The per-case table: problem fields that vary, then backend and the timing columns."""
    if rows.empty:
        return rows
    varying = [c for c in (by or _varying_params(rows)) if c in rows]
    columns = [c for c in ["op", *varying, *TIMING_COLUMNS] if c in rows]
    table = rows[columns].copy()
    return table.sort_values([c for c in ["op", *varying, "backend"] if c in table]).reset_index(drop=True)


# Everything but the problem's parameters and a custom case's own figures: the schema's columns,
# and what load_runs adds beside them.
PARAM_EXCLUDE = set(COLUMNS) | set(TIMING_COLUMNS) | {"preset", "cpu_model", "gpu_name"}


def _varying_params(rows: pd.DataFrame) -> list[str]:
    out = []
    for column in rows.columns:
        if column in PARAM_EXCLUDE:
            continue
        values = rows[column].dropna()
        if len(values) and values.astype(str).nunique() > 1:
            out.append(column)
    return out


def comparison_table(run_path: Path) -> str:
    rows = load_runs(run_path)
    table = timing_table(rows, by=[])
    return _markdown(table)


def _markdown(frame: pd.DataFrame) -> str:
    if frame.empty:
        return "(no rows)"
    return frame.to_markdown(index=False, floatfmt=".4g")


def write_report(runs, results_dir: Path | None = None, out_dir: Path | None = None) -> Path:
    """Write reports/<name>/ for the given runs and return the folder."""
    from ..suites import available_suites, get_suite

    paths = resolve_runs(runs, results_dir)
    manifests = [read_manifest(p) for p in paths]
    rows = load_runs(*paths)
    name = manifests[0]["run_id"] if len(paths) == 1 else f"{manifests[0]['run_id']}+{len(paths) - 1}"
    folder = Path(out_dir or "reports") / name
    folder.mkdir(parents=True, exist_ok=True)
    sections: list[tuple[str, list]] = []  # (title, blocks); a block is str (markdown) or DataFrame
    for suite_name in (rows["suite"].unique() if len(rows) else []):
        # Columns of the other suites in the same report are all-empty here: drop them.
        suite_rows = rows[rows["suite"] == suite_name].dropna(axis=1, how="all")
        suite = get_suite(suite_name) if suite_name in available_suites() else None
        blocks: list = []
        if suite is not None and suite.judge is not None:
            # The manifest of the run these rows came from (a report may hold several runs).
            run_ids = set(suite_rows["run_id"])
            manifest = next((m for m in manifests if m["run_id"] in run_ids), manifests[0])
            verdicts = suite.judge(suite_rows, manifest)
            blocks.append(("Claims", pd.DataFrame([v.__dict__ for v in verdicts])))
        tables = suite.tables(suite_rows) if suite is not None and suite.tables else {"Cases": timing_table(suite_rows)}
        blocks.extend(tables.items())
        if suite is not None and suite.figures is not None:
            for png in suite.figures(suite_rows, folder):
                blocks.append(Path(png).name)
        sections.append((f"Suite {suite_name}" + (f": {suite.description}" if suite else ""), blocks))
    sections.append(("Environment", [("Runs", _environment_table(manifests))]))
    (folder / "index.md").write_text(_render_md(name, sections))
    (folder / "index.html").write_text(_render_html(name, sections))
    return folder


def paper_tables(runs=None, results_dir: Path | None = None) -> dict[str, pd.DataFrame]:
    """Each reproducible table of the papers, the paper's value beside ours, and the numbers
    their text states next to what the given runs (default: each suite's latest) measured.
    Suites take part through ``extra["paper_tables"]`` and ``extra["paper_values"]``, each a
    function of the suite's rows (empty when no run of it exists)."""
    from ..suites import available_suites, get_suite
    from .store import ResultsError, default_results_dir, latest_run

    given = load_runs(*runs, results_dir=results_dir) if runs else None
    tables: dict[str, pd.DataFrame] = {}
    stated = []
    for name in available_suites():
        suite = get_suite(name)
        if not {"paper_tables", "paper_values"} & set(suite.extra):
            continue
        if given is not None:
            rows = given[given["suite"] == name] if len(given) else given
        else:
            try:
                rows = load_runs(latest_run(Path(results_dir or default_results_dir()), suite=name))
            except ResultsError:
                rows = pd.DataFrame()
        source = ", ".join(sorted(set(rows["run_id"]))) if len(rows) else "no run"
        if "paper_tables" in suite.extra:
            tables.update(suite.extra["paper_tables"](rows))
        if "paper_values" in suite.extra:
            stated.append(suite.extra["paper_values"](rows).assign(run=source))
    if stated:
        tables["Numbers the papers state, next to what was measured"] = pd.concat(stated, ignore_index=True)
    return tables


def write_paper_tables(runs=None, results_dir: Path | None = None, out_dir: Path | None = None) -> tuple[str, Path]:
    """(markdown of :func:`paper_tables`, the folder reports/tables/ it was written to, with
    index.md, index.html and one CSV per table)."""
    tables = paper_tables(runs, results_dir)
    folder = Path(out_dir or "reports") / "tables"
    folder.mkdir(parents=True, exist_ok=True)
    sections = [("Paper tables", list(tables.items()))]
    text = _render_md("paper tables", sections)
    (folder / "index.md").write_text(text)
    (folder / "index.html").write_text(_render_html("paper tables", sections))
    for number, frame in enumerate(tables.values(), 1):
        frame.to_csv(folder / f"table{number}.csv", index=False)
    return text, folder


def _environment_table(manifests: list[dict]) -> pd.DataFrame:
    records = []
    for m in manifests:
        env = m["environment"]
        records.append({
            "run": m["run_id"], "preset": m.get("preset"), "commit": (m.get("git") or {}).get("commit"),
            "dirty": (m.get("git") or {}).get("dirty"), "cpu": env.get("cpu_model"),
            "threads": env.get("torch_threads"), "gpu": env.get("gpu_name"),
            "torch": env["packages"].get("torch"), "triton": env["packages"].get("triton"),
            "cuda": env.get("cuda_version"), "settings": json.dumps(env.get("settings")),
            "ceilings": json.dumps({k: round(v, 2) for k, v in (m.get("ceilings") or {}).items()
                                    if k != "measured_at"}),
            "fingerprint": m["fingerprint"], "command": m.get("command"),
        })
    return pd.DataFrame(records)


def _render_md(name: str, sections) -> str:
    out = [f"# ssmbench report {name}", ""]
    for title, blocks in sections:
        out += [f"## {title}", ""]
        for block in blocks:
            if isinstance(block, tuple):
                out += [f"### {block[0]}", "", _markdown(block[1]), ""]
            elif block.endswith(".png"):
                out += [f"![{block}]({block})", ""]
            else:
                out += [block, ""]
    return "\n".join(out)


def _render_html(name: str, sections) -> str:
    out = [f"<!doctype html><html><head><meta charset='utf-8'><title>ssmbench {html.escape(name)}</title>",
           "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;font-size:90%}"
           "td,th{border:1px solid #ccc;padding:2px 6px}</style></head><body>",
           f"<h1>ssmbench report {html.escape(name)}</h1>"]
    for title, blocks in sections:
        out.append(f"<h2>{html.escape(title)}</h2>")
        for block in blocks:
            if isinstance(block, tuple):
                out.append(f"<h3>{html.escape(block[0])}</h3>")
                out.append(block[1].to_html(index=False, float_format=lambda v: f"{v:.4g}", na_rep=""))
            elif block.endswith(".png"):
                out.append(f"<p><img src='{html.escape(block)}' alt='{html.escape(block)}'></p>")
            else:
                out.append(f"<p>{html.escape(block)}</p>")
    out.append("</body></html>")
    return "\n".join(out)
