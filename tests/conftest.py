import os

import torch

CUDA = torch.cuda.is_available()

# Without a GPU, the Triton kernels are tested interpreted on the CPU, as part of the normal run.
# The variable must be set before any kernel is decorated, i.e. before ssmbench's Triton modules
# are imported; conftest runs before collection. SSMBENCH_TEST_NO_TRITON=1 leaves it unset.
if not CUDA and os.environ.get("SSMBENCH_TEST_NO_TRITON") != "1":
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402


def pytest_report_header(config):
    return (f"torch {torch.__version__}, threads {torch.get_num_threads()}, cuda {CUDA}, "
            f"TRITON_INTERPRET={os.environ.get('TRITON_INTERPRET', '0')}")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
