"""Test-session settings: no network for model hubs, one place for the golden fixtures' location."""

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never reach a model hub; download tests use 127.0.0.1

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).parent / "fixtures"
GOLDEN = FIXTURES / "golden"  # outputs of the original codes, in the repository (its README says where each came from)


@pytest.fixture
def one_thread():
    """One torch thread for the test: tiny FFTs and networks are dominated by thread hand-offs, and on a loaded 2-core
    machine 2 threads ran 8-100x slower (measured). Modules use it with ``pytestmark = pytest.mark.usefixtures``."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
