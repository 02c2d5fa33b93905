"""Regression gates: a run against a baseline.

Two modes:
- timing: only between runs of one environment fingerprint (refused otherwise, naming the
  fields that differ). A case regresses when its median is slower by more than ``threshold``
  AND a one-sided Mann-Whitney U test on the raw samples gives p < ``alpha``.
- portable: for machines that differ (CPU CI). Compares figures that do not depend on the
  machine's speed: ratios between backends measured inside one run, fitted scaling exponents,
  exact tables, correctness.
In both, a case that was ok and is now incorrect / failed / oom / timeout regresses whatever
its time, and so does a claim whose verdict flips from holds to does not hold. A case, figure or
claim of the baseline that the run lacks fails the gate too (unless missing ones are allowed): a
partial run proves nothing about what it did not run.

When the machine's measured noise (``noise.py``) is larger than the threshold a timing figure is
judged by, a worsening of that figure is "too noisy" (exit 3) instead of a regression: CI runs
again and fails only on what worsened in both attempts (``confirm``).
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from ..impls.registry import backends, get_op
from .gate_input import GateInput
from .noise import Noise
from .stats import loglog_fit, significant_slowdown, speedup

if TYPE_CHECKING:  # the suites judge claims; the harness only reads their verdicts
    from ..suites.base import Verdict

BROKEN = ("incorrect", "failed", "oom", "timeout")
OUTCOMES = ("regression", "missing", "too noisy", "unconfirmed", "improvement", "unchanged", "new")
# Findings whose figure is a timing (or judged from timings): the ones noise can move.
TIMED_KINDS = ("time", "ratio", "exponent", "verdict")
EXIT_PASS, EXIT_FAIL, EXIT_TOO_NOISY = 0, 1, 3
# Portable mode: how much worse a ratio between two of our backends must get to count. Between
# two runs on one 2-core CPU, an hour apart, the ratio of a dispatch-bound loop to a compute-bound
# scan moved by 32% with both runs' 95% intervals tight: such ratios drift between runs more
# than within one, so the threshold is wide; a timing gate on one machine is the fine one.
RATIO_THRESHOLD = 0.5


class GateRefused(ValueError):
    """The two inputs cannot be compared as asked (e.g. timings across fingerprints)."""


@dataclass(frozen=True)
class Finding:
    key: str
    kind: str  # time | status | ratio | exponent | table | exact | verdict
    baseline: Any
    current: Any
    outcome: str
    change: float = math.nan  # relative change of the figure (current / baseline - 1)
    p_value: float = math.nan
    detail: str = ""


@dataclass
class GateResult:
    mode: str
    baseline: str
    run: str
    findings: list[Finding] = field(default_factory=list)
    allow_missing: bool = False
    noise: Noise | None = None
    suite: str | None = None  # the suite of the run judged

    @property
    def regressions(self) -> list[Finding]:
        return [f for f in self.findings if f.outcome == "regression"]

    def outcomes(self, outcome: str) -> list[Finding]:
        return [f for f in self.findings if f.outcome == outcome]

    @property
    def exit_code(self) -> int:
        if self.regressions or (self.outcomes("missing") and not self.allow_missing):
            return EXIT_FAIL
        return EXIT_TOO_NOISY if self.outcomes("too noisy") else EXIT_PASS

    def table(self) -> pd.DataFrame:
        order = {o: i for i, o in enumerate(OUTCOMES)}
        frame = pd.DataFrame([asdict(f) for f in self.findings], columns=list(Finding.__dataclass_fields__))
        return frame.sort_values(["outcome", "kind", "key"], key=lambda s: s.map(order) if s.name == "outcome" else s)

    def summary(self) -> str:
        counts = pd.Series([f.outcome for f in self.findings]).value_counts().to_dict()
        parts = ", ".join(f"{counts.get(o, 0)} {o}" for o in OUTCOMES if counts.get(o))
        verdict = {EXIT_PASS: "pass", EXIT_FAIL: "FAIL", EXIT_TOO_NOISY: "TOO NOISY TO JUDGE"}[self.exit_code]
        noise = f"; {self.noise.describe()}" if self.noise else ""
        allowed = "; missing allowed" if self.allow_missing and self.outcomes("missing") else ""
        return (f"gate {verdict} ({self.mode}): {self.run} vs {self.baseline}: "
                f"{parts or 'nothing compared'}{allowed}{noise}")

    def to_json(self) -> dict:
        """What ``--findings`` writes and ``confirm`` reads back."""
        return {"mode": self.mode, "suite": self.suite, "baseline": self.baseline, "run": self.run,
                "exit_code": self.exit_code,
                "noise": asdict(self.noise) if self.noise else None,
                "findings": [{**asdict(f), "baseline": _plain(f.baseline), "current": _plain(f.current)}
                             for f in self.findings]}


def _plain(value):
    """A figure as JSON holds it (numpy scalars and Figures as numbers or text)."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, (int, float, np.number)):
        return float(value)
    return str(value)


