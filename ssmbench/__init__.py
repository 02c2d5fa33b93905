"""ssmbench: benchmarks and reproducibility for selective state-space models."""
from .api import attention, causal_conv1d, causal_conv1d_update, selective_scan, selective_state_update, ssd
from .impls.registry import last_auto_choice

__version__ = "0.1.0"

__all__ = [
    "attention", "causal_conv1d", "causal_conv1d_update", "selective_scan", "selective_state_update",
    "ssd", "last_auto_choice", "load_runs",
]


def load_runs(*paths, **kwargs):
    """Rows of one or more stored runs as one pandas DataFrame (see ``harness.store``)."""
    from .harness.store import load_runs as _load

    return _load(*paths, **kwargs)
