"""C1: selective-scan time and memory grow linearly in the sequence length L, attention's
quadratically ([M1] abstract, §4.5, App. E.5).

Times the core ops alone (no projections) over L: the selective scan, the SSD scan and causal
attention at the same width (D channels; attention and SSD as D / headdim heads). The decode-
step state is measured by allocating it (a Mamba layer's conv + SSM state against an attention
layer's KV cache, :mod:`ssmbench.models.cache`) and summing its bytes; on a GPU the runner also
records each call's peak memory.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ..impls.checks import element_size
from ..impls.registry import get_op
from ..models.cache import build_cache, kv_cache_bytes, mamba_state_bytes
from ..models.configs import MambaMixer, ModelConfig
from . import common
from .base import Case, Suite, Verdict

NAME = "scaling"
SSM_OPS = ("selective_scan", "ssd")
PAPER_SETTING = "A100 80GB PCIe, batch 1, D=1024, N=16, bf16, L=2^9..2^19, core operation only ([M1] App. E.5)"
# Rules of the verdicts, in words and numbers.
LINEAR_MAX = 1.2  # an SSM's exponent's upper 95% bound must stay below this
QUADRATIC_MIN = 1.5  # attention's exponent's lower 95% bound must reach this ...
MARGIN = 0.5  # ... and its exponent exceed every SSM exponent by this much


@dataclass(frozen=True)
class Setting:
    device: str
    dtype: str
    batch: int
    dim: int  # D: scan channels; SSD and attention run dim / headdim heads of headdim
    dstate: int
    headdim: int
    chunk_size: int
    lengths: tuple[int, ...]
    # op -> backend names wanted (those this checkout has become cases); None: by trait (by_trait)
    backends: dict | None
    # (op, backend) -> longest L timed; None: each backend's max_sensible_len
    max_len: dict | None = field(default_factory=dict)
    check_len: int = 512  # the correctness check runs at L = min(L, check_len)
    budget_s: float = 0.5
    min_repeats: int = 3
    max_repeats: int = 20
    timeout_s: float = 300.0
    d_conv: int = 4


OPS = SSM_OPS + ("attention",)


def by_trait(op: str) -> list[str]:
    """On a GPU: every fused kernel of the op, its best unfused backend and our plain torch
    backends (the standard PyTorch baseline of the fused-scan claim)."""
    return common.union(common.fused(op), common.fallback(op), common.ours_in_torch(op))


SETTINGS = {
    "cpu-small": Setting(
        device="cpu", dtype="float32", batch=1, dim=256, dstate=16, headdim=64, chunk_size=64,
        # Steps of 1.5x and 4/3x: four or five lengths in the upper half for an exponent interval.
        lengths=(512, 768, 1024, 1536, 2048, 3072, 4096, 6144, 8192),
        backends={"selective_scan": ["torch_fast", "torch"], "ssd": ["torch_chunked", "torch"],
                  "attention": ["sdpa", "torch"]},
        # The loops' working set leaves the CPU caches between L=768 and 2048 (a 3x step in time);
        # their upper half must lie beyond that.
        max_len={("selective_scan", "torch"): 6144, ("ssd", "torch"): 6144, ("attention", "torch"): 4096},
        check_len=512, budget_s=0.4, min_repeats=7, max_repeats=15, timeout_s=120),
    "gpu": Setting(
        device="cuda", dtype="bfloat16", batch=1, dim=1024, dstate=16, headdim=64, chunk_size=256,
        lengths=tuple(2**k for k in range(9, 18)), backends=None, max_len=None,
        check_len=2048, budget_s=0.3, max_repeats=30),
    # One short run on a lent GPU (scripts/gpu-lease.sh): the paper's widths at four lengths, the
    # upper three of which the exponents are fitted over.
    "gpu-lease": Setting(
        device="cuda", dtype="bfloat16", batch=1, dim=1024, dstate=16, headdim=64, chunk_size=256,
        lengths=(2**10, 2**12, 2**14, 2**16), backends=None, max_len=None,
        check_len=2048, budget_s=0.15, max_repeats=20, timeout_s=120),
    "paper": Setting(
        device="cuda", dtype="bfloat16", batch=1, dim=1024, dstate=16, headdim=64, chunk_size=256,
        lengths=tuple(2**k for k in range(9, 20)), backends=None, max_len=None,
        check_len=2048, budget_s=0.5, max_repeats=50, timeout_s=600),
}


def problem_fields(s: Setting, op: str, L: int) -> dict:
    heads = s.dim // s.headdim
    common_fields = {"device": s.device, "dtype": s.dtype, "batch": s.batch}
    if op == "selective_scan":
        return {**common_fields, "dim": s.dim, "dstate": s.dstate, "seqlen": L}
    if op == "ssd":
        return {**common_fields, "nheads": heads, "headdim": s.headdim, "dstate": s.dstate, "seqlen": L,
                "chunk_size": s.chunk_size}
    return {**common_fields, "nheads": heads, "headdim": s.headdim, "seqlen_q": L, "causal": True}


def cases(s: Setting) -> list[Case]:
    out = []
    for op in (s.backends or OPS):
        names = s.backends[op] if s.backends else by_trait(op)
        for L in common.outside_in(s.lengths):
            wanted = common.sensible_at(op, names, L, s.max_len)
            out += common.op_cases(NAME, op, wanted, [problem_fields(s, op, L)],
                                   check_params={get_op(op).length_field: s.check_len}, budget_s=s.budget_s,
                                   min_repeats=s.min_repeats, max_repeats=s.max_repeats, timeout_s=s.timeout_s)
    for kind in ("mamba", "attention"):
        for L in s.lengths:
            out.append(Case(suite=NAME, fn=f"{__name__}:decode_state_bytes", series=f"decode state/{kind}",
                            params={"kind": kind, "seqlen": L, "batch": s.batch, "dim": s.dim,
                                    "dstate": s.dstate, "d_conv": s.d_conv, "headdim": s.headdim,
                                    "dtype": s.dtype, "device": s.device}))
    return out


def one_layer(kind: str, dim: int, dstate: int, d_conv: int, headdim: int) -> ModelConfig:
    """A one-layer model whose cache is one decode step's state at width ``dim``: a Mamba
    layer with D = dim channels (d_model = dim / expand), or attention with dim / headdim heads."""
    if kind == "mamba":
        return ModelConfig(name=f"mamba D={dim}", source="scaling suite", n_layers=1, d_model=dim // 2,
                           vocab_size=0, attn_layer_period=0, mamba=MambaMixer(d_state=dstate, d_conv=d_conv))
    heads = dim // headdim
    return ModelConfig(name=f"attention D={dim}", source="scaling suite", n_layers=1, d_model=dim, vocab_size=0,
                       n_heads=heads, n_kv_heads=heads, head_dim=headdim)


def decode_state_bytes(kind: str, seqlen: int, batch: int, dim: int, dstate: int, d_conv: int, headdim: int,
                       dtype: str, device: str) -> dict:
    """Allocate the state one decode step at position ``seqlen`` needs and count its bytes, next
    to the closed form: Mamba B x D x (N + d_conv) elements; attention 2 x B x L x D elements."""
    config = one_layer(kind, dim, dstate, d_conv, headdim)
    measured = build_cache(config, batch, seqlen, dtype=dtype, device=device).nbytes
    e = element_size(dtype)
    formula = (mamba_state_bytes(config, batch, e) if kind == "mamba" else kv_cache_bytes(config, batch, seqlen, e))
    return {"state_bytes": measured, "formula_bytes": formula, "equal": measured == formula}


# Analysis shared by the verdicts, tables, figures and the paper-values table.
@dataclass
class Analysis:
    times: pd.DataFrame  # timed op rows with L
    exponents: pd.DataFrame  # per (op, backend), over the upper half of L
    envelopes: dict  # op -> median time of its fastest backend at each L (Series indexed by L)
    crossovers: pd.DataFrame  # each SSM series against the fastest attention
    memory: pd.DataFrame  # decode-state rows
    peak: pd.DataFrame  # peak-memory exponents (GPU rows only)


def analyse(rows: pd.DataFrame) -> Analysis:
    times = common.with_length(common.timed(rows))
    exponents = common.fit_exponents(times, "L") if len(times) else pd.DataFrame()
    envelopes = {op: g.groupby("L")["median_ms"].min() for op, g in times.groupby("op")} if len(times) else {}
    records = []
    attention = envelopes.get("attention")
    if attention is not None:
        series = [(op, name, g.groupby("L")["median_ms"].median())
                  for (op, name), g in times[times["op"].isin(SSM_OPS)].groupby(["op", "backend"])]
        series += [(op, "fastest", envelopes[op]) for op in SSM_OPS if op in envelopes]
        for op, name, ssm in series:
            c = common.crossover(ssm, attention)
            records.append({"op": op, "backend": name, "status": c.status, "crossover_L": c.length,
                            "crossover": c.describe(), "largest L": c.lengths[-1] if c.lengths else np.nan,
                            "attention/ssm at largest L": c.ratios[-1] if c.ratios else np.nan, "result": c})
    memory = rows[rows["fn"].fillna("").str.endswith(":decode_state_bytes") & (rows["status"] == "ok")] \
        if "fn" in rows else rows.iloc[0:0]
    peak = pd.DataFrame()
    if "peak_mem_bytes" in times and times["peak_mem_bytes"].notna().any():
        peak = common.fit_exponents(times, "L", y="peak_mem_bytes")
    return Analysis(times, exponents, envelopes, pd.DataFrame(records), memory, peak)


def _exponent_text(table: pd.DataFrame) -> str:
    return "; ".join(f"{r.op}/{r.backend}: {r.fit.describe()} (L {r.L_from}..{r.L_to})" for r in table.itertuples())


def judge(rows: pd.DataFrame, manifest: dict) -> list[Verdict]:
    a = analyse(rows)
    device = common.device_label(rows, manifest)
    setting = _setting_text(rows)
    verdicts = []
    exps = a.exponents
    fastest = _fastest_at_longest(a.times)
    for op, what in (("selective_scan", "selective scan"), ("ssd", "SSD scan")):
        mine = exps[exps["op"] == op] if len(exps) else exps
        verdicts.append(_linear_verdict(op, what, mine, fastest, device, setting))
    verdicts.append(_quadratic_verdict(exps, fastest, device, setting))
    verdicts.append(_crossover_verdict(a, device, setting))
    gpu = common.on_gpu(rows)
    verdicts.append(_fused_verdict(a, device, setting, gpu))
    verdicts.append(_decode_state_verdict(a.memory, device))
    verdicts.append(_peak_verdict(a.peak, device, setting, gpu))
    return verdicts


def _linear_verdict(op: str, what: str, mine: pd.DataFrame, fastest: set, device: str, setting: str) -> Verdict:
    """Judged on the op's fastest backend at the longest L, the implementation whose growth the
    paper's figure shows (its fused kernel); the other backends' exponents are shown beside it
    (and gated on their own), since a reference loop's growth says nothing of the algorithm's."""
    claim = f"C1: {what} time grows linearly in L"
    base = dict(claim_id=f"C1.{'scan' if op == 'selective_scan' else op}-linear", claim=claim,
                paper_setting=PAPER_SETTING, paper_value="linear in L (figure only)", device=device, setting=setting)
    usable = mine[mine["ci_high"].notna()] if len(mine) else mine
    judged = usable[[(r.op, r.backend) in fastest for r in usable.itertuples()]] if len(usable) else usable
    if judged.empty:
        return Verdict(**base, measured="no backend with 3+ timed lengths", verdict="not measured",
                       reason="an exponent interval needs at least 3 timed lengths of the op's fastest backend")
    others = usable.drop(judged.index)
    verdict, detail = _decide(judged, below=judged["ci_high"] < LINEAR_MAX, above=judged["ci_low"] >= LINEAR_MAX)
    return Verdict(**base, measured=f"exponent [95% CI] over the upper half of L, fastest backend at the longest L: "
                                    f"{_exponent_text(judged)}"
                                    + (f"; also timed: {_exponent_text(others)}" if len(others) else ""),
                   verdict=verdict,
                   reason=f"holds when the fastest backend's exponent has its upper 95% bound below {LINEAR_MAX}; "
                          f"does not hold when its lower bound reaches {LINEAR_MAX}; otherwise undecided; the other "
                          f"backends are shown, not judged" + detail)


def _decide(table: pd.DataFrame, below: pd.Series, above: pd.Series) -> tuple[str, str]:
    """(verdict, words) from per-backend tests: every backend passes -> holds; one clearly fails
    -> does not hold; an interval straddling the bound -> undecided (measured, too wide to decide)."""
    if below.all():
        return "holds", ""
    if above.any():
        return "does not hold", f"; fails: {', '.join(table.loc[above, 'backend'])}"
    return "undecided", (f"; interval too wide to decide for {', '.join(table.loc[~below, 'backend'])} "
                            "(noisy timings: rerun on an idle machine)")


def _fastest_at_longest(times: pd.DataFrame) -> set[tuple[str, str]]:
    """(op, backend) of each SSM op's fastest backend at its longest timed L: the implementation
    that matters where the curves part."""
    if times.empty:
        return set()
    ssm = times[times["op"].isin(SSM_OPS)]
    longest = ssm[ssm["L"] == ssm.groupby("op")["L"].transform("max")]
    return {(r.op, r.backend) for r in longest.loc[longest.groupby("op")["median_ms"].idxmin()].itertuples()}


def _quadratic_verdict(exps: pd.DataFrame, fastest: set, device: str, setting: str) -> Verdict:
    base = dict(claim_id="C1.attention-quadratic",
                claim="C1: causal attention time grows quadratically in L, faster than the SSMs'",
                paper_setting=PAPER_SETTING, paper_value="quadratic in L (figure only)", device=device, setting=setting)
    att = exps[(exps["op"] == "attention") & exps["ci_low"].notna()] if len(exps) else exps
    ssm = exps[[(r.op, r.backend) in fastest for r in exps.itertuples()]] if len(exps) else exps
    if att.empty:
        return Verdict(**base, measured="no attention backend with 3+ timed lengths", verdict="not measured",
                       reason="an exponent interval needs at least 3 timed lengths")
    gaps = _gaps(att, ssm)
    apart = pd.Series([all(g.low >= MARGIN for g in gaps[r.backend]) for r in att.itertuples()], index=att.index)
    close = pd.Series([any(g.high < MARGIN for g in gaps[r.backend]) for r in att.itertuples()], index=att.index)
    verdict, detail = _decide(att, below=(att["ci_low"] >= QUADRATIC_MIN) & apart,
                              above=(att["ci_high"] < QUADRATIC_MIN) | close)
    measured = _exponent_text(att) + (f"; fastest SSMs: {_exponent_text(ssm)}" if len(ssm) else "")
    shown = [g.describe() for found in gaps.values() for g in found]
    measured += f"; attention minus SSM exponent [95% CI]: {'; '.join(shown)}" if shown else ""
    return Verdict(**base, measured=measured, verdict=verdict,
                   reason=f"holds when every attention backend's exponent has its lower 95% bound at or above "
                          f"{QUADRATIC_MIN} and, by the 95% interval of the difference, exceeds the exponent of each "
                          f"SSM op's fastest backend (at the longest L) by at least {MARGIN}; does not hold when "
                          f"one's upper bound is below {QUADRATIC_MIN} or the difference's upper bound is below "
                          f"{MARGIN}; otherwise undecided" + detail)


@dataclass(frozen=True)
class Gap:
    """Attention's exponent minus an SSM's, with the interval of the difference of two
    independent estimates (half-widths added in quadrature); NaN where either has no interval."""

    attention: str
    ssm: str
    value: float
    low: float
    high: float

    def describe(self) -> str:
        interval = "no interval" if np.isnan(self.low) else f"[{self.low:.2f}, {self.high:.2f}]"
        return f"{self.attention} - {self.ssm}: {self.value:.2f} {interval}"


def _gaps(att: pd.DataFrame, ssm: pd.DataFrame) -> dict[str, list[Gap]]:
    """attention backend -> its Gap over each of the SSM rows."""
    out = {}
    for a in att.itertuples():
        found = []
        for s in ssm.itertuples():
            half = float(np.hypot((a.ci_high - a.ci_low) / 2, (s.ci_high - s.ci_low) / 2))
            value = a.exponent - s.exponent
            found.append(Gap(f"{a.op}/{a.backend}", f"{s.op}/{s.backend}", value, value - half, value + half))
        out[a.backend] = found
    return out


def _crossover_verdict(a: Analysis, device: str, setting: str) -> Verdict:
    base = dict(claim_id="C1.scan-attention-crossover",
                claim="C1: the selective scan is faster than attention beyond a crossover length",
                paper_setting=PAPER_SETTING + "; fused scan vs causal FlashAttention-2",
                paper_value="faster beyond L=2K; up to 7x at L=32K", device=device, setting=setting)
    rows = a.crossovers
    scan = rows[(rows["op"] == "selective_scan") & (rows["backend"] == "fastest")] if len(rows) else rows
    if scan.empty:
        return Verdict(**base, measured="scan and attention not both timed", verdict="not measured",
                       reason="needs timed scan and attention rows at common lengths")
    c = scan.iloc[0]["result"]
    at_32k = _ratio_at(a, "selective_scan", 2**15)
    return common.crossover_verdict(base, "scan", "the fastest scan is faster than the fastest attention",
                                    a.times[a.times["op"] == "selective_scan"], a.times[a.times["op"] == "attention"],
                                    c.describe(), f"; at L=32K: {at_32k:.2f}x" if at_32k else "")


def _ratio_at(a: Analysis, op: str, L: int) -> float | None:
    ssm, att = a.envelopes.get(op), a.envelopes.get("attention")
    if ssm is None or att is None or L not in ssm.index or L not in att.index:
        return None
    return float(att[L] / ssm[L])


def fused_speedup(a: Analysis) -> dict | None:
    """The standard PyTorch scan ("torch") against the fastest fused scan kernel at the longest
    length both ran, with its interval; None when no fused kernel was timed."""
    scan = a.times[a.times["op"] == "selective_scan"]
    fused = scan[scan["backend"].isin(common.fused("selective_scan"))]
    plain = scan[scan["backend"] == "torch"]
    common_L = sorted(set(fused["L"]) & set(plain["L"]))
    if not common_L:
        return None
    L = common_L[-1]
    fast = fused[fused["L"] == L].sort_values("median_ms").iloc[0]
    slow = plain[plain["L"] == L].iloc[0]
    ratio, low, high = common.speedup(slow["samples_ms"], fast["samples_ms"])
    return {"L": int(L), "fused": fast["backend"], "ratio": ratio, "low": low, "high": high}


def _fused_verdict(a: Analysis, device: str, setting: str, gpu: bool) -> Verdict:
    base = dict(claim_id="C1.fused-vs-torch-scan",
                claim="C1: the fused scan is 20-40x faster than a standard PyTorch scan",
                paper_setting=PAPER_SETTING, paper_value="20-40x", device=device, setting=setting)
    result = fused_speedup(a)
    if result is None:
        scan = a.times[a.times["op"] == "selective_scan"]
        kinds = sorted(set(scan["backend"]))
        measured = f"scan backends timed: {', '.join(kinds) or 'none'}"
        fused = ", ".join(common.fused("selective_scan"))
        if not gpu:
            return Verdict(**base, measured=measured, verdict="not applicable",
                           reason="not applicable on this device: the speedup comes from kernel fusion on a GPU, "
                                  "which keeps the (B, D, N) state in on-chip SRAM instead of writing every step's "
                                  f"state to GPU memory; the fused kernels ({fused}) run on CUDA GPUs only")
        return Verdict(**base, measured=measured, verdict="not measured",
                       reason=f"no fused scan kernel ({fused}) was timed next to the torch scan on this device")
    r = result
    return Verdict(**base, measured=f"torch / {r['fused']} at L={r['L']}: {r['ratio']:.1f}x "
                                    f"[{r['low']:.1f}, {r['high']:.1f}]",
                   verdict=common.interval_verdict(r["low"], r["high"], 20),
                   reason="holds when the speedup's 95% bootstrap interval lies at or above 20x, does not hold "
                          "when it lies below, otherwise undecided")


def _decode_state_verdict(memory: pd.DataFrame, device: str) -> Verdict:
    base = dict(claim_id="C1.decode-state",
                claim="C1: an SSM's decode-step state is constant in L; a KV cache grows linearly",
                paper_setting="state (B, D, N) + conv state (B, D, d_conv) vs KV cache 2 x L x D per layer",
                paper_value="constant vs linear", device=device)
    if memory.empty:
        return Verdict(**base, setting="", measured="no decode-state rows", verdict="not measured",
                       reason="the decode_state_bytes cases did not run")
    first = memory.iloc[0]
    setting = (f"one layer, batch {int(first['batch'])}, D={int(first['dim'])}, N={int(first['dstate'])}, "
               f"{first['dtype']}")
    fits = {kind: common.loglog_fit(g["seqlen"], g["state_bytes"]) for kind, g in memory.groupby("kind")}
    exact = bool(memory["equal"].all())
    flat = "mamba" in fits and abs(fits["mamba"].slope) < 1e-9
    linear = "attention" in fits and abs(fits["attention"].slope - 1) < 1e-9
    measured = "; ".join(f"{k}: bytes ∝ L^{f.slope:.3f} over L {int(f.x_from)}..{int(f.x_to)}"
                         for k, f in fits.items())
    measured += f"; allocated bytes equal the closed form in {int(memory['equal'].sum())}/{len(memory)} rows"
    return Verdict(**base, setting=setting, measured=measured,
                   verdict="holds" if flat and linear and exact else "does not hold",
                   reason="holds when the allocated Mamba state has exponent 0, the KV cache exponent 1, "
                          "and every allocation equals its closed form to the byte")


def _peak_verdict(peak: pd.DataFrame, device: str, setting: str, gpu: bool) -> Verdict:
    base = dict(claim_id="C1.scan-memory-linear", claim="C1: the scan's memory grows linearly in L",
                paper_setting=PAPER_SETTING, paper_value="linear in L", device=device, setting=setting)
    scan = peak[peak["op"].isin(SSM_OPS) & peak["ci_high"].notna()] if len(peak) else peak
    if scan.empty:
        if not gpu:
            return Verdict(**base, measured="no peak-memory measurement", verdict="not applicable",
                           reason="not applicable on this device: a call's peak memory is read from the CUDA "
                                  "allocator's peak statistics, which a CPU has not; on a CPU run the decode-state "
                                  "verdict (C1.decode-state) is the memory measurement")
        return Verdict(**base, measured="no peak-memory measurement", verdict="not measured",
                       reason="no SSM backend has peak memory at 3+ timed lengths")
    verdict, detail = _decide(scan, below=scan["ci_high"] < LINEAR_MAX, above=scan["ci_low"] >= LINEAR_MAX)
    text = "; ".join(f"{r.op}/{r.backend}: {r.fit.describe()}" for r in scan.itertuples())
    return Verdict(**base, measured=f"peak-memory exponent [95% CI]: {text}", verdict=verdict,
                   reason=f"holds when every SSM backend's peak-memory exponent has its upper 95% bound below "
                          f"{LINEAR_MAX}; does not hold when one's lower bound reaches {LINEAR_MAX}; otherwise "
                          f"undecided" + detail)


def _setting_text(rows: pd.DataFrame) -> str:
    t = common.with_length(rows[rows["op"].fillna("") != ""]) if "op" in rows else rows
    if t.empty:
        return ""
    first = t.iloc[0]
    lengths = t["L"].dropna()
    scan = t[t["op"] == "selective_scan"]
    dstate = int(scan["dstate"].iloc[0]) if len(scan) else "?"
    dim = int(scan["dim"].iloc[0]) if len(scan) else "?"
    att = t[t["op"] == "attention"]
    heads = f"{int(att['nheads'].iloc[0])} heads x {int(att['headdim'].iloc[0])}" if len(att) else "?"
    return (f"batch {int(first['batch'])}, D={dim}, N={dstate}, {first['dtype']}, L={int(lengths.min())}.."
            f"{int(lengths.max())}; SSD and attention as {heads}; causal attention")


# Report pieces.
def tables(rows: pd.DataFrame) -> dict[str, pd.DataFrame]:
    a = analyse(rows)
    out = {}
    if len(a.exponents):
        out["Exponent of time in L (upper half of L, 95% CI)"] = a.exponents.drop(columns="fit")
    if len(a.crossovers):
        out["Where each SSM becomes faster than the fastest attention"] = a.crossovers.drop(columns=["result"])
    if len(a.memory):
        wide = a.memory.pivot_table(index="seqlen", columns="kind", values="state_bytes", aggfunc="first")
        wide.columns = [f"{c} state bytes" for c in wide.columns]
        out["Decode-step state bytes (allocated)"] = wide.reset_index()
    if len(a.peak):
        out["Exponent of peak memory in L (GPU)"] = a.peak.drop(columns="fit")
    out["Cases"] = common.cases_table(rows)
    return out


def figures(rows: pd.DataFrame, folder: Path) -> list[Path]:
    a = analyse(rows)
    device = common.device_label(rows)
    out = []
    if len(a.times):
        fits = {(r.op, r.backend): r.fit for r in a.exponents.itertuples()} if len(a.exponents) else {}
        lines = [(f"{op}/{name}", g["L"], g["median_ms"], fits.get((op, name)))
                 for (op, name), g in a.times.sort_values("L").groupby(["op", "backend"])]
        out.append(common.loglog_figure(Path(folder) / "scaling_time.png", lines, xlabel="sequence length L",
                                        ylabel="median time per call (ms)",
                                        title=f"C1: time vs L ({device})"))
    if len(a.memory):
        lines = [(f"{kind} (decode-step state)", g["seqlen"], g["state_bytes"], None)
                 for kind, g in a.memory.sort_values("seqlen").groupby("kind")]
        if len(a.peak):
            lines += [(f"{op}/{name} peak per call", g["L"], g["peak_mem_bytes"], None)
                      for (op, name), g in a.times.dropna(subset=["peak_mem_bytes"]).groupby(["op", "backend"])]
        out.append(common.loglog_figure(Path(folder) / "scaling_memory.png", lines, xlabel="sequence length L",
                                        ylabel="bytes", title=f"C1: memory vs L ({device})"))
    return out


def paper_values(rows: pd.DataFrame) -> pd.DataFrame:
    """The numbers [M1]'s text states about C1, next to what ``rows`` measured."""
    a = analyse(rows) if len(rows) else None
    fused = fused_speedup(a) if a is not None and len(a.times) else None
    scan = a.crossovers[(a.crossovers["op"] == "selective_scan") & (a.crossovers["backend"] == "fastest")] \
        if a is not None and len(a.crossovers) else pd.DataFrame()
    at_32k = _ratio_at(a, "selective_scan", 2**15) if a is not None else None
    records = [
        ("fused scan vs standard PyTorch scan", "20-40x",
         f"{fused['ratio']:.1f}x ({fused['fused']} at L={fused['L']})" if fused else "not measured"),
        ("scan faster than attention beyond", "L=2K (vs FlashAttention-2)",
         scan.iloc[0]["crossover"] if len(scan) else "not measured"),
        ("scan speedup over attention at L=32K", "up to 7x", f"{at_32k:.2f}x" if at_32k else "not measured"),
    ]
    return common.paper_values("C1", rows, records)


SUITE = Suite(
    name=NAME,
    description="C1: time and memory of the selective scan, SSD and attention against L",
    presets=common.presets(cases, SETTINGS),
    judge=judge, figures=figures, tables=tables,
    extra={"paper_values": paper_values},
    threads={"cpu-small": common.CPU_THREADS},
    figure_of={**{f"C1.{c}": ("scaling_time.png",) for c in ("scan-linear", "ssd-linear", "attention-quadratic",
                                                             "scan-attention-crossover", "fused-vs-torch-scan")},
               "C1.decode-state": ("scaling_memory.png",), "C1.scan-memory-linear": ("scaling_memory.png",)},
)
