"""ssmbench baseline: record runs as baselines."""
from __future__ import annotations

from pathlib import Path


def run(args) -> int:
    from ..baselines import save_baseline

    for spec in args.runs:
        print(f"baseline saved: {save_baseline(spec, args.results_dir, args.baselines)}")
    return 0


def add(sub) -> None:
    p = sub.add_parser("baseline", help="record runs as baselines (see README: updating baselines)")
    bsub = p.add_subparsers(dest="action", required=True)
    q = bsub.add_parser("save")
    q.add_argument("runs", nargs="+")
    q.add_argument("--baselines", type=Path, default=None)
    q.set_defaults(func=run)
