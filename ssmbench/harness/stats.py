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


def bootstrap_medians(samples: Sequence[float], resamples: int, rng: np.random.Generator) -> np.ndarray:
    """The medians of ``resamples`` resamples (with replacement) of ``samples``."""
    x = np.asarray(samples, dtype=float)
    return np.median(rng.choice(x, (resamples, len(x))), axis=1)
