"""The one interface: ops, backends and the words they use to say why they cannot run.

An :class:`Op` knows its arguments (how to validate them, how to make random ones for a
:class:`Problem`), its float64 reference, and the cost model used for derived units. A
:class:`Backend` declares as data where and on what it runs; its two reason methods keep
"cannot run on this machine" apart from "cannot run this problem".
"""
from __future__ import annotations

import dataclasses
import importlib
import importlib.metadata
import importlib.util
import os
from dataclasses import dataclass, field
from functools import cache, cached_property
from pathlib import Path
from typing import Any, Callable, Mapping

import torch

DTYPES: dict[str, torch.dtype] = {
    "float64": torch.float64,
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}
DTYPE_NAMES = {v: k for k, v in DTYPES.items()}

# Relative-norm error allowed against the float64 reference, by compute dtype. A backend may
# declare its own; these are the defaults every backend starts from.
DEFAULT_TOLERANCES: Mapping[str, float] = {
    "float64": 1e-10,
    "float32": 1e-4,
    "bfloat16": 2e-2,
    "float16": 5e-3,
}


class BackendError(RuntimeError):
    """A named backend cannot run: not available here, or not for this problem."""


class UnknownName(ValueError):
    """An unknown op, backend, suite or preset; the message lists the known names."""


def unknown(kind: str, name: str, known) -> UnknownName:
    return UnknownName(f"unknown {kind} {name!r}; known: {', '.join(sorted(known))}")


def dtype_name(dtype: torch.dtype) -> str:
    return DTYPE_NAMES.get(dtype, str(dtype).removeprefix("torch."))


def parse_dtype(name: str | torch.dtype) -> torch.dtype:
    if isinstance(name, torch.dtype):
        return name
    if name not in DTYPES:
        raise unknown("dtype", name, DTYPES)
    return DTYPES[name]


