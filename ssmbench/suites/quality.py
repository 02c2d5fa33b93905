"""C6: zero-shot quality ([M1] Table 3): lm-eval's tasks scored on real checkpoints in our models,
under the op backends chosen, the paper's number beside ours.

A case is one task of one checkpoint under one backend choice (:func:`ssmbench.models.quality.
quality_case`). ``ssmbench quality`` builds the cases from its options; the ``paper`` preset is
Table 3 itself (the released Mamba and Pythia checkpoints, the six tasks). A verdict per model:
holds when every task lies within twice lm-eval's stderr plus the authors' stated noise of the
paper's value; undecided when the stderr is too wide to tell (a ``--limit`` run); a checkpoint the
paper does not list is scored, not judged. The same checkpoint under two backend choices shows
whether a kernel changes accuracy: the difference per task, with its stderr.
"""
from __future__ import annotations

import math
import re

import pandas as pd

from .base import Case, Suite, Verdict

NAME = "quality"
FN = "ssmbench.models.quality:quality_case"
PAPER_SETTING = "lm-eval harness, zero-shot, full test sets; acc (LAMBADA, PIQA, ARC-E, WinoGrande), acc_norm " \
                "(HellaSwag, ARC-C) ([M1] Table 3)"
# The metric [M1] Table 3 reports for each task (§4.2: normalised accuracy for HellaSwag and ARC-C).
TABLE3_METRICS = {"lambada_openai": "acc", "hellaswag": "acc_norm", "piqa": "acc", "arc_easy": "acc",
                  "arc_challenge": "acc_norm", "winogrande": "acc"}
TASKS = tuple(TABLE3_METRICS)
# [M1] Table 3 in percent, LAMBADA's perplexity first, in the order of TASKS; where each is published.
PAPER = {
    "Mamba-130M": (16.07, 44.3, 35.3, 64.5, 48.0, 24.3, 51.9),
    "Pythia-160M": (38.10, 33.0, 30.2, 61.4, 43.2, 24.1, 51.9),
    "Mamba-370M": (8.14, 55.6, 46.5, 69.5, 55.1, 28.0, 55.3),
    "Pythia-410M": (10.84, 51.4, 40.6, 66.9, 52.1, 24.6, 53.8),
    "Mamba-790M": (6.02, 62.7, 55.1, 72.1, 61.2, 29.5, 56.1),
    "Pythia-1B": (7.92, 56.1, 47.2, 70.7, 57.0, 27.1, 53.5),
    "Mamba-1.4B": (5.04, 64.9, 59.1, 74.2, 65.5, 32.8, 61.5),
    "Pythia-1.4B": (6.08, 61.7, 52.1, 71.0, 60.5, 28.5, 57.2),
    "Mamba-2.8B": (4.23, 69.2, 66.1, 75.2, 69.7, 36.3, 63.5),
    "Pythia-2.8B": (5.04, 64.7, 59.3, 74.0, 64.1, 32.9, 59.7),
}
HUB = {name: (f"state-spaces/{name.lower()}-hf" if name.startswith("Mamba") else f"EleutherAI/{name.lower()}")
       for name in PAPER}
NOISE = 0.3  # percentage points per task: "+-0.1-0.3" is the noise the authors state
WIDEST = 1.0  # a stderr (points) wider than this cannot tell a 0.3-point noise from a real change


def paper_row(model: str) -> str | None:
    """The Table 3 model a checkpoint (a folder or hub id) is, by its name: 'mamba-130m' ->
    'Mamba-130M'; None for one the paper does not list."""
    found = re.search(r"(mamba|pythia)-(\d+(?:\.\d+)?[mb])", str(model).lower())
    if not found:
        return None
    name = f"{found.group(1).capitalize()}-{found.group(2).upper()}"
    return name if name in PAPER else None


def paper_value(model: str, task: str) -> float | None:
    row = paper_row(model)
    return None if row is None else PAPER[row][1 + TASKS.index(task)] if task in TASKS else None


