"""C3: Mamba-2's SSD against Mamba-1's selective scan ([M2] abstract, §1, §9.3, Fig. 10).

Two panels, as in the paper's figure: time against L at state size N=64 (scan, SSD, and causal
attention for the crossover), and time against N at one length. Both ops run the same width:
the scan D channels, SSD D / headdim heads of headdim, one group; both with the skip D, a step
bias and softplus, no gate. The paper does not state batch, heads, head dim, chunk or dtype;
each preset records its own in the verdicts.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ..harness.report import timing_table
from ..impls.registry import get_op
from . import common
from .base import Case, Suite, Verdict

NAME = "ssd_speedup"
PAPER_SETTING = ("A100 80GB PCIe; left: N=64, L=512..512K; right: L=4K, N up to 256; batch, heads, "
                 "head dim, chunk, dtype not stated ([M2] §9.3, Fig. 10)")
L_PANEL, N_PANEL = "L sweep: ", "N sweep: "
# Rules of the verdicts.
SPEEDUP_MIN = 2.0  # "2-8x": the lower end, on the speedup's lower 95% bound
LINEAR_N_MIN = 0.75  # the scan's exponent in N ...
FLAT_N_MAX = 0.3  # ... the SSD's, and the scan's lower bound above the SSD's upper bound


@dataclass(frozen=True)
class Setting:
    device: str
    dtype: str
    batch: int
    dim: int
    headdim: int
    chunk_size: int
    lengths: tuple[int, ...]  # the L sweep, at N=64
    n_length: int  # the N sweep's L
    dstates: tuple[int, ...]
    backends: dict | None  # op -> names; None: by trait (by_trait)
    max_len: dict | None  # (op, backend) -> longest L; None: each backend's max_sensible_len
    check_len: int
    budget_s: float
    min_repeats: int = 3
    max_repeats: int = 20
    timeout_s: float = 300.0


OPS = ("selective_scan", "ssd", "attention")


def by_trait(op: str) -> list[str]:
    """On a GPU: every fused kernel of the op and its best unfused backend."""
    return common.union(common.fused(op), common.fallback(op))


SETTINGS = {
    "cpu-small": Setting(
        device="cpu", dtype="float32", batch=1, dim=256, headdim=64, chunk_size=64,
        lengths=(512, 768, 1024, 1536, 2048, 3072, 4096), n_length=2048, dstates=(16, 32, 64, 128, 256),
        backends={"selective_scan": ["torch_fast", "torch"], "ssd": ["torch_chunked"], "attention": ["sdpa"]},
        max_len={("selective_scan", "torch"): 1024}, check_len=512, budget_s=0.3, min_repeats=5,
        max_repeats=15, timeout_s=120),
    "gpu": Setting(
        device="cuda", dtype="bfloat16", batch=1, dim=2048, headdim=64, chunk_size=256,
        lengths=tuple(2**k for k in range(9, 18)), n_length=4096, dstates=(16, 32, 64, 128, 256),
        backends=None, max_len=None, check_len=2048, budget_s=0.3, max_repeats=30),
    # One short run on a lent GPU (scripts/gpu-lease.sh): each new state size costs mamba-ssm's and
    # fla-core's SSD about 30 s of autotuning (kernels/PERF.md), so the N sweep has three.
    "gpu-lease": Setting(
        device="cuda", dtype="bfloat16", batch=1, dim=2048, headdim=64, chunk_size=256,
        lengths=(2**12, 2**14, 2**16), n_length=4096, dstates=(16, 64, 128),
        backends=None, max_len=None, check_len=2048, budget_s=0.15, max_repeats=20, timeout_s=120),
    "paper": Setting(
        device="cuda", dtype="bfloat16", batch=1, dim=2048, headdim=64, chunk_size=256,
        lengths=tuple(2**k for k in range(9, 20)), n_length=4096, dstates=(16, 32, 64, 128, 256),
        backends=None, max_len=None, check_len=2048, budget_s=0.5, max_repeats=50, timeout_s=600),
}


def problem(s: Setting, op: str, L: int, dstate: int) -> dict:
    fields = {"device": s.device, "dtype": s.dtype, "batch": s.batch}
    heads = s.dim // s.headdim
    if op == "selective_scan":
        return {**fields, "dim": s.dim, "dstate": dstate, "seqlen": L, "has_z": False}
    if op == "ssd":
        return {**fields, "nheads": heads, "headdim": s.headdim, "dstate": dstate, "seqlen": L,
                "chunk_size": s.chunk_size}
    return {**fields, "nheads": heads, "headdim": s.headdim, "seqlen_q": L, "causal": True}


def cases(s: Setting) -> list[Case]:
    timing = dict(budget_s=s.budget_s, min_repeats=s.min_repeats, max_repeats=s.max_repeats, timeout_s=s.timeout_s)
    out = []
    sweeps = [(L_PANEL, op, L, 64) for op in (s.backends or OPS) for L in common.outside_in(s.lengths)]
    sweeps += [(N_PANEL, op, s.n_length, n) for op in ("selective_scan", "ssd") for n in common.outside_in(s.dstates)]
    for panel, op, L, n in sweeps:
        names = common.sensible_at(op, s.backends[op] if s.backends else by_trait(op), L, s.max_len)
        out += common.op_cases(NAME, op, names, [problem(s, op, L, n)], panel=panel,
                               check_params={get_op(op).length_field: s.check_len}, **timing)
    return out


# Analysis.
@dataclass
class Analysis:
    lsweep: pd.DataFrame  # timed rows of the L panel, with L
    nsweep: pd.DataFrame
    speedups: pd.DataFrame  # fastest scan / fastest SSD at each L, with interval
    crossover: common.Crossover | None  # fastest SSD against fastest attention
    n_exponents: pd.DataFrame  # per backend and for the fastest of each op ("fastest")
    n_growth: pd.DataFrame  # per op: time's growth from the smallest to the largest N, fastest at each end


def _fastest(rows: pd.DataFrame, x: str) -> pd.DataFrame:
    """At each x, the row of the fastest backend."""
    return rows.loc[rows.groupby(x)["median_ms"].idxmin()].sort_values(x)


def analyse(rows: pd.DataFrame) -> Analysis:
    t = common.with_length(common.timed(rows))
    lsweep = t[t["series"].str.startswith(L_PANEL)] if len(t) else t
    nsweep = t[t["series"].str.startswith(N_PANEL)] if len(t) else t
    records = []
    scan, ssd = (lsweep[lsweep["op"] == op] for op in ("selective_scan", "ssd"))
    if len(scan) and len(ssd):
        fast_scan, fast_ssd = _fastest(scan, "L").set_index("L"), _fastest(ssd, "L").set_index("L")
        for L in sorted(set(fast_scan.index) & set(fast_ssd.index)):
            a, b = fast_scan.loc[L], fast_ssd.loc[L]
            ratio, low, high = common.speedup(a["samples_ms"], b["samples_ms"])
            records.append({"L": int(L), "scan": a["backend"], "scan_ms": a["median_ms"], "ssd": b["backend"],
                            "ssd_ms": b["median_ms"], "speedup": ratio, "ci_low": low, "ci_high": high})
    att = lsweep[lsweep["op"] == "attention"]
    cross = None
    if len(ssd) and len(att):
        cross = common.crossover(ssd.groupby("L")["median_ms"].min(), att.groupby("L")["median_ms"].min())
    n_exps = pd.DataFrame()
    if len(nsweep):
        per_backend = common.fit_exponents(nsweep, "dstate", upper=False)
        fastest = pd.concat([_fastest(g, "dstate") for _, g in nsweep.groupby("op")]).assign(backend="fastest")
        n_exps = pd.concat([per_backend, common.fit_exponents(fastest, "dstate", upper=False)], ignore_index=True)
    return Analysis(lsweep, nsweep, pd.DataFrame(records), cross, n_exps, n_growth(nsweep))


def n_growth(nsweep: pd.DataFrame) -> pd.DataFrame:
    """Per op, time at the largest N over time at the smallest (fastest backend at each), as an
    exponent log(ratio) / log(N ratio) with the 95% bootstrap interval of the two ends' samples;
    and the same growth of the counted FLOPs where the rows count them. The claim is about how
    much the time grows over the sweep, and this interval is of the timings alone, where a power
    law fitted to every N also widens with the curve's bend (a fixed cost that dominates small N)."""
    records = []
    for op, group in nsweep.groupby("op") if len(nsweep) else ():
        ends = _fastest(group, "dstate")
        if ends["dstate"].nunique() < 2:
            continue
        lo, hi = ends.iloc[0], ends.iloc[-1]
        span = np.log(hi["dstate"] / lo["dstate"])
        ratio, low, high = common.speedup(hi["samples_ms"], lo["samples_ms"])
        flops = (np.log(hi["flops"] / lo["flops"]) / span if "flops" in ends and pd.notna(lo.get("flops"))
                 and pd.notna(hi.get("flops")) and lo["flops"] > 0 else np.nan)
        records.append({"op": op, "N_from": int(lo["dstate"]), "N_to": int(hi["dstate"]),
                        "backends": f"{lo['backend']} / {hi['backend']}", "time ratio": ratio,
                        "exponent": np.log(ratio) / span, "ci_low": np.log(low) / span,
                        "ci_high": np.log(high) / span, "FLOPs exponent": flops})
    return pd.DataFrame(records)


