"""C5: training memory of Mamba against a Transformer with FlashAttention-2 ([M1] Table 15), and
training throughput of Mamba and Mamba-2 against a Transformer as the length grows.

Memory: one training step (forward, next-token loss, backward, AdamW step) of a 125M Mamba and a
125M GPT-3-style Transformer at L=2048, batch 1..32, counted exactly
(:func:`ssmbench.models.train.training_memory_case`): parameters + gradients + AdamW states + the
activations autograd saves. The count runs on torch's "meta" device, so it is the same on every
machine and gated as such; on a GPU the same step's ``torch.cuda.max_memory_allocated`` is
reported beside it. The count is of our model with the named backends: on the CPU, torch's flash
kernel for attention (it saves what FlashAttention-2 saves) and our blocked torch scan, whose
autograd keeps the intermediates of its torch ops; the paper's Mamba ran fused CUDA kernels that
save their inputs alone and recompute the states in the backward pass, as our Triton scan and
SSD do (the lease preset's GPU step runs them).

Throughput: training tokens/s = batch x L / median step time, and the length where each SSM's step
becomes faster than the Transformer's (the crossover), with a bootstrap interval over the raw step
times. The CPU preset runs scaled-down models (widths / 16, a few layers each, the depths chosen
so that the weights outside the embeddings are equal within 5%, as they are at 125M).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ..models.configs import get_model
from . import common
from .base import Case, Suite, Verdict

NAME = "training"
MEMORY_FN = "ssmbench.models.train:training_memory_case"
STEP_FN = "ssmbench.models.train:training_step_case"
PAPER_SETTING = ("one A100 80GB; 125M models, L=2048, one training step; Transformer with FlashAttention-2, "
                 "Mamba with its fused kernels ([M1] Table 15)")
# batch: (Transformer + FlashAttention-2, Mamba), GB ([M1] Table 15).
PAPER_GB = {1: (4.6, 4.8), 2: (5.2, 5.8), 4: (6.9, 7.3), 8: (11.5, 12.3), 16: (20.7, 23.1), 32: (34.5, 38.2)}
# Mamba / Transformer in the paper: 1.04 (batch 1) to 1.12 (batch 2 and 16). The claim, "comparable
# memory", holds here when every batch's ratio lies within the paper's largest gap either way.
PAPER_MAX_RATIO = 1.12
GB = 1e9  # the paper does not say whether its GB are 10^9 or 2^30 bytes; ours are 10^9


@dataclass(frozen=True)
class Model:
    config: str  # a name in models.configs.MODELS
    backends: str = "auto"
    layers: int = 0  # 0: the config's depth

    @property
    def series(self) -> str:
        return f"{self.config} ({self.backends})"


@dataclass(frozen=True)
class Setting:
    memory_device: str  # "meta" (the exact count only) or "cuda" (also the allocator's peak)
    memory_models: tuple[Model, ...]
    batches: tuple[int, ...]
    step_device: str
    step_models: tuple[Model, ...]
    lengths: tuple[int, ...]
    step_batch: int = 1
    seqlen: int = 2048
    scale: int = 1  # widths of the throughput models divided by this
    vocab: int = 0  # 0: the config's
    dtype: str = "float32"
    threads: int = 0
    budget_s: float = 2.0
    max_repeats: int = 20
    timeout_s: float = 600.0


CPU_MAMBA, CPU_MAMBA2 = "selective_scan=torch_fast,causal_conv1d=torch", "ssd=torch_chunked,causal_conv1d=torch"
GPU_MAMBA = "selective_scan=mamba_ssm,causal_conv1d=causal_conv1d"
GPU_MAMBA2 = "ssd=mamba_ssm,causal_conv1d=causal_conv1d"
CPU_MEMORY = (Model("Mamba-130M", CPU_MAMBA), Model("Transformer-125M", "attention=sdpa_flash_cpu"))
GPU_MEMORY = (Model("Mamba-130M", GPU_MAMBA), Model("Transformer-125M", "attention=flash_attn"))
# A lease rarely finishes building mamba-ssm in its time; our Triton scan and SSD need no build and
# recompute their states in the backward pass, as mamba-ssm's kernels do.
LEASE_MAMBA = "selective_scan=triton,causal_conv1d=torch"
LEASE_MAMBA2 = "ssd=triton,causal_conv1d=torch"
LEASE_MEMORY = (Model("Mamba-130M", LEASE_MAMBA), Model("Transformer-125M", "attention=sdpa_flash"))


def _step_models(mamba: str, mamba2: str, attention: str, layers: tuple[int, int, int] = (0, 0, 0)):
    return (Model("Mamba-130M", mamba, layers[0]), Model("Mamba-2-130M", mamba2, layers[1]),
            Model("Transformer-125M", attention, layers[2]))


GPU_STEPS = _step_models(GPU_MAMBA, GPU_MAMBA2, "attention=flash_attn")
BATCHES = (1, 2, 4, 8, 16, 32)

SETTINGS = {
    "cpu-small": Setting(
        memory_device="meta", memory_models=CPU_MEMORY, batches=BATCHES, step_device="cpu",
        step_models=_step_models(CPU_MAMBA, CPU_MAMBA2, "attention=sdpa", layers=(3, 2, 2)),
        lengths=(256, 512, 1024, 2048), scale=16, vocab=512, threads=common.CPU_THREADS, budget_s=2.0,
        max_repeats=15, timeout_s=300),
    "gpu": Setting(
        memory_device="cuda", memory_models=GPU_MEMORY, batches=BATCHES, step_device="cuda", step_models=GPU_STEPS,
        lengths=(512, 1024, 2048, 4096, 8192), step_batch=8, dtype="bfloat16"),
    # One short run on a lent GPU (scripts/gpu-lease.sh). Attention through torch's FlashAttention-2
    # kernel (sdpa_flash): the flash-attn package is seldom built on such a machine.
    "gpu-lease": Setting(
        memory_device="cuda", memory_models=LEASE_MEMORY, batches=(1, 8, 32), step_device="cuda",
        step_models=_step_models(LEASE_MAMBA, LEASE_MAMBA2, "attention=sdpa_flash"), lengths=(1024, 4096, 8192),
        step_batch=8, dtype="bfloat16", budget_s=1.0, max_repeats=10, timeout_s=120),
    "paper": Setting(
        memory_device="cuda", memory_models=GPU_MEMORY, batches=BATCHES, step_device="cuda", step_models=GPU_STEPS,
        lengths=(512, 1024, 2048, 4096, 8192, 16384), step_batch=8, dtype="bfloat16", budget_s=5.0),
}


def cases(s: Setting) -> list[Case]:
    out = []
    for model in s.memory_models:
        for batch in s.batches:
            out.append(Case(suite=NAME, fn=MEMORY_FN, series=f"memory: {model.series}", timeout_s=s.timeout_s,
                            params={"model": model.config, "batch": batch, "seqlen": s.seqlen, "dtype": "float32",
                                    "device": s.memory_device, "backends": model.backends}))
    for model in s.step_models:
        for length in common.outside_in(s.lengths):
            out.append(Case(suite=NAME, fn=STEP_FN, series=f"step: {model.series}", timeout_s=s.timeout_s,
                            params={"model": model.config, "batch": s.step_batch, "seqlen": length, "scale": s.scale,
                                    "layers": model.layers, "vocab": s.vocab, "dtype": s.dtype,
                                    "device": s.step_device, "backends": model.backends, "threads": s.threads,
                                    "budget_s": s.budget_s, "max_repeats": s.max_repeats}))
    return out


# Analysis.
def _kind(model: str) -> str:
    """"transformer" (attention in every layer), "mamba" or "mamba2", from the model's config."""
    config = get_model(model)
    if not config.mamba_layers:
        return "transformer"
    return f"mamba{'' if config.mamba.version == 1 else config.mamba.version}"


