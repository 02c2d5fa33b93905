"""Stored runs: one folder per run under results/, a manifest and rows written as cases finish.

    results/<run_id>/manifest.json   run id, git commit + dirty flag, time, command, suite,
                                     preset, environment, fingerprint, ceilings, schema version,
                                     job id (shared by the runs of one command)
    results/<run_id>/cases.jsonl     the cases the run was asked to do (what --resume finishes)
    results/<run_id>/rows.jsonl      one flat JSON object per finished case, appended + fsynced
    results/<run_id>/writer.lock     held by the one process writing the run (its pid inside)
    results/<run_id>/submitit/       job logs and per-job row files of --executor submitit

Rows follow the schema of :mod:`.schema`. ``load_runs`` returns one pandas DataFrame; anything
unreadable is an error naming the file, line and field, never skipped, except the torn last line
that a crash leaves (not yet a row: the next writer drops it, and its case runs again).
"""
from __future__ import annotations

import contextlib
import datetime as dt
import errno
import fcntl
import json
import os
import secrets
import shutil
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any, Iterable, Iterator

from .case import Case
from .derived import add_ceiling_fractions
from .schema import SCHEMA_VERSION, STATUSES, SchemaError, validate_row  # noqa: F401 - re-exported

REQUIRED_MANIFEST_FIELDS = {"schema_version": int, "run_id": str, "created": str, "environment": dict,
                            "fingerprint": str}
LOCK = "writer.lock"  # held (flock) by the one process that writes the run; the kernel frees it on exit
JOB_LOGS = "submitit"  # a cluster's job logs and per-job row files, beside the run's own files


class ResultsError(ValueError):
    """A results folder or file that cannot be read or written as a run; says which file and field."""


def default_results_dir() -> Path:
    return Path(os.environ.get("SSMBENCH_RESULTS", "results"))


def git_state(path: Path | None = None) -> dict[str, Any]:
    where = str(path or Path(__file__).resolve().parent)
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=where, capture_output=True,
                                text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=where,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}
    return {"commit": commit or None, "dirty": bool(dirty) if commit else None}


def new_run_id(label: str) -> str:
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    return f"{stamp}-{label}-{secrets.token_hex(2)}"


def new_job_id() -> str:
    """The id that the runs of one command share (one run per suite of ``--suite a,b,c``)."""
    return new_run_id("job")


