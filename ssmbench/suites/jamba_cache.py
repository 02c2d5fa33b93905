"""C4: Jamba's KV cache against Llama-2, Mistral and Mixtral ([J] §2, Table 1).

Table 1 is regenerated twice: from the model configs by its formula (2 x attention layers x KV
heads x head dim x tokens x bytes per element), and by building each model's inference cache
(:func:`ssmbench.models.cache.build_cache`, real layer pattern) and summing the bytes of what
was allocated. At full width the caches are built on torch's "meta" device (shapes and bytes,
no memory); real allocations run at a scaled width on the CPU and at full width on a GPU, where
a cache that does not fit is recorded as out of memory.

Table 1 leaves out Mistral's 4096-token sliding window (its real cache stops growing there) and
Jamba's Mamba states (constant in the context); each row also carries those.
"""
from __future__ import annotations

from functools import partial
from pathlib import Path

import pandas as pd
import torch

from ..impls.checks import element_size
from ..models.cache import build_cache, kv_cache_bytes, mamba_state_bytes
from ..models.configs import JAMBA_V01, LLAMA2_7B, MISTRAL_7B, MIXTRAL_8X7B, get_model
from . import common
from .base import Case, Suite, Verdict

NAME = "jamba_cache"
MODELS = (LLAMA2_7B, MISTRAL_7B, MIXTRAL_8X7B, JAMBA_V01)
TABLE_TOKENS = 2**18  # "256K context"
TABLE_GIB = {"Llama-2-7B": 128, "Mistral-7B": 32, "Mixtral-8x7B": 32, "Jamba-v0.1": 4}  # [J] Table 1, "GB" = GiB
PAPER_SETTING = "256K-token context (2^18), 16-bit, batch 1; GB = GiB ([J] Table 1)"
GiB = 2**30


def measure_cache(model: str, context: int, divisor: int = 1, device: str = "meta", dtype: str = "bfloat16",
                  batch: int = 1) -> dict:
    """Build ``model``'s cache (widths divided by ``divisor``) for ``context`` tokens and count
    the bytes allocated: as Table 1 counts them (every token in every attention layer) and as
    the model really needs (sliding window honoured, Mamba states included)."""
    config = get_model(model)
    config = config.scaled(divisor) if divisor > 1 else config
    e = element_size(dtype)
    row = {"attention_layers": len(config.attention_layers), "kv_heads": config.n_kv_heads,
           "head_dim": config.head_dim, "formula_bytes": kv_cache_bytes(config, batch, context, e),
           "real_kv_formula_bytes": kv_cache_bytes(config, batch, context, e, honour_window=True),
           "mamba_formula_bytes": mamba_state_bytes(config, batch, e)}
    for honour, prefix in ((False, ""), (True, "real_")):
        before = torch.cuda.memory_allocated() if device == "cuda" else 0
        cache = build_cache(config, batch, context, dtype=dtype, device=device, honour_window=honour)
        parts = cache.bytes_by_kind()
        if honour:
            row.update(real_kv_bytes=parts["kv"], mamba_bytes=parts["mamba"], real_total_bytes=cache.nbytes)
        else:
            row["measured_bytes"] = parts["kv"]
        if device == "cuda":
            row[f"{prefix}device_allocated_bytes"] = torch.cuda.memory_allocated() - before
        del cache
    row["equal"] = (row["measured_bytes"] == row["formula_bytes"]
                    and row["real_kv_bytes"] == row["real_kv_formula_bytes"]
                    and row["mamba_bytes"] == row["mamba_formula_bytes"])
    return row