def _ok_with(rows: pd.DataFrame, column: str) -> pd.DataFrame:
    """The ok rows that measured ``column``, with each model's kind."""
    if rows.empty or column not in rows:
        return rows.iloc[0:0]
    done = rows[(rows["status"] == "ok") & rows[column].notna()]
    return done.assign(kind=done["model"].map(_kind))


def memory_rows(rows: pd.DataFrame) -> pd.DataFrame:
    return _ok_with(rows, "total_bytes")


def table15(rows: pd.DataFrame) -> pd.DataFrame:
    """Table 15 by batch: the paper's GB beside this run's (exact count; the GPU peak where measured),
    and the Mamba / Transformer ratio of each."""
    m = memory_rows(rows)
    records = []
    for batch, (paper_t, paper_m) in PAPER_GB.items():
        record = {"batch": batch, "paper Transformer (GB)": paper_t, "paper Mamba (GB)": paper_m,
                  "paper ratio": round(paper_m / paper_t, 3)}
        of_batch = m[m["batch"] == batch] if len(m) else m
        counted = of_batch.groupby("kind")["total_bytes"].first() if len(of_batch) else pd.Series(dtype=float)
        record["Transformer counted (GB)"] = _gb(counted.get("transformer"))
        record["Mamba counted (GB)"] = _gb(counted.get("mamba"))
        record["counted ratio"] = _ratio(counted.get("mamba"), counted.get("transformer"))
        if "cuda_peak_bytes" in of_batch and of_batch["cuda_peak_bytes"].notna().any():
            peak = of_batch.groupby("kind")["cuda_peak_bytes"].first()
            record["Transformer GPU peak (GB)"] = _gb(peak.get("transformer"))
            record["Mamba GPU peak (GB)"] = _gb(peak.get("mamba"))
            record["GPU peak ratio"] = _ratio(peak.get("mamba"), peak.get("transformer"))
        records.append(record)
    return pd.DataFrame(records)