class Run:
    """A run folder being written (or resumed)."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.manifest = read_manifest(self.path)
        self.run_id = self.manifest["run_id"]
        self.rows_file = self.path / "rows.jsonl"

    @classmethod
    def create(cls, results_dir: Path, label: str, cases: list[Case], environment: dict,
               fingerprint: str, **fields) -> "Run":
        """A new run folder. The cases, then the manifest, are each written whole and renamed
        into place: a folder without a manifest is no run, and one with a manifest has every case."""
        run_id = new_run_id(label)
        path = Path(results_dir) / run_id
        manifest = {
            "schema_version": SCHEMA_VERSION, "run_id": run_id,
            "created": dt.datetime.now(dt.timezone.utc).isoformat(),
            "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
            "git": git_state(), "environment": environment, "fingerprint": fingerprint, **fields,
        }
        try:
            path.mkdir(parents=True, exist_ok=False)
            write_whole(path / "cases.jsonl", "".join(json.dumps(_case_record(c), default=str) + "\n"
                                                        for c in cases))
            write_whole(path / "manifest.json", json.dumps(manifest, indent=2, default=_json_default))
        except OSError as exc:
            shutil.rmtree(path, ignore_errors=True)
            raise ResultsError(f"{path}: the run folder could not be written ({_os_error(exc)}); "
                               f"nothing was run and nothing is kept") from None
        return cls(path)

    def cases(self) -> list[Case]:
        file = self.path / "cases.jsonl"
        cases = []
        for number, record in _read_jsonl(file):
            where = f"{file}, line {number}"
            stored_id = record.pop("case_id", None)
            try:
                case = Case(**record)
            except (TypeError, ValueError) as exc:
                raise ResultsError(f"{where}: not a case ({exc})") from None
            if stored_id != case.case_id:
                raise ResultsError(f"{where}: field 'case_id' is {stored_id!r}, but the case's fields give "
                                   f"{case.case_id!r}: the file was changed by hand or by another version")
            cases.append(case)
        return cases

    def rows(self) -> list[dict]:
        return read_rows(self.path)

    def done_case_ids(self) -> set[str]:
        # Rows of an interleaved comparison carry the id of the case they came from.
        return {r.get("parent_case_id") or r["case_id"] for r in self.rows()}

    @contextlib.contextmanager
    def writing(self, cases: Iterable[Case] = ()) -> Iterator["Run"]:
        """Hold the run's lock while writing it, after mending what a crash left: a torn last
        line, and the rows of an interleaved case that was cut off before all its rows were in.
        A second writer (a run or resume of the same folder) is refused with the holder's pid."""
        with open(self.path / LOCK, "a+") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                lock.seek(0)
                holder = lock.read().strip() or "unknown"
                raise ResultsError(f"{self.path}: another ssmbench process (pid {holder}) is writing this run; "
                                   f"wait for it to finish, or stop it, then resume") from None
            lock.seek(0)
            lock.truncate()
            lock.write(f"{os.getpid()}\n")
            lock.flush()
            self._drop_torn_tail()
            self._drop_partial_cases(cases)
            yield self

    def _drop_torn_tail(self) -> None:
        try:
            data = self.rows_file.read_bytes()
        except FileNotFoundError:
            return
        if not data or data.endswith(b"\n"):
            return
        keep = data.rfind(b"\n") + 1
        with open(self.rows_file, "r+b") as f:
            f.truncate(keep)
            os.fsync(f.fileno())
        _warn(f"{self.rows_file}: dropped a torn last line ({len(data) - keep} bytes of a write cut short); "
              f"its case runs again")

    def _drop_partial_cases(self, cases: Iterable[Case]) -> None:
        expected = {c.case_id: len(c.backends) for c in cases if c.backends}
        rows = self.rows()
        have: dict[str, int] = {}
        for row in rows:
            if row.get("parent_case_id") in expected:
                have[row["parent_case_id"]] = have.get(row["parent_case_id"], 0) + 1
        partial = {parent for parent, n in have.items() if n < expected[parent]}
        if not partial:
            return
        kept = [r for r in rows if r.get("parent_case_id") not in partial]
        write_whole(self.rows_file, "".join(json_line(r) for r in kept))
        _warn(f"{self.rows_file}: dropped {len(rows) - len(kept)} rows of {len(partial)} interleaved case(s) "
              f"cut off before all their rows were written; they run again")

    def append(self, *rows: dict[str, Any]) -> None:
        """Write the rows of one case in one write of whole lines, then fsync: a crash leaves them
        all or a torn tail that the next writer drops. A full disk keeps what was there before."""
        lines = []
        for row in rows:
            row = {"schema_version": SCHEMA_VERSION, "run_id": self.run_id,
                   "fingerprint": self.manifest["fingerprint"], **row}
            try:
                validate_row(row, f"{self.rows_file} (row being written)")
            except SchemaError as exc:
                raise ResultsError(str(exc)) from None
            lines.append(json_line(row))
        data = "".join(lines).encode()
        fd = os.open(self.rows_file, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            before = os.fstat(fd).st_size
            try:
                _write_synced(fd, data)
            except OSError as exc:
                os.ftruncate(fd, before)
                kept = len(self.rows())
                case = rows[0].get("parent_case_id") or rows[0].get("case_id")
                raise ResultsError(f"{self.rows_file}: {_os_error(exc)}; the {kept} rows written before are kept, "
                                   f"case {case} was not; free space, then: ssmbench run --resume {self.path}"
                                   ) from None
        finally:
            os.close(fd)


def append_synced(path: Path, data: bytes) -> None:
    """``data`` appended in one write, then fsynced."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        _write_synced(fd, data)
    finally:
        os.close(fd)


def _write_synced(fd: int, data: bytes) -> None:
    if os.write(fd, data) != len(data):  # a short write is what a nearly full disk gives
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    os.fsync(fd)


def _case_record(case: Case) -> dict[str, Any]:
    return {"case_id": case.case_id, **asdict(case), "params": dict(case.params)}


def _json_default(value):
    if hasattr(value, "item"):
        return value.item()
    return str(value)


def json_line(record: dict) -> str:
    """One record as one line of JSON (numpy and torch scalars as numbers)."""
    return json.dumps(record, default=_json_default, allow_nan=True) + "\n"


def _os_error(exc: OSError) -> str:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return "the disk is full (no space left on device)"
    return exc.strerror or str(exc)


def _warn(message: str) -> None:
    print(f"ssmbench: warning: {message}", file=sys.stderr, flush=True)


def write_whole(path: Path, text: str) -> None:
    """``text`` into ``path`` through a temporary file renamed over it: readers see the old file or
    the new one, never a part."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError:
        tmp.unlink(missing_ok=True)
        raise
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)  # the rename itself survives a crash
    finally:
        os.close(fd)


def _read_jsonl(path: Path) -> list[tuple[int, dict]]:
    """(line number, object) of every line. A torn last line, where a crash cut a write short, is
    left out (the next writer drops it); anything else unreadable is an error."""
    records = []
    try:
        text = path.read_text()
    except OSError as exc:
        raise ResultsError(f"{path}: cannot be read: {exc.strerror or exc}") from None
    lines = text.split("\n")
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            if number == len(lines):  # no newline after it: the write never finished
                continue
            raise ResultsError(f"{path}, line {number}: not valid JSON ({exc.msg})") from None
        if not isinstance(record, dict):
            raise ResultsError(f"{path}, line {number}: expected a JSON object, got {type(record).__name__}")
        records.append((number, record))
    return records


