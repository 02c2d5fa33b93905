"""Builds mamba-ssm's and causal-conv1d's CUDA extensions from their source distributions, for the
one GPU architecture of this machine, each within a time limit.

Their ``setup.py`` files list ``-gencode`` flags for nine architectures (sm_75 to sm_121) whatever
``TORCH_CUDA_ARCH_LIST`` says, and torch adds its own arch flags only when the extension names
none: so the unpacked ``setup.py`` loses those flags here, and torch builds for the one
architecture in ``TORCH_CUDA_ARCH_LIST``, about a ninth of the work. ``*_FORCE_BUILD=TRUE`` skips
their download of a prebuilt wheel (a machine without network cannot fetch one).

Each package is first installed without its CUDA part (``*_SKIP_CUDA_BUILD=TRUE``, seconds), so that
mamba-ssm's Triton kernels (SSD, the decode step) run even when the CUDA build does not finish; the
full build goes to a folder placed before that one on ``PYTHONPATH``. A build that fails or runs
out of time writes one line, ``<reasons>/<module>.txt``; with ``SSMBENCH_BUILD_REASONS`` set to that
folder, the backends add the line to their reasons (:func:`ssmbench.impls.base.build_reason`).

    python3 -m ssmbench.harness.third_party_build --sdists .sdist --prefix /tmp/kernels [--dry-run]
"""
from __future__ import annotations

import argparse
import os
import re
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

# Each -gencode flag that setup.py appends, with the arch= flag after it.
GENCODE = re.compile(r'cc_flag\.append\("-gencode"\)\s*\n\s*cc_flag\.append\("arch=compute_\w+,code=\w+"\)')
TAIL_CHARS = 600  # of a failed build's output, in its reason line
PYTHON_PART_TIMEOUT_S = 120  # seconds for an install without the CUDA part (about 10 s here)


@dataclass(frozen=True)
class Package:
    dist: str  # the name pip knows
    module: str  # the import name the backends require
    env: str  # prefix of its setup.py's variables
    jobs_share: float  # of MAX_JOBS, when the builds run side by side


PACKAGES = (Package("mamba-ssm", "mamba_ssm", "MAMBA", 0.75),
            Package("causal-conv1d", "causal_conv1d", "CAUSAL_CONV1D", 0.25))


@dataclass
class Build:
    package: Package
    sdist: Path | None
    arch: str
    jobs: int
    timeout_s: float
    prefix: Path
    # Filled in by run(): "built" | "failed" | "timed out" | "missing"
    status: str = ""
    reason: str = ""
    seconds: float = 0.0
    removed_flags: int = 0
    log: list[str] = field(default_factory=list)

    def pip(self, source: Path, target: Path) -> list[str]:
        return [sys.executable, "-m", "pip", "install", "--no-build-isolation", "--no-deps", "--no-index",
                "--no-cache-dir", "--upgrade", "--target", str(target), str(source)]

    def env(self, cuda: bool) -> dict[str, str]:
        # FORCE_BUILD in both: else setup.py first tries to download a prebuilt wheel, and fails on
        # a machine without network (or a torch without CUDA) before building anything.
        force = {f"{self.package.env}_FORCE_BUILD": "TRUE"}
        if not cuda:
            return {**force, f"{self.package.env}_SKIP_CUDA_BUILD": "TRUE"}
        return {**force, "TORCH_CUDA_ARCH_LIST": self.arch, "MAX_JOBS": str(self.jobs), "NVCC_THREADS": "1"}

    def describe(self) -> list[str]:
        if self.sdist is None:
            return [f"{self.package.dist}: no source distribution found; its backends will say so"]
        source = Path(f"<unpacked {self.sdist.name}>")

        def show(env: dict[str, str], target: Path) -> str:
            return " ".join([*(f"{k}={v}" for k, v in env.items()), "python3", *self.pip(source, target)[1:]])
        return [f"{self.package.dist}: {self.sdist} ({self.sdist.stat().st_size / 1024:.0f} KiB)",
                f"  unpack; drop setup.py's -gencode flags (torch then builds for {self.arch} only)",
                f"  1. {show(self.env(False), self.prefix / 'python')}",
                f"  2. within {self.timeout_s:.0f} s: {show(self.env(True), self.prefix / 'cuda')}"]


def find_sdist(folder: Path, package: Package) -> Path | None:
    stem = package.dist.replace("-", "_")
    found = sorted(folder.glob(f"{stem}-*.tar.gz")) + sorted(folder.glob(f"{package.dist}-*.tar.gz"))
    return found[-1] if found else None


def gpu_arch() -> str:
    """The compute capability of this machine's GPU, as TORCH_CUDA_ARCH_LIST spells it ("9.0")."""
    import torch

    if not torch.cuda.is_available():
        raise SystemExit("third_party_build: torch sees no CUDA GPU here; give --arch (e.g. 9.0) for a dry run")
    return "%d.%d" % torch.cuda.get_device_capability()


def one_arch(setup_py: str) -> tuple[str, int]:
    """setup.py without its -gencode flags, and how many it had."""
    return GENCODE.subn("pass", setup_py)


def unpack(sdist: Path, into: Path) -> Path:
    with tarfile.open(sdist) as archive:
        archive.extractall(into, filter="data")
    [root] = [p for p in into.iterdir() if p.is_dir()]
    return root