@dataclass(frozen=True)
class Problem:
    """Base for each op's problem: the sizes and options of one call, no tensors.

    Subclasses add their size fields. ``device`` is "cpu" or "cuda"; ``dtype`` is a name
    from :data:`DTYPES` (names, not torch objects, so rows stay flat and JSON-friendly).
    """

    dtype: str = "float32"
    device: str = "cpu"

    def params(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> "Problem":
        """Build from strings or values (``--shape key=value``), naming any unknown key."""
        fields = {f.name: f for f in dataclasses.fields(cls)}
        bad = sorted(set(params) - set(fields))
        if bad:
            raise ValueError(
                f"{cls.__name__}: unknown parameter(s) {', '.join(bad)}; known: {', '.join(fields)}"
            )
        values = {}
        for key, raw in params.items():
            default = fields[key].default
            values[key] = _coerce(key, raw, type(default) if default is not dataclasses.MISSING else int)
            _check_size(cls.__name__, key, values[key], default)
        problem = cls(**values)
        parse_dtype(problem.dtype)
        return problem

    def replace(self, **changes) -> "Problem":
        return dataclasses.replace(self, **changes)


def _check_size(problem: str, key: str, value: Any, default: Any) -> None:
    """Sizes are never negative; a size whose default is positive is a real extent, never 0 (a
    field that defaults to 0, such as seqlen_k or groups, uses 0 to mean "as another" or "none")."""
    if isinstance(value, bool) or not isinstance(value, int):
        return
    if value < 0 or (value == 0 and isinstance(default, int) and default > 0):
        least = "a positive int" if isinstance(default, int) and default > 0 else "an int >= 0"
        raise ValueError(f"{problem}: parameter {key!r} must be {least}, got {value}")


def _coerce(key: str, raw: Any, kind: type) -> Any:
    if not isinstance(raw, str):
        return raw
    try:
        if kind is bool:
            if raw.lower() in ("1", "true", "yes", "on"):
                return True
            if raw.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(raw)
        if kind is int:
            return int(raw)
        if kind is float:
            return float(raw)
    except ValueError:
        raise ValueError(f"parameter {key!r} expects {kind.__name__}, got {raw!r}") from None
    return raw


@dataclass(frozen=True)
class Op:
    """One operation of the interface.

    make_inputs(problem, generator) -> kwargs of the public function, on problem.device in
    problem.dtype (fresh random data; never zeros).
    problem_of(kwargs) -> Problem; validates shapes, dtypes and devices, raising ValueError
    that names the argument, the expected shape and the one received.
    outputs(kwargs, result) -> named tensors to compare (in-place state updates included).
    reference: "module:function" of the float64 reference, same signature as the public op.
    bytes_moved / flops(problem) -> the least the op must move / compute (derived units).
    exps(problem) -> the exp evaluations the op cannot avoid, or None where they are too few to
    bound its time (with the two above, the floor: the time no backend can beat on a machine).
    test_problems() -> the problems every backend is checked on: odd lengths, length 1, every
    layout and optional argument (on the CPU, float32; the tests add devices and dtypes).
    length_field: the problem field that is the sequence length (what backends' max_sensible_len
    bounds), absent from the problems of the one-step ops.
    length_exponent: the exponent of the op's work in that length (every length growing with it):
    1 for a scan or a convolution, 2 for causal self-attention.
    """

    name: str
    problem_type: type
    make_inputs: Callable[[Problem, torch.Generator], dict[str, Any]]
    problem_of: Callable[[Mapping[str, Any]], Problem]
    outputs: Callable[[Mapping[str, Any], Any], dict[str, torch.Tensor]]
    reference: str
    bytes_moved: Callable[[Problem], int]
    flops: Callable[[Problem], int]
    default_problem: Problem
    test_problems: Callable[[], list[Problem]]
    doc: str = ""
    exps: Callable[[Problem], int] | None = None
    length_field: str = "seqlen"
    length_exponent: float = 1.0

    @cached_property
    def reference_fn(self) -> Callable:
        return load_callable(self.reference)


def load_callable(path: str) -> Callable:
    module, _, attr = path.partition(":")
    return getattr(importlib.import_module(module), attr)


def distribution_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def import_failure(module: str) -> list[str]:
    """Why ``module`` cannot be imported, in words (empty when it imports). For a backend's
    check_available: a package can be installed yet fail to import (a compiled extension missing
    or built for another torch), and that error is the reason to show."""
    error = _import_error(module)
    return [] if error is None else [f"{module} fails to import: {error}{build_reason(module)}"]


def build_reason(module: str) -> str:
    """Why the build of ``module``'s package failed here, as "; " + one line, when a build recorded
    it (ssmbench.harness.third_party_build, in the folder named by SSMBENCH_BUILD_REASONS)."""
    folder = os.environ.get("SSMBENCH_BUILD_REASONS")
    note = Path(folder) / f"{module.split('.')[0]}.txt" if folder else None
    if note is None or not note.is_file():
        return ""
    return "; " + note.read_text().strip()


@cache
def _import_error(module: str) -> str | None:
    try:
        importlib.import_module(module)
    except Exception as exc:  # extensions fail with ImportError, OSError, RuntimeError, ...
        return f"{type(exc).__name__}: {exc}"
    return None


def cuda_available() -> bool:
    return torch.cuda.is_available()


def triton_interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


@dataclass(frozen=True)
class Backend:
    """One implementation of one op, its capabilities as data.

    impl: "module:function" loaded only when the backend is called, so that listing backends
    imports no optional package.
    requires: import names that must be importable (words for each one missing).
    limits: upper bounds on problem fields, e.g. {"dstate": 256}.
    check_available / check_supported: extra reasons in words, for what data cannot say
    (an extension that fails to build, a layout a kernel lacks).
    priority: higher wins under backend="auto".
    has_backward: whether gradients flow through the call (its own backward, or autograd through
    torch ops); a backend without one is timed and checked forward only.
    Traits the suites select by (so that a new backend module needs no edit elsewhere):
    python_loop: steps over the sequence in Python, one or more torch calls per step, so a call
    costs milliseconds per thousand steps; benchmarks cap the lengths they time it at.
    fused: the whole op in one GPU kernel (or a few), never writing per-step states or the L x L
    scores to memory: the papers' "fused kernels" that the claims compare.
    max_sensible_len: the longest sequence length worth running it at, where past that a call
    takes seconds or memory quadratic in L and says nothing new (None: no such bound). For the
    float64 reference: the length its correctness checks run at for longer problems.
    first_call_s: seconds its first call on a GPU takes for each new dtype and state size
    (compiling, autotuning), as measured (kernels/PERF.md); for planning a run's time, never
    asserted.
    """

    op: str
    name: str
    impl: str
    devices: tuple[str, ...] = ("cpu", "cuda")
    dtypes: tuple[str, ...] = ("float64", "float32", "bfloat16", "float16")
    tolerances: Mapping[str, float] = field(default_factory=dict)
    requires: tuple[str, ...] = ()
    limits: Mapping[str, int] = field(default_factory=dict)
    priority: int = 0
    has_backward: bool = False
    python_loop: bool = False
    fused: bool = False
    max_sensible_len: int | None = None
    first_call_s: float = 0.0
    kind: str = "torch"  # reference | torch | triton | cuda | third-party
    description: str = ""
    check_available: Callable[[], list[str]] | None = None
    check_supported: Callable[[Problem], list[str]] | None = None
    no_gpu_reason: str = "needs a CUDA GPU; torch sees none"  # for devices == ("cuda",)

    def tolerance(self, dtype: str) -> float:
        return self.tolerances.get(dtype, DEFAULT_TOLERANCES[dtype])

    def unavailable_reasons(self) -> list[str]:
        """Why this backend cannot run on this machine at all (empty: it can)."""
        reasons = []
        for module in self.requires:
            try:
                found = importlib.util.find_spec(module) is not None
            except (ImportError, ValueError) as exc:
                found = False
                reasons.append(f"{module} cannot be located: {exc}")
                continue
            if not found:
                reasons.append(f"{module} is not installed{build_reason(module)}")
        if reasons:
            return reasons
        if self.devices == ("cuda",) and not cuda_available():
            reasons.append(self.no_gpu_reason)
        if self.check_available is not None:
            reasons.extend(self.check_available())
        return reasons

    def unsupported_reasons(self, problem: Problem) -> list[str]:
        """Why this backend cannot run this particular problem (empty: it can)."""
        reasons = []
        if problem.device not in self.devices:
            reasons.append(f"runs on {'/'.join(self.devices)}, not {problem.device}")
        if problem.device == "cuda" and not cuda_available():
            reasons.append("device cuda requested but torch sees no CUDA GPU")
        if problem.dtype not in self.dtypes:
            reasons.append(f"dtype {problem.dtype} not supported (supports {', '.join(self.dtypes)})")
        params = problem.params()
        for key, bound in self.limits.items():
            if key in params and params[key] > bound:
                reasons.append(f"{key}={params[key]} exceeds this backend's limit of {bound}")
        if not reasons and self.check_supported is not None:
            reasons.extend(self.check_supported(problem))
        return reasons

    @cached_property
    def fn(self) -> Callable:
        return load_callable(self.impl)

    def __call__(self, **kwargs):
        return self.fn(**kwargs)


def triton_backend(op: str, impl: str, description: str, **fields) -> Backend:
    """The backend of one of our Triton kernels.

    Triton compiles for CUDA GPUs. With TRITON_INTERPRET=1 its interpreter runs the same kernels
    in numpy, on CPU tensors too: correct but slow, so then the backend also lists the CPU and
    ranks below torch under "auto". Triton reads the variable when a kernel is defined (the
    first call imports the kernel module), so it must be set before that, and stays in force for
    the whole process.
    """
    interpreting = triton_interpreting()
    return Backend(
        op=op, name="triton", impl=impl, kind="triton", requires=("triton",),
        devices=("cpu", "cuda") if interpreting else ("cuda",),
        dtypes=("float32", "bfloat16", "float16"),
        priority=-10 if interpreting else 10, fused=True,
        no_gpu_reason="needs a CUDA GPU, or TRITON_INTERPRET=1 to run interpreted on the CPU",
        description=description, **{"first_call_s": 10.0, **fields},  # 10 s: one compile and tune, not measured
    )
