"""What the third-party adapters share: the GPU generation a package needs, and mamba-ssm's
Triton kernels on a machine where the package itself does not import.

mamba-ssm's ``__init__`` imports its compiled extension ``selective_scan_cuda`` (through
``mamba_ssm.ops.selective_scan_interface``), so where that extension is missing or was built for
another torch, ``import mamba_ssm`` fails and takes every submodule with it. The SSD and decode
kernels are Triton (``mamba_ssm/ops/triton/*.py``) and need only torch, triton and einops. In that
case :func:`mamba_triton` registers a placeholder for the top-level package (its real location,
its ``__init__`` not run) and imports the Triton module from the installed files, without copying
any. The placeholder stays in ``sys.modules`` for the process: a later ``import mamba_ssm`` gets it,
without ``selective_scan_fn`` and the models, which did not import anyway. The selective-scan
adapter still reports the package's import error.
"""
from __future__ import annotations

import importlib
import importlib.util
import inspect
import logging
import sys
from functools import cache
from types import ModuleType

import torch

from .base import cuda_available, distribution_version, import_failure

log = logging.getLogger("ssmbench.third_party")


def capability_failure(package: str, minimum: tuple[int, int]) -> list[str]:
    """Why the current GPU is too old for ``package`` (empty when it is new enough, or absent)."""
    if not cuda_available():
        return []
    have = torch.cuda.get_device_capability()
    if have >= minimum:
        return []
    return [f"{package} needs a GPU of compute capability {minimum[0]}.{minimum[1]} (sm_{minimum[0]}"
            f"{minimum[1]}) or newer; {torch.cuda.get_device_name()} is {have[0]}.{have[1]}"]


def mamba_triton(module: str) -> ModuleType:
    """``mamba_ssm.ops.triton.<module>``, through the package where it imports, else through a
    placeholder package (see the module docstring). ImportError says why it cannot."""
    loaded, error = _mamba_triton(module)
    if loaded is None:
        raise ImportError(error)
    return loaded


def mamba_triton_failure(module: str) -> list[str]:
    """Why mamba-ssm's Triton module ``module`` cannot be used (empty when it imports)."""
    return [error] if (error := _mamba_triton(module)[1]) else []


@cache
def _mamba_triton(module: str) -> tuple[ModuleType | None, str | None]:
    name = f"mamba_ssm.ops.triton.{module}"
    package_error = import_failure("mamba_ssm")
    if package_error and "mamba_ssm" not in sys.modules:
        spec = importlib.util.find_spec("mamba_ssm")
        if spec is None or spec.submodule_search_locations is None:
            return None, "mamba_ssm is not installed"
        sys.modules["mamba_ssm"] = importlib.util.module_from_spec(spec)  # __init__ not executed
        log.warning("%s; using mamba_ssm's Triton kernels without the package's own import",
                    package_error[0])
    try:
        return importlib.import_module(name), None
    except Exception as exc:  # a missing einops, an incompatible triton, ...
        return None, f"{name} fails to import: {type(exc).__name__}: {exc}"


def transformers_torch_path(module: str, function: str):
    """transformers' pure-torch ``module.function`` beneath its kernel wrappers (the path its
    mixers take when no kernel package is installed)."""
    return inspect.unwrap(getattr(importlib.import_module(module), function))


def transformers_missing(module: str, function: str, older: str) -> list[str]:
    """Why ``module.function`` cannot be called: the import error, or a release without it
    (``older``: where older releases keep that code)."""
    reasons = import_failure(module)
    if not reasons and not hasattr(importlib.import_module(module), function):
        reasons = [f"transformers {distribution_version('transformers')} has no {module}.{function} "
                   f"(older releases keep the scan inline in {older})"]
    return reasons
