"""What the Triton kernels share: elementwise helpers and the launcher that picks configs.

On the GPU a kernel is autotuned over a few block sizes, keyed on the problem sizes. Under the
interpreter (TRITON_INTERPRET=1, numpy on the CPU) it runs one fixed, small config instead:
autotuning there would run every candidate several times, at a crawl.
``SSMBENCH_TRITON_AUTOTUNE=0`` runs that fixed config compiled on the GPU too: each new shape then
costs one compile rather than one per candidate, which is what a correctness sweep over many small
shapes wants. Triton decides between compiling and interpreting when ``@triton.jit`` runs, i.e.
when a kernel module is imported (it reads the variable then, not at ``import triton``), so the
launcher asks the kernel object which one it got rather than re-reading the environment.
"""
from __future__ import annotations

import contextlib
import math
import os
from functools import cached_property
from typing import Callable, Mapping

import torch
import triton
import triton.language as tl
from triton.runtime.interpreter import InterpretedFunction


@triton.jit
def softplus(x):
    # log(1 + e^x); above 20 it equals x in float32 and e^x would head for overflow.
    return tl.where(x <= 20.0, tl.log(1.0 + tl.exp(x)), x)


@triton.jit
def silu(x):
    return x * tl.sigmoid(x)


def prune_to_budget(tile: Callable[[Mapping[str, int]], int], budget: int, least: int):
    """An ``early_config_prune`` keeping the configs whose tile (a function of the block sizes,
    ``num_warps`` and the launch's constexpr arguments) holds between ``least`` and ``budget``
    elements: larger ones spill registers, smaller ones waste time per program. Where none fits,
    the smallest stays."""
    def prune(configs, named_args, **kwargs):
        def size(config):
            return tile({**named_args, **kwargs, **config.kwargs, "num_warps": config.num_warps})
        fits = [c for c in configs if least <= size(c) <= budget]
        return fits or [min(configs, key=size)]
    return prune


# The config each kernel ran with at its latest launch (autotuned or fixed), by kernel name:
# what a benchmark row records next to the time. Kept as objects; launches are timed, and only
# describe_configs() formats them.
LAST_CONFIGS: dict[str, Mapping[str, int] | triton.Config] = {}


def describe_configs(configs: Mapping[str, Mapping[str, int] | triton.Config]) -> str:
    """"kernel: BLOCK_D=4, ..., warps=4, stages=3; ..." (a fixed config is marked so)."""
    def one(config) -> str:
        if isinstance(config, triton.Config):
            return ", ".join([*(f"{k}={v}" for k, v in config.kwargs.items()),
                              f"warps={config.num_warps}", f"stages={config.num_stages}"])
        return ", ".join(f"{k}={v}" for k, v in config.items()) + " (fixed)"
    return "; ".join(f"{name}: {one(config)}" for name, config in configs.items())


class Launcher:
    """A ``@triton.jit`` kernel with its GPU autotuning candidates and its fixed config (used
    interpreted, or compiled when autotuning is switched off).

    ``launcher[grid](*args, **kwargs)`` launches it like the kernel itself; ``grid`` may be a
    function of the chosen config's block sizes, as with ``triton.autotune``.
    restore_value: arguments the kernel updates in place, restored between autotuning trials.
    """

    def __init__(self, kernel, configs: list[triton.Config], key: list[str],
                 fixed: Mapping[str, int], prune=None, restore_value: tuple[str, ...] = ()):
        self.kernel = kernel
        self.name = kernel.fn.__name__
        self.configs = configs
        self.key = key
        self.fixed = dict(fixed)
        self.prune = prune
        self.restore_value = list(restore_value)

    @property
    def interpreting(self) -> bool:
        return isinstance(self.kernel, InterpretedFunction)

    @staticmethod
    def autotuning() -> bool:
        return os.environ.get("SSMBENCH_TRITON_AUTOTUNE", "1") != "0"

    @cached_property
    def tuned(self):
        return triton.autotune(
            configs=self.configs, key=self.key, restore_value=self.restore_value or None,
            prune_configs_by={"early_config_prune": self.prune} if self.prune else None,
        )(self.kernel)

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            device = next(a.device for a in args if isinstance(a, torch.Tensor))
            if device.type == "meta":
                # torch's meta device computes shapes alone, and the callers allocate every
                # output: a launch there has nothing to do (what a memory count runs).
                return None
            # Triton launches on the current CUDA device; the tensors may live on another one.
            guard = torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()
            with guard:
                if self.interpreting or not self.autotuning():
                    LAST_CONFIGS[self.name] = self.fixed
                    return self.kernel[grid](*args, **kwargs, **self.fixed)
                result = self.tuned[grid](*args, **kwargs)
                LAST_CONFIGS[self.name] = self.tuned.best_config
                return result
        return launch


def strides(t: torch.Tensor | None, ndim: int) -> tuple[int, ...]:
    """The strides of an optional tensor argument (zeros for one that is absent)."""
    return tuple(t.stride()) if t is not None else (0,) * ndim


def block_size(n: int) -> int:
    """The power-of-two block that holds ``n`` elements (at least 1)."""
    return triton.next_power_of_2(max(n, 1))


def product(config: Mapping[str, int], *names: str) -> int:
    return math.prod(config[name] for name in names)
