"""Every claim suite at its ``gpu-lease`` preset in one command on a lent GPU, after building
mamba-ssm's and causal-conv1d's kernels (:mod:`ssmbench.harness.third_party_build`) and our CUDA
extension: results under ``results/reference/<gpu name>/``, a report, and ``lease.md`` saying what
finished.

Each suite runs in its own process with its own time limit (from the estimate below), so that a
slow or broken suite costs its own time only: past its limit it is interrupted, keeps the cases it
finished (the store writes each row as it comes) and the next suite starts.

The estimate, per op case: its timing budget plus ``CASE_S`` (the correctness check on the GPU,
warm-up, the row: the H100 run of kernels/PERF.md took 0.2-3 s per case); our Triton kernels add
``AUTOTUNE_PER_SHAPE_S`` per case (they autotune per length; PERF.md: 2.3-2.7 s); and each
backend's first call per (op, dtype, state size) adds its ``first_call_s`` (PERF.md: our Triton
scan 14 s, mamba-ssm's and fla-core's SSD 31-32 s of autotuning). Custom cases (generation,
caches, training steps) take ``CUSTOM_CASE_S`` per suite beyond their own timing budget: guesses
from the sizes, not measured. A backend whose
package is absent where the estimate is made, and not built by the lease, costs nothing (its rows
say "not installed"); every other one is counted as running, GPU or not. The suites'
limits share ``--budget`` seconds in proportion to their estimates when these exceed it: the run
then fits its time, and each suite keeps what it finished (its cases run shortest and longest
length first, so a cut suite still spans its range).

    python3 -m ssmbench.harness.gpu_lease [--dry-run] [--sdists .sdist] [--out results/reference]
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path

from ..impls.registry import OP_NAMES, backends
from ..suites import available_suites, get_suite
from ..suites.base import Case
from . import third_party_build as tpb
from .third_party_build import PACKAGES

PRESET = "gpu-lease"
CLAIM_SUITES = ("jamba_cache", "scaling", "ssd_speedup", "generation", "jamba_throughput", "training")
CASE_S = 1.0
AUTOTUNE_PER_SHAPE_S = 2.5
# Custom cases: seconds each beyond their own timing budget (params["budget_s"]); guesses.
CUSTOM_CASE_S = {"generation": 8.0, "jamba_throughput": 6.0, "training": 4.0}  # others: allocations
CUSTOM_DEFAULT_S = 0.5
SLACK = 1.25  # a suite's time limit over its estimate, when they all fit the budget
MIN_LIMIT_S = 30.0
SUITES_BUDGET_S = 330.0  # with the builds and the report, one command under 10 minutes
BUILD_TIMEOUT_S = 200.0
STOP_GRACE_S = 20  # after the interrupt, for the runner to store what it has


@dataclass(frozen=True)
class SuitePlan:
    suite: str
    cases: int
    op_cases: int
    backends: tuple[str, ...]
    estimate_s: float
    limit_s: float = 0.0


def lease_suites() -> list[str]:
    """The claim suites this checkout has, each with a gpu-lease preset."""
    return [s for s in CLAIM_SUITES if s in available_suites() and PRESET in get_suite(s).presets]


def _absent(backend) -> bool:
    built = {p.module for p in PACKAGES}
    return any(m not in built and importlib.util.find_spec(m) is None for m in backend.requires)


def _named(case: Case) -> list[str]:
    """The backends a model case names ("op=backend,..." in its params), or "auto"."""
    default = "auto" if "gen" in case.params else ""  # generation cases run under "auto" unless named
    spec = str(case.params.get("backends", default)) if not case.op else ""
    return [part.partition("=")[2] or part for part in spec.split(",") if part]


def estimate_s(suite: str, cases: list[Case]) -> float:
    total, first_calls = 0.0, {}
    for case in cases:
        if not case.op:
            total += CUSTOM_CASE_S.get(suite, CUSTOM_DEFAULT_S) + float(case.params.get("budget_s", 0.0))
            continue
        backend = backends(case.op)[case.backend]
        if _absent(backend):
            continue
        total += case.budget_s + CASE_S + (AUTOTUNE_PER_SHAPE_S if backend.kind == "triton" else 0.0)
        key = (case.op, backend.name, case.params.get("dtype"), case.params.get("dstate"))
        first_calls[key] = backend.first_call_s
    return total + sum(first_calls.values())


def plan(budget_s: float = SUITES_BUDGET_S, suites: list[str] | None = None) -> list[SuitePlan]:
    """Each suite's cases, estimate and time limit."""
    out = []
    for name in suites or lease_suites():
        cases = get_suite(name).cases(PRESET)
        names = tuple(sorted({c.backend for c in cases if c.backend} | {n for c in cases for n in _named(c)}))
        out.append(SuitePlan(name, len(cases), sum(1 for c in cases if c.op), names, estimate_s(name, cases)))
    total = sum(p.estimate_s for p in out)
    share = min(SLACK, budget_s / total) if total else SLACK
    return [replace(p, limit_s=max(MIN_LIMIT_S, math.floor(p.estimate_s * share))) for p in out]


