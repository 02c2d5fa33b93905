"""Statistics shared by the reports, the suites' verdicts and the gate.

Exponents are slopes of log(y) against log(x) by least squares; their interval is
slope +- t(0.5 + confidence / 2, n - 2) x the slope's standard error (scipy's ``linregress``),
so two points give no interval. Speedups are ratios of medians with a percentile bootstrap.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

CONFIDENCE = 0.95


@dataclass(frozen=True)
class Fit:
    """log y = intercept + slope log x over ``n`` points with x in [x_from, x_to]."""

    slope: float
    low: float  # the slope's confidence interval; NaN with fewer than 3 points
    high: float
    intercept: float
    n: int
    x_from: float
    x_to: float

    def predict(self, x):
        return np.exp(self.intercept) * np.asarray(x, dtype=float) ** self.slope

    def describe(self) -> str:
        if math.isnan(self.low):
            return f"{self.slope:.2f} (no interval: {self.n} points)"
        return f"{self.slope:.2f} [{self.low:.2f}, {self.high:.2f}]"


def loglog_fit(x: Sequence[float], y: Sequence[float], confidence: float = CONFIDENCE) -> Fit:
    from scipy.stats import linregress, t

    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if len(x) < 2 or len(np.unique(x)) < 2:
        raise ValueError(f"a log-log fit needs at least 2 distinct x values, got {list(x)}")
    fit = linregress(np.log(x), np.log(y))
    n = len(x)
    if n > 2:
        half = t.ppf(0.5 + confidence / 2, n - 2) * fit.stderr
        low, high = fit.slope - half, fit.slope + half
    else:
        low = high = math.nan
    return Fit(float(fit.slope), float(low), float(high), float(fit.intercept), n, float(x.min()), float(x.max()))


def speedup(slow_ms: Sequence[float], fast_ms: Sequence[float], confidence: float = CONFIDENCE,
            resamples: int = 2000, seed: int = 0) -> tuple[float, float, float]:
    """median(slow) / median(fast), with a percentile bootstrap interval (each sample set
    resampled on its own; fixed seed, so a report is reproducible from its rows)."""
    ratio = float(np.median(slow_ms) / np.median(fast_ms))
    rng = np.random.default_rng(seed)
    boot = bootstrap_medians(slow_ms, resamples, rng) / bootstrap_medians(fast_ms, resamples, rng)
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(boot, [tail, 100 - tail])
    return ratio, float(low), float(high)


def median_ci(samples, confidence: float = 0.95) -> tuple[float, float]:
    """Distribution-free confidence interval of the median from order statistics: the ranks
    (j, k) around n/2 such that Binomial(n, 1/2) puts at least ``confidence`` between them."""
    from scipy.stats import binom

    x = np.sort(np.asarray(samples, dtype=float))
    n = len(x)
    if n < 6:
        return float(x[0]), float(x[-1])
    alpha = 1 - confidence
    j = int(binom.ppf(alpha / 2, n, 0.5))
    k = n - j
    # ppf may land one rank inside; widen until the coverage is reached.
    while j > 0 and binom.cdf(k - 1, n, 0.5) - binom.cdf(j - 1, n, 0.5) < confidence:
        j, k = j - 1, k + 1
    return float(x[max(j - 1, 0)]), float(x[min(k - 1, n - 1)])


def significant_slowdown(baseline: list[float], current: list[float]) -> float:
    """One-sided Mann-Whitney U p-value that ``current`` is slower than ``baseline``."""
    from scipy.stats import mannwhitneyu

    if len(baseline) < 2 or len(current) < 2:
        return math.nan
    return float(mannwhitneyu(current, baseline, alternative="greater").pvalue)


def two_sided_p(a: Sequence[float], b: Sequence[float]) -> float:
    """Two-sided Mann-Whitney U p-value that ``a`` and ``b`` come from one distribution."""
    from scipy.stats import mannwhitneyu

    return float(mannwhitneyu(a, b, alternative="two-sided").pvalue)


def bootstrap_medians(samples: Sequence[float], resamples: int, rng: np.random.Generator) -> np.ndarray:
    """The medians of ``resamples`` resamples (with replacement) of ``samples``."""
    x = np.asarray(samples, dtype=float)
    return np.median(rng.choice(x, (resamples, len(x))), axis=1)
