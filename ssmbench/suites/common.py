"""What the claim suites share: building op cases, scaling exponents with confidence intervals,
crossover lengths, speedup intervals, the device a run measured on, and log-log figures.

Exponents are slopes of log(time) against log(size) by least squares; their interval is
slope +- t(0.975, n - 2) x the slope's standard error (scipy's ``linregress``), so two points
give no interval and the verdicts that need one say so.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

from ..harness.stats import CONFIDENCE, Fit, bootstrap_medians, loglog_fit, speedup  # noqa: F401 - the suites' vocabulary
from ..impls.registry import backends, get_op
from .base import Case

# Why the CPU presets time on one thread: on a CPU shared with other work, an op's two threads wait
# for each other whenever one is descheduled. Measured on a loaded 2-core machine: the chunked SSD
# at L=1024/2048/4096 took 180/73/220 ms on two threads and 6/13/46 ms on one.
CPU_THREADS = 1


# Cases.
def registered(op: str, names: Iterable[str]) -> list[str]:
    """The backends of ``names`` that this checkout has (a backend it has but this machine cannot
    run still becomes a case: its row says why)."""
    known = backends(op)
    return [n for n in names if n in known]


# Backends chosen by their traits (ssmbench.impls.base.Backend), in auto priority order, so that a
# new backend module joins the suites without an edit to them.
def fused(op: str) -> list[str]:
    """The op's fused kernels: what the papers' speed claims are about."""
    return [b.name for b in backends(op).values() if b.fused]


def fallback(op: str) -> list[str]:
    """The op's best backend that is neither fused nor the reference (what a machine without the
    kernels runs): one name, or none."""
    return [b.name for b in backends(op).values() if not b.fused and b.kind != "reference"][:1]


def ours_in_torch(op: str) -> list[str]:
    """Our plain torch backends: the "standard PyTorch" baselines of the claims."""
    return [b.name for b in backends(op).values() if b.kind == "torch"]


def union(*names: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(n for group in names for n in group))


def sensible_at(op: str, names: Iterable[str], length: int, max_len: Mapping | None = None) -> list[str]:
    """The backends of ``names`` worth timing at sequence length ``length``: under a setting's
    own bounds ``max_len`` ((op, backend) -> longest L) when it has them, else under each
    backend's max_sensible_len."""
    known = backends(op)
    if max_len is not None:
        return [n for n in names if length <= max_len.get((op, n), length)]
    return [n for n in names if n in known and length <= (known[n].max_sensible_len or length)]


def op_cases(suite: str, op: str, names: Sequence[str], problems: Iterable[dict], *,
             panel: str = "", check_params: dict | None = None, **timing) -> list[Case]:
    """One case per problem and backend, the backends of one problem next to each other (the
    worker reuses the inputs and the float64 reference between them). ``problems`` are fields
    over the op's defaults; the series is "<panel>op/backend"; ``check_params`` caps the fields
    of the correctness check (a field is lowered to the cap, never raised)."""
    spec = get_op(op)
    cases = []
    for fields in problems:
        problem = spec.problem_type.from_params({**spec.default_problem.params(), **fields})
        params = problem.params()
        check = {k: v for k, v in (check_params or {}).items() if params[k] > v}
        for name in registered(op, names):
            cases.append(Case(suite=suite, op=op, backend=name, params=params,
                              series=f"{panel}{op}/{name}", check_params=check, **timing))
    return cases


def outside_in(values: Iterable) -> list:
    """Sorted values ordered smallest, largest, second smallest, second largest, ...: a sweep
    run in this order spreads a machine's slow drift (other work starting or stopping) over
    short and long sizes alike, instead of tilting the fitted exponent."""
    ordered = sorted(values)
    out = []
    while ordered:
        out.append(ordered.pop(0))
        if ordered:
            out.append(ordered.pop())
    return out


# Rows.
def with_length(rows: pd.DataFrame) -> pd.DataFrame:
    """Rows with ``L``, the sequence length whatever the op calls it."""
    out = rows.copy()
    length = pd.Series(np.nan, index=out.index)
    for column in ("seqlen_q", "seqlen"):
        if column in out:
            length = length.fillna(out[column])
    out["L"] = length
    return out