def _setting_text(rows: pd.DataFrame) -> str:
    t = rows[rows["op"] == "ssd"] if "op" in rows else rows
    if t.empty:
        return ""
    r = t.iloc[0]
    lengths = common.with_length(rows[rows["series"].fillna("").str.startswith(L_PANEL)])["L"]
    n_rows = rows[rows["series"].fillna("").str.startswith(N_PANEL)]
    n_part = (f"; N sweep at L={int(n_rows['seqlen'].iloc[0])}, N={int(n_rows['dstate'].min())}.."
              f"{int(n_rows['dstate'].max())}" if len(n_rows) else "")
    return (f"batch {int(r['batch'])}, D={int(r['nheads'] * r['headdim'])} (SSD: {int(r['nheads'])} heads x "
            f"{int(r['headdim'])}, 1 group, chunk {int(r['chunk_size'])}), {r['dtype']}; L sweep at N=64, "
            f"L={int(lengths.min())}..{int(lengths.max())}{n_part}")


def judge(rows: pd.DataFrame, manifest: dict) -> list[Verdict]:
    a = analyse(rows)
    base = dict(paper_setting=PAPER_SETTING, device=common.device_label(rows, manifest), setting=_setting_text(rows))
    return [_speedup_verdict(a, base), _crossover_verdict(a, base), _n_verdict(a, base)]


