"""ssmbench report: the report of one or more runs."""
from __future__ import annotations


def run(args) -> int:
    from ..report import write_report

    print(write_report(args.runs or ["latest"], results_dir=args.results_dir, out_dir=args.reports_dir))
    return 0


def add(sub) -> None:
    p = sub.add_parser("report", help="write the report of one or more runs")
    p.add_argument("runs", nargs="*", help="run folders or ids; 'latest' (the default): every run of the latest "
                                           "`ssmbench run` command (one per suite)")
    p.set_defaults(func=run)
