"""The one schema of a result row: typed column groups, and the check every row passes on write
and on load.

A row is flat (pandas loads the rows of a run as they are). Its columns come in groups, each a
dataclass below: what the case was (:class:`CaseColumns`), how its check went (:class:`CheckColumns`),
what timing measured (:class:`TimingColumns`), what is derived from the problem size and the time
(:class:`DerivedColumns`) and where it ran (:class:`EnvColumns`). Besides these, a row carries the
problem's parameters (``seqlen``, ``dtype`` ...) and whatever a custom case measures (``tokens_per_s``
...): those columns must be JSON scalars, so that every row stays one flat record.
"""
from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SCHEMA_VERSION = 1
STATUSES = ("ok", "incorrect", "unsupported", "unavailable", "oom", "timeout", "failed")


@dataclass(frozen=True)
class CaseColumns:
    """Which case of which run the row belongs to."""
    schema_version: int
    run_id: str
    case_id: str
    suite: str
    op: str | None = None
    backend: str | None = None
    fn: str | None = None  # "module:function" of a custom case
    series: str | None = None  # the line of a plot the row belongs to
    parent_case_id: str | None = None  # the interleaved comparison the row came from
    pass_mode: str | None = None  # an op case: forward, backward (alone) or forward_backward


@dataclass(frozen=True)
class CheckColumns:
    """The case's outcome and the check against the float64 reference made before timing."""
    status: str
    reason: str  # empty for ok rows; the words that explain any other status
    rel_error: float | None = None
    tolerance: float | None = None
    checked_at: str | None = None  # the smaller problem checked in place of the timed one
    kernel_configs: str | None = None  # Triton autotuning choices made during the check
    grad_rel_error: float | None = None  # a backward's worst input gradient against the reference's
    grad_worst_input: str | None = None


@dataclass(frozen=True)
class TimingColumns:
    """Steady-state timing of the case (raw samples kept) and the cost of its first call."""
    median_ms: float | None = None
    mean_ms: float | None = None
    min_ms: float | None = None
    iqr_ms: float | None = None
    ci_low_ms: float | None = None
    ci_high_ms: float | None = None
    n_samples: int | None = None
    samples_ms: list[float] | None = None
    first_call_ms: float | None = None
    warmup_calls: int | None = None
    interleaved: bool | None = None
    self_spread: float | None = None  # the second copy of a stability comparison over the first, less 1
    self_p: float | None = None
    elapsed_s: float | None = None  # wall time of the whole case, check included


@dataclass(frozen=True)
class DerivedColumns:
    """Work the problem must do and the rates the median reaches."""
    bytes: int | None = None
    flops: int | None = None
    exps: int | None = None
    gbps: float | None = None
    tflops: float | None = None
    peak_mem_bytes: int | None = None


@dataclass(frozen=True)
class EnvColumns:
    """What the worker that measured the row was set to (the rest is in the run's manifest)."""
    threads: int | None = None
    fingerprint: str | None = None


GROUPS = (CaseColumns, CheckColumns, TimingColumns, DerivedColumns, EnvColumns)


class SchemaError(ValueError):
    """A row that does not fit the schema; says where and which field."""


def _accepted(hint) -> tuple[tuple[type, ...], type | None, bool]:
    """(the Python types a JSON value of ``hint`` may have, the element type of a list, nullable)."""
    args = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
    nullable = type(None) in args
    (kind,) = [a for a in args if a is not type(None)]
    if typing.get_origin(kind) is list:
        (element,) = typing.get_args(kind)
        return (list,), element, nullable
    # JSON writes 2.0 as 2.0 but a float column may hold a whole number written by another tool.
    return ((int, float) if kind is float else (kind,)), None, nullable


COLUMNS: dict[str, tuple[tuple[type, ...], type | None, bool]] = {
    f.name: _accepted(hint)
    for group in GROUPS
    for f in dataclasses.fields(group)
    for hint in [typing.get_type_hints(group)[f.name]]
}
REQUIRED = tuple(f.name for group in GROUPS for f in dataclasses.fields(group)
                 if f.default is dataclasses.MISSING)
SCALARS = (str, int, float, bool, type(None))


def columns(group: type) -> tuple[str, ...]:
    """The column names of one group, in schema order."""
    return tuple(f.name for f in dataclasses.fields(group))


def _is(value: Any, kinds: tuple[type, ...]) -> bool:
    # bool is an int to Python, never to the schema.
    return isinstance(value, kinds) and not (isinstance(value, bool) and bool not in kinds)


def validate_row(row: Any, where: str | Path) -> None:
    """Raise :class:`SchemaError` naming ``where`` and the field when ``row`` breaks the schema."""
    if not isinstance(row, dict):
        raise SchemaError(f"{where}: expected a JSON object, got {type(row).__name__}")
    for name in REQUIRED:
        if name not in row:
            raise SchemaError(f"{where}: row lacks field {name!r}")
    for name, value in row.items():
        spec = COLUMNS.get(name)
        if spec is None:
            if not _is(value, SCALARS):
                raise SchemaError(f"{where}: field {name!r} must be a JSON scalar (a problem parameter or a "
                                  f"measured figure), got {type(value).__name__}")
            continue
        kinds, element, nullable = spec
        if value is None and nullable:
            continue
        if not _is(value, kinds):
            expected = " or ".join(k.__name__ for k in kinds) + (" or null" if nullable else "")
            raise SchemaError(f"{where}: field {name!r} must be {expected}, got {value!r}")
        if element is not None:
            bad = next((v for v in value if not _is(v, (int, float) if element is float else (element,))), None)
            if bad is not None:
                raise SchemaError(f"{where}: field {name!r} must hold {element.__name__}s, got {bad!r}")
    if row["schema_version"] != SCHEMA_VERSION:
        raise SchemaError(f"{where}: field 'schema_version' is {row['schema_version']}, "
                          f"this ssmbench reads {SCHEMA_VERSION}")
    if row["status"] not in STATUSES:
        raise SchemaError(f"{where}: field 'status' is {row['status']!r}, expected one of {STATUSES}")
    if row["status"] != "ok" and not row["reason"].strip():
        raise SchemaError(f"{where}: field 'reason' is empty for a {row['status']!r} row; "
                          f"every status but ok says why")