def _speedup_verdict(a: Analysis, base: dict) -> Verdict:
    claim = dict(claim_id="C3.ssd-vs-scan", claim="C3: SSD is 2-8x faster than Mamba-1's selective scan at N=64",
                 paper_value="2-8x", **base)
    s = a.speedups
    if s.empty:
        return Verdict(**claim, measured="scan and SSD not both timed at a common L", verdict="not measured",
                       reason="needs timed scan and SSD rows of the L sweep")
    text = "; ".join(f"L={r.L}: {r.speedup:.1f}x [{r.ci_low:.1f}, {r.ci_high:.1f}]" for r in s.itertuples())
    pairs = ", ".join(sorted({f"{r.scan} / {r.ssd}" for r in s.itertuples()}))
    words = [common.interval_verdict(r.ci_low, r.ci_high, SPEEDUP_MIN) for r in s.itertuples()]
    verdict = common.all_of(words)
    above = s[s["speedup"] > 8]
    return Verdict(**claim, measured=f"fastest scan / fastest SSD ({pairs}): {text}", verdict=verdict,
                   reason=f"holds when the speedup's 95% bootstrap interval lies at or above {SPEEDUP_MIN:g}x at "
                          f"every measured L, does not hold when it lies below {SPEEDUP_MIN:g}x at one, otherwise "
                          "undecided" + (f"; above the paper's 8x at L={', '.join(map(str, above['L']))} (the "
                                                "scan here is not the paper's fused kernel)" if len(above) else ""))