def _gb(value) -> float:
    return round(float(value) / GB, 3) if value is not None and pd.notna(value) else np.nan


def _ratio(a, b) -> float:
    return round(float(a) / float(b), 3) if a is not None and b is not None and pd.notna(a) and pd.notna(b) else np.nan


def breakdown(rows: pd.DataFrame) -> pd.DataFrame:
    """What each counted step holds, in GiB; the saved activations also by the kind of module that
    saved them ("loss": the logits kept for the cross-entropy)."""
    m = memory_rows(rows)
    if m.empty:
        return m
    columns = ["params_bytes", "grads_bytes", "optimizer_bytes", "activation_bytes", "total_bytes"]
    columns += sorted(c for c in m if c.startswith("saved_in_") and m[c].notna().any())
    out = m[["model", "backends", "batch", "counted_depths"]].copy()
    for c in columns:
        out[c.removesuffix("_bytes").replace("_", " ") + " (GiB)"] = m[c] / 2**30
    return out.sort_values(["model", "batch"]).reset_index(drop=True)


def step_rows(rows: pd.DataFrame) -> pd.DataFrame:
    return _ok_with(rows, "tokens_per_s")


def crossovers(rows: pd.DataFrame) -> pd.DataFrame:
    """Each SSM's training step against the Transformer's: the crossover length and its interval."""
    s = step_rows(rows)
    attention = s[s["kind"] == "transformer"]
    if attention.empty:
        return pd.DataFrame()
    b = {float(r.seqlen): r.samples_ms for r in attention.itertuples()}
    records = []
    for _, ssm in s[s["kind"] != "transformer"].groupby("model", sort=False):
        a = {float(r.seqlen): r.samples_ms for r in ssm.itertuples()}
        point = common.crossover(pd.Series({L: np.median(v) for L, v in a.items()}),
                                 pd.Series({L: np.median(v) for L, v in b.items()}))
        interval = common.crossover_interval(a, b)
        records.append({"SSM": ssm["model_name"].iloc[0], "SSM layer params": int(ssm["n_layer_params"].iloc[0]),
                        "against": attention["model_name"].iloc[0],
                        "Transformer layer params": int(attention["n_layer_params"].iloc[0]), "status": point.status,
                        "crossover L": point.length, "interval": interval.describe(),
                        "crossover": point.describe(),
                        "Transformer / SSM step time": ", ".join(f"{int(L)}: {r:.2f}"
                                                                 for L, r in zip(point.lengths, point.ratios))})
    return pd.DataFrame(records)


