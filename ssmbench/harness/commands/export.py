"""ssmbench export: a run as pytest-benchmark JSON."""
from __future__ import annotations

from pathlib import Path


def run(args) -> int:
    from ..pytest_benchmark import export_run

    print(export_run(args.run, args.out, args.results_dir))
    return 0


def add(sub) -> None:
    p = sub.add_parser("export", help="write a run as pytest-benchmark JSON")
    p.add_argument("run")
    p.add_argument("--out", type=Path, required=True)
    p.set_defaults(func=run)
