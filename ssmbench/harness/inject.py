"""A test-only slowdown, to prove that a gate catches what it should.

``SSMBENCH_INJECT_SLOWDOWN="op/backend=0.3"`` (several separated by commas; ``*`` matches any
op or backend) makes every timed call of the matching cases busy-wait 30% of its own duration
more. The runner names the case in flight (:data:`current`); :func:`slowed` does the rest. Unset,
it costs one dictionary lookup per timed callable.
"""
from __future__ import annotations

import fnmatch
import os
import time
from typing import Callable

ENV = "SSMBENCH_INJECT_SLOWDOWN"
current: str = ""  # "op/backend" of the case being timed


def _fraction(target: str) -> float:
    spec = os.environ.get(ENV, "")
    for item in filter(None, (s.strip() for s in spec.split(","))):
        pattern, sep, value = item.rpartition("=")
        if not sep:
            raise ValueError(f"{ENV} expects op/backend=fraction items, got {item!r}")
        if fnmatch.fnmatchcase(target, pattern):
            return float(value)
    return 0.0


def slowed(fn: Callable[[], object], synchronize: Callable[[], None] | None = None,
           fraction: float | None = None) -> Callable[[], object]:
    """``fn``, made ``fraction`` slower (default: as the environment asks for the case in flight)."""
    if fraction is None:
        fraction = _fraction(current) if current else 0.0
    if fraction <= 0:
        return fn

    def wrapper():
        t0 = time.perf_counter()
        result = fn()
        if synchronize is not None:
            synchronize()
        end = time.perf_counter() + (time.perf_counter() - t0) * fraction
        while time.perf_counter() < end:
            pass
        return result

    return wrapper
