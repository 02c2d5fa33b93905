"""What a suite is: cases to run (per preset), and how its claim is judged from the rows.

A :class:`Case` is self-contained and picklable: the runner (locally, or any executor) needs
nothing else to produce its row. Two kinds:

- an op case (``op`` and ``backend`` set, ``fn`` empty): checked against the float64 reference,
  then timed; the row holds the timing statistics and derived units;
- a custom case (``fn`` = "module:function"): the function gets ``params`` (a dict) and returns
  a dict of row fields (e.g. measured cache bytes, tokens/s); raising marks the case failed.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

VERDICTS = ("holds", "does not hold", "not measured")
PASS_MODES = ("forward", "backward", "forward_backward")


@dataclass(frozen=True)
class Case:
    suite: str
    params: Mapping[str, Any]  # the op's Problem fields, or the custom function's arguments
    op: str = ""
    backend: str = ""
    fn: str = ""
    series: str = ""  # what a plot line / table column groups by, e.g. "scan" or "attention"
    # An interleaved comparison: these backends (``backend`` left empty) are checked, then timed
    # in rounds A B A B ... in one process; ``stability`` also times the first one twice.
    backends: tuple[str, ...] = ()
    stability: bool = False
    # Problem fields that differ for the correctness check only: a float64 reference loop at a
    # timed length of 2^19 takes minutes, attention's at 2^16 more memory than a host has.
    # The row says where the check ran (``checked_at``).
    check_params: Mapping[str, Any] = field(default_factory=dict)
    timeout_s: float = 300.0
    # Timing budget: stop repeating after this many seconds or samples, whichever comes first.
    min_repeats: int = 3
    max_repeats: int = 50
    budget_s: float = 2.0
    # What an op case times: the forward, the backward alone (from activations stored by one
    # forward), or both. Checked gradients come before a timed backward.
    pass_mode: str = "forward"

    def __post_init__(self):
        if self.pass_mode not in PASS_MODES:
            raise ValueError(f"Case: pass_mode must be one of {', '.join(PASS_MODES)}, got {self.pass_mode!r}")

    @property
    def case_id(self) -> str:
        """Stable across runs and machines: the same case has the same id (resume, gates)."""
        key = json.dumps(
            {"suite": self.suite, "op": self.op, "backend": self.backend, "fn": self.fn,
             "series": self.series, "params": dict(self.params),
             **({"backends": list(self.backends), "stability": self.stability} if self.backends else {}),
             # Forward cases keep the ids they had before pass modes existed (baselines, resume).
             **({"pass_mode": self.pass_mode} if self.pass_mode != "forward" else {})},
            sort_keys=True, default=str,
        )
        return hashlib.sha1(key.encode()).hexdigest()[:16]

    def label(self) -> str:
        what = (f"{self.op}/{self.backend or '+'.join(self.backends)}"
                f"{'' if self.pass_mode == 'forward' else ' ' + self.pass_mode}" if self.op
                else self.fn.rsplit(":", 1)[-1])
        shown = ",".join(f"{k}={v}" for k, v in self.params.items() if k not in ("device",))
        return f"{self.suite}:{what} {shown}"


@dataclass(frozen=True)
class Verdict:
    """One claim judged from one run's rows."""

    claim: str  # e.g. "C1: selective scan time grows linearly in L"
    paper_setting: str
    paper_value: str
    device: str  # where this run measured it
    setting: str  # what this run measured
    measured: str
    verdict: str  # one of VERDICTS
    reason: str = ""

    def __post_init__(self):
        if self.verdict not in VERDICTS:
            raise ValueError(f"verdict must be one of {VERDICTS}, got {self.verdict!r}")


@dataclass(frozen=True)
class Suite:
    """name: the --suite name. presets: preset name -> function returning the cases.
    judge(rows, manifest) -> verdicts. figures(rows, folder) -> PNG paths written.
    tables(rows) -> {title: DataFrame} for the report (default: the timing table).
    threads: preset -> torch threads when the command line names none (recorded as always).
    checkpoint_cases(preset, path_or_id) -> the cases of a checkpoint at a preset's setting, for
    the suites that build models (``ssmbench run --model``); None: the suite builds none."""

    name: str
    description: str
    presets: Mapping[str, Callable[[], list[Case]]]
    judge: Callable[..., list[Verdict]] | None = None
    figures: Callable[..., list] | None = None
    tables: Callable[..., dict] | None = None
    default_preset: str = "cpu-small"
    extra: Mapping[str, Any] = field(default_factory=dict)
    threads: Mapping[str, int] = field(default_factory=dict)
    checkpoint_cases: Callable[[str, str], list[Case]] | None = None

    def cases(self, preset: str) -> list[Case]:
        if preset not in self.presets:
            from ..impls.base import unknown

            raise unknown(f"preset of suite {self.name}", preset, self.presets)
        return self.presets[preset]()