def _crossover_verdict(a: Analysis, base: dict) -> Verdict:
    claim = dict(claim_id="C3.ssd-attention-crossover",
                 claim="C3: SSD becomes faster than attention beyond a crossover length",
                 paper_value="crosses FlashAttention-2 at L=2K; 6x faster at L=16K", **base)
    c = a.crossover
    if c is None or not c.lengths:
        return Verdict(**claim, measured="SSD and attention not both timed", verdict="not measured",
                       reason="needs timed SSD and attention rows of the L sweep")
    at_16k = dict(zip(c.lengths, c.ratios)).get(2**14)
    lsweep = a.lsweep
    return common.crossover_verdict(claim, "SSD", "SSD is faster than attention", lsweep[lsweep["op"] == "ssd"],
                                    lsweep[lsweep["op"] == "attention"], c.describe(),
                                    f"; at L=16K: {at_16k:.2f}x" if at_16k else "")


def _n_verdict(a: Analysis, base: dict) -> Verdict:
    claim = dict(claim_id="C3.state-size",
                 claim="C3: at fixed L, scan time grows linearly in N while SSD stays nearly flat",
                 paper_value="scan linear in N; SSD nearly flat up to N=256 (L=4K)", **base)
    g = a.n_growth.set_index("op") if len(a.n_growth) else a.n_growth
    if not {"selective_scan", "ssd"} <= set(g.index):
        return Verdict(**claim, measured="N sweep incomplete", verdict="not measured",
                       reason="needs 2+ timed state sizes of both the scan and SSD")
    scan, ssd = g.loc["selective_scan"], g.loc["ssd"]
    # SSD's "at most FLAT_N_MAX" is the scan's rule mirrored: -exponent at least -FLAT_N_MAX.
    words = (common.interval_verdict(scan["ci_low"], scan["ci_high"], LINEAR_N_MIN),
             common.interval_verdict(-ssd["ci_high"], -ssd["ci_low"], -FLAT_N_MAX))
    verdict = common.all_of(words)
    e = a.n_exponents
    fits = e[e["backend"] == "fastest"].set_index("op") if len(e) else e

    def growth(r):
        return f"{r['exponent']:.2f} [{r['ci_low']:.2f}, {r['ci_high']:.2f}] ({r['time ratio']:.2f}x)"

    measured = (f"time's growth from N={int(ssd['N_from'])} to {int(ssd['N_to'])} as an exponent [95% CI] "
                f"(fastest backend at each end): scan {growth(scan)}, SSD {growth(ssd)}")
    if {"selective_scan", "ssd"} <= set(fits.index):
        measured += (f"; power laws fitted to every N: scan {fits.loc['selective_scan', 'fit'].describe()}, "
                     f"SSD {fits.loc['ssd', 'fit'].describe()}")
    reason = (f"holds when the scan's growth exponent has its lower 95% bound at or above {LINEAR_N_MIN} and "
              f"SSD's its upper bound at or below {FLAT_N_MAX}; does not hold when the scan's upper bound is below "
              f"{LINEAR_N_MIN} or SSD's lower bound above {FLAT_N_MAX}; otherwise undecided")
    if ssd["ci_low"] > FLAT_N_MAX and pd.notna(ssd["FLOPs exponent"]):
        reason += (f"; SSD's counted FLOPs grow as N^{ssd['FLOPs exponent']:.2f} over the same sweep (its state "
                   f"matmuls have N as a dimension) and its time as N^{ssd['exponent']:.2f}: on this device the "
                   f"added work costs time; a flat curve needs it to be free, as on a GPU whose tensor cores at "
                   f"small N are bound by memory rather than by FLOPs")
    return Verdict(**claim, measured=measured, verdict=verdict, reason=reason)


