"""Every backend of every op side by side, at the kernel benchmark sizes.

Not a paper claim: the table behind the other suites, and the device check's benchmark. Each
problem is run by every registered backend (the float64 reference only where it is cheap); a
backend that cannot run here gives its row with the reason.
"""
from __future__ import annotations

import pandas as pd

from ..impls.registry import backends, get_op
from .base import Case, Suite
from .common import CPU_THREADS, cases_table, timed

GPU_LENGTHS = [2**12, 2**13, 2**14, 2**15, 2**16]
# Backends that loop over L in Python (python_loop): beyond this length they take seconds per call
# and say nothing new.
LOOP_MAX_LEN = 2**12


def _timed_here(backend, length: int) -> bool:
    return not ((backend.python_loop and length > LOOP_MAX_LEN)
                or (backend.max_sensible_len is not None and length > backend.max_sensible_len))


def _cases(problems: dict[str, list[dict]], budget_s: float, timeout_s: float) -> list[Case]:
    """Each backend at each problem, forward; for ops that train, the backward too (a backend
    without one gives its row: unsupported, forward only)."""
    cases = []
    for op_name, variants in problems.items():
        op = get_op(op_name)
        trains = any(b.has_backward for b in backends(op_name).values())
        modes = ("forward", "backward") if trains else ("forward",)
        # Longer problems are checked against the float64 reference at the longest length it is
        # sensible at (the row says so in checked_at).
        most = backends(op_name)["reference"].max_sensible_len
        for params in variants:
            problem = op.problem_type.from_params({**op.default_problem.params(), **params})
            length = problem.params().get(op.length_field, 0)
            check = {op.length_field: most} if most and length > most else {}
            for backend in backends(op_name).values():
                if backend.kind == "reference" or not _timed_here(backend, length):
                    continue
                cases.extend(Case(suite="kernels", op=op_name, backend=backend.name, params=problem.params(),
                                  series=backend.name, budget_s=budget_s, timeout_s=timeout_s,
                                  check_params=check, pass_mode=mode) for mode in modes)
    return cases


def _gpu(lengths: list[int], ssd_states: tuple[int, ...], fp32: bool, attention_lengths: list[int]) -> list[Case]:
    dev = {"device": "cuda"}
    scan = [{**dev, "dtype": "bfloat16", "batch": 1, "dim": 1024, "dstate": 16, "seqlen": L} for L in lengths]
    ssd = [{**dev, "dtype": "bfloat16", "batch": 1, "nheads": 24, "headdim": 64, "dstate": n, "seqlen": L}
           for n in ssd_states for L in lengths]
    if fp32:
        scan.append({**scan[0], "dtype": "float32", "seqlen": 2**14})
        ssd.append({**ssd[0], "dtype": "float32", "dstate": 128, "seqlen": 2**14})
    return _cases({
        "selective_scan": scan,
        "ssd": ssd,
        "selective_state_update": [{**dev, "dtype": "bfloat16", "batch": 64}],
        "causal_conv1d": [{**dev, "dtype": "bfloat16", "batch": 4, "dim": 4096, "seqlen": 4096}],
        "causal_conv1d_update": [{**dev, "dtype": "bfloat16", "batch": 64, "dim": 4096}],
        "attention": [{**dev, "dtype": "bfloat16", "batch": 1, "nheads": 16, "headdim": 64,
                       "seqlen_q": L, "causal": True} for L in attention_lengths],
    }, budget_s=0.3, timeout_s=180)


def gpu() -> list[Case]:
    """The papers' kernel sizes: the full tables."""
    return _gpu(GPU_LENGTHS, ssd_states=(64, 128), fp32=True, attention_lengths=[2**12, 2**14])


def gpu_quick() -> list[Case]:
    """The device check's short comparison: every backend of every op at the shortest and longest
    length, in bf16 (the GPU tests cover fp32). Each new SSD state size or dtype costs third-party
    kernels tens of seconds of autotuning, so SSD runs at n=64 only."""
    return _gpu([GPU_LENGTHS[0], GPU_LENGTHS[-1]], ssd_states=(64,), fp32=False, attention_lengths=[2**12])


def cpu_small() -> list[Case]:
    return _cases({
        "selective_scan": [{"batch": 1, "dim": 256, "dstate": 16, "seqlen": 1024}],
        "ssd": [{"batch": 1, "nheads": 4, "headdim": 64, "dstate": 64, "seqlen": 1024, "chunk_size": 64}],
        "selective_state_update": [{"batch": 8}],
        "causal_conv1d": [{"batch": 1, "dim": 512, "seqlen": 1024}],
        "causal_conv1d_update": [{"batch": 8, "dim": 1024}],
        "attention": [{"batch": 1, "nheads": 4, "headdim": 64, "seqlen_q": 1024}],
    }, budget_s=0.5, timeout_s=120)


def tables(rows: pd.DataFrame) -> dict[str, pd.DataFrame]:
    out = {}
    done = timed(rows)
    if len(done) and "pass_mode" in done:
        keys = [c for c in ("op", "dtype", "seqlen", "seqlen_q", "batch", "backend") if c in done]
        wide = done.pivot_table(index=keys, columns="pass_mode", values="median_ms", aggfunc="median")
        wide.columns = [f"{mode} ms" for mode in wide.columns]
        out["Median time per call, forward and backward"] = wide.reset_index()
    out["Cases"] = cases_table(rows)
    return out


SUITE = Suite(
    name="kernels",
    description="every backend of every op, side by side, forward and backward",
    presets={"cpu-small": cpu_small, "gpu-quick": gpu_quick, "gpu": gpu},
    tables=tables,
    threads={"cpu-small": CPU_THREADS},
)