def describe(plans: list[SuitePlan], build_timeout_s: float, budget_s: float) -> str:
    lines = [f"{'suite':<18}{'cases':>6}{'op cases':>9}{'estimate s':>11}{'limit s':>9}  backends"]
    for p in plans:
        lines.append(f"{p.suite:<18}{p.cases:>6}{p.op_cases:>9}{p.estimate_s:>11.0f}{p.limit_s:>9.0f}  "
                     f"{', '.join(p.backends) or '-'}")
    suites_s = sum(p.estimate_s for p in plans)
    limits_s = sum(p.limit_s for p in plans)
    absent = sorted({b.name for p in plans for op in OP_NAMES for b in backends(op).values()
                     if b.name in p.backends and _absent(b)})
    lines.append(f"suites: estimate {suites_s:.0f} s ({suites_s / 60:.1f} min; not counted, absent here: "
                 f"{', '.join(absent) or 'none'}); limits {limits_s:.0f} s (budget {budget_s:.0f} s)")
    lines.append(f"builds at most {build_timeout_s:.0f} s before them; worst case in all "
                 f"{(limits_s + build_timeout_s) / 60:.1f} min")
    return "\n".join(lines)


def gpu_folder_name(name: str) -> str:
    """'NVIDIA H200' -> 'nvidia-h200': a folder name for results/reference/."""
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "unknown-gpu"


