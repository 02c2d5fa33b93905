"""Reports: tables, verdicts, plots and the environment of one or more runs, as a folder
(index.md, index.html, PNG figures, claims.json) that needs nothing else to be read.

Both renderings open with the machine the runs measured on and one table of every claim of
every suite in the report (claim id, claim, the paper's value, ours, the verdict, the figure that
shows it); the per-suite details follow. claims.json holds that table as records."""
from __future__ import annotations

import html
import json
import math
import re
from dataclasses import asdict
from pathlib import Path

import pandas as pd

from .schema import COLUMNS
from .store import load_runs, read_manifest, resolve_runs

TIMING_COLUMNS = ["backend", "pass_mode", "status", "median_ms", "ci_low_ms", "ci_high_ms", "iqr_ms", "gbps",
                  "pct_bw", "tflops", "pct_flops", "floor_ms", "x_floor", "rel_error", "checked_at", "first_call_ms",
                  "self_spread", "reason"]


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

    paths = resolve_runs(runs, results_dir, whole_job=True)
    manifests = [read_manifest(p) for p in paths]
    rows = load_runs(*paths)
    name = manifests[0]["run_id"] if len(paths) == 1 else f"{manifests[0]['run_id']}+{len(paths) - 1}"
    folder = Path(out_dir or "reports") / name
    folder.mkdir(parents=True, exist_ok=True)
    sections: list[tuple[str, list]] = []  # (title, blocks); a block is str (markdown) or DataFrame
    claims: list[dict] = []
    for suite_name in (rows["suite"].unique() if len(rows) else []):
        for measured_by, suite_rows in _by_machine(rows[rows["suite"] == suite_name]):
            # Columns of the other suites in the same report are all-empty here: drop them.
            suite_rows = suite_rows.dropna(axis=1, how="all")
            suite = get_suite(suite_name) if suite_name in available_suites() else None
            blocks: list = []
            pngs = [Path(p).name for p in suite.figures(suite_rows, folder)] if suite and suite.figures else []
            if suite is not None and suite.judge is not None:
                # The manifest of the run these rows came from (a report may hold several runs).
                run_ids = set(suite_rows["run_id"])
                manifest = next((m for m in manifests if m["run_id"] in run_ids), manifests[0])
                verdicts = suite.judge(suite_rows, manifest)
                blocks.append(("Claims", pd.DataFrame([asdict(v) for v in verdicts])))
                claims += [{"suite": suite_name, "run": ", ".join(sorted(run_ids)), "machine": measured_by, **asdict(v),
                            "figure": next((f for f in suite.figure_of.get(v.claim_id, ()) if f in pngs), "")}
                           for v in verdicts]
            tables = (suite.tables(suite_rows) if suite is not None and suite.tables
                      else {"Cases": timing_table(suite_rows)})
            blocks.extend(tables.items())
            blocks.extend(pngs)
            title = f"Suite {suite_name}" + (f", measured on {measured_by}" if measured_by else "")
            sections.append((title + (f": {suite.description}" if suite else ""), blocks))
    sections.append(("Environment", [("Runs", _environment_table(manifests))]))
    opening = [machine_line(manifests)]
    if claims:
        opening += [tally(claims), ("Every claim of this report", summary_table(claims))]
        sections.insert(0, ("Summary", opening))
    else:
        sections.insert(0, ("Summary", opening + ["no suite of this report judges a claim"]))
    (folder / "index.md").write_text(_render_md(name, sections))
    (folder / "index.html").write_text(_render_html(name, sections))
    (folder / "claims.json").write_text(json.dumps(claims, indent=1, default=str))
    return folder


