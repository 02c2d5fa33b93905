"""Argument checks shared by every op: each error names the op, the argument, what was
expected and what was received."""
from __future__ import annotations

from collections import Counter
from typing import Any, Mapping, Sequence

import torch

from .base import DTYPES, dtype_name


class Args:
    """Checks the tensors of one call against symbolic shapes, binding sizes as it goes.

    >>> a = Args("selective_scan", kwargs)
    >>> a.tensor("u", "b d l")          # binds b, d, l
    >>> a.tensor("delta", "b d l")      # must agree
    >>> a.sizes["d"]                    # every size the arguments agree on

    Sizes are settled when first read: where arguments disagree on a size, the arguments that
    most of the others contradict are the wrong ones, so a first tensor in the wrong layout is
    blamed, not every correct one after it. Sizes of 0 are refused (no op here has a meaning for
    an empty batch, channel or sequence).
    """

    def __init__(self, op: str, kwargs: Mapping[str, Any]):
        self.op = op
        self.kwargs = kwargs
        # (argument, dims, shape, the dims that may be empty) of each tensor checked
        self._seen: list[tuple[str, list[str], tuple[int, ...], list[str]]] = []
        self._bound: dict[str, int] = {}  # the first size given for each dim
        self._settled = True  # no disagreement and no empty size so far
        self.device: torch.device | None = None
        self.dtype: torch.dtype | None = None

    def fail(self, message: str) -> ValueError:
        return ValueError(f"{self.op}: {message}")

    def tensor(self, name: str, dims: str | Sequence[str], optional: bool = False,
               float_only: bool = True, same_dtype: bool = False, may_be_empty: str = "") -> torch.Tensor | None:
        """``may_be_empty``: dims (space-separated) where 0 has a meaning, e.g. the kept steps of
        a width-1 convolution's state."""
        value = self.kwargs.get(name)
        if value is None:
            if optional:
                return None
            raise self.fail(f"argument {name!r} is required")
        if not isinstance(value, torch.Tensor):
            raise self.fail(f"argument {name!r} must be a torch.Tensor, got {type(value).__name__}")
        names = dims.split() if isinstance(dims, str) else list(dims)
        expected = " ".join(names)
        shape = value.shape
        if len(shape) != len(names):
            raise self.fail(f"argument {name!r} must have shape ({expected}) = {self._show(names)}, got {tuple(shape)}")
        for dim, size in zip(names, shape):
            if dim.isdigit():
                if int(dim) != size:
                    raise self.fail(f"argument {name!r} must have shape ({expected}), got {tuple(shape)}")
            # Kept as first bound while the arguments agree (the common case, and per decode step).
            elif self._bound.setdefault(dim, size) != size or not (size or dim in may_be_empty.split()):
                self._settled = False
        self._seen.append((name, names, tuple(shape), may_be_empty.split()))
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

    @property
    def sizes(self) -> dict[str, int]:
        if not self._settled:
            self._settle()  # raises: the arguments disagree, or one is empty
        return self._bound

    def _votes(self) -> dict[str, Counter]:
        """dim -> Counter(size -> how many arguments give it), over the arguments checked."""
        votes: dict[str, Counter] = {}
        for _, names, shape, _ in self._seen:
            for dim, size in zip(names, shape):
                if not dim.isdigit():
                    votes.setdefault(dim, Counter())[size] += 1
        return votes

    def _settle(self) -> None:
        votes = self._votes()
        # The size each dim takes: the one most arguments give; on a tie, the first given.
        agreed = {dim: max(counts, key=lambda size: (counts[size], -list(counts).index(size)))
                  for dim, counts in votes.items()}
        # Blame the argument that contradicts the most others (a wrong layout disagrees on
        # several sizes at once); on a tie, the later one, as a check in order would.
        wrong = max(reversed(self._seen), key=lambda seen: sum(
            votes[d][agreed[d]] for d, n in zip(seen[1], seen[2]) if not d.isdigit() and n != agreed[d]),
            default=None)
        if wrong is not None and any(not d.isdigit() and n != agreed[d] for d, n in zip(wrong[1], wrong[2])):
            name, names, shape, _ = wrong
            others = sorted({other for other, dims, got, _ in self._seen if other != name and any(
                d in names and n == agreed[d] for d, n in zip(dims, got) if not d.isdigit())})
            raise self.fail(f"argument {name!r} must have shape ({' '.join(names)}) = "
                            f"{tuple(agreed.get(d, int(d) if d.isdigit() else d) for d in names)}, got {shape} "
                            f"(sizes from {', '.join(map(repr, others))})")
        for name, names, shape, empty in self._seen:
            for dim, size in zip(names, shape):
                if size == 0 and dim not in empty:
                    raise self.fail(f"argument {name!r} has size 0 in dimension {dim} of ({' '.join(names)}), "
                                    f"shape {shape}: {self.op} needs every size at least 1")

    def _show(self, names: list[str]) -> tuple:
        votes = self._votes()
        return tuple(votes[n].most_common(1)[0][0] if n in votes else int(n) if n.isdigit() else n
                     for n in names)

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


def records_grad(*tensors: torch.Tensor | None) -> bool:
    """Whether autograd records a call on these tensors (an op with its own backward then goes
    through its autograd.Function; otherwise the forward kernel alone runs)."""
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def grad_as(grad: torch.Tensor | None, like: torch.Tensor | None) -> torch.Tensor | None:
    """A kernel's float32 gradient in its input's dtype; None for an input that was not given."""
    return None if like is None else grad.to(like.dtype)
