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
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

# "undecided": measured, but the interval the rule needs straddles its threshold; "not applicable":
# the mechanism the claim rests on cannot show on this device (the reason names it); "not
# measured": nothing was timed for it.
VERDICTS = ("holds", "does not hold", "undecided", "not applicable", "not measured")
# "C<n>.<name>" for a claim of the papers (the numbers of the claims' list), "<suite>.<name>"
# for a target of the project's own.
CLAIM_ID = re.compile(r"^(C[0-9]+|[a-z_]+)\.[a-z0-9]+(-[a-z0-9.]+)*$")
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
    # Bump when the case's inputs or semantics change (what make_inputs builds, what the function
    # measures): the case id changes with it, so rows of the old meaning are never compared with
    # the new. Version 1 is left out of the id, which keeps the ids of cases made before versions.
    version: int = 1

    def __post_init__(self):
        if not isinstance(self.version, int) or isinstance(self.version, bool) or self.version < 1:
            raise ValueError(f"Case: version must be an int of at least 1, got {self.version!r}")
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
             **({"pass_mode": self.pass_mode} if self.pass_mode != "forward" else {}),
             **({"version": self.version} if self.version != 1 else {})},
            sort_keys=True, default=str,
        )
        return hashlib.sha1(key.encode()).hexdigest()[:16]

    def label(self) -> str:
        what = (f"{self.op}/{self.backend or '+'.join(self.backends)}"
                f"{'' if self.pass_mode == 'forward' else ' ' + self.pass_mode}" if self.op
                else self.fn.rsplit(":", 1)[-1])
        shown = ",".join(f"{k}={v}" for k, v in self.params.items() if k not in ("device",))
        return f"{self.suite}:{what} {shown}" + (f" (version {self.version})" if self.version != 1 else "")


@dataclass(frozen=True)
class Verdict:
    """One claim judged from one run's rows. ``claim_id`` names the claim whatever its sentence
    says (gates and summaries key by it): "C1.scan-linear", see CLAIM_ID."""

    claim_id: str
    claim: str  # e.g. "C1: selective scan time grows linearly in L"
    paper_setting: str
    paper_value: str
    device: str  # where this run measured it
    setting: str  # what this run measured
    measured: str
    verdict: str  # one of VERDICTS
    reason: str = ""

    def __post_init__(self):
        if not CLAIM_ID.match(self.claim_id):
            raise ValueError(f"claim_id must look like 'C1.scan-linear' or 'peers.scan-speedup' (lower case, "
                             f"words joined by '-'), got {self.claim_id!r}")
        if self.verdict not in VERDICTS:
            raise ValueError(f"verdict must be one of {VERDICTS}, got {self.verdict!r}")


@dataclass(frozen=True)
class Suite:
    """name: the --suite name. presets: preset name -> function returning the cases.
    judge(rows, manifest) -> verdicts. figures(rows, folder) -> PNG paths written.
    tables(rows) -> {title: DataFrame} for the report (default: the timing table).
    threads: preset -> torch threads when the command line names none (recorded as always).
    figure_of: claim id -> the names of the PNGs of ``figures`` that show it, the first one written
    is the report summary's figure for that claim."""

    name: str
    description: str
    presets: Mapping[str, Callable[[], list[Case]]]
    judge: Callable[..., list[Verdict]] | None = None
    figures: Callable[..., list] | None = None
    tables: Callable[..., dict] | None = None
    default_preset: str = "cpu-small"
    extra: Mapping[str, Any] = field(default_factory=dict)
    threads: Mapping[str, int] = field(default_factory=dict)
    figure_of: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    def cases(self, preset: str) -> list[Case]:
        if preset not in self.presets:
            from ..impls.base import unknown

            raise unknown(f"preset of suite {self.name}", preset, self.presets)
        return self.presets[preset]()