def _by_machine(rows: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
    """A suite's rows per machine that measured them ('' when one did): timings of two machines
    are never judged together, so a run finished elsewhere gets a section per fingerprint."""
    measured_by = rows["fingerprint"].dropna().unique() if "fingerprint" in rows else []
    if len(measured_by) <= 1:
        return [("", rows)]
    return [(f"fingerprint {fp}", group) for fp, group in rows.groupby(rows["fingerprint"].fillna("unrecorded"))]


def summary_table(claims: list[dict]) -> pd.DataFrame:
    """One line per claim, the papers' claims in their order (C1, C2, ...) before the project's
    own: its id, the claim, the paper's value, ours (what was measured, cut to its first clause
    when long: the details have the rest), the verdict and the figure that shows it (none where nothing was)."""
    def order(c):
        number = re.match(r"C(\d+)\.", c["claim_id"])
        return int(number.group(1)) if number else math.inf

    machines = any(c.get("machine") for c in claims)
    return pd.DataFrame([{"claim id": c["claim_id"], **({"machine": c["machine"]} if machines else {}),
                          "claim": re.sub(r"^C\d+: ", "", c["claim"]),
                          "paper": c["paper_value"], "ours": _headline(c["measured"]), "verdict": c["verdict"],
                          "figure": c["figure"] if c["verdict"] not in ("not applicable", "not measured") else ""}
                         for c in sorted(claims, key=order)])


def _headline(measured: str, most: int = 160) -> str:
    """What was measured, whole when short, else its first clause and a mark that more follows."""
    if len(measured) <= most:
        return measured
    return measured.split("; ")[0] + " (...)"


def tally(claims: list[dict]) -> str:
    """"22 claims: 12 holds, 6 does not hold, ..." in the order of the verdict words."""
    from ..suites.base import VERDICTS

    counts = [(w, sum(c["verdict"] == w for c in claims)) for w in VERDICTS]
    return f"{len(claims)} claims: " + ", ".join(f"{n} {w}" for w, n in counts if n)


def machine_line(manifests: list[dict]) -> str:
    """Where the report's runs measured, in words: each distinct machine once."""
    seen = []
    for m in manifests:
        env = m["environment"]
        gpu = (f"GPU {env['gpu_name']}" + (f" x{env['gpu_count']}" if (env.get("gpu_count") or 0) > 1 else "")
               if env.get("gpu_name") else "no GPU")
        memory = f", {env['memory_bytes'] / 2**30:.0f} GiB" if env.get("memory_bytes") else ""
        words = (f"{env.get('cpu_model') or 'unknown CPU'} ({env.get('cpu_count') or '?'} cores{memory}), {gpu}; "
                 f"torch {(env.get('packages') or {}).get('torch')}, {env.get('torch_threads') or '?'} thread(s)")
        if words not in seen:
            seen.append(words)
    presets = sorted({str(m.get("preset")) for m in manifests})
    return f"Measured on: {' | '.join(seen)}; preset {', '.join(presets)}; {len(manifests)} run(s)"


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


def _linked(frame: pd.DataFrame) -> pd.DataFrame:
    """A table whose "figure" column names PNGs, with each name a markdown link."""
    if "figure" not in frame:
        return frame
    return frame.assign(figure=[f"[{v}]({v})" if isinstance(v, str) and v.endswith(".png") else v
                                for v in frame["figure"]])


def _render_md(name: str, sections) -> str:
    out = [f"# ssmbench report {name}", ""]
    for title, blocks in sections:
        out += [f"## {title}", ""]
        for block in blocks:
            if isinstance(block, tuple):
                out += [f"### {block[0]}", "", _markdown(_linked(block[1])), ""]
            elif block.endswith(".png"):
                out += [f"![{block}]({block})", ""]
            else:
                out += [block, ""]
    return "\n".join(out)


# Column names as the HTML report heads them: words, with units.
HEADERS = {
    "median_ms": "median (ms)", "mean_ms": "mean (ms)", "min_ms": "min (ms)", "iqr_ms": "IQR (ms)",
    "ci_low_ms": "95% CI low (ms)", "ci_high_ms": "95% CI high (ms)", "gbps": "GB/s", "tflops": "TFLOP/s",
    "pct_bw": "% of copy bandwidth", "pct_flops": "% of matmul rate", "floor_ms": "floor (ms)",
    "x_floor": "times the floor", "rel_error": "relative error", "checked_at": "checked at",
    "first_call_ms": "first call (ms)", "self_spread": "self-comparison spread", "pass_mode": "pass",
    "paper_setting": "paper's setting", "paper_value": "paper", "claim_id": "claim id", "seqlen": "L",
    "seqlen_q": "L", "dstate": "N", "ci_low": "95% CI low", "ci_high": "95% CI high", "elapsed_s": "elapsed (s)",
    "prefill_ms": "prefill (ms)", "decode_ms_per_token": "decode (ms/token)", "total_ms": "total (ms)",
    "tokens_per_s": "tokens/s", "weight_bytes": "weights (bytes)", "cache_bytes": "cache (bytes)",
    "kv_bytes": "KV cache (bytes)", "state_bytes": "state (bytes)", "peak_mem_bytes": "peak memory (bytes)",
}
UNITS = (("_ms", " (ms)"), ("_bytes", " (bytes)"), ("_s", " (s)"))
VERDICT_COLOURS = {"holds": "#cdeccd", "does not hold": "#f5c6c6", "undecided": "#fbe3b0",
                   "not applicable": "#dde3ea", "not measured": "#eeeeee"}


def header(column) -> str:
    """A column's name in words, with its unit: "median_ms" -> "median (ms)"."""
    column = str(column)
    if column in HEADERS:
        return HEADERS[column]
    for suffix, unit in UNITS:
        if column.endswith(suffix):
            return column[: -len(suffix)].replace("_", " ") + unit
    return column.replace("_", " ")


def _html_table(frame: pd.DataFrame) -> str:
    shown = frame.rename(columns=header)
    text = shown.to_html(index=False, float_format=lambda v: f"{v:.4g}", na_rep="", escape=True,
                         render_links=False)
    for word in VERDICT_COLOURS:
        text = text.replace(f"<td>{word}</td>", f"<td class='verdict {word.replace(' ', '-')}'>{word}</td>")
    for png in {v for v in frame.get("figure", ()) if isinstance(v, str) and v.endswith(".png")}:
        safe = html.escape(png)
        text = text.replace(f"<td>{safe}</td>", f"<td><a href='{safe}'>{safe}</a></td>")
    return text


def _render_html(name: str, sections) -> str:
    colours = "".join(f"td.{w.replace(' ', '-')}{{background:{c}}}" for w, c in VERDICT_COLOURS.items())
    out = [f"<!doctype html><html><head><meta charset='utf-8'><title>ssmbench {html.escape(name)}</title>",
           "<style>body{font-family:sans-serif;margin:2em;max-width:110em}"
           "table{border-collapse:collapse;font-size:90%;margin-bottom:1em}"
           "td,th{border:1px solid #ccc;padding:3px 6px;vertical-align:top;text-align:left;max-width:36em;"
           "overflow-wrap:anywhere}th{background:#f3f3f3}td.verdict{white-space:nowrap;font-weight:bold}"
           f"{colours}</style></head><body>",
           f"<h1>ssmbench report {html.escape(name)}</h1>"]
    for title, blocks in sections:
        out.append(f"<h2>{html.escape(title)}</h2>")
        for block in blocks:
            if isinstance(block, tuple):
                out.append(f"<h3>{html.escape(block[0])}</h3>")
                out.append(_html_table(block[1]))
            elif block.endswith(".png"):
                out.append(f"<p><img src='{html.escape(block)}' alt='{html.escape(block)}'></p>")
            else:
                out.append(f"<p>{html.escape(block)}</p>")
    out.append("</body></html>")
    return "\n".join(out)