def throughput(rows: pd.DataFrame) -> pd.DataFrame:
    """Training tokens/s by length (rows) and model (columns)."""
    s = step_rows(rows)
    if s.empty:
        return s
    wide = s.pivot_table(index="seqlen", columns="model_name", values="tokens_per_s", aggfunc="first")
    return wide.round(1).reset_index()


# Verdicts.
def memory_device(m: pd.DataFrame, manifest: dict | None = None) -> str:
    """Where the memory rows were measured: a count on meta belongs to no machine."""
    if len(m) and (m["device"] == "meta").all():
        return "torch's meta device: an exact count, the same on every machine"
    return common.device_label(m, manifest)


def judge(rows: pd.DataFrame, manifest: dict) -> list[Verdict]:
    device = memory_device(memory_rows(rows), manifest)
    t15 = table15(rows)
    base = dict(claim="C5: Mamba's training memory is comparable to a Transformer with FlashAttention-2 "
                      "(125M, L=2048, batch 1..32)",
                paper_setting=PAPER_SETTING, paper_value="Mamba / Transformer 1.04..1.12 (Table 15)")
    verdicts = []
    for column, what, claim_id in (
            ("counted ratio", "exact count (params + grads + AdamW + saved activations)", "C5.memory-counted"),
            ("GPU peak ratio", "torch.cuda.max_memory_allocated", "C5.memory-gpu-peak")):
        if column not in t15:
            continue
        base["claim_id"] = claim_id
        ratios = t15.dropna(subset=[column])
        setting = f"{what}; {_memory_setting(rows)}"
        if ratios.empty:
            verdicts.append(Verdict(**base, device=device, setting=setting, measured="no batch measured for both",
                                    verdict="not measured", reason=_why_missing(rows)))
            continue
        verdicts.append(ratio_verdict(dict(zip(ratios["batch"], ratios[column])), base, device, setting,
                                      activation_gap(rows)))
    return verdicts


def activation_gap(rows: pd.DataFrame) -> str:
    """Where the two models' counted steps differ, at the largest batch counted for both: each
    one's saved activations and the kind of module that saved most of Mamba's."""
    m = memory_rows(rows)
    if m.empty or "activation_bytes" not in m:
        return ""
    both = m.groupby("batch")["kind"].nunique()
    if not (both >= 2).any():
        return ""
    batch = both[both >= 2].index.max()
    at = m[m["batch"] == batch].groupby("kind").first()
    mamba, transformer = at.loc["mamba"], at.loc["transformer"]
    saved = {c.removeprefix("saved_in_").removesuffix("_bytes"): mamba[c] for c in at
             if c.startswith("saved_in_") and pd.notna(mamba[c])}
    if not saved:
        return ""
    kind = max(saved, key=saved.get)
    return (f"; measured at batch {int(batch)}: Mamba's step saves {mamba['activation_bytes'] / GB:.3g} GB of "
            f"activations against the Transformer's {transformer['activation_bytes'] / GB:.3g} GB, "
            f"{saved[kind] / GB:.3g} GB of them in its {kind} modules ({saved[kind] / mamba['activation_bytes']:.0%}) "
            f"with backends {mamba['backends']}: torch ops that keep their intermediates for autograd, where the "
            f"paper's fused kernel saves only its inputs and recomputes the states in the backward pass "
            f"([M1] §3.3.2)")


