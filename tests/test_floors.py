"""The floor of a timed case: the longest of its bytes, flops and exps at this machine's measured
copy, matmul and exp rates, and the case's time as a multiple of it; and a decode step's work
in closed form, set against the same rates."""
import math

import pandas as pd
import pytest

from ssmbench.harness.report import TIMING_COLUMNS
from ssmbench.harness.derived import add_ceiling_fractions
from ssmbench.impls import get_op
from ssmbench.impls.selective_scan import SelectiveScanProblem
from ssmbench.impls.ssd import SSDProblem
from ssmbench.models.generate import case_config, footprint
from ssmbench.models.roofline import StepWork, decode_step_work, regime

CEILINGS = {"copy_gbps": 10.0, "matmul_fp32_tflops": 0.5, "matmul_bf16_tflops": 2.0, "exp_gexps": 1.0}


def test_floor_is_the_slowest_of_bytes_flops_and_exps():
    frame = pd.DataFrame([
        # bytes: 2e9 / 10 GB/s = 200 ms; flops: 5e10 / 0.5 TFLOP/s = 100 ms; exps: 1e8 / 1 Gexp/s = 100 ms
        {"dtype": "float32", "median_ms": 800.0, "bytes": 2e9, "flops": 5e10, "exps": 1e8},
        # bf16: flops at the bf16 rate, 4e11 / 2 TFLOP/s = 200 ms; exps 3e8 -> 300 ms, the floor
        {"dtype": "bfloat16", "median_ms": 600.0, "bytes": 1e9, "flops": 4e11, "exps": 3e8},
        # no exp count (the op declares none): flops decide, 1e11 / 0.5 TFLOP/s = 200 ms
        {"dtype": "float32", "median_ms": 200.0, "bytes": 1e6, "flops": 1e11, "exps": None},
    ])
    frame["gbps"] = frame["bytes"] / (frame["median_ms"] * 1e-3) / 1e9
    frame["tflops"] = frame["flops"] / (frame["median_ms"] * 1e-3) / 1e12
    add_ceiling_fractions(frame, CEILINGS)
    assert frame["floor_ms"].tolist() == pytest.approx([200.0, 300.0, 200.0])
    assert frame["x_floor"].tolist() == pytest.approx([4.0, 2.0, 1.0])
    assert frame["pct_flops"][1] == pytest.approx(100 * 4e11 / 0.6 / 2e12)


def test_no_ceilings_no_floor_and_columns_in_the_report():
    frame = pd.DataFrame([{"dtype": "float32", "median_ms": 1.0, "bytes": 1, "flops": 1, "exps": 1,
                           "gbps": 1.0, "tflops": 1.0}])
    add_ceiling_fractions(frame, {})
    assert "floor_ms" not in frame
    add_ceiling_fractions(frame, {"exp_gexps": 1.0})  # a manifest with the exp rate only
    assert math.isclose(frame["floor_ms"][0], 1e-6)
    i = TIMING_COLUMNS.index("pct_flops")
    assert TIMING_COLUMNS[i + 1:i + 3] == ["floor_ms", "x_floor"]


def test_ops_count_their_exps():
    assert get_op("selective_scan").exps(SelectiveScanProblem(batch=2, dim=3, dstate=5, seqlen=7)) == 2 * 3 * 5 * 7
    assert get_op("ssd").exps(SSDProblem(batch=2, seqlen=7, nheads=3)) == 2 * 7 * 3
    assert get_op("attention").exps is None


# Decode steps: their work in closed form against the run's ceilings.
def test_a_decode_steps_bytes_are_its_weights_and_cache_and_a_moe_touches_more_experts_with_batch():
    dense = case_config("Transformer-1.3B", 8)
    fp = footprint(dense, 4, 300, "float32")
    work = decode_step_work(dense, 4, 300, "float32")
    assert work.bytes == fp.weights + fp.kv and work.kv_bytes == fp.kv
    # Twice the context: attention FLOPs and KV bytes double, the matmuls' FLOPs stay.
    longer = decode_step_work(dense, 4, 600, "float32")
    attention = 4 * 4 * dense.n_heads * dense.head_dim * len(dense.attention_layers)
    assert longer.flops - work.flops == attention * 300 and longer.kv_bytes == 2 * work.kv_bytes
    mamba = case_config("Mamba-1.4B", 8)
    state = footprint(mamba, 4, 300, "float32")
    assert decode_step_work(mamba, 4, 300, "float32").bytes == state.weights + 2 * state.mamba  # read and written
    assert decode_step_work(mamba, 4, 300, "float32").bytes == decode_step_work(mamba, 4, 9000, "float32").bytes
    moe = case_config("Mixtral-8x7B", 32, 2)
    one = decode_step_work(moe, 1, 1, "float32").bytes - moe.param_count(active=True) * 4
    every = decode_step_work(moe, 4, 1, "float32").bytes - moe.param_count() * 4  # 4 tokens x top-2 = all 8
    assert one == footprint(moe, 1, 1, "float32").kv and every == footprint(moe, 4, 1, "float32").kv


@pytest.mark.parametrize("step_ms,bound", [(50.0, "above its floors"), (12.0, "memory-bound"), (3.0, "memory-bound")])
def test_a_decode_step_is_named_by_what_bounds_it(step_ms, bound):
    # 1e8 bytes at 1e10 B/s = 10 ms, 5e8 FLOPs at 1e11 FLOP/s = 5 ms: the memory floor is the higher
    work = StepWork(flops=5e8, bytes=1e8, kv_bytes=6e7)
    r = regime(step_ms / 1e3, work, 1e11, 1e10)
    assert r.bound == bound and r.kv_share == pytest.approx(0.6)
    assert r.over_floor == pytest.approx(step_ms / 10)
    assert regime(0.012, StepWork(5e9, 1e8, 0), 1e11, 1e10).bound == "compute-bound"  # 50 ms of FLOPs
