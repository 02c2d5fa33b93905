"""How far this machine's timings can be trusted right now, measured, not assumed.

The portable gate judges ratios between backends measured inside one run. Load from other
processes does not slow every kind of work alike: a dispatch-bound loop (our Python-loop scans)
loses more than a compute-bound kernel when it shares a core, and that moves such ratios far
more than it moves either time's own interval. So the self-comparison here times one of each
kind, interleaved round by round (``measure_interleaved``), and takes the spread of their
per-round ratio: on an idle machine it stays within a few tens of percent, with a busy process
on each core it reaches several times that. The figure is the 90th percentile of the ratio's
distance from its median, as a relative change, so a single stall does not set it.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .timing import measure_interleaved

ROUNDS = 150


@dataclass(frozen=True)
class Noise:
    spread: float  # 90th percentile of |ratio / median ratio| - 1 over the rounds, as a fraction
    rounds: int

    def describe(self) -> str:
        return (f"machine noise {self.spread:.0%} (q90 of a dispatch-bound / matmul self-comparison, "
                f"{self.rounds} interleaved rounds)")

    def exceeds(self, threshold: float) -> bool:
        return self.spread > threshold


def measure_noise(rounds: int = ROUNDS) -> Noise:
    if rounds < 10:
        raise ValueError(f"measure_noise: rounds must be at least 10 for a 90th percentile, got {rounds}")
    small = torch.ones(8)
    a = torch.randn(512, 512, generator=torch.Generator().manual_seed(0))

    def dispatch_bound():
        x = small
        for _ in range(300):
            x = x + small
        return x

    timings = measure_interleaved({"dispatch": dispatch_bound, "matmul": lambda: a @ a},
                                  min_rounds=rounds, max_rounds=rounds, budget_s=0.0)
    ratios = np.asarray(timings["dispatch"].samples_ms) / np.asarray(timings["matmul"].samples_ms)
    distance = np.abs(np.log(ratios / np.median(ratios)))
    return Noise(float(np.expm1(np.quantile(distance, 0.9))), rounds)