def _run(command: list[str], env: dict[str, str], timeout_s: float | None, cwd: Path) -> tuple[int | None, str]:
    """(exit code, or None when the time ran out; the output). The build runs in its own process
    group, so that nvcc and ninja die with pip when the time is up."""
    proc = subprocess.Popen(command, env={**os.environ, **env}, cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=timeout_s)
        return proc.returncode, out
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        return None, out


# The lines of a build's output that say what went wrong (compiler errors, the exception), not
# pip's wrapping of it.
CAUSE = re.compile(r"(^([a-z_]\w*\.)*[A-Z][a-z]\w*: |UserWarning: |error:|error [A-Z]+\d+|Killed)")
PIP_NOISE = ("subprocess-exited-with-error", "Failed building", "Could not build", "ERROR: Failed")


def _tail(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    causes = [line for line in lines if CAUSE.search(line) and not any(n in line for n in PIP_NOISE)]
    return " | ".join(causes[:3] or lines[-3:])[:TAIL_CHARS]


def run(build: Build, reasons: Path) -> Build:
    """Python part, then the CUDA build within its time; the reason file written or removed."""
    note = reasons / f"{build.package.module}.txt"
    if build.sdist is None:
        build.status, build.reason = "missing", f"no source distribution of {build.package.dist} was carried in"
        note.write_text(build.reason + "\n")
        return build
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix=f"{build.package.module}-") as tmp:
        source = unpack(build.sdist, Path(tmp))
        setup = source / "setup.py"
        text, build.removed_flags = one_arch(setup.read_text())
        setup.write_text(text)
        code, out = _run(build.pip(source, build.prefix / "python"), build.env(False), PYTHON_PART_TIMEOUT_S, source)
        build.log.append(out)
        if code != 0:
            build.status = "failed"
            build.reason = f"{build.package.dist}: even the install without CUDA failed: {_tail(out)}"
        else:
            code, out = _run(build.pip(source, build.prefix / "cuda"), build.env(True), build.timeout_s, source)
            build.log.append(out)
            build.seconds = time.perf_counter() - started
            if code == 0:
                build.status = "built"
            elif code is None:
                build.status = "timed out"
                build.reason = (f"{build.package.dist}'s CUDA build for sm_{build.arch.replace('.', '')} did not "
                                f"finish within its {build.timeout_s:.0f} s here (MAX_JOBS={build.jobs})")
            else:
                build.status = "failed"
                build.reason = f"{build.package.dist}'s CUDA build failed (exit {code}): {_tail(out)}"
    build.seconds = time.perf_counter() - started
    if build.reason:
        note.write_text(build.reason + "\n")
    else:
        note.unlink(missing_ok=True)
    return build


def plan(sdists: Path, prefix: Path, arch: str, jobs: int, timeout_s: float) -> list[Build]:
    return [Build(p, find_sdist(sdists, p), arch, max(1, int(jobs * p.jobs_share)), timeout_s, prefix)
            for p in PACKAGES]


def python_path(prefix: Path) -> str:
    """What PYTHONPATH must start with for the builds to be used: CUDA builds before Python parts."""
    return f"{prefix / 'cuda'}:{prefix / 'python'}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m ssmbench.harness.third_party_build",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--sdists", type=Path, required=True, help="folder holding the .tar.gz source distributions")
    parser.add_argument("--prefix", type=Path, default=Path("/tmp/ssmbench-kernels"),
                        help="where the packages are installed (cuda/ and python/ inside) and reasons/ written")
    parser.add_argument("--arch", help="compute capability to build for (default: this machine's GPU)")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 4, help="MAX_JOBS shared by the two builds")
    parser.add_argument("--timeout", type=float, default=240.0,
                        help="seconds for each CUDA build (they run side by side)")
    parser.add_argument("--dry-run", action="store_true", help="print the plan; build nothing")
    args = parser.parse_args(argv)
    if not args.sdists.is_dir():
        parser.error(f"--sdists: {args.sdists} is not a folder")
    if args.timeout <= 0 or args.jobs <= 0:
        parser.error("--timeout and --jobs must be positive")
    arch = args.arch or gpu_arch()
    if not re.fullmatch(r"\d+\.\d+a?", arch):
        parser.error(f"--arch: expected a compute capability such as 9.0, got {arch!r}")
    builds = plan(args.sdists, args.prefix, arch, args.jobs, args.timeout)
    print(f"third-party kernels for TORCH_CUDA_ARCH_LIST={arch}, MAX_JOBS={args.jobs} shared, "
          f"{args.timeout:.0f} s per CUDA build, side by side")
    for build in builds:
        print("\n".join(build.describe()))
    print(f"then: export PYTHONPATH={python_path(args.prefix)}:$PYTHONPATH "
          f"SSMBENCH_BUILD_REASONS={args.prefix / 'reasons'}")
    if args.dry_run:
        return 0
    reasons = args.prefix / "reasons"
    reasons.mkdir(parents=True, exist_ok=True)
    with ThreadPoolExecutor(len(builds)) as pool:
        done = list(pool.map(lambda b: run(b, reasons), builds))
    for build in done:
        print(f"{build.package.dist}: {build.status} in {build.seconds:.0f} s"
              f" ({build.removed_flags} -gencode flags dropped){': ' + build.reason if build.reason else ''}")
        (args.prefix / f"{build.package.module}.log").write_text("\n".join(build.log))
    return 0 if all(b.status == "built" for b in done) else 1


if __name__ == "__main__":
    sys.exit(main())
