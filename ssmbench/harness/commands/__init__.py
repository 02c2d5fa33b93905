"""One module per command: each has ``add(subparsers)`` for its options and ``run(args)``."""
from __future__ import annotations

import importlib

COMMANDS = ("list", "compare", "run", "quality", "tables", "report", "gate", "baseline", "export")


def add_all(sub) -> None:
    for name in COMMANDS:
        importlib.import_module(f"{__name__}.{name}").add(sub)