def timed(rows: pd.DataFrame) -> pd.DataFrame:
    """The op rows that were checked and timed."""
    if rows.empty or "median_ms" not in rows:
        return rows.iloc[0:0]
    return rows[(rows["status"] == "ok") & rows["median_ms"].notna()]


def device_label(rows: pd.DataFrame, manifest: dict | None = None) -> str:
    """Where the rows were measured, in words; a CPU run never reads as a GPU number."""
    env = (manifest or {}).get("environment", {})
    if on_gpu(rows):
        name = _first(rows, "gpu_name") or env.get("gpu_name") or "unknown GPU"
        return f"GPU: {name}"
    cpu = _first(rows, "cpu_model") or env.get("cpu_model") or "unknown CPU"
    threads = _first(rows, "threads") or env.get("torch_threads")
    count = f", {int(threads)} thread{'s' if int(threads) > 1 else ''}" if threads else ""
    return f"CPU: {cpu}{count} (not the paper's GPU)"


def _first(rows: pd.DataFrame, column: str):
    if column not in rows:
        return None
    values = rows[column].dropna()
    return values.iloc[0] if len(values) else None


# Scaling exponents.
def upper_half(x: Iterable[float], at_least: int = 3) -> list[float]:
    """The larger half of the distinct x values (at least ``at_least`` of them, or all): where
    the asymptotic growth shows rather than fixed per-call costs."""
    values = sorted(set(float(v) for v in x))
    keep = max(at_least, math.ceil(len(values) / 2))
    return values[-keep:]


def fit_exponents(rows: pd.DataFrame, x: str, y: str = "median_ms", by: Sequence[str] = ("op", "backend"),
                  upper: bool = True) -> pd.DataFrame:
    """The exponent of y against x for each group of ``by``: over the upper half of x when
    ``upper``, else over every x."""
    records = []
    for key, group in rows.dropna(subset=[x, y]).groupby(list(by), sort=True):
        group = group.groupby(x, as_index=False)[y].median()
        if upper:
            group = group[group[x].isin(upper_half(group[x]))]
        if group[x].nunique() < 2:
            continue
        fit = loglog_fit(group[x], group[y])
        key = key if isinstance(key, tuple) else (key,)
        records.append({**dict(zip(by, key)), "points": fit.n, f"{x}_from": int(fit.x_from),
                        f"{x}_to": int(fit.x_to), "exponent": fit.slope, "ci_low": fit.low,
                        "ci_high": fit.high, "fit": fit})
    return pd.DataFrame(records)


# Crossovers and speedups.
@dataclass(frozen=True)
class Crossover:
    """Where series ``a`` (an SSM) becomes faster than series ``b`` (attention).

    status: "crossed" (a faster at the longest common length; ``length`` interpolated in
    log-log between the two measured lengths around the last change from b faster to a
    faster), "always" (a faster at every common length), "not reached" (b faster at the
    longest common length; ``length`` is where the power laws fitted to the upper halves would
    cross, when they do beyond the range), or "no common length"."""

    status: str
    length: float | None
    lengths: tuple[float, ...]
    ratios: tuple[float, ...]  # time of b / time of a at each common length

    def describe(self) -> str:
        span = f"{int(self.lengths[0])}..{int(self.lengths[-1])}" if self.lengths else ""
        if self.status == "crossed":
            return f"L ≈ {self.length:,.0f}"
        if self.status == "always":
            return f"faster at every measured L ({span})"
        if self.status == "not reached":
            beyond = f"; the fitted lines cross at L ≈ {self.length:,.0f} (extrapolated)" if self.length else ""
            return f"not reached in range ({span}){beyond}"
        return "no length measured for both"


