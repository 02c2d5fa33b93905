"""A case: one unit of work the runner does and the store keeps one or more rows of.

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
from typing import Any, Mapping

PASS_MODES = ("forward", "backward", "forward_backward")  # what an op case times


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
        return f"{self.suite}:{what} {shown}"
