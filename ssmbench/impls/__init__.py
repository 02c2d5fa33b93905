"""Ops and their backends. ``import ssmbench.impls`` imports no optional package."""
from .base import Backend, BackendError, Op, Problem, UnknownName
from .registry import OP_NAMES, backends, choose, dispatch, get_backend, get_op, last_auto_choice, reasons

__all__ = [
    "Backend", "BackendError", "Op", "Problem", "UnknownName", "OP_NAMES", "backends", "choose",
    "dispatch", "get_backend", "get_op", "last_auto_choice", "reasons",
]