def crossover(a: pd.Series, b: pd.Series) -> Crossover:
    """``a``, ``b``: times indexed by length (medians). See :class:`Crossover`."""
    common = sorted(set(a.index) & set(b.index))
    if not common:
        return Crossover("no common length", None, (), ())
    ratio = np.array([b[L] / a[L] for L in common])
    lengths, log_r = np.array(common, dtype=float), np.log(ratio)
    if (log_r > 0).all():
        return Crossover("always", None, tuple(lengths), tuple(ratio))
    if log_r[-1] <= 0:
        return Crossover("not reached", _extrapolate(a, b, lengths[-1]), tuple(lengths), tuple(ratio))
    i = max(j for j in range(len(common) - 1) if log_r[j] <= 0 < log_r[j + 1])
    lx0, lx1 = np.log(lengths[i]), np.log(lengths[i + 1])
    at = lx0 + (0 - log_r[i]) * (lx1 - lx0) / (log_r[i + 1] - log_r[i])
    return Crossover("crossed", float(np.exp(at)), tuple(lengths), tuple(ratio))


def faster_at_longest(fast: pd.DataFrame, slow: pd.DataFrame) -> dict | None:
    """At the longest L timed in both (rows with ``L``, ``median_ms`` and ``samples_ms``): the
    fastest row of each, and time(slow) / time(fast) with its bootstrap interval; None with no
    common L."""
    common_L = sorted(set(fast["L"]) & set(slow["L"])) if len(fast) and len(slow) else []
    if not common_L:
        return None
    L = common_L[-1]
    a = fast[fast["L"] == L].sort_values("median_ms").iloc[0]
    b = slow[slow["L"] == L].sort_values("median_ms").iloc[0]
    ratio, low, high = speedup(b["samples_ms"], a["samples_ms"])
    return {"L": int(L), "fast": a["backend"], "slow": b["backend"], "ratio": ratio, "low": low, "high": high}


# Verdicts.
def crossover_verdict(base: dict, ssm: str, subject: str, fast: pd.DataFrame, slow: pd.DataFrame,
                      crossover: str, extra: str = ""):
    """The SSM op (``ssm``: "scan", "SSD") against attention: holds when the SSM is faster at the
    longest length both timed, by the time ratio's bootstrap interval; ``crossover``: the
    interpolated length, in words; ``subject``: the comparison the reason states."""
    from .base import Verdict

    last = faster_at_longest(fast, slow)
    measured = (f"fastest {ssm} vs fastest attention: crossover {crossover}; attention/{ssm} time at "
                f"L={last['L']}: {last['ratio']:.2f}x [{last['low']:.2f}, {last['high']:.2f}] ({last['slow']} / "
                f"{last['fast']})" + extra)
    return Verdict(**base, measured=measured, verdict=interval_verdict(last["low"], last["high"], 1.0),
                   reason=f"holds when {subject} at the longest measured L (the time ratio's 95% bootstrap "
                          "interval above 1; crossover interpolated in log-log), does not hold when the interval "
                          "lies below 1, otherwise undecided; the length itself is the device's, not the paper's")


def interval_verdict(low: float, high: float, at_least: float) -> str:
    """"holds" when the interval lies at or above ``at_least``, "does not hold" when it lies
    below, "undecided" when it straddles it or there is none (NaN): a verdict flips only on an
    interval that decides."""
    if math.isnan(low) or math.isnan(high):
        return "undecided"
    return "holds" if low >= at_least else "does not hold" if high < at_least else "undecided"


def all_of(verdicts: Iterable[str]) -> str:
    """The verdict of a claim that needs every part to hold: one part that does not hold decides
    it, then one undecided part."""
    verdicts = list(verdicts)
    return next((v for v in ("does not hold", "undecided") if v in verdicts), "holds")


def on_gpu(rows: pd.DataFrame) -> bool:
    return "device" in rows and bool((rows["device"] == "cuda").any())


@dataclass(frozen=True)
class CrossoverInterval:
    """A percentile bootstrap interval of a crossover length: each length's raw samples of each
    series resampled, the medians' crossover found again. ``share``: the fraction of resamples
    whose crossover has the point estimate's status and a length (the rest give none)."""

    low: float | None
    high: float | None
    share: float

    def describe(self) -> str:
        if self.low is None:
            return "no interval (no resample gives a length)"
        return f"[{self.low:,.0f}, {self.high:,.0f}] ({self.share:.0%} of resamples)"


