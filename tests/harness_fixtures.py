"""Custom-case functions the runner's worker process imports by name (tests only)."""
import os
import signal
import time


def sleep(seconds: float, tag: int = 0) -> dict:
    time.sleep(seconds)
    return {"slept_s": seconds}


def crash(tag: int = 0) -> dict:
    os.kill(os.getpid(), signal.SIGSEGV)
    return {}


def raise_error(tag: int = 0) -> dict:
    raise RuntimeError("planted failure")
