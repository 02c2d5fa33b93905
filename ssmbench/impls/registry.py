"""Discovery of ops and backends, and the choice of backend for a call.

Each op is a subpackage ``ssmbench.impls.<op>`` whose ``__init__`` defines ``OP``; each module
inside it defines ``BACKEND`` (or ``BACKENDS``, a list), except private helpers (a leading
underscore). Modules import no optional package at import time, so discovery works on a machine
with none installed.
"""
from __future__ import annotations

import importlib
import logging
import pkgutil
from functools import cache
from typing import Any, Mapping

from .base import Backend, BackendError, Op, Problem, unknown

OP_NAMES = (
    "selective_scan",
    "ssd",
    "selective_state_update",
    "causal_conv1d",
    "causal_conv1d_update",
    "attention",
)

log = logging.getLogger("ssmbench.dispatch")

# What backend="auto" picked for each op, most recent call last: (op, backend, problem).
auto_choices: list[tuple[str, str, Problem]] = []


@cache
def get_op(name: str) -> Op:
    if name not in OP_NAMES:
        raise unknown("op", name, OP_NAMES)
    return importlib.import_module(f"ssmbench.impls.{name}").OP


@cache
def backends(op: str) -> dict[str, Backend]:
    """All backends of an op, by name, in descending auto priority."""
    get_op(op)
    package = importlib.import_module(f"ssmbench.impls.{op}")
    found: list[Backend] = []
    for info in pkgutil.iter_modules(package.__path__):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{package.__name__}.{info.name}")
        if not (hasattr(module, "BACKEND") or hasattr(module, "BACKENDS")):
            # A misspelt name would otherwise drop the backend from every table without a word.
            raise RuntimeError(f"{module.__name__} ({module.__file__}) defines neither BACKEND nor BACKENDS; "
                               "a module of an op's folder holds backends, helpers start with '_'")
        found.extend(getattr(module, "BACKENDS", ()))
        if hasattr(module, "BACKEND"):
            found.append(module.BACKEND)
    by_name: dict[str, Backend] = {}
    for backend in sorted(found, key=lambda b: (-b.priority, b.name)):
        if backend.op != op:
            raise RuntimeError(f"backend {backend.name!r} declares op {backend.op!r} but lives under {op}")
        if backend.name in by_name:
            raise RuntimeError(f"two backends of {op} are named {backend.name!r}")
        by_name[backend.name] = backend
    return by_name


def get_backend(op: str, name: str) -> Backend:
    table = backends(op)
    if name not in table:
        raise unknown(f"backend of {op}", name, table)
    return table[name]


# Whether a backend can run on this machine does not change within a process (packages, GPU,
# extension builds); "auto" asks on every call, so the answer is kept.
_unavailable: dict[tuple[str, str], list[str]] = {}


def _cached_unavailable(backend: Backend) -> list[str]:
    key = (backend.op, backend.name)
    if key not in _unavailable:
        _unavailable[key] = backend.unavailable_reasons()
    return _unavailable[key]


def reasons(backend: Backend, problem: Problem | None = None, cached: bool = False) -> tuple[str, list[str]]:
    """("unavailable" | "unsupported" | "ok", reasons in words). ``cached``: reuse this process's
    earlier answer on availability (the hot path of backend="auto")."""
    why = _cached_unavailable(backend) if cached else backend.unavailable_reasons()
    if why:
        return "unavailable", why
    if problem is not None:
        why = backend.unsupported_reasons(problem)
        if why:
            return "unsupported", why
    return "ok", []


def choose(op: str, backend: str, problem: Problem) -> Backend:
    """The backend to run. A named backend is used or refused, never replaced by another."""
    if backend != "auto":
        chosen = get_backend(op, backend)
        status, why = reasons(chosen, problem)
        if status != "ok":
            raise BackendError(f"{op} backend {backend!r} is {status}: {'; '.join(why)}")
        return chosen
    refused = []
    for candidate in backends(op).values():
        if candidate.kind == "reference":
            continue
        status, why = reasons(candidate, problem, cached=True)
        if status == "ok":
            auto_choices.append((op, candidate.name, problem))
            del auto_choices[:-100]
            log.info("%s: auto chose backend %r for %s", op, candidate.name, problem)
            return candidate
        refused.append(f"{candidate.name} ({'; '.join(why)})")
    raise BackendError(f"{op}: no backend can run {problem}: " + ", ".join(refused))


def last_auto_choice(op: str) -> str | None:
    """The backend that backend="auto" picked in the most recent call of ``op``."""
    for name, chosen, _ in reversed(auto_choices):
        if name == op:
            return chosen
    return None


def dispatch(op: str, backend: str, kwargs: Mapping[str, Any]):
    spec = get_op(op)
    problem = spec.problem_of(kwargs)
    return choose(op, backend, problem)(**kwargs)
