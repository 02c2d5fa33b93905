"""What a suite is: cases to run (per preset), and how its claim is judged from the rows.
The cases themselves (:class:`Case`) belong to the harness that runs them."""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from ..harness.case import PASS_MODES, Case  # noqa: F401 - re-exported for the suites

# "undecided": measured, but the interval the rule needs straddles its threshold; "not applicable":
# the mechanism the claim rests on cannot show on this device (the reason names it); "not
# measured": nothing was timed for it.
VERDICTS = ("holds", "does not hold", "undecided", "not applicable", "not measured")
# "C<n>.<name>" for a claim of the papers (the numbers of the claims' list), "<suite>.<name>"
# for a target of the project's own.
CLAIM_ID = re.compile(r"^(C[0-9]+|[a-z_]+)\.[a-z0-9]+(-[a-z0-9.]+)*$")


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
    is the report summary's figure for that claim.
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
    figure_of: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    checkpoint_cases: Callable[[str, str], list[Case]] | None = None

    def cases(self, preset: str) -> list[Case]:
        if preset not in self.presets:
            from ..impls.base import unknown

            raise unknown(f"preset of suite {self.name}", preset, self.presets)
        return self.presets[preset]()
