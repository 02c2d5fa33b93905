"""Verdicts: stable claim ids, the verdict words, rules that decide only on intervals; and case
versions in the case id. Judged on the stored baselines and on synthetic rows (no timing)."""
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ssmbench.harness.store import load_runs, read_manifest
from ssmbench.suites import available_suites, get_suite
from ssmbench.suites.base import Case, Verdict
from ssmbench.suites.generation import SETTINGS as GENERATION_SETTINGS

BASELINES = Path(__file__).resolve().parent.parent / "results" / "baselines"


def baseline_runs() -> dict[str, Path]:
    """suite -> its stored baseline run folder (the first fingerprint)."""
    out = {}
    for manifest in sorted(BASELINES.glob("*/*/manifest.json")):
        out.setdefault(manifest.parent.parent.name, manifest.parent)
    return out


def judged(suite: str, rows: pd.DataFrame, manifest: dict) -> list[Verdict]:
    return get_suite(suite).judge(rows, manifest)


# Claim ids.
def test_claim_ids_are_unique_across_all_suites_on_their_baselines():
    runs = baseline_runs()
    judging = [n for n in available_suites() if get_suite(n).judge is not None]
    assert set(judging) <= set(runs), f"suites without a baseline to judge: {set(judging) - set(runs)}"
    seen: dict[str, str] = {}
    for name in judging:
        verdicts = judged(name, load_runs(runs[name]), read_manifest(runs[name]))
        assert verdicts, name
        for v in verdicts:
            assert v.claim_id not in seen, f"{v.claim_id} given by {seen.get(v.claim_id)} and {name}"
            seen[v.claim_id] = name
    # The paper's claim numbers where the suite reproduces a paper; the suite's name otherwise.
    assert {"C1.scan-linear", "C1.attention-quadratic", "C3.ssd-vs-scan", "C4.table1", "C2.throughput-vs-hf",
            "peers.linear"} <= set(seen)


def test_every_generation_comparison_has_its_own_claim_id():
    ids = [c.claim_id for s in GENERATION_SETTINGS.values() for c in s.comparisons]
    claims = {c.claim_id: c.claim for s in GENERATION_SETTINGS.values() for c in s.comparisons}
    assert len(set(ids)) == len(claims) == len(set(claims.values()))  # one id per sentence, and back


@pytest.mark.parametrize("bad", ["", "C1", "C1.Scan", "c1.scan", "C1.scan linear", "C1.-scan"])
def test_a_malformed_claim_id_is_refused(bad):
    with pytest.raises(ValueError, match="claim_id"):
        Verdict(claim_id=bad, claim="c", paper_setting="", paper_value="", device="", setting="", measured="",
                verdict="holds")


# Case versions.
def test_case_version_changes_the_id_and_version_one_keeps_the_old_ids():
    case = Case(suite="s", op="selective_scan", backend="torch", params={"seqlen": 8})
    assert Case(suite="s", op="selective_scan", backend="torch", params={"seqlen": 8}, version=1).case_id == case.case_id
    assert Case(suite="s", op="selective_scan", backend="torch", params={"seqlen": 8}, version=2).case_id != case.case_id
    with pytest.raises(ValueError, match="version"):
        Case(suite="s", params={}, version=0)


def test_stored_baseline_cases_keep_their_ids():
    """Cases stored before versions existed give the ids stored beside them (Run.cases recomputes
    each id from the case's fields and refuses a mismatch)."""
    from ssmbench.harness.store import Run

    for name, path in baseline_runs().items():
        cases = Run(path).cases()
        assert cases and all(c.version == 1 for c in cases), name