# Report pieces.
def tables(rows: pd.DataFrame) -> dict[str, pd.DataFrame]:
    a = analyse(rows)
    out = {}
    if len(a.speedups):
        out["Speedup of SSD over the scan at N=64 (fastest of each, 95% bootstrap CI)"] = a.speedups
    if a.crossover is not None and a.crossover.lengths:
        c = a.crossover
        out["SSD against attention"] = pd.DataFrame({"L": [int(x) for x in c.lengths], "attention / SSD time": c.ratios,
                                                     "crossover": [c.describe()] + [""] * (len(c.lengths) - 1)})
    if len(a.n_growth):
        out["Growth of time from the smallest to the largest N (95% CI; the verdict's figure)"] = a.n_growth
    if len(a.n_exponents):
        out["Exponent of time in N (95% CI)"] = a.n_exponents.drop(columns="fit")
    out["Cases"] = timing_table(rows.assign(panel=rows["series"].str.split(":").str[0]))
    return out


def figures(rows: pd.DataFrame, folder: Path) -> list[Path]:
    a = analyse(rows)
    device = common.device_label(rows)
    out = []
    if len(a.lsweep):
        lines = [(f"{op}/{name}", g["L"], g["median_ms"], None)
                 for (op, name), g in a.lsweep.sort_values("L").groupby(["op", "backend"])]
        out.append(common.loglog_figure(Path(folder) / "ssd_speedup_L.png", lines, xlabel="sequence length L",
                                        ylabel="median time per call (ms)", title=f"C3: time vs L at N=64\n{device}"))
    if len(a.nsweep):
        fits = {(r.op, r.backend): r.fit for r in a.n_exponents.itertuples()}
        lines = [(f"{op}/{name}", g["dstate"], g["median_ms"], fits.get((op, name)))
                 for (op, name), g in a.nsweep.sort_values("dstate").groupby(["op", "backend"])]
        L = int(a.nsweep["L"].iloc[0])
        out.append(common.loglog_figure(Path(folder) / "ssd_speedup_N.png", lines, xlabel="state size N",
                                        ylabel="median time per call (ms)", title=f"C3: time vs N at L={L}\n{device}"))
    return out


def paper_values(rows: pd.DataFrame) -> pd.DataFrame:
    """The numbers [M2]'s text states about C3, next to what ``rows`` measured."""
    a = analyse(rows) if len(rows) else None
    s = a.speedups if a is not None else pd.DataFrame()
    c = a.crossover if a is not None else None
    ratios = dict(zip(c.lengths, c.ratios)) if c is not None else {}
    g = a.n_growth.set_index("op") if a is not None and len(a.n_growth) else pd.DataFrame()

    def exponent(op):
        return f"N^{g.loc[op, 'exponent']:.2f}" if op in g.index else "not measured"

    records = [
        ("SSD speedup over the scan at N=64", "2-8x",
         f"{s['speedup'].min():.1f}-{s['speedup'].max():.1f}x (L={s['L'].min()}..{s['L'].max()})" if len(s)
         else "not measured"),
        ("SSD faster than attention beyond", "L=2K (vs FlashAttention-2)",
         c.describe() if c is not None and c.lengths else "not measured"),
        ("SSD speedup over attention at L=16K", "6x", f"{ratios[2**14]:.2f}x" if 2**14 in ratios else "not measured"),
        ("scan time in N at fixed L", "linear", exponent("selective_scan")),
        ("SSD time in N at fixed L", "nearly flat up to N=256", exponent("ssd")),
    ]
    return common.paper_values("C3", rows, records)


SUITE = Suite(
    name=NAME,
    description="C3: SSD against the Mamba-1 scan over L at N=64 and over N at fixed L",
    presets=common.presets(cases, SETTINGS),
    judge=judge, figures=figures, tables=tables,
    extra={"paper_values": paper_values},
    threads={"cpu-small": common.CPU_THREADS},
    figure_of={"C3.ssd-vs-scan": ("ssd_speedup_L.png",), "C3.ssd-attention-crossover": ("ssd_speedup_L.png",),
               "C3.state-size": ("ssd_speedup_N.png",)},
)
