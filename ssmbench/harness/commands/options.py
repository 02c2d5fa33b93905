"""Argument types and checks shared by the commands: a bad value is refused by argparse, or in
one line before anything runs, never as a traceback."""
from __future__ import annotations

import argparse


def shape(text: str) -> dict[str, str]:
    params = {}
    for item in filter(None, text.split(",")):
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise argparse.ArgumentTypeError(f"expected key=value[,key=value...], got {item!r}")
        params[key.strip()] = value.strip()
    return params


def positive(kind: type):
    """An argparse type that accepts only values of ``kind`` above zero, so a bad size is refused
    before any case runs instead of ending as failed rows."""
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            value = None
        if value is None or not value > 0:  # ``not > 0`` also refuses NaN
            raise argparse.ArgumentTypeError(f"expected a positive {kind.__name__}, got {text!r}")
        return value
    return parse


def require_cuda(what: str) -> None:
    """Refused in one line before a run folder exists, not as a traceback from inside torch."""
    import torch

    if not torch.cuda.is_available():
        build = "a CPU-only build" if torch.version.cuda is None else f"built for CUDA {torch.version.cuda}"
        raise ValueError(f"{what} runs on a CUDA GPU, and torch {torch.__version__} ({build}) sees none here")


def names(text: str, option: str, known) -> set[str]:
    """The comma-separated names of ``option``, each checked against ``known``."""
    names = {n.strip() for n in text.split(",") if n.strip()}
    unknown = sorted(names - set(known))
    if unknown:
        raise ValueError(f"{option}: unknown {', '.join(unknown)}; expected some of: {', '.join(sorted(known))}")
    return names
