import os

import pytest
import torch

CUDA = torch.cuda.is_available()


def pytest_report_header(config):
    return (f"torch {torch.__version__}, threads {torch.get_num_threads()}, cuda {CUDA}, "
            f"TRITON_INTERPRET={os.environ.get('TRITON_INTERPRET', '0')}")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
