"""The ``ssmbench`` command line."""
from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path

from .commands import add_all


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ssmbench", description=__doc__)
    parser.add_argument("--results-dir", type=Path, default=None,
                        help="where runs are stored (default: $SSMBENCH_RESULTS or ./results)")
    parser.add_argument("--reports-dir", type=Path, default=Path("reports"), help="where reports are written")
    parser.add_argument("--thp", choices=["on", "off"],
                        help="torch's CPU allocator on transparent huge pages (THP_MEM_ALLOC_ENABLE) in the "
                             "workers; recorded in the environment fingerprint. Default: as the environment says")
    sub = parser.add_subparsers(dest="command", required=True)
    add_all(sub)
    return parser


def _interrupt(signum, frame):
    raise KeyboardInterrupt(signal.Signals(signum).name)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # SIGTERM (a scheduler's stop, `timeout`, `kill`) ends a run as Ctrl-C does: the worker is
    # stopped, finished cases stay stored. It also reaches a job started with SIGINT ignored.
    signal.signal(signal.SIGTERM, _interrupt)
    if args.thp:
        # Read by the allocator when a worker process starts, and by the environment record.
        os.environ["THP_MEM_ALLOC_ENABLE"] = "1" if args.thp == "on" else "0"
    from ..impls.base import BackendError

    try:
        return args.func(args)
    except (ValueError, BackendError) as exc:  # ResultsError and GateRefused are ValueErrors
        print(f"ssmbench {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; finished cases are stored; finish with: ssmbench run --resume latest",
              file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