def ratio_verdict(ratios: dict[int, float], base: dict, device: str, setting: str, why: str = "") -> Verdict:
    """holds when every batch's Mamba / Transformer ratio lies within [1 / 1.12, 1.12]."""
    ok = all(1 / PAPER_MAX_RATIO <= r <= PAPER_MAX_RATIO for r in ratios.values())
    measured = "Mamba / Transformer: " + ", ".join(f"batch {int(b)}: {r:.3f}" for b, r in sorted(ratios.items()))
    return Verdict(**base, device=device, setting=setting, measured=measured,
                   verdict="holds" if ok else "does not hold",
                   reason=f"holds when every batch's ratio lies within the paper's largest gap, 1/{PAPER_MAX_RATIO:g}"
                          f"..{PAPER_MAX_RATIO:g}{why}; the table 'What each counted step holds' shows which "
                          f"layers hold the activations")


def _memory_setting(rows: pd.DataFrame) -> str:
    m = memory_rows(rows)
    if m.empty:
        return ""
    ops = "; ".join(f"{model}: {b}" for model, b in m.groupby("model")["backends"].first().items())
    return f"counted on {m['device'].iloc[0]}, {m['dtype'].iloc[0]}, L={int(m['seqlen'].iloc[0])}; {ops}"


def _why_missing(rows: pd.DataFrame) -> str:
    if rows.empty or "fn" not in rows:
        return "no memory case ran"
    mine = rows[(rows["fn"] == MEMORY_FN) & (rows["status"] != "ok")]
    return "; ".join(sorted(set(f"{r.model} batch {r.batch}: {r.status} ({r.reason})" for r in mine.itertuples()))) \
        or "this run has no memory case of both models"


# Report pieces.
def tables(rows: pd.DataFrame) -> dict[str, pd.DataFrame]:
    out = {"Table 15, regenerated (paper value beside ours)": table15(rows),
           "What each counted step holds": breakdown(rows),
           "Training throughput (tokens/s) by length": throughput(rows),
           "Where each SSM's training step overtakes the Transformer's": crossovers(rows)}
    return {k: v for k, v in out.items() if len(v)}


def figures(rows: pd.DataFrame, folder: Path) -> list[Path]:
    s = step_rows(rows)
    if s.empty:
        return []
    lines = [(model, g["seqlen"], g["tokens_per_s"], None)
             for model, g in s.sort_values("seqlen").groupby("model_name")]
    return [common.loglog_figure(Path(folder) / "training_throughput.png", lines, xlabel="sequence length",
                                 ylabel="training tokens/s",
                                 title=f"training step throughput ({common.device_label(rows)})")]


def paper_tables(rows: pd.DataFrame) -> dict[str, pd.DataFrame]:
    return {"Mamba Table 15: training memory, 125M models, L=2048": table15(rows)}


def paper_values(rows: pd.DataFrame) -> pd.DataFrame:
    t15 = table15(rows).dropna(subset=["counted ratio"])
    measured = (f"{t15['counted ratio'].min():.3f}..{t15['counted ratio'].max():.3f} (exact count)"
                if len(t15) else "not measured")
    m = memory_rows(rows)
    out = common.paper_values("C5", m, [("training memory, Mamba / Transformer, batch 1..32", "1.04..1.12", measured)])
    return out.assign(device=memory_device(m) if len(t15) else "")


SUITE = Suite(
    name=NAME,
    description="C5: training memory of Mamba vs a Transformer (Table 15) and training throughput vs length",
    presets=common.presets(cases, SETTINGS), judge=judge, figures=figures, tables=tables,
    extra={"paper_tables": paper_tables, "paper_values": paper_values},
    threads={"cpu-small": common.CPU_THREADS},
)
