"""ssmbench tables: the papers' tables regenerated, the paper's value beside ours."""
from __future__ import annotations


def run(args) -> int:
    from ..report import write_paper_tables

    text, folder = write_paper_tables(args.runs or None, results_dir=args.results_dir, out_dir=args.reports_dir)
    print(text)
    print(f"written to {folder}")
    return 0


def add(sub) -> None:
    p = sub.add_parser("tables", help="regenerate the papers' tables, the paper's value beside ours")
    p.add_argument("runs", nargs="*", help="run folders or ids to compare with (default: each suite's latest)")
    p.set_defaults(func=run)