def _cases(full_device: str, real: list[tuple[str, int, tuple[int, ...]]]) -> list[Case]:
    """Full-width caches on ``full_device`` over a range of contexts, plus real allocations:
    (device, width divisor, contexts)."""
    runs = [(full_device, 1, tuple(2**k for k in range(10, 21, 2)) + (TABLE_TOKENS // 2, TABLE_TOKENS))]
    runs += real
    out = []
    for device, divisor, contexts in runs:
        for model in MODELS:
            for context in sorted(set(contexts)):
                out.append(Case(suite=NAME, fn=f"{__name__}:measure_cache", series=f"{model.name} on {device}",
                                params={"model": model.name, "context": context, "divisor": divisor,
                                        "device": device, "dtype": "bfloat16", "batch": 1}, timeout_s=120))
    return out


PRESETS = {
    "cpu-small": partial(_cases, "meta", [("cpu", 16, (2**10, 2**11, 2**12, 2**13))]),
    "gpu": partial(_cases, "meta", [("cuda", 1, (2**12, 2**14, 2**16, 2**18))]),
    # One short run on a lent GPU (scripts/gpu-lease.sh): the gpu preset, seconds in all.
    "gpu-lease": partial(_cases, "meta", [("cuda", 1, (2**12, 2**14, 2**16, 2**18))]),
    "paper": partial(_cases, "meta", [("cuda", 1, (2**12, 2**14, 2**16, 2**17, 2**18))]),
}


# Table 1.
def table1(rows: pd.DataFrame | None = None) -> pd.DataFrame:
    """Table 1 from the configs (the formula), the paper's value beside it, and, where ``rows``
    hold a full-width measurement at 2^18 tokens, the bytes the built cache allocated."""
    measured = {}
    if rows is not None and len(rows):
        full = _measured(rows)
        full = full[(full["divisor"] == 1) & (full["context"] == TABLE_TOKENS)]
        measured = full.groupby("model")["measured_bytes"].first().to_dict()
    records = []
    for m in MODELS:
        formula = kv_cache_bytes(m, 1, TABLE_TOKENS, 2)
        got = measured.get(m.name)
        records.append({
            "model": m.name, "attention layers": f"{len(m.attention_layers)} of {m.n_layers}"
            if len(m.attention_layers) < m.n_layers else str(m.n_layers),
            "KV heads": m.n_kv_heads, "head dim": m.head_dim,
            "paper KV cache": f"{TABLE_GIB[m.name]} GiB", "formula": common.gib(formula),
            "formula == paper": formula == TABLE_GIB[m.name] * GiB,
            "built cache": common.gib(got) if got is not None else "not measured",
            "built == formula": bool(got == formula) if got is not None else None,
            "paper params total / active": f"{m.stated_params[0]}B / {m.stated_params[1]}B",
            "params from config": f"{m.param_count() / 1e9:.1f}B / {m.param_count(active=True) / 1e9:.1f}B",
        })
    return pd.DataFrame(records)


def left_out() -> pd.DataFrame:
    """What Table 1's formula leaves out, at its 2^18 tokens, 16-bit, batch 1."""
    records = []
    for m in MODELS:
        table = kv_cache_bytes(m, 1, TABLE_TOKENS, 2)
        kv = kv_cache_bytes(m, 1, TABLE_TOKENS, 2, honour_window=True)
        mamba = mamba_state_bytes(m, 1, 2)
        records.append({"model": m.name, "Table 1 KV cache": common.gib(table),
                        "sliding window": m.sliding_window or "none", "KV cache with window": common.gib(kv),
                        "Mamba state (bytes)": mamba, "Mamba state": f"{mamba / 2**20:.2f} MiB",
                        "real cache": common.gib(kv + mamba)})
    return pd.DataFrame(records)


def _measured(rows: pd.DataFrame) -> pd.DataFrame:
    if rows.empty or "measured_bytes" not in rows:
        return rows.iloc[0:0]
    return rows[(rows["status"] == "ok") & rows["measured_bytes"].notna()]


# Verdicts.
def judge(rows: pd.DataFrame, manifest: dict) -> list[Verdict]:
    device = common.device_label(rows, manifest)
    m = _measured(rows)
    t1 = table1(rows)
    at_table = t1["built == formula"].dropna()
    table_ok = bool(t1["formula == paper"].all()) and bool(at_table.all())
    verdicts = [Verdict(
        claim_id="C4.table1",
        claim="C4: Table 1, KV cache at 256K tokens: Llama-2 128, Mistral 32, Mixtral 32, Jamba 4 GiB",
        paper_setting=PAPER_SETTING, paper_value="128 / 32 / 32 / 4 GiB", device=device,
        setting="formula from the configs; caches built at full width (meta device) at 2^18 tokens",
        measured=" / ".join(t1["formula"]) + f" by formula; built caches: {' / '.join(t1['built cache'])}",
        verdict="holds" if table_ok else "does not hold",
        reason="holds when the formula gives the paper's value for every model, exactly, and every cache "
               "built at 2^18 tokens allocates the formula's bytes" + ("" if len(at_table) else
                                                                        " (no built cache at 2^18 in this run)"))]
    if m.empty:
        verdicts.append(Verdict(claim_id="C4.cache-bytes-exact",
                                claim="C4: allocated cache bytes equal the formula to the byte",
                                paper_setting=PAPER_SETTING, paper_value="(formula)", device=device, setting="",
                                measured="no cache was built", verdict="not measured",
                                reason="the measure_cache cases did not run or failed"))
        return verdicts
    failed = rows[rows["status"] != "ok"]
    settings = ", ".join(f"{d} at width/{int(k)}" for d, k in m.groupby(["device", "divisor"]).groups)
    verdicts.append(Verdict(
        claim_id="C4.cache-bytes-exact", claim="C4: allocated cache bytes equal the formula to the byte",
        paper_setting=PAPER_SETTING, paper_value="(formula)", device=device,
        setting=f"{settings}; contexts {int(m['context'].min())}..{int(m['context'].max())}",
        measured=f"{int(m['equal'].sum())} of {len(m)} caches equal (KV as Table 1 counts it, KV with the "
                 f"window, Mamba state)"
                 + (f"; not built: {len(failed)} ({', '.join(sorted(set(failed['status'])))})" if len(failed) else ""),
        verdict="holds" if m["equal"].all() else "does not hold",
        reason="holds when every built cache's KV bytes (with and without the sliding window) and Mamba-state "
               "bytes equal their closed forms"))
    ratios = _ratios(m)
    verdicts.append(Verdict(
        claim_id="C4.kv-cache-8x",
        claim="C4: Jamba's KV cache is 8x smaller than a vanilla Transformer's (32 -> 4 attention layers)",
        paper_setting=PAPER_SETTING, paper_value="8x (32 GiB vs 4 GiB at equal KV heads)", device=device,
        setting="Mistral-7B (32 attention layers, 8 KV heads) against Jamba (4 of 32, 8 KV heads), same width",
        measured=(f"Mistral / Jamba KV bytes: {', '.join(sorted({f'{r:g}x' for r in ratios}))} over "
                  f"{len(ratios)} built pairs") if ratios else "no built pair",
        verdict="not measured" if not ratios else "holds" if all(r == 8 for r in ratios) else "does not hold",
        reason="holds when the built caches' ratio is exactly 8 at every context and width measured"))
    return verdicts


def _ratios(m: pd.DataFrame) -> list[float]:
    if m.empty:
        return []
    wide = m.pivot_table(index=["device", "divisor", "context"], columns="model", values="measured_bytes",
                         aggfunc="first")
    if not {"Mistral-7B", "Jamba-v0.1"} <= set(wide.columns):
        return []
    pairs = wide[["Mistral-7B", "Jamba-v0.1"]].dropna()
    return list(pairs["Mistral-7B"] / pairs["Jamba-v0.1"])


# Report pieces.
def tables(rows: pd.DataFrame) -> dict[str, pd.DataFrame]:
    columns = ["model", "device", "divisor", "context", "attention_layers", "kv_heads", "head_dim", "measured_bytes",
               "formula_bytes", "equal", "real_kv_bytes", "mamba_bytes", "real_total_bytes",
               "device_allocated_bytes", "status", "reason"]
    cases = rows[[c for c in columns if c in rows]].sort_values(["device", "divisor", "model", "context"])
    return {"Table 1, regenerated (paper value beside ours)": table1(rows),
            "What Table 1 leaves out (2^18 tokens, 16-bit)": left_out(),
            "Built caches": cases.reset_index(drop=True)}


def figures(rows: pd.DataFrame, folder: Path) -> list[Path]:
    m = _measured(rows)
    full = m[m["divisor"] == 1].drop_duplicates(["model", "context"]).sort_values("context")
    if full.empty:
        return []
    # Models whose caches coincide (Mistral and Mixtral) share one line.
    same: dict[tuple, list[str]] = {}
    for model, g in full.groupby("model", sort=False):
        same.setdefault(tuple(zip(g["context"], g["measured_bytes"])), []).append(model)
    lines = [(f"{' = '.join(models)}: KV cache (Table 1)", [c for c, _ in key], [b / GiB for _, b in key], None)
             for key, models in same.items()]
    lines += [(f"{model}: real cache (window, Mamba state)", g["context"], g["real_total_bytes"] / GiB, None)
              for model, g in full.groupby("model", sort=False) if model in ("Mistral-7B", "Jamba-v0.1")]
    return [common.loglog_figure(Path(folder) / "jamba_cache.png", lines, xlabel="context (tokens)",
                                 ylabel="cache per sequence (GiB, 16-bit)",
                                 title="C4: inference cache vs context (built caches, full width)")]


def paper_tables(rows: pd.DataFrame) -> dict[str, pd.DataFrame]:
    return {"Jamba Table 1: KV cache at 256K tokens, 16-bit": table1(rows),
            "What Jamba Table 1 leaves out": left_out()}


def paper_values(rows: pd.DataFrame) -> pd.DataFrame:
    ratios = _ratios(_measured(rows))
    analytic = kv_cache_bytes(MISTRAL_7B, 1, TABLE_TOKENS, 2) / kv_cache_bytes(JAMBA_V01, 1, TABLE_TOKENS, 2)
    measured = f"{ratios[0]:g}x (built caches)" if ratios and len(set(ratios)) == 1 else \
        f"{', '.join(f'{r:g}' for r in sorted(set(ratios)))}x" if ratios else f"{analytic:g}x (formula only)"
    return pd.DataFrame([{"claim": "C4", "quantity": "KV cache, vanilla Transformer / Jamba", "paper": "8x",
                          "measured": measured, "device": common.device_label(rows) if ratios else ""}])


SUITE = Suite(
    name=NAME,
    description="C4: KV cache of Jamba against Llama-2, Mistral and Mixtral (Table 1), formula and built caches",
    presets=PRESETS, judge=judge, figures=figures, tables=tables,
    extra={"paper_values": paper_values, "paper_tables": paper_tables},
    figure_of={c: ("jamba_cache.png",) for c in ("C4.table1", "C4.cache-bytes-exact", "C4.kv-cache-8x")},
)
