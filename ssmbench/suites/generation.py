"""C2: Mamba generates 4-5x faster than a Transformer of similar size, at each model's best
batch ([M1] §4.5, Fig. 8 right); and an untrained Mamba-6.9B out-runs a Transformer-1.3B.

Each case greedily generates ``gen`` tokens after a ``prompt``-token prompt at one batch size
(:func:`ssmbench.models.generate.generation_case`): our Mamba and our Transformer (static cache,
CUDA graphs for every decode step on a GPU), and the Hugging Face model of the Transformer's shape
with ``generate()``, the baseline the paper ran. Throughput = batch x gen / (prefill + decode
time). A batch that does not fit is recorded as "oom": on a GPU when the allocator says so, on
the CPU when weights + cache exceed the preset's stated budget.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ..harness.derived import matmul_tflops
from ..models.configs import get_model
from ..models.generate import GIB, case_config, footprint, max_batch
from ..models.roofline import Regime, StepWork, regime
from . import common
from .base import Case, Suite, Verdict

NAME = "generation"
FN = "ssmbench.models.generate:generation_case"
PAPER_SETTING = ("A100 80GB PCIe; Mamba-1.4B vs Transformer-1.3B (and Mamba-6.9B, Transformer-6.7B); prompt 2048, "
                 "generate 128; batch 1..128; fp16; 3 repeats averaged ([M1] §4.5)")
PAPER_RATIO = 4.0  # "4-5x": the claim holds from its lower end


@dataclass(frozen=True)
class Model:
    config: str  # a name in models.configs.MODELS, or a checkpoint's name
    impl: str = "ssmbench"  # or "hf"
    batches: tuple[int, ...] = ()  # () = the setting's
    checkpoint: str = ""  # a checkpoint folder or hub id: its weights, at its own shape

    @classmethod
    def of_checkpoint(cls, path_or_id: str, impl: str = "ssmbench") -> "Model":
        """The model of a checkpoint, labelled by its name; its config is read now, so that a
        missing or unsupported checkpoint is refused before any case runs."""
        from ..models.checkpoints import checkpoint_name, read_config

        read_config(path_or_id)
        return cls(checkpoint_name(path_or_id), impl, checkpoint=str(path_or_id))

    def params(self) -> dict:
        """The case parameters that say which model: a checkpoint keeps its own shape."""
        if self.checkpoint:
            return {"model": self.config, "impl": self.impl, "checkpoint": self.checkpoint}
        return {"model": self.config, "impl": self.impl}

    @property
    def series(self) -> str:
        return f"{self.config} ({'ours' if self.impl == 'ssmbench' else 'HF generate()'})"


@dataclass(frozen=True)
class Comparison:
    claim_id: str
    claim: str
    fast: str  # series
    slow: str
    paper_value: str
    threshold: float  # the ratio at which the claim holds


@dataclass(frozen=True)
class Setting:
    device: str
    dtype: str
    prompt: int
    gen: int
    batches: tuple[int, ...]
    models: tuple[Model, ...]
    comparisons: tuple[Comparison, ...]
    scale: int = 1  # widths divided by this (ModelConfig.scaled); depth and pattern kept
    # Depth and vocabulary divided by this, widths kept: every layer as published, each model
    # keeping its share of layers to LM head, so a step moves the published bytes per layer.
    depth_cut: int = 1
    prefill: bool = True  # False: the prompt's cache is taken as written; decode alone is timed
    repeats: int = 3
    budget_gib: float = 0.0  # CPU: weights + cache above this are recorded as oom, not run
    threads: int = 0
    timeout_s: float = 300.0
    backends: str = "auto"

    def shape(self, model: Model) -> dict:
        """The case parameters of the model's size in this setting: a checkpoint keeps its own."""
        if model.checkpoint:
            return {"scale": 1}
        if self.depth_cut == 1:
            return {"scale": self.scale}
        config = get_model(model.config)
        return {"scale": self.scale, "layers": max(1, round(config.n_layers / self.depth_cut)),
                "vocab": config.vocab_size // self.depth_cut}


def shown(series: str, scale: int = 1, layers: int = 0) -> str:
    """A series named as it ran: "Mamba-1.4B (ours)" at widths / 8 is "Mamba-1.4B /8 width (ours)",
    so that a scaled-down model is never read as the published one."""
    cut = ", ".join(filter(None, (f"/{scale} width" if scale > 1 else "", f"{layers} layers" if layers else "")))
    if not cut:
        return series
    name, sep, impl = series.partition(" (")
    return f"{name} {cut}" + (f" ({impl}" if sep else "")


def labelled(rows: pd.DataFrame) -> pd.DataFrame:
    """``rows`` with each series named as it ran (:func:`shown`): for tables and figures."""
    if rows.empty or "series" not in rows:
        return rows

    def size(column):
        return rows[column].fillna(0).astype(int) if column in rows else pd.Series(0, index=rows.index)

    return rows.assign(series=[shown(s, sc, la) for s, sc, la in zip(rows["series"], size("scale"), size("layers"))])


MAMBA, TRANSFORMER = Model("Mamba-1.4B"), Model("Transformer-1.3B")
HF = Model("Transformer-1.3B", "hf")
SMALL_MAMBA, SMALL_TRANSFORMER = Model("Mamba-130M"), Model("Transformer-125M")
SMALL_HF = Model("Transformer-125M", "hf")


def _main_comparisons(mamba: Model = MAMBA, ours: Model = TRANSFORMER, hf: Model = HF) -> tuple[Comparison, ...]:
    return (
        Comparison("C2.throughput-vs-hf",
                   "C2: Mamba's generation throughput is 4-5x a Transformer's (best batch; HF generate() "
                   "baseline, as the paper's)", mamba.series, hf.series, "4-5x", PAPER_RATIO),
        Comparison("C2.throughput-vs-ours",
                   "C2: Mamba's generation throughput is 4-5x a Transformer's (best batch; our static-cache "
                   "Transformer with CUDA graphs, a stronger baseline than the paper's)", mamba.series, ours.series,
                   "4-5x", PAPER_RATIO),
    )


BIG = Comparison("C2.mamba-6.9b-vs-transformer-1.3b",
                 "C2: an (untrained) Mamba-6.9B has higher generation throughput than a Transformer-1.3B",
                 Model("Mamba-6.9B").series, TRANSFORMER.series, "higher (figure only)", 1.0)

SETTINGS = {
    # The mechanism of the 4-5x on a 2-core CPU: published widths (so that a step's time is its
    # bytes and FLOPs, not per-operation overhead), depth and vocabulary / 12, a 2016-token context
    # whose KV cache a Transformer re-reads every step (written, not computed: a computed prefill
    # of 2016 tokens x 64 sequences would take minutes here), batches up to where the
    # Transformer's KV cache is most of its bytes. Transformer-1.3B's 2048 learned positions
    # bound prompt + gen. generate()'s DynamicCache appends with torch.cat, copying the whole
    # cache every step (measured: about 20 tokens/s at batch 1 and at batch 4), so its batches stop at
    # 16, past its best. Mamba-6.9B at 4096 wide is compute-bound from batch 16 (1 s a step at
    # batch 64, measured), so it stops there.
    "cpu-small": Setting(
        device="cpu", dtype="float32", prompt=2016, gen=16, batches=(1, 4, 16, 64), depth_cut=12, prefill=False,
        repeats=2, models=(MAMBA, TRANSFORMER, Model(HF.config, HF.impl, batches=(1, 4, 16)),
                           Model("Mamba-6.9B", batches=(1, 16))),
        comparisons=_main_comparisons() + (BIG,), budget_gib=12.0, threads=1, timeout_s=300),
    "gpu": Setting(
        device="cuda", dtype="float16", prompt=2048, gen=128, batches=(1, 2, 4, 8, 16, 32, 64), repeats=3,
        models=(MAMBA, TRANSFORMER, HF, Model("Mamba-6.9B", batches=(1, 8, 64))),
        comparisons=_main_comparisons() + (BIG,), timeout_s=300),
    # One short run on a lent GPU (scripts/gpu-lease.sh): the smallest published sizes, the paper's
    # prompt and generation lengths, a short batch sweep.
    "gpu-lease": Setting(
        device="cuda", dtype="float16", prompt=2048, gen=128, batches=(1, 64), repeats=2,
        models=(SMALL_MAMBA, SMALL_TRANSFORMER, SMALL_HF),
        comparisons=_main_comparisons(SMALL_MAMBA, SMALL_TRANSFORMER, SMALL_HF), timeout_s=120),
    "paper": Setting(
        device="cuda", dtype="float16", prompt=2048, gen=128, batches=tuple(2**k for k in range(8)), repeats=3,
        models=(MAMBA, TRANSFORMER, HF, Model("Mamba-6.9B"), Model("Transformer-6.7B"),
                Model("Transformer-6.7B", "hf")),
        comparisons=_main_comparisons() + (BIG,) + (
            Comparison("C2.throughput-6.9b-vs-6.7b-hf",
                       "C2: Mamba-6.9B's generation throughput is 4-5x Transformer-6.7B's (best batch; HF "
                       "generate())", Model("Mamba-6.9B").series, Model("Transformer-6.7B", "hf").series, "4-5x",
                       PAPER_RATIO),),
        timeout_s=900),
}


def cases(s: Setting, models: tuple[Model, ...] = ()) -> list[Case]:
    out = []
    for model in models or s.models:
        for batch in model.batches or s.batches:
            params = {**model.params(), "batch": batch, "prompt": s.prompt, "gen": s.gen,
                      "dtype": s.dtype, "device": s.device, **s.shape(model),
                      "repeats": s.repeats, "budget_gib": s.budget_gib, "threads": s.threads, "backends": s.backends,
                      **({} if s.prefill else {"prefill": False})}
            out.append(Case(suite=NAME, fn=FN, params=params, series=model.series, timeout_s=s.timeout_s))
    return out


def checkpoint_cases(preset: str, path_or_id: str) -> list[Case]:
    """A checkpoint at the preset's setting, in our model and in transformers' (generate())."""
    return cases(SETTINGS[preset], tuple(Model.of_checkpoint(path_or_id, impl) for impl in ("ssmbench", "hf")))


# Analysis.
def ok_rows(rows: pd.DataFrame) -> pd.DataFrame:
    if rows.empty or "tokens_per_s" not in rows:
        return rows.iloc[0:0]
    return rows[(rows["status"] == "ok") & rows["tokens_per_s"].notna()]


def best_batch(rows: pd.DataFrame) -> pd.DataFrame:
    """Per series: the batch with the highest throughput, and the largest batch that ran."""
    done = ok_rows(rows)
    records = []
    for series, group in done.groupby("series", sort=False):
        best = group.loc[group["tokens_per_s"].idxmax()]
        ran = rows[rows["series"] == series]
        failed = ran[ran["status"] != "ok"]
        records.append({
            "series": series, "model": best["model_name"], "params": int(best["n_params"]),
            "best batch": int(best["batch"]), "tokens/s": best["tokens_per_s"], "prefill ms": best["prefill_ms"],
            "decode ms/token": best["decode_ms_per_token"], "largest batch run": int(group["batch"].max()),
            "batches not run": ", ".join(f"{int(r.batch)} ({r.status})" for r in failed.itertuples()) or "-"})
    return pd.DataFrame(records)


def ratio(best: pd.DataFrame, fast: str, slow: str) -> tuple[float, pd.Series, pd.Series] | None:
    if best.empty or fast not in set(best["series"]) or slow not in set(best["series"]):
        return None
    a = best[best["series"] == fast].iloc[0]
    b = best[best["series"] == slow].iloc[0]
    return float(a["tokens/s"] / b["tokens/s"]), a, b


def throughput_interval(a: pd.Series, b: pd.Series) -> tuple[float, float]:
    """The 95% bootstrap interval of the throughput ratio of case row ``a`` over case row ``b``,
    from each case's timed repeats (tokens/s = batch x gen / time per call); NaN where either
    kept no repeats."""
    if not isinstance(a.get("samples_ms"), list) or not isinstance(b.get("samples_ms"), list):
        return np.nan, np.nan
    _, low, high = common.speedup(b["samples_ms"], a["samples_ms"])
    work = (a["batch"] * a["gen"]) / (b["batch"] * b["gen"])
    return low * work, high * work


def case_row(rows: pd.DataFrame, series: str, **fields) -> pd.Series:
    """The ok row of ``series`` with ``fields`` (e.g. batch=8)."""
    mine = ok_rows(rows)
    mine = mine[mine["series"] == series]
    for name, value in fields.items():
        mine = mine[mine[name] == value]
    return mine.iloc[0]


_WORK_COLUMNS = ("decode_ms_per_token", "step_flops", "step_bytes", "step_kv_bytes")


def step_regime(row: pd.Series, ceilings: dict) -> Regime | None:
    """A case row's measured decode step against its floors at the run's measured ceilings; None
    for a row without its step's work (one stored before it was recorded) or a run without ceilings."""
    tflops = matmul_tflops(ceilings, row.get("dtype"))
    if not tflops or not ceilings.get("copy_gbps") or any(pd.isna(row.get(c)) for c in _WORK_COLUMNS):
        return None
    work = StepWork(row["step_flops"], row["step_bytes"], row["step_kv_bytes"])
    return regime(row["decode_ms_per_token"] / 1e3, work, tflops * 1e12, ceilings["copy_gbps"] * 1e9)


def mechanism(named: list[tuple[str, pd.Series]], manifest: dict) -> tuple[str, str]:
    """(short, long) words on what bound each named case row's decode step, as measured: the
    short for the verdict's measured value, the long for its reason."""
    ceilings = (manifest or {}).get("ceilings") or {}
    found = [(name, r, row) for name, row in named if (r := step_regime(row, ceilings)) is not None]
    if not found:
        return "", ""
    short = "; decode " + ", ".join(f"{name.partition(' (')[0]} {r.bound} ({r.over_floor:.1f}x its {r.nearer} floor, "
                                    f"KV cache {r.kv_share:.0%} of its bytes)" for name, r, _ in found)
    threads = ((manifest or {}).get("environment") or {}).get("torch_threads")
    dtype = named[0][1].get("dtype")
    tflops = matmul_tflops(ceilings, dtype)
    per_byte = tflops * 1e12 / (ceilings["copy_gbps"] * 1e9)
    words = {
        "above its floors": "its time is set by per-operation overhead or by kernels running below this machine's "
                            "peak rates, not by the bytes or FLOPs themselves",
        "compute-bound": f"its matmuls, not the bytes it reads, set its time on this device ({per_byte:.0f} FLOPs "
                         f"per byte of copy bandwidth)",
        "memory-bound": "the bytes it reads set its time",
    }
    long = (f"; the paper's ratio rests on memory-bound decode, in which the attention layers re-read a KV cache "
            f"that grows with the context while a Mamba layer's state stays fixed. Measured against the floors at "
            f"this run's ceilings (copy {ceilings['copy_gbps']:.3g} GB/s, matmul {tflops:.3g} TFLOP/s for {dtype}, "
            f"on {threads or '?'} thread(s)): "
            + "; ".join(f"{name}: {r.describe()}: {words[r.bound]}" for name, r, _ in found))
    if len(found) == 2:
        # The most these batches allow on this machine: each step at its higher floor.
        (_, fast, a), (_, slow, b) = found
        at_floors = (a["batch"] / fast.floor_s) / (b["batch"] / slow.floor_s)
        long += f"; with both steps at their floors, decode throughput would be {at_floors:.2f}x"
    return short, long


def judge_comparisons(rows: pd.DataFrame, manifest: dict, comparisons, paper_setting: str) -> list[Verdict]:
    device = common.device_label(rows, manifest)
    setting = _setting_text(rows)
    best = best_batch(rows)
    names = dict(zip(rows["series"], labelled(rows)["series"])) if "series" in rows else {}
    verdicts = []
    for c in comparisons:
        base = dict(claim_id=c.claim_id, claim=c.claim, paper_setting=paper_setting, paper_value=c.paper_value,
                    device=device,
                    setting=setting)
        r = ratio(best, c.fast, c.slow)
        if r is None:
            verdicts.append(Verdict(**base, measured="not measured", verdict="not measured",
                                    reason=_why_missing(rows, best, (c.fast, c.slow))))
            continue
        value, a, b = r
        fast, slow = case_row(rows, c.fast, batch=a["best batch"]), case_row(rows, c.slow, batch=b["best batch"])
        low, high = throughput_interval(fast, slow)
        short, long = mechanism([(names.get(c.fast, c.fast), fast), (names.get(c.slow, c.slow), slow)], manifest)
        measured = (f"{value:.2f}x [{low:.2f}, {high:.2f}]: {names.get(c.fast, c.fast)} {a['tokens/s']:,.1f} "
                    f"tokens/s at batch "
                    f"{int(a['best batch'])} vs {names.get(c.slow, c.slow)} {b['tokens/s']:,.1f} tokens/s at batch "
                    f"{int(b['best batch'])}{short}")
        reason = (f"holds when the best-batch throughput ratio's 95% bootstrap interval (over the timed repeats) "
                  f"lies at or above {c.threshold:g}x, does not hold when it lies below, otherwise undecided{long}")
        verdicts.append(Verdict(**base, measured=measured, verdict=common.interval_verdict(low, high, c.threshold),
                                reason=reason))
    return verdicts


def _why_missing(rows: pd.DataFrame, best: pd.DataFrame, series: tuple[str, ...]) -> str:
    ran = set(best["series"]) if len(best) else set()
    reasons = []
    for name in series:
        if name in ran:
            continue
        mine = rows[rows["series"] == name] if "series" in rows else rows.iloc[0:0]
        if mine.empty:
            reasons.append(f"this preset has no {name} cases")
        else:
            reasons.append(f"no batch of {name} ran: {mine['reason'].astype(str).iloc[0]}")
    return "; ".join(reasons)


def _setting_text(rows: pd.DataFrame) -> str:
    done = ok_rows(rows)
    if done.empty:
        return ""
    first = done.iloc[0]
    batches = sorted(int(b) for b in rows["batch"].dropna().unique())
    scale = int(first.get("scale", 1) or 1)
    cut = _depth_text(done)
    size = cut or ("published shapes" if scale == 1 else f"widths / {scale}, depth kept")
    written = "prefill" in done and (done["prefill"] == False).any()  # noqa: E712 - a column of bools and NaN
    prompt = (f"prompt {int(first['prompt'])} written into the cache, not computed (decode alone timed, at that "
              f"context)" if written else f"prompt {int(first['prompt'])}")
    return (f"{size}; {prompt}, generate {int(first['gen'])}; batch {batches[0]}..{batches[-1]}; "
            f"{first['dtype']}; {int(first['repeats'])} repeats averaged; CUDA graphs for our decode steps: "
            f"{'yes' if bool(done.get('cuda_graphs', pd.Series([False])).fillna(False).any()) else 'no'}")


def _depth_text(done: pd.DataFrame) -> str:
    """The depth cut in words, from each model's layers against its published depth; "" when
    every model ran at its published depth."""
    if "layers" not in done or not done["layers"].fillna(0).astype(bool).any():
        return ""
    cuts = []
    for model, group in done.groupby("model", sort=False):
        layers = int(group["layers"].fillna(0).iloc[0])
        if layers:
            cuts.append(f"{model} {layers} of {get_model(model).n_layers} layers")
    scale = int(done["scale"].fillna(1).iloc[0]) if "scale" in done else 1
    if scale != 1:
        return f"widths / {scale}, depth and vocabulary cut in proportion ({', '.join(cuts)})"
    return (f"published widths, depth and vocabulary cut in proportion ({', '.join(cuts)}): every layer as "
            "published and each model's share of layers to LM head kept, so that a decode step moves the "
            "published bytes per layer")


def judge(rows: pd.DataFrame, manifest: dict) -> list[Verdict]:
    preset = (manifest or {}).get("preset")
    comparisons = SETTINGS[preset].comparisons if preset in SETTINGS else _main_comparisons() + (BIG,)
    return judge_comparisons(rows, manifest, comparisons, PAPER_SETTING)


# Report pieces, shared with the jamba_throughput suite.
def throughput_table(rows: pd.DataFrame, index: str = "batch") -> pd.DataFrame:
    """tokens/s per ``index`` value (rows) and series (columns); a case that did not run shows
    its status."""
    if rows.empty or "series" not in rows:
        return pd.DataFrame()
    cells = rows.assign(cell=[f"{t:,.1f}" if s == "ok" and pd.notna(t) else s
                              for s, t in zip(rows["status"], rows.get("tokens_per_s", pd.Series(np.nan, rows.index)))])
    order = list(dict.fromkeys(rows["series"]))
    wide = cells.pivot_table(index=index, columns="series", values="cell", aggfunc="first")
    return wide[[s for s in order if s in wide.columns]].reset_index()


CASE_COLUMNS = ["series", "batch", "prompt", "gen", "status", "prefill_ms", "decode_ms_per_token", "total_ms",
                "tokens_per_s", "first_call_ms", "weight_bytes", "cache_bytes", "kv_bytes", "state_bytes",
                "peak_mem_bytes", "n_graphs", "ops", "reason"]


def case_table(rows: pd.DataFrame) -> pd.DataFrame:
    return rows[[c for c in CASE_COLUMNS if c in rows]].reset_index(drop=True)


def memory_table(rows: pd.DataFrame, max_len_column: str = "prompt") -> pd.DataFrame:
    """Per series: weights and cache per sequence from the exact byte accounting, the cache the
    cases allocated against that formula, and the largest batch the budget holds (the preset's
    stated budget, or on a GPU the device's memory)."""
    records = []
    for series, group in rows.groupby("series", sort=False):
        first = group.iloc[0]
        max_len = int(first[max_len_column] + first["gen"])
        config = case_config(first["model"], int(first.get("scale", 1) or 1), int(first.get("layers", 0) or 0),
                             int(first.get("vocab", 0) or 0), max_len, common.text(first.get("checkpoint")))
        one = footprint(config, 1, max_len, first["dtype"])
        budget = float(first.get("budget_gib", 0) or 0) * GIB or _device_bytes(rows)
        checked = ok_rows(group)["equal"].dropna() if "equal" in group else pd.Series(dtype=bool)
        match = f"{int(checked.astype(bool).sum())}/{len(checked)} equal" if len(checked) else "-"
        records.append({"series": series, "params": config.param_count(), "context": max_len,
                        "weights": common.gib(one.weights), "cache per sequence": f"{one.cache:,} B",
                        "allocated cache = formula": match,
                        "budget": common.gib(budget) if budget else "-",
                        "max batch in budget":
                            max_batch(config, int(budget), max_len, first["dtype"]) if budget else "-"})
    return pd.DataFrame(records)


def _device_bytes(rows: pd.DataFrame) -> float:
    if "device_memory_bytes" in rows and rows["device_memory_bytes"].notna().any():
        return float(rows["device_memory_bytes"].dropna().iloc[0])
    return 0.0


def tables(rows: pd.DataFrame) -> dict[str, pd.DataFrame]:
    rows = labelled(rows)
    out = {"Generation throughput (tokens/s) by batch": throughput_table(rows),
           "Best batch of each model": best_batch(rows),
           "Memory: weights + cache, exact bytes": memory_table(rows),
           "Cases": case_table(rows)}
    return {k: v for k, v in out.items() if len(v)}


def throughput_figure(rows: pd.DataFrame, path: Path, x: str, xlabel: str, title: str) -> Path | None:
    done = ok_rows(rows)
    if done.empty:
        return None
    lines = [(series, g[x], g["tokens_per_s"], None)
             for series, g in done.sort_values(x).groupby("series", sort=False)]
    return common.loglog_figure(path, lines, xlabel=xlabel, ylabel="generated tokens/s", title=title)


def figures(rows: pd.DataFrame, folder: Path) -> list[Path]:
    png = throughput_figure(labelled(rows), Path(folder) / "generation_throughput.png", "batch", "batch size",
                            f"C2: generation throughput vs batch ({common.device_label(rows)})")
    return [png] if png else []


SUITE = Suite(
    name=NAME,
    description="C2: generation throughput of Mamba vs a Transformer (ours and Hugging Face) by batch",
    presets=common.presets(cases, SETTINGS),
    judge=judge, figures=figures, tables=tables, checkpoint_cases=checkpoint_cases,
    figure_of={c.claim_id: ("generation_throughput.png",) for s in SETTINGS.values() for c in s.comparisons},
)
