"""Argument checks shared by every op: each error names the op, the argument, what was
expected and what was received."""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch

from .base import DTYPES, dtype_name


class Args:
    """Checks the tensors of one call against symbolic shapes, binding sizes as it goes.

    >>> a = Args("selective_scan", kwargs)
    >>> a.tensor("u", "b d l")          # binds b, d, l
    >>> a.tensor("delta", "b d l")      # must agree
    """

    def __init__(self, op: str, kwargs: Mapping[str, Any]):
        self.op = op
        self.kwargs = kwargs
        self.sizes: dict[str, int] = {}
        self.device: torch.device | None = None
        self.dtype: torch.dtype | None = None

    def fail(self, message: str) -> ValueError:
        return ValueError(f"{self.op}: {message}")

    def tensor(self, name: str, dims: str | Sequence[str], optional: bool = False,
               float_only: bool = True, same_dtype: bool = False) -> torch.Tensor | None:
        value = self.kwargs.get(name)
        if value is None:
            if optional:
                return None
            raise self.fail(f"argument {name!r} is required")
        if not isinstance(value, torch.Tensor):
            raise self.fail(f"argument {name!r} must be a torch.Tensor, got {type(value).__name__}")
        names = dims.split() if isinstance(dims, str) else list(dims)
        expected = " ".join(names)
        if value.dim() != len(names):
            raise self.fail(
                f"argument {name!r} must have shape ({expected}) = {self._show(names)}, "
                f"got {tuple(value.shape)}"
            )
        for dim, size in zip(names, value.shape):
            if dim.isdigit():
                if int(dim) != size:
                    raise self.fail(f"argument {name!r} must have shape ({expected}), got {tuple(value.shape)}")
                continue
            bound = self.sizes.setdefault(dim, size)
            if bound != size:
                raise self.fail(
                    f"argument {name!r} must have shape ({expected}) = {self._show(names)}, "
                    f"got {tuple(value.shape)}"
                )
        if float_only and value.dtype not in DTYPES.values():
            raise self.fail(f"argument {name!r} must be a floating tensor, got {value.dtype}")
        if self.device is None:
            self.device = value.device
        elif value.device != self.device:
            raise self.fail(f"argument {name!r} is on {value.device}, the other tensors on {self.device}")
        if same_dtype:
            if self.dtype is None:
                self.dtype = value.dtype
            elif value.dtype != self.dtype:
                raise self.fail(
                    f"argument {name!r} has dtype {dtype_name(value.dtype)}, expected {dtype_name(self.dtype)}"
                )
        return value

    def _show(self, names: list[str]) -> tuple:
        return tuple(self.sizes.get(n, int(n) if n.isdigit() else n) for n in names)

    def require(self, condition: bool, message: str) -> None:
        if not condition:
            raise self.fail(message)

    def flag(self, name: str) -> bool:
        value = self.kwargs.get(name, False)
        if not isinstance(value, bool):
            raise self.fail(f"argument {name!r} must be a bool, got {value!r}")
        return value

    def device_name(self) -> str:
        return "cuda" if self.device is not None and self.device.type == "cuda" else "cpu"

    def dtype_name(self, name: str) -> str:
        return dtype_name(self.kwargs[name].dtype)


def random_tensor(shape, generator: torch.Generator, dtype: torch.dtype, device: str,
                  scale: float = 1.0, shift: float = 0.0) -> torch.Tensor:
    """Normal random data drawn on the CPU (so a seed means the same data everywhere)."""
    t = torch.randn(*shape, generator=generator, dtype=torch.float64) * scale + shift
    return t.to(device=device, dtype=dtype)


def element_size(dtype: str) -> int:
    return torch.empty((), dtype=DTYPES[dtype]).element_size()


def weight_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype of weights and carried states for activations of ``dtype``: float32 for half
    precision (Mamba's mixed precision), float64 for float64."""
    return torch.float64 if dtype == torch.float64 else torch.float32