def gate(baseline: GateInput, run: GateInput, *, portable: bool = False, threshold: float = 0.10,
         alpha: float = 0.01, ratio_threshold: float = RATIO_THRESHOLD,
         exponent_tolerance: float = 0.15, allow_missing: bool = False, noise: Noise | None = None) -> GateResult:
    """``noise``: the machine's measured noise (None: not measured, every figure judged)."""
    _check_comparable(baseline, run, portable)
    if not portable and baseline.fingerprint != run.fingerprint:
        from .env import fingerprint_diff

        diff = fingerprint_diff(baseline.environment, run.environment)
        shown = "; ".join(f"{k}: {a!r} vs {b!r}" for k, a, b in ((k, *v) for k, v in diff.items()))
        raise GateRefused(
            f"timings are compared only within one environment fingerprint; baseline "
            f"{baseline.fingerprint} and run {run.fingerprint} differ in: {shown or 'fingerprint only'}. "
            "Use --portable for machine-independent figures."
        )
    result = GateResult("portable" if portable else "timing", baseline.name, run.name,
                        allow_missing=allow_missing, noise=noise, suite=run.suite)
    labels = _labels(run, baseline)
    result.findings += _status_findings(baseline.rows, run.rows, labels)
    if portable:
        result.findings += _figure_findings(portable_figures(baseline.rows, labels),
                                            portable_figures(run.rows, labels), ratio_threshold, exponent_tolerance)
    else:
        result.findings += _timing_findings(baseline.rows, run.rows, labels, threshold, alpha)
    result.findings += _verdict_findings(baseline, run)
    if noise is not None and noise.exceeds(ratio_threshold if portable else threshold):
        result.findings = [_too_noisy(f, noise) for f in result.findings]
    return result


def _too_noisy(finding: Finding, noise: Noise) -> Finding:
    if finding.outcome != "regression" or finding.kind not in TIMED_KINDS:
        return finding
    why = f"{noise.describe()} exceeds the threshold this figure is judged by"
    return dataclasses.replace(finding, outcome="too noisy", detail="; ".join(filter(None, [finding.detail, why])))


def _check_comparable(baseline: GateInput, run: GateInput, portable: bool) -> None:
    """Refusals that no threshold could make meaningful."""
    if baseline.suite == "compare":
        raise GateRefused(f"baseline {baseline.name} is a compare run: a comparison of backends on one "
                          "problem is no baseline for a suite; use a run of the suite (ssmbench run --suite ...)")
    if baseline.suite and run.suite and baseline.suite != run.suite:
        raise GateRefused(f"baseline {baseline.name} is a run of suite {baseline.suite!r}, the run "
                          f"{run.name} of suite {run.suite!r}: a gate compares runs of one suite")
    if portable:
        return
    for entry in (baseline, run):
        measured_by = entry.rows["fingerprint"].dropna().unique() if "fingerprint" in entry.rows else []
        if len(measured_by) > 1:
            counts = entry.rows["fingerprint"].value_counts()
            shown = ", ".join(f"{fp} ({n} rows)" for fp, n in counts.items())
            raise GateRefused(f"{entry.name} holds rows measured on {len(measured_by)} machines ({shown}): "
                              "timings are compared only within one fingerprint; use --portable")


def _ok(rows: pd.DataFrame) -> pd.DataFrame:
    return rows[rows["status"] == "ok"] if len(rows) else rows


def _labels(*entries: GateInput) -> dict[str, str]:
    """case id -> label, from the cases the runs were asked to do (parameters only, so a case
    has the same label in every run)."""
    labels: dict[str, str] = {}
    for entry in entries:
        for _, row in entry.rows.iterrows():
            labels.setdefault(row["case_id"], entry.label(row["case_id"], row))
    return labels


