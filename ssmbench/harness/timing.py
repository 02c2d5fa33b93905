"""Timing one callable: first call apart, warm-up until steady, adaptive repeats, raw samples.

CPU: ``time.perf_counter`` around each call. GPU: CUDA events around each call, the L2 cache
flushed before each one (unless hot-cache mode), synchronised before reading.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

from .stats import median_ci


@dataclass(frozen=True)
class Timing:
    samples_ms: list[float] = field(repr=False)
    first_call_ms: float
    warmup_calls: int

    @property
    def n(self) -> int:
        return len(self.samples_ms)

    @property
    def median_ms(self) -> float:
        return float(np.median(self.samples_ms))

    @property
    def mean_ms(self) -> float:
        return float(np.mean(self.samples_ms))

    @property
    def min_ms(self) -> float:
        return float(np.min(self.samples_ms))

    @property
    def iqr_ms(self) -> float:
        q1, q3 = np.percentile(self.samples_ms, [25, 75])
        return float(q3 - q1)

    def median_ci(self, confidence: float = 0.95) -> tuple[float, float]:
        return median_ci(self.samples_ms, confidence)

    def stats(self) -> dict[str, float]:
        lo, hi = self.median_ci()
        return {
            "median_ms": self.median_ms, "mean_ms": self.mean_ms, "min_ms": self.min_ms,
            "iqr_ms": self.iqr_ms, "ci_low_ms": lo, "ci_high_ms": hi, "n_samples": self.n,
            "first_call_ms": self.first_call_ms, "warmup_calls": self.warmup_calls,
        }


class _CpuClock:
    def start(self):
        self.t0 = time.perf_counter()

    def stop(self) -> float:
        return (time.perf_counter() - self.t0) * 1e3


class _CudaClock:
    """CUDA events around each call, the L2 cache flushed before it: a call's inputs are read
    from memory, as they are in a model, not from the previous sample's cache."""

    def __init__(self):
        self.begin = torch.cuda.Event(enable_timing=True)
        self.end = torch.cuda.Event(enable_timing=True)
        l2 = getattr(torch.cuda.get_device_properties(0), "L2_cache_size", 64 << 20)
        self.flush_buffer = torch.empty(2 * l2 // 4, dtype=torch.int32, device="cuda")

    def start(self):
        self.flush_buffer.zero_()
        self.begin.record()

    def stop(self) -> float:
        self.end.record()
        self.end.synchronize()
        return self.begin.elapsed_time(self.end)


def measure(fn: Callable[[], object], device: str = "cpu", *, min_repeats: int = 3,
            max_repeats: int = 50, budget_s: float = 2.0, max_warmup: int = 10) -> Timing:
    """Time ``fn``. The first call (compilation, autotuning, allocation) is kept apart; warm-up
    calls follow until two in a row agree within 10% (at most ``max_warmup``); then samples are
    taken until ``budget_s`` is spent or ``max_repeats`` reached (``min_repeats`` at least)."""
    from . import inject

    cuda = device == "cuda"
    if cuda:
        torch.cuda.synchronize()
    fn = inject.slowed(fn, torch.cuda.synchronize if cuda else None)
    clock = _CudaClock() if cuda else _CpuClock()

    def once() -> float:
        clock.start()
        fn()
        return clock.stop()

    t0 = time.perf_counter()
    first = once()
    warm, previous = 0, first
    while warm < max_warmup and time.perf_counter() - t0 < budget_s / 2:
        current = once()
        warm += 1
        if abs(current - previous) <= 0.1 * max(previous, 1e-9):
            break
        previous = current
    samples: list[float] = []
    t1 = time.perf_counter()
    while len(samples) < max_repeats and (len(samples) < min_repeats or time.perf_counter() - t1 < budget_s):
        samples.append(once())
    return Timing(samples, first, warm)


def measure_interleaved(fns: dict[str, Callable[[], object]], device: str = "cpu", *, min_rounds: int = 5,
                        max_rounds: int = 50, budget_s: float = 4.0, warmup_rounds: int = 2) -> dict[str, Timing]:
    """Time several callables in rounds, A B C A B C ..., the order rotated each round, so that
    drifts of the machine (clocks, heat, other load) fall on all of them alike."""
    from . import inject

    cuda = device == "cuda"
    clock = _CudaClock() if cuda else _CpuClock()
    names = list(fns)
    wrapped = {n: inject.slowed(f, torch.cuda.synchronize if cuda else None) for n, f in fns.items()}

    def once(name: str) -> float:
        clock.start()
        wrapped[name]()
        return clock.stop()

    first = {n: once(n) for n in names}
    for _ in range(warmup_rounds):
        for n in names:
            once(n)
    samples: dict[str, list[float]] = {n: [] for n in names}
    t0 = time.perf_counter()
    rounds = 0
    while rounds < max_rounds and (rounds < min_rounds or time.perf_counter() - t0 < budget_s):
        for i in range(len(names)):
            n = names[(i + rounds) % len(names)]
            samples[n].append(once(n))
        rounds += 1
    return {n: Timing(samples[n], first[n], warmup_rounds) for n in names}
