"""Backend traits as data: a backend module dropped into an op's folder is registered, checked,
timed by the kernels suite and chosen by the claim suites through its traits alone, and the CPU
presets' cases are the ones they were before the traits existed."""
import json
from dataclasses import replace
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest

import ssmbench.impls.selective_scan as scan_package
from ssmbench.harness.execute import execute
from ssmbench.impls import registry
from ssmbench.suites import common, get_suite, kernels, scaling

DATA = Path(__file__).parent / "data"

FUSED_MODULE = '''
from ssmbench.impls.base import Backend
from ssmbench.impls.selective_scan.torch_chunked import selective_scan

BACKEND = Backend(op="selective_scan", name="{name}", impl=f"{{__name__}}:selective_scan", kind="{kind}",
                  has_backward=True, fused={fused}, python_loop={loop}, priority=-50,
                  description="torch_fast under another name")
'''


@pytest.fixture
def op_folder(tmp_path, monkeypatch):
    """A further folder of the selective_scan package: modules written into it are part of the op
    as if they lived in ssmbench/impls/selective_scan/."""
    monkeypatch.setattr(scan_package, "__path__", [*scan_package.__path__, str(tmp_path)])
    registry.backends.cache_clear()
    written = []

    def write(module: str, text: str):
        (tmp_path / f"{module}.py").write_text(textwrap.dedent(text))
        written.append(f"{scan_package.__name__}.{module}")

    yield write
    for name in written:
        sys.modules.pop(name, None)
    registry.backends.cache_clear()


def test_cpu_presets_keep_their_cases():
    # Recorded before backends had traits (and since, as backends were added, and when a preset
    # was redesigned: generation's cpu-small at published widths): a backend added later may add
    # cases (the kernels suite times every backend), and nothing else may change.
    before = json.loads((DATA / "cpu_case_ids.json").read_text())
    for key, recorded in before.items():
        suite, preset = key.split(":")
        cases = get_suite(suite).cases(preset)
        ids = {c.case_id for c in cases}
        assert set(recorded["ids"]) <= ids, key
        added = {c.backend for c in cases if c.case_id not in set(recorded["ids"])}
        assert not added & set(recorded["backends"]), (key, added)


def test_a_new_fused_backend_is_registered_checked_timed_and_selected(op_folder):
    op_folder("new_fused", FUSED_MODULE.format(name="new_fused", kind="torch", fused=True, loop=False))
    assert registry.backends("selective_scan")["new_fused"].fused

    ours = [c for c in get_suite("kernels").cases("cpu-small") if c.backend == "new_fused"]
    assert {c.pass_mode for c in ours} == {"forward", "backward"}
    for case in ours:
        # The suite's case at a tenth of its size: the same path through check and timing, in
        # seconds rather than minutes on a loaded CPU.
        small = replace(case, params={**case.params, "dim": 16, "seqlen": 100}, budget_s=0.05, max_repeats=3)
        [row] = execute(small)
        assert row["status"] == "ok", row["reason"]
        assert row["rel_error"] <= row["tolerance"] and row["median_ms"] > 0

    assert "new_fused" in common.fused("selective_scan")
    for suite in ("scaling", "ssd_speedup"):
        lengths = {c.params["seqlen"] for c in get_suite(suite).cases("gpu") if c.backend == "new_fused"}
        assert max(lengths) == 2**17, suite  # no length bound: the whole sweep
    # The fused-scan verdict compares it with the torch scan like any other fused kernel.
    times = pd.DataFrame([{"op": "selective_scan", "backend": name, "L": 4096, "median_ms": ms, "samples_ms": [ms] * 5}
                          for name, ms in (("torch", 100.0), ("new_fused", 2.0))])
    assert scaling.fused_speedup(SimpleNamespace(times=times))["fused"] == "new_fused"


def test_a_python_loop_backend_is_kept_to_short_lengths(op_folder):
    op_folder("new_loop", FUSED_MODULE.format(name="new_loop", kind="third-party", fused=False, loop=True))
    lengths = {c.params["seqlen"] for c in get_suite("kernels").cases("gpu") if c.backend == "new_loop"}
    assert lengths == {kernels.LOOP_MAX_LEN}
    # Neither fused, nor the best unfused backend, nor ours: the claim suites' GPU presets leave
    # such a peer out.
    for suite in ("scaling", "ssd_speedup"):
        assert not [c for c in get_suite(suite).cases("gpu") if c.backend == "new_loop"], suite


def test_a_module_without_backends_in_an_op_folder_fails_loudly(op_folder):
    op_folder("misspelt", "BACKNED = None\n")
    with pytest.raises(RuntimeError, match=r"misspelt .*defines neither BACKEND nor BACKENDS"):
        registry.backends("selective_scan")


def test_private_helpers_in_an_op_folder_are_not_backends(op_folder):
    op_folder("_helper", "VALUE = 1\n")
    assert "_helper" not in registry.backends("selective_scan")
    assert registry.backends("selective_scan")  # the others are still there
