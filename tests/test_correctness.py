"""Every backend of every op against the float64 reference, on the op's test problems."""
import pytest
import torch

from ssmbench.harness.check import check
from ssmbench.impls import OP_NAMES, backends, get_op, reasons

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
DTYPES = ["float32", "bfloat16"]


def cases():
    for op_name in OP_NAMES:
        try:
            op = get_op(op_name)
        except ModuleNotFoundError:
            continue
        for backend in backends(op_name).values():
            if backend.kind == "reference":
                continue
            for device in DEVICES:
                for dtype in DTYPES:
                    for i, problem in enumerate(op.test_problems()):
                        yield pytest.param(backend, problem.replace(device=device, dtype=dtype),
                                           id=f"{op_name}-{backend.name}-{device}-{dtype}-{i}")


@pytest.mark.parametrize("backend,problem", list(cases()))
def test_backend_matches_reference(backend, problem):
    status, why = reasons(backend, problem)
    if status != "ok":
        pytest.skip(f"{backend.name} {status}: {'; '.join(why)}")
    for seed in (0, 1):
        result = check(backend, problem, seed=seed)
        assert result.passed, f"{backend.op}/{backend.name} seed {seed}: {result.describe()}"
