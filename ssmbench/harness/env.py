"""The environment a run was measured in, and this machine's measured ceilings.

Timings are compared only between runs whose :func:`fingerprint_id` agree: the fields that
change speed (hardware, library versions, threads, allocator), not the host name or the date.
"""
from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import subprocess
import time

import torch

from ..impls.base import distribution_version

PACKAGES = ("torch", "triton", "numpy", "mamba-ssm", "causal-conv1d", "flash-attn", "fla-core",
            "mambapy", "transformers")

# Settings that change CPU or GPU speed; recorded, and part of the fingerprint.
SETTINGS = ("THP_MEM_ALLOC_ENABLE", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "PYTORCH_CUDA_ALLOC_CONF",
            "TRITON_INTERPRET", "CUDA_VISIBLE_DEVICES", "TORCH_CUDA_ARCH_LIST")

FINGERPRINT_FIELDS = ("cpu_model", "cpu_count", "gpu_name", "gpu_count", "cuda_version",
                      "torch_threads", "settings", "packages")


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _memory_bytes() -> int | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def _nvidia_smi() -> dict[str, str]:
    if not shutil.which("nvidia-smi"):
        return {}
    fields = "driver_version,clocks.sm,clocks.max.sm,clocks.mem,power.limit"
    try:
        out = subprocess.run(["nvidia-smi", f"--query-gpu={fields}", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=10).stdout.strip().splitlines()
    except (OSError, subprocess.SubprocessError):
        return {}
    if not out:
        return {}
    values = [v.strip() for v in out[0].split(",")]
    return dict(zip(("driver", "sm_clock", "sm_clock_max", "mem_clock", "power_limit"), values))


def environment() -> dict:
    """Everything recorded about this machine and software stack."""
    env = {
        "hostname": platform.node(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_model": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "memory_bytes": _memory_bytes(),
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "cuda_version": torch.version.cuda,
        "gpu_name": None,
        "gpu_count": 0,
        "gpu_memory_bytes": None,
        "gpu_capability": None,
        "nvidia": {},
        "settings": {k: os.environ[k] for k in SETTINGS if k in os.environ},
        "packages": {name: distribution_version(name) for name in PACKAGES},
    }
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        env.update(gpu_name=props.name, gpu_count=torch.cuda.device_count(),
                   gpu_memory_bytes=props.total_memory, gpu_capability=f"{props.major}.{props.minor}",
                   nvidia=_nvidia_smi())
    return env


def fingerprint_id(env: dict) -> str:
    key = json.dumps({k: env.get(k) for k in FINGERPRINT_FIELDS}, sort_keys=True, default=str)
    return hashlib.sha1(key.encode()).hexdigest()[:12]


def fingerprint_diff(a: dict, b: dict) -> dict[str, tuple]:
    """The fingerprint fields in which two environments differ: {field: (a, b)}."""
    return {k: (a.get(k), b.get(k)) for k in FINGERPRINT_FIELDS if a.get(k) != b.get(k)}


def measure_ceilings(device: str = "cpu", seconds: float = 0.5) -> dict[str, float]:
    """This machine's copy bandwidth (GB/s, bytes read + written), float32 matmul rate (TFLOP/s),
    and on a CPU the exp rate (Gexp/s) or on a GPU the bf16 matmul rate, each the best of a few
    repeats. Used as floors for the cases."""
    from .timing import measure

    n_copy = (256 << 20) // 4 if device == "cuda" else (64 << 20) // 4
    src = torch.rand(n_copy, device=device)
    dst = torch.empty_like(src)
    copy = measure(lambda: dst.copy_(src), device, budget_s=seconds, max_repeats=20)
    m = 4096 if device == "cuda" else 1024
    a, b = torch.rand(m, m, device=device), torch.rand(m, m, device=device)
    mm = measure(lambda: a @ b, device, budget_s=seconds, max_repeats=20)
    result = {
        "copy_gbps": 2 * n_copy * 4 / (copy.min_ms * 1e-3) / 1e9,
        "matmul_fp32_tflops": 2 * m**3 / (mm.min_ms * 1e-3) / 1e12,
    }
    if device != "cuda":
        # On a GPU torch.exp over a tensor runs at memory bandwidth (one exp per 8 bytes moved),
        # far below the exp units' rate, and would make a false floor; a CPU computes it slower
        # than it streams the tensor, so there it measures the exp rate.
        e = torch.rand(n_copy, device=device)
        ex = measure(lambda: torch.exp(e, out=dst), device, budget_s=seconds, max_repeats=20)
        result["exp_gexps"] = n_copy / (ex.min_ms * 1e-3) / 1e9
    else:
        a16, b16 = a.to(torch.bfloat16), b.to(torch.bfloat16)
        mm16 = measure(lambda: a16 @ b16, device, budget_s=seconds, max_repeats=20)
        result["matmul_bf16_tflops"] = 2 * m**3 / (mm16.min_ms * 1e-3) / 1e12
    result["measured_at"] = time.time()
    return result