def _status_findings(base: pd.DataFrame, cur: pd.DataFrame, labels: dict[str, str]) -> list[Finding]:
    findings = []
    b = base.set_index("case_id")["status"].to_dict() if len(base) else {}
    c = cur.set_index("case_id")["status"].to_dict() if len(cur) else {}
    reasons = cur.set_index("case_id")["reason"].to_dict() if len(cur) else {}
    for case_id in sorted(set(b) | set(c)):
        if case_id not in c:
            findings.append(Finding(labels[case_id], "status", b[case_id], None, "missing"))
        elif case_id not in b:
            findings.append(Finding(labels[case_id], "status", None, c[case_id], "new"))
        elif b[case_id] == "ok" and c[case_id] in BROKEN:
            findings.append(Finding(labels[case_id], "status", "ok", c[case_id], "regression",
                                    detail=reasons.get(case_id, "")))
        elif b[case_id] in BROKEN and c[case_id] == "ok":
            findings.append(Finding(labels[case_id], "status", b[case_id], "ok", "improvement"))
    return findings


def _timing_findings(base, cur, labels: dict[str, str], threshold: float, alpha: float) -> list[Finding]:
    findings = []
    b, c = _ok(base), _ok(cur)
    if "median_ms" not in b or "median_ms" not in c:
        return findings
    b, c = b.set_index("case_id"), c.set_index("case_id")
    for case_id in sorted(set(b.index) & set(c.index)):
        bm, cm = float(b.at[case_id, "median_ms"]), float(c.at[case_id, "median_ms"])
        if math.isnan(bm) or math.isnan(cm):
            continue
        bs, cs = _samples(b.at[case_id, "samples_ms"]), _samples(c.at[case_id, "samples_ms"])
        change = cm / bm - 1
        p_slow = significant_slowdown(bs, cs)
        p_fast = significant_slowdown(cs, bs)
        tested = not math.isnan(p_slow)
        if change > threshold and (p_slow < alpha or not tested):
            outcome, p = "regression", p_slow
        elif change < 1 / (1 + threshold) - 1 and (p_fast < alpha or not tested):
            outcome, p = "improvement", p_fast
        else:
            outcome, p = "unchanged", min(p_slow, p_fast) if tested else math.nan
        detail = "" if tested else "no raw samples: threshold only"
        findings.append(Finding(labels[case_id], "time", bm, cm, outcome, change, p, detail))
    return findings


def _samples(value) -> list[float]:
    if isinstance(value, (list, np.ndarray)):
        return [float(v) for v in value]
    return []


@dataclass(frozen=True)
class Figure:
    """A machine-independent number with its 95% interval (lo == hi == value when it has none)."""

    value: float
    lo: float
    hi: float
    over: str = ""  # what the figure was taken over, in words
    # An exponent's due value, the op's own (Op.length_exponent): one below it measures per-call
    # overhead at the short lengths, so a rise towards it is that overhead's share shrinking.
    due: float | None = None

    def __str__(self) -> str:
        return f"{self.value:.4g} [{self.lo:.4g}, {self.hi:.4g}]" + (f" over {self.over}" if self.over else "")


