"""Builds our CUDA extension on first use, for the GPU in use, with torch's JIT loader and ninja.

The kernels (``*.cu``) need only CUDA headers; ``binding.cpp`` is the torch side. The build is
cached in ``$TORCH_EXTENSIONS_DIR/ssmbench_cuda_<arch>`` (default
``~/.cache/ssmbench/torch_extensions``), one folder per target architecture, torch and CUDA
version, since torch's own cache key does not include the architecture. ``TORCH_CUDA_ARCH_LIST``
is honoured (e.g. "8.0;9.0"); without it the build targets the visible GPUs. A failed build is
remembered for the rest of the process and its compiler output becomes the backend's
"unavailable" reason.
"""
from __future__ import annotations

import logging
import os
import time
from functools import cache
from pathlib import Path
from types import ModuleType

import torch

NAME = "ssmbench_cuda"
SOURCE_DIR = Path(__file__).resolve().parent
KERNEL_SOURCES = ("selective_scan.cu", "selective_state_update.cu")  # need only CUDA headers
SOURCES = ("binding.cpp", *KERNEL_SOURCES)
MAX_DSTATE = 256  # kMaxDState in ssm_launch.h
# Flags of the kernels alone; torch adds its own (language standard, arch, half operators).
NVCC_FLAGS = ("-O3", "-lineinfo")

# Enough of the compiler output to show the first error without flooding a report.
ERROR_CHARS = 3000

log = logging.getLogger("ssmbench.cuda")


def arch_tag() -> str:
    """The architectures the build targets, as a folder-name tag: "sm80_sm90"."""
    requested = os.environ.get("TORCH_CUDA_ARCH_LIST")
    if requested:
        archs = requested.replace(";", " ").replace(",", " ").split()
    else:
        archs = sorted({"%d.%d" % torch.cuda.get_device_capability(i)
                        for i in range(torch.cuda.device_count())})
    return "_".join("sm" + a.replace(".", "").replace("+", "") for a in archs)


def build_directory() -> Path:
    base = os.environ.get("TORCH_EXTENSIONS_DIR") or Path.home() / ".cache" / "ssmbench" / "torch_extensions"
    torch_version = torch.__version__.split("+")[0]
    return Path(base) / f"{NAME}_{arch_tag()}_torch{torch_version}_cu{torch.version.cuda}"


def toolchain_reasons() -> list[str]:
    """What the build needs that is missing, checked without building."""
    from torch.utils import cpp_extension

    reasons = []
    if torch.version.cuda is None:
        reasons.append(f"torch {torch.__version__} is a build without CUDA")
    if cpp_extension.CUDA_HOME is None:
        reasons.append("no CUDA toolkit (nvcc) found to build our extension; set CUDA_HOME")
    if not cpp_extension.is_ninja_available():
        reasons.append("ninja is needed to build our extension: pip install ninja")
    return reasons


@cache
def _load() -> tuple[ModuleType | None, str | None]:
    why = toolchain_reasons()
    if why:
        return None, "; ".join(why)
    from torch.utils import cpp_extension

    directory = build_directory()
    directory.mkdir(parents=True, exist_ok=True)
    log.info("loading our CUDA extension (building it on first use) in %s", directory)
    start = time.perf_counter()
    try:
        module = cpp_extension.load(
            name=NAME,
            sources=[str(SOURCE_DIR / s) for s in SOURCES],
            extra_cflags=["-O3"],
            extra_cuda_cflags=list(NVCC_FLAGS),
            build_directory=str(directory),
            verbose=False,
        )
    except Exception as exc:  # compiler, linker and import errors all end up here
        text = str(exc).strip()
        if len(text) > ERROR_CHARS:
            text = "..." + text[-ERROR_CHARS:]
        return None, f"our CUDA extension failed to build in {directory}: {type(exc).__name__}: {text}"
    log.info("our CUDA extension is ready after %.1f s", time.perf_counter() - start)
    return module, None


def extension() -> ModuleType:
    """The compiled module, built if needed; RuntimeError with the build's output if it fails."""
    module, error = _load()
    if module is None:
        raise RuntimeError(error)
    return module


def unavailable_reasons() -> list[str]:
    """For Backend.check_available: empty once the extension is built and loaded. Without a GPU
    it says nothing (the backend already says it needs one) and builds nothing."""
    if not torch.cuda.is_available():
        return []
    return [error] if (error := _load()[1]) else []


def run(entry: str, device: torch.device, *args):
    """Calls the extension's ``entry`` on ``device``, on its current stream (the last argument
    every entry point takes)."""
    module = extension()
    with torch.cuda.device(device):
        return getattr(module, entry)(*args, torch.cuda.current_stream(device).cuda_stream)


def contiguous(t: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    """``t`` as the kernels take it: dense, in ``dtype`` (None stays None)."""
    return None if t is None else t.to(dtype).contiguous()