def _run_limited(command: list[str], limit_s: float, env: dict[str, str], log: Path) -> tuple[int | None, float]:
    """(exit code, or None when interrupted at its limit; seconds). Past the limit the command gets
    SIGTERM (the CLI stores what finished), then SIGKILL after a grace period."""
    started = time.perf_counter()
    with log.open("w") as out:
        proc = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            code = proc.wait(timeout=limit_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            code = None
    return code, time.perf_counter() - started


def _runs(results: Path) -> set[Path]:
    return {r for r in results.iterdir() if (r / "manifest.json").is_file()}


def _statuses(runs: set[Path]) -> Counter:
    counts: Counter = Counter()
    for run in runs:
        rows = run / "rows.jsonl"
        for line in rows.read_text().splitlines() if rows.is_file() else ():
            if line.strip():
                counts[json.loads(line).get("status", "?")] += 1
    return counts


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python3 -m ssmbench.harness.gpu_lease", description=__doc__.split("\n\n")[0])
    parser.add_argument("--dry-run", action="store_true", help="list each suite's cases and the estimate; run nothing")
    parser.add_argument("--sdists", type=Path, default=Path(".sdist"),
                        help="folder of mamba-ssm's and causal-conv1d's source distributions (default .sdist)")
    parser.add_argument("--out", type=Path, default=Path("results/reference"),
                        help="results go to OUT/<gpu name>/ (default results/reference)")
    parser.add_argument("--build-timeout", type=float, default=BUILD_TIMEOUT_S, help="seconds for each CUDA build")
    parser.add_argument("--no-build", action="store_true", help="use the packages as installed")
    parser.add_argument("--suites", help="only these suites (comma-separated)")
    parser.add_argument("--budget", type=float, default=SUITES_BUDGET_S,
                        help=f"seconds the suites share (default {SUITES_BUDGET_S:.0f})")
    return parser


def _dry_build(args) -> None:
    """What the build step would do, without building."""
    print("build step:")
    if not args.sdists.is_dir():
        print(f"  --sdists {args.sdists} is not a folder: no third-party build, their backends will say so")
        return
    tpb.main(["--sdists", str(args.sdists), "--arch", os.environ.get("TORCH_CUDA_ARCH_LIST", "9.0"),
              "--jobs", os.environ.get("MAX_JOBS", "16"), "--timeout", str(args.build_timeout), "--dry-run"])


def _build(args, env: dict, folder: Path) -> list[str]:
    """Our CUDA extension and, from --sdists, the third-party kernels, built side by side; ``env``
    gains the paths that make the built packages importable. Returns the report's lines."""
    prefix = Path(env.get("SSMBENCH_KERNELS", "/tmp/ssmbench-kernels"))
    extension = subprocess.Popen([sys.executable, "-c", "from ssmbench.kernels.cuda import build; build.extension()"],
                                 env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    if args.sdists.is_dir():
        _run_limited([sys.executable, "-m", "ssmbench.harness.third_party_build", "--sdists", str(args.sdists),
                      "--prefix", str(prefix), "--timeout", str(args.build_timeout), "--jobs", env["MAX_JOBS"]],
                     args.build_timeout + 2 * tpb.PYTHON_PART_TIMEOUT_S, env, folder / "build.log")
        lines = ["## Builds", "", "```", *(folder / "build.log").read_text().splitlines()[-4:], "```", ""]
        env["PYTHONPATH"] = ":".join(filter(None, [tpb.python_path(prefix), env.get("PYTHONPATH")]))
        env["SSMBENCH_BUILD_REASONS"] = str(prefix / "reasons")
    else:
        lines = [f"No builds: --sdists {args.sdists} is not a folder.", ""]
    extension.wait()
    return lines


def _run_suites(plans, cli: list[str], env: dict, folder: Path, results: Path) -> tuple[list[str], set[Path]]:
    """Each planned suite in its own process under its time limit: the report's table lines and
    the run folders the suites wrote."""
    lines = ["## Suites", "", "| suite | cases | rows by status | seconds (limit) | ended |", "|---|---|---|---|---|"]
    written: set[Path] = set()
    for p in plans:
        print(f"== {p.suite}: {p.cases} cases, limit {p.limit_s:.0f} s", flush=True)
        before = _runs(results)
        log = folder / f"{p.suite}.log"
        code, seconds = _run_limited(cli + ["run", "--suite", p.suite, "--preset", PRESET, "--quiet"],
                                     p.limit_s, env, log)
        new = _runs(results) - before
        written |= new
        ended = ("done" if code == 0 else "stopped at its limit" if code is None
                 else f"exit {code}: {(log.read_text().strip().splitlines() or [''])[-1][:200]}")
        counts = ", ".join(f"{k} {v}" for k, v in sorted(_statuses(new).items())) or "none"
        lines.append(f"| {p.suite} | {p.cases} | {counts} | {seconds:.0f} ({p.limit_s:.0f}) | {ended} |")
        print(lines[-1], flush=True)
    return lines, written


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    wanted = args.suites.split(",") if args.suites else None
    unknown = sorted(set(wanted or ()) - set(lease_suites()))
    if unknown:
        parser.error(f"--suites: {', '.join(unknown)} not among {', '.join(lease_suites())}")
    if args.budget <= 0 or args.build_timeout <= 0:
        parser.error("--budget and --build-timeout must be positive")
    plans = plan(args.budget, wanted)
    print(f"gpu-lease preset of {len(plans)} suites")
    without = [s for s in CLAIM_SUITES if s in available_suites() and s not in lease_suites()]
    if without:
        print(f"claim suites without a gpu-lease preset, not run: {', '.join(without)}")
    print(describe(plans, 0.0 if args.no_build else args.build_timeout, args.budget))
    if args.dry_run:
        if not args.no_build:
            _dry_build(args)
        return 0

    import torch

    if not torch.cuda.is_available():
        print("gpu-lease: torch sees no CUDA GPU here; this runs on a machine with one (--dry-run lists the plan)",
              file=sys.stderr)
        return 2
    gpu = torch.cuda.get_device_name()
    folder = args.out / gpu_folder_name(gpu)
    results, reports = folder / "runs", folder / "report"
    results.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    env.setdefault("TORCH_CUDA_ARCH_LIST", "%d.%d" % torch.cuda.get_device_capability())
    env.setdefault("MAX_JOBS", str(os.cpu_count() or 8))
    env.setdefault("TORCH_EXTENSIONS_DIR", "/tmp/ssmbench-extensions")
    env["PYTHONUNBUFFERED"] = "1"
    lines = [f"# gpu-lease run on {gpu}", "", f"torch {torch.__version__}, CUDA {torch.version.cuda}", ""]
    if not args.no_build:
        lines += _build(args, env, folder)
    cli = [sys.executable, "-m", "ssmbench.harness.cli", "--results-dir", str(results), "--reports-dir", str(reports)]
    table, written = _run_suites(plans, cli, env, folder, results)
    lines += table
    if written:
        _run_limited(cli + ["report", *sorted(map(str, written))], 120, env, folder / "report.log")
        shown = (folder / "report.log").read_text().strip().splitlines()
        lines += ["", f"Report: {shown[-1] if shown else '(none written)'}"]
    (folder / "lease.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