def quality_cases(models, tasks, backends=("auto",), *, limit: int = 0, batch_size: int = 1,
                  include_path: str = "", dtype: str = "float32", device: str = "cpu") -> list[Case]:
    return [Case(suite=NAME, fn=FN, series=f"{model} [{ops}]",
                 params={"model": str(model), "task": task, "metric": TABLE3_METRICS.get(task, ""),
                         "backends": ops, "limit": limit,
                         "batch_size": batch_size, "include_path": include_path, "dtype": dtype, "device": device},
                 # A full task is minutes to hours; the worker's limit is for a hung one only.
                 timeout_s=24 * 3600.0)
            for model in models for ops in backends for task in tasks]


def paper_preset() -> list[Case]:
    return quality_cases(HUB.values(), TASKS, batch_size=16, device="cuda")


def scores(rows: pd.DataFrame) -> pd.DataFrame:
    done = rows[rows["status"] == "ok"] if "status" in rows else rows
    if not len(done) or "value" not in done:
        return pd.DataFrame(columns=["model", "backends", "task", "metric", "ours", "stderr", "paper", "n_docs"])
    return pd.DataFrame({
        "model": done["model"], "backends": done["backends"], "task": done["task"], "metric": done["metric"],
        "ours": 100 * done["value"], "stderr": 100 * done["stderr"].astype(float), "n_docs": done["n_docs"],
        "paper": [paper_value(m, t) for m, t in zip(done["model"], done["task"])],
    }).reset_index(drop=True)


def judge(rows: pd.DataFrame, manifest: dict) -> list[Verdict]:
    from . import common

    table = scores(rows)
    verdicts = []
    for (model, ops), of_model in table[table["paper"].notna()].groupby(["model", "backends"], sort=False):
        name = paper_row(model)
        gaps = of_model.assign(gap=(of_model["ours"] - of_model["paper"]).abs(),
                               allowed=2 * of_model["stderr"] + NOISE)
        shown = "; ".join(f"{r.task} {r.ours:.1f} ± {r.stderr:.1f} (paper {r.paper:.1f})"
                          for r in gaps.itertuples())
        if (gaps["gap"] > gaps["allowed"]).any():
            verdict = "does not hold"
        elif (gaps["stderr"].isna() | (gaps["stderr"] > WIDEST)).any():
            verdict = "undecided"
        else:
            verdict = "holds"
        verdicts.append(Verdict(
            claim_id=f"C6.{name.lower()}-{re.sub(r'[^a-z0-9]+', '-', ops.lower()).strip('-')}",
            claim=f"C6: {name} scores Table 3's zero-shot accuracy", paper_setting=PAPER_SETTING,
            paper_value=", ".join(f"{t} {paper_value(model, t):.1f}" for t in of_model["task"]),
            device=common.device_label(rows, manifest),
            setting=f"{model} in our model, backends {ops}; "
                    + ", ".join(f"{t}: {n:,} docs" for t, n in zip(of_model["task"], of_model["n_docs"])),
            measured=shown, verdict=verdict,
            reason=f"holds when every task lies within 2 x lm-eval's stderr + {NOISE} points (the authors' stated "
                   f"noise) of the paper's value and every stderr is within {WIDEST} point; does not hold when "
                   "a task lies farther; otherwise undecided (a --limit run is too small to tell)"))
    return verdicts


def backend_differences(table: pd.DataFrame) -> pd.DataFrame:
    """The same checkpoint and task under two backend choices: each choice's score minus the first
    one's, with the stderr of the difference (the two runs score the same documents)."""
    out = []
    for (model, task), group in table.groupby(["model", "task"], sort=False):
        if group["backends"].nunique() < 2:
            continue
        first = group.iloc[0]
        for r in group.iloc[1:].itertuples():
            out.append({"model": model, "task": task, "backends": r.backends, "against": first["backends"],
                        "difference (points)": r.ours - first["ours"],
                        "stderr of the difference": math.hypot(r.stderr, first["stderr"])})
    return pd.DataFrame(out)


def tables(rows: pd.DataFrame) -> dict[str, pd.DataFrame]:
    table = scores(rows)
    out = {"Table 3: zero-shot scores (percent), the paper beside ours": table}
    differences = backend_differences(table)
    if len(differences):
        out["Does a kernel change accuracy? The same checkpoint under two backend choices"] = differences
    return out


SUITE = Suite(
    name=NAME,
    description="C6: zero-shot quality (lm-eval) of real checkpoints in our models, Table 3 beside ours",
    presets={"paper": paper_preset}, judge=judge, tables=tables, default_preset="paper",
)
