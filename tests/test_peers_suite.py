"""The peers suite: its presets, and its verdicts on synthetic rows."""
import re

import numpy as np
import pandas as pd
import pytest

from ssmbench.impls import backends, get_op
from ssmbench.suites import get_suite

SUITE = get_suite("peers")


@pytest.mark.parametrize("preset", ["cpu-peers", "cpu-small"])
def test_presets_give_valid_unique_cases(preset):
    cases = SUITE.cases(preset)
    assert len({c.case_id for c in cases}) == len(cases)
    for case in cases:
        problem = get_op(case.op).problem_type.from_params(case.params)
        assert case.backend in backends(case.op) and problem.device == "cpu" and problem.dtype == "float32"
        assert {**case.params, **case.check_params}["seqlen"] <= 512
    if preset == "cpu-peers":
        assert SUITE.threads[preset] == 2
        scan = {(c.backend, c.params["seqlen"]) for c in cases if c.op == "selective_scan"}
        assert {("mambapy_seq", 8192), ("transformers", 8192), ("torch", 8192), ("torch_fast", 8192)} <= scan
        ssd = {(c.backend, c.params["seqlen"]) for c in cases if c.op == "ssd"}
        assert ("torch", 2048) in ssd and ("torch", 8192) not in ssd and ("torch_chunked", 8192) in ssd
        assert all(c.params["nheads"] == 24 and c.params["dstate"] == 128 and c.params["chunk_size"] == 256
                   for c in cases if c.op == "ssd")


def _rows(series: dict, lengths=(512, 2048, 4096, 8192)) -> pd.DataFrame:
    """Timed rows: (op, backend) -> time as a function of L, 9 samples with 1% noise."""
    rng = np.random.default_rng(0)
    records = []
    for (op, backend), time_of in series.items():
        for L in lengths:
            samples = list(time_of(L) * (1 + 0.01 * rng.standard_normal(9)))
            records.append({"op": op, "backend": backend, "fn": "", "status": "ok", "device": "cpu",
                            "cpu_model": "test CPU", "threads": 2, "dtype": "float32", "batch": 1, "dim": 1536,
                            "dstate": 16 if op == "selective_scan" else 128, "nheads": 24, "headdim": 64,
                            "ngroups": 1, "chunk_size": 256, "seqlen": L,
                            "median_ms": float(np.median(samples)), "samples_ms": samples})
    return pd.DataFrame(records)



def test_judge_holds_for_fast_linear_scans():
    rows = _rows({("selective_scan", "torch_fast"): lambda L: 0.01 * L,
                  ("selective_scan", "torch"): lambda L: 0.2 * L,
                  ("selective_scan", "mambapy_pscan"): lambda L: 0.04 * L,
                  ("selective_scan", "transformers"): lambda L: 0.3 * L,
                  ("ssd", "torch_chunked"): lambda L: 0.01 * L,
                  ("ssd", "transformers"): lambda L: 0.02 * L})
    v = SUITE.judge(rows, {})
    scan, ssd, linear = v
    assert scan.verdict == "holds" and "mambapy_pscan / torch_fast at L=8192: " in scan.measured
    assert ssd.verdict == "holds" and "transformers / torch_chunked at L=8192: " in ssd.measured
    assert linear.verdict == "holds" and re.search(r"torch_fast: 1\.0\d .*L 2048..8192", linear.measured)
    assert "test CPU, 2 threads" in scan.device


def test_judge_rejects_too_small_a_lead_and_superlinear_growth():
    rows = _rows({("selective_scan", "torch_fast"): lambda L: 0.01 * L ** 1.3,
                  ("selective_scan", "mambapy_pscan"): lambda L: 0.025 * L ** 1.3,
                  ("ssd", "torch_chunked"): lambda L: 0.01 * L,
                  ("ssd", "transformers"): lambda L: 0.014 * L})
    scan, ssd, linear = SUITE.judge(rows, {})
    assert scan.verdict == "does not hold" and "2.5" in scan.measured
    assert ssd.verdict == "does not hold" and "1.4" in ssd.measured
    assert linear.verdict == "does not hold" and "selective_scan/torch_fast: 1.3" in linear.measured


def test_a_speedup_verdict_sets_both_against_the_problems_floor():
    rows = _rows({("selective_scan", "torch_fast"): lambda L: 0.01 * L,
                  ("selective_scan", "mambapy_pscan"): lambda L: 0.025 * L})
    rows["floor_ms"] = rows["seqlen"] * 0.005  # the problem's floor, the same for every backend
    rows["x_floor"] = rows["median_ms"] / rows["floor_ms"]
    scan = SUITE.judge(rows, {})[0]
    assert "floor for the problem (41 ms" in scan.reason and "ours ran at 2.0x it and the peer at 5.0x" in scan.reason
    assert "floor" not in SUITE.judge(rows.drop(columns=["floor_ms", "x_floor"]), {})[0].reason


def test_judge_without_peers_is_not_measured():
    rows = _rows({("selective_scan", "torch_fast"): lambda L: 0.01 * L})
    scan, ssd, linear = SUITE.judge(rows, {})
    assert scan.verdict == ssd.verdict == "not measured"
    assert linear.verdict == "not measured" and "not timed: ssd" in linear.reason


def test_tables_and_figures(tmp_path):
    rows = _rows({("selective_scan", "torch_fast"): lambda L: 0.01 * L,
                  ("selective_scan", "mambapy_pscan"): lambda L: 0.04 * L,
                  ("ssd", "torch_chunked"): lambda L: 0.01 * L})
    tables = SUITE.tables(rows)
    wide = tables["selective scan: median ms per call, by backend and L"]
    assert list(wide["L"]) == [512, 2048, 4096, 8192] and {"torch_fast", "mambapy_pscan"} <= set(wide.columns)
    ratio = tables["Our fastest torch backend against the fastest peer (95% bootstrap interval)"]
    assert ratio["speedup"].tolist() == pytest.approx([4.0] * 4, rel=0.03)
    paths = SUITE.figures(rows, tmp_path)
    assert [p.name for p in paths] == ["peers_selective_scan.png", "peers_ssd.png"] and all(p.exists() for p in paths)