def portable_figures(rows: pd.DataFrame, labels: dict[str, str] | None = None) -> dict[tuple[str, str], Figure | bool]:
    """Machine-independent figures of one run: {(kind, key): figure}.

    ratio: each of our compiled backends' median over the reference backend's ("torch" where present) on
    the same problem, with a bootstrap interval from both raw samples, then the geometric mean of
    those over the run's problems, per backend pair; exponent: the log-log
    slope of time in the sequence length per backend of ours, with its regression interval;
    table: exact-table rows' ``equal``; exact: each column a row lists in ``exact_columns``
    (byte counts, which may not grow). Third-party backends are left out of ratios and
    exponents: their speed against ours is measured, but it is not this project's to gate.
    """
    figures: dict[tuple[str, str], Figure | bool] = {}
    labels = labels or {}
    if "equal" in rows:
        for _, row in rows[rows["equal"].notna()].iterrows():
            figures[("table", labels.get(row["case_id"], row["case_id"]))] = bool(row["equal"])
    if "exact_columns" in rows:
        # A row names its own exact figures (byte counts that no machine changes).
        for _, row in _ok(rows)[_ok(rows)["exact_columns"].notna()].iterrows():
            for column in row["exact_columns"].split(","):
                value = float(row[column])
                figures[("exact", f"{labels.get(row['case_id'], row['case_id'])} {column}")] = \
                    Figure(value, value, value)
    ok = _ok(rows)
    if "median_ms" not in ok or "op" not in ok:
        return figures
    op_rows = ok[ok["op"].fillna("") != ""]
    modes = op_rows["pass_mode"].fillna("forward") if "pass_mode" in op_rows else "forward"
    for (op_name, mode), of_op in op_rows.assign(pass_mode=modes).groupby(["op", "pass_mode"]):
        ours = of_op[[_ours(op_name, name) for name in of_op["backend"]]]
        fields = [f.name for f in dataclasses.fields(get_op(op_name).problem_type) if f.name in ours]
        # Forward figures keep the names they had before backward cases existed.
        op_name_shown = op_name if mode == "forward" else f"{op_name} {mode}"
        per_pair: dict[str, list[Figure]] = {}
        # A Python-loop backend's time is the interpreter's dispatch cost, which moved 2x either way
        # between runs of unchanged code here (ssd torch forward 71 -> 31 ms, backward 218 -> 348 ms):
        # a ratio to it measures the machine, so loops have exponents but no ratios.
        loops = {name for name, backend in backends(op_name).items() if backend.python_loop}
        due = get_op(op_name).length_exponent
        compiled = ours[~ours["backend"].isin(loops)]
        for _, group in compiled.groupby([compiled[c].map(_fmt) for c in fields], sort=True):
            by_backend = group.set_index("backend")
            ref = "torch" if "torch" in by_backend.index else sorted(by_backend.index)[0]
            for backend in by_backend.index:
                if backend != ref:
                    per_pair.setdefault(f"{backend}/{ref}", []).append(
                        _ratio(by_backend.loc[backend], by_backend.loc[ref]))
        for pair, ratios in per_pair.items():
            # Keyed by the pair alone: a run with fewer problems still has the figure, over fewer.
            figures[("ratio", f"{op_name_shown} {pair}")] = dataclasses.replace(
                _geometric_mean(ratios), over=f"{len(ratios)} problem(s)")
        for length in [c for c in ("seqlen", "seqlen_q") if c in fields]:
            others = [c for c in fields if c != length]
            for key, group in ours.groupby([ours[c].map(_fmt) for c in others] + [ours["backend"]], sort=True):
                if group[length].nunique() >= 3:
                    figures[("exponent", f"{op_name_shown} {_key(others + ['backend'], key)}")] = _slope(
                        group[length], group["median_ms"], due)
    return figures


def _geometric_mean(figures: list[Figure]) -> Figure:
    """One ratio per backend pair over all the suite's problems: a size where one run happened
    to be slow moves it little, a backend that became slower everywhere moves it fully. The
    bounds are the geometric means of the bounds (wider than the mean's own interval)."""
    def mean(values):
        return float(np.exp(np.mean(np.log(values))))

    return Figure(mean([f.value for f in figures]), mean([f.lo for f in figures]), mean([f.hi for f in figures]))


def _ours(op: str, backend: str) -> bool:
    known = backends(op)
    return backend not in known or known[backend].kind not in ("third-party", "reference")


