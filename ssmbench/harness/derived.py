"""Figures derived from stored rows and the run's measured ceilings, added as rows are loaded
(never stored: a row keeps what was measured, and a better ceiling re-derives these)."""
from __future__ import annotations

import pandas as pd


def matmul_tflops(ceilings: dict, dtype: str) -> float | None:
    """The measured matmul rate for ``dtype``: bf16's for half precision where measured, else fp32's."""
    fp32 = ceilings.get("matmul_fp32_tflops")
    return ceilings.get("matmul_bf16_tflops", fp32) if dtype in ("bfloat16", "float16") else fp32


def add_ceiling_fractions(frame, ceilings: dict) -> None:
    """pct_bw and pct_flops: the case's GB/s and TFLOP/s over this machine's measured ceilings
    (copy bandwidth; matmul rate in bf16 for half-precision cases, else fp32). floor_ms: the
    longest of the times its bytes, flops and exps take at the copy, matmul and exp rates, a
    time no backend beats on this machine; x_floor: the case's median over that floor."""
    floors = []
    if "gbps" in frame and ceilings.get("copy_gbps"):
        frame["pct_bw"] = 100 * frame["gbps"] / ceilings["copy_gbps"]
        floors.append(pd.to_numeric(frame["bytes"], errors="coerce") / (ceilings["copy_gbps"] * 1e9))
    if "tflops" in frame and "dtype" in frame and ceilings.get("matmul_fp32_tflops"):
        rate = frame["dtype"].map(lambda d: matmul_tflops(ceilings, d))
        frame["pct_flops"] = 100 * frame["tflops"] / rate
        floors.append(pd.to_numeric(frame["flops"], errors="coerce") / (rate * 1e12))
    if "exps" in frame and ceilings.get("exp_gexps"):
        floors.append(pd.to_numeric(frame["exps"], errors="coerce") / (ceilings["exp_gexps"] * 1e9))
    if floors and "median_ms" in frame:
        frame["floor_ms"] = 1e3 * pd.concat(floors, axis=1).max(axis=1)
        frame["x_floor"] = frame["median_ms"] / frame["floor_ms"]