def read_manifest(path: Path) -> dict:
    file = Path(path) / "manifest.json"
    if not Path(path).is_dir():
        raise ResultsError(f"{path}: no such run folder")
    try:
        manifest = json.loads(file.read_text())
    except OSError as exc:
        raise ResultsError(f"{file}: cannot be read: {exc.strerror or exc}") from None
    except json.JSONDecodeError as exc:
        raise ResultsError(f"{file}: not valid JSON ({exc.msg}, line {exc.lineno})") from None
    if not isinstance(manifest, dict):
        raise ResultsError(f"{file}: expected a JSON object, got {type(manifest).__name__}")
    for name, kind in REQUIRED_MANIFEST_FIELDS.items():
        if name not in manifest:
            raise ResultsError(f"{file}: manifest lacks field {name!r}")
        if not isinstance(manifest[name], kind):
            raise ResultsError(f"{file}: field {name!r} must be {kind.__name__}, got {manifest[name]!r}")
    if manifest["schema_version"] != SCHEMA_VERSION:
        raise ResultsError(f"{file}: field 'schema_version' is {manifest['schema_version']}, "
                           f"this ssmbench reads {SCHEMA_VERSION}")
    return manifest


def read_rows(path: Path) -> list[dict]:
    file = Path(path) / "rows.jsonl"
    if not file.exists():
        return []
    rows = []
    for number, row in _read_jsonl(file):
        try:
            validate_row(row, f"{file}, line {number}")
        except SchemaError as exc:
            raise ResultsError(str(exc)) from None
        rows.append(row)
    return rows


def resolve_runs(specs: Iterable[str | Path], results_dir: Path | None = None,
                 whole_job: bool = False) -> list[Path]:
    """Run folders from paths, run ids, or "latest" (the newest run in the results folder; with
    ``whole_job``, every run of the command that made it, in the order they were made)."""
    base = Path(results_dir or default_results_dir())
    paths = []
    for spec in specs:
        spec = str(spec)
        if spec == "latest" and whole_job:
            paths.extend(job_runs(base, latest_run(base)))
        elif spec == "latest" or spec.startswith("latest:"):
            paths.append(latest_run(base, suite=spec.partition(":")[2] or None))
        elif Path(spec).is_dir():
            paths.append(Path(spec))
        elif (base / spec).is_dir():
            paths.append(base / spec)
        else:
            raise ResultsError(f"{spec}: neither a run folder nor a run id under {base}")
    return paths


def latest_run(results_dir: Path, suite: str | None = None) -> Path:
    """The newest run folder directly under ``results_dir`` (of ``suite``, if given)."""
    manifests = [(p.parent, read_manifest(p.parent)) for p in Path(results_dir).glob("*/manifest.json")]
    manifests = [(p, m) for p, m in manifests if suite is None or m.get("suite") == suite]
    if not manifests:
        of = f" of suite {suite!r}" if suite else ""
        raise ResultsError(f"{results_dir}: holds no runs{of}")
    return max(manifests, key=lambda pm: pm[1]["created"])[0]


def job_runs(results_dir: Path, run: Path) -> list[Path]:
    """The runs under ``results_dir`` that share ``run``'s job id, oldest first; ``run`` alone
    when its manifest has none (runs made before job ids)."""
    job = read_manifest(run).get("job_id")
    if not job:
        return [Path(run)]
    manifests = [(p.parent, read_manifest(p.parent)) for p in Path(results_dir).glob("*/manifest.json")]
    return [p for p, m in sorted(manifests, key=lambda pm: pm[1]["created"]) if m.get("job_id") == job]


def load_runs(*runs: str | Path, results_dir: Path | None = None, with_environment: bool = True):
    """One DataFrame with the rows of every run given (paths, ids or "latest"); each row carries
    its run's fingerprint, device names and preset so that rows of several runs stay apart."""
    import pandas as pd

    frames = []
    for path in resolve_runs(runs or ["latest"], results_dir):
        manifest = read_manifest(path)
        rows = read_rows(path)
        frame = pd.DataFrame(rows)
        if with_environment and len(frame):
            env = manifest["environment"]
            # Rows carry the fingerprint of what measured them; older rows get the run's.
            frame["fingerprint"] = (frame["fingerprint"].fillna(manifest["fingerprint"]) if "fingerprint" in frame
                                    else manifest["fingerprint"])
            frame["preset"] = manifest.get("preset")
            frame["cpu_model"] = env.get("cpu_model")
            frame["gpu_name"] = env.get("gpu_name")
            add_ceiling_fractions(frame, manifest.get("ceilings") or {})
        frames.append(frame)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