def _fmt(value) -> str:
    """One spelling per value whatever the column's dtype (a column with gaps holds 256.0)."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _ratio(row, ref) -> Figure:
    value = float(row["median_ms"] / ref["median_ms"])
    a, b = _samples(row.get("samples_ms")), _samples(ref.get("samples_ms"))
    if len(a) < 3 or len(b) < 3:
        return Figure(value, value, value)
    _, lo, hi = speedup(a, b)
    return Figure(value, lo, hi)


def _slope(lengths, medians, due: float) -> Figure:
    fit = loglog_fit(lengths, medians)
    return Figure(fit.slope, fit.low, fit.high, due=due)


def _key(names, values) -> str:
    values = values if isinstance(values, tuple) else (values,)
    return ",".join(f"{n}={v}" for n, v in zip(names, values))


def _figure_findings(base, cur, ratio_threshold: float, exponent_tolerance: float) -> list[Finding]:
    """A ratio or exponent regresses when it worsens beyond the threshold AND the two runs'
    95% intervals do not overlap: machines differ, and one noisy run must not fail a gate."""
    findings = []
    for kind, key in sorted(set(base) | set(cur)):
        b, c = base.get((kind, key)), cur.get((kind, key))
        if c is None:
            findings.append(Finding(key, kind, str(b), None, "missing"))
            continue
        if b is None:
            findings.append(Finding(key, kind, None, str(c), "new"))
            continue
        if kind == "table":
            outcome = "regression" if b and not c else "improvement" if c and not b else "unchanged"
            findings.append(Finding(key, kind, b, c, outcome))
            continue
        if kind == "exact":
            # Bytes held: any growth is a regression, however small; a machine cannot explain it.
            outcome = "regression" if c.value > b.value else "improvement" if c.value < b.value else "unchanged"
            change = c.value / b.value - 1 if b.value else math.nan
            findings.append(Finding(key, kind, b.value, c.value, outcome, change,
                                    detail="exact count; any growth counts"))
            continue
        if kind == "ratio":
            change = c.value / b.value - 1
            worse, better = change > ratio_threshold, change < 1 / (1 + ratio_threshold) - 1
            detail = f"backend time ratio; threshold {ratio_threshold:.0%} and disjoint 95% intervals"
        else:
            change = c.value - b.value
            # Measured from the due exponent where the baseline sat below it (see Figure.due).
            floor = b.value if c.due is None else max(b.value, c.due)
            worse = c.value - floor > exponent_tolerance
            better = change < -exponent_tolerance
            over = "the baseline" if c.due is None else \
                f"the baseline or the op's due exponent {c.due:g}, whichever is higher"
            detail = f"log-log slope; tolerance {exponent_tolerance} over {over}, and disjoint 95% intervals"
        if worse and c.lo > b.hi:
            outcome = "regression"
        elif better and c.hi < b.lo:
            outcome = "improvement"
        else:
            outcome = "unchanged"
        findings.append(Finding(key, kind, str(b), str(c), outcome, change, detail=detail))
    return findings


def _verdicts(entry: GateInput) -> dict[str, Verdict]:
    from ..suites import available_suites, get_suite

    out = {}
    if not len(entry.rows):
        return out
    for suite_name in entry.rows["suite"].unique():
        if suite_name not in available_suites():
            continue
        suite = get_suite(suite_name)
        if suite.judge is None:
            continue
        for verdict in suite.judge(entry.rows[entry.rows["suite"] == suite_name],
                                   {"environment": entry.environment}):
            out[verdict.claim_id] = verdict
    return out


def _verdict_findings(baseline: GateInput, run: GateInput) -> list[Finding]:
    """Each claim's verdict in both runs, matched by claim id (a reworded claim is still the
    claim); the detail is the claim and the figure that decided the run's verdict."""
    b, c = _verdicts(baseline), _verdicts(run)
    findings = []
    for claim in sorted(set(b) | set(c)):
        was, now = b.get(claim), c.get(claim)
        if now is None:
            findings.append(Finding(claim, "verdict", was.verdict, None, "missing",
                                    detail=f"{was.claim}: {was.measured}"))
            continue
        if was is None:
            findings.append(Finding(claim, "verdict", None, now.verdict, "new", detail=f"{now.claim}: {now.measured}"))
            continue
        if was.verdict == "holds" and now.verdict == "does not hold":
            outcome = "regression"
        elif was.verdict == "does not hold" and now.verdict == "holds":
            outcome = "improvement"
        else:
            outcome = "unchanged"
        findings.append(Finding(claim, "verdict", was.verdict, now.verdict, outcome,
                                detail=f"{now.claim}: baseline: {was.measured}; run: {now.measured}"))
    return findings


def confirm(result: GateResult, first: dict) -> GateResult:
    """A retry's result judged with the first attempt's (``GateResult.to_json``): a regression
    or too-noisy finding stands only where the first attempt also had one on that figure; the
    others were the first attempt's luck or this one's and become "unconfirmed"."""
    before = {(f["kind"], f["key"]) for f in first["findings"] if f["outcome"] in ("regression", "too noisy")}

    def judged(finding: Finding) -> Finding:
        if finding.outcome in ("regression", "too noisy") and (finding.kind, finding.key) not in before:
            return dataclasses.replace(finding, outcome="unconfirmed",
                                       detail="; ".join(filter(None, [finding.detail, "not so in the first attempt"])))
        return finding

    return dataclasses.replace(result, findings=[judged(f) for f in result.findings])