def crossover_interval(a: Mapping[float, Sequence[float]], b: Mapping[float, Sequence[float]],
                       confidence: float = CONFIDENCE, resamples: int = 1000, seed: int = 0) -> CrossoverInterval:
    """``a``, ``b``: raw times by length. See :class:`CrossoverInterval`."""
    rng = np.random.default_rng(seed)
    point = crossover(pd.Series({L: np.median(s) for L, s in a.items()}),
                      pd.Series({L: np.median(s) for L, s in b.items()}))
    boot_a = {L: bootstrap_medians(s, resamples, rng) for L, s in a.items()}
    boot_b = {L: bootstrap_medians(s, resamples, rng) for L, s in b.items()}
    lengths = []
    for i in range(resamples):
        c = crossover(pd.Series({L: m[i] for L, m in boot_a.items()}), pd.Series({L: m[i] for L, m in boot_b.items()}))
        if c.status == point.status and c.length is not None:
            lengths.append(c.length)
    if not lengths:
        return CrossoverInterval(None, None, 0.0)
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(lengths, [tail, 100 - tail])
    return CrossoverInterval(float(low), float(high), len(lengths) / resamples)


def _extrapolate(a: pd.Series, b: pd.Series, beyond: float, reach: float = 256) -> float | None:
    """Where the power laws fitted to the upper halves of a and b meet, if beyond ``beyond``
    and within ``reach`` times it (further out, the meeting point is the fit's noise)."""
    fits = []
    for s in (a, b):
        keep = s[s.index.isin(upper_half(s.index))]
        if len(keep) < 2:
            return None
        fits.append(loglog_fit(keep.index, keep.values))
    fa, fb = fits
    if fb.slope <= fa.slope:
        return None
    # In logs: nearly parallel lines meet beyond any float.
    log_length = (fa.intercept - fb.intercept) / (fb.slope - fa.slope)
    return math.exp(log_length) if math.log(beyond) < log_length <= math.log(reach * beyond) else None


# Figures.
def loglog_figure(path: Path, lines: Sequence[tuple[str, Sequence, Sequence, Fit | None]], *, xlabel: str,
                  ylabel: str, title: str, base: int = 2) -> Path:
    """One log-log plot: per line (label, x, y, fit or None) the measured points joined, and the
    fitted power law dashed over its range, its slope in the legend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 5))
    for label, x, y, fit in lines:
        (line,) = ax.plot(x, y, marker="o", ms=4, label=label if fit is None else f"{label} (slope {fit.describe()})")
        if fit is not None:
            xs = np.geomspace(fit.x_from, fit.x_to, 20)
            ax.plot(xs, fit.predict(xs), ls="--", lw=1, color=line.get_color())
    ax.set_xscale("log", base=base)
    ax.set_yscale("log")
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


def gib(n: float) -> str:
    return f"{n / 2**30:,.6g} GiB"


# Suite plumbing.
def text(value) -> str:
    """A row's text field, "" where the row has none (a column other rows of the run filled
    reads NaN in this one)."""
    return value if isinstance(value, str) else ""


def presets(cases_of: Callable[[Any], list[Case]], settings: Mapping[str, Any]) -> dict[str, Callable[[], list[Case]]]:
    """Suite.presets from a settings table: preset name -> the cases of its setting."""
    return {name: partial(cases_of, setting) for name, setting in settings.items()}


def paper_values(claim: str, rows: pd.DataFrame, records: Sequence[tuple[str, str, str]]) -> pd.DataFrame:
    """The "paper value beside ours" table of ``ssmbench tables``: (quantity, paper, measured)
    records; the device is named where something was measured."""
    device = device_label(rows) if len(rows) else ""
    return pd.DataFrame([{"claim": claim, "quantity": q, "paper": p, "measured": m,
                          "device": device if m != "not measured" else ""} for q, p, m in records])


def cases_table(rows: pd.DataFrame) -> pd.DataFrame:
    """The report's per-case timing table of a suite's op cases (custom cases have their own)."""
    from ..harness.report import timing_table

    return timing_table(rows[rows["op"].fillna("") != ""] if "op" in rows else rows)
