"""Suites, one module per claim; each defines ``SUITE``."""
from __future__ import annotations

import importlib
from functools import cache

from .base import Case, Suite, Verdict

SUITE_NAMES = ("scaling", "ssd_speedup", "jamba_cache", "kernels", "peers", "generation", "jamba_throughput",
               "training", "quality")


def available_suites() -> list[str]:
    """The suites of SUITE_NAMES that this checkout holds."""
    return [n for n in SUITE_NAMES if importlib.util.find_spec(f"{__name__}.{n}") is not None]


@cache
def get_suite(name: str) -> Suite:
    from ..impls.base import unknown

    if name not in available_suites():
        raise unknown("suite", name, available_suites())
    return importlib.import_module(f"{__name__}.{name}").SUITE


__all__ = ["Case", "Suite", "Verdict", "SUITE_NAMES", "available_suites", "get_suite"]
