"""Test-session settings: no network for model hubs, one place for the shared fixtures' location."""

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never reach a model hub; download tests use 127.0.0.1

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("DIRACTRAP_SHARED", ROOT.parent / "shared"))  # CI puts shared/ beside the checkout
GOLDEN = SHARED / "golden"
FIXTURES = Path(__file__).parent / "fixtures"


def shared_file(*parts) -> Path:
    """A file under ../shared, or skip the test with a message naming the missing path."""
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"shared fixture {path} is not present (it ships beside the CI checkout, not in the repository)")
    return path


@pytest.fixture
def one_thread():
    """One torch thread for the test: tiny FFTs and networks are dominated by thread hand-offs, and on a loaded 2-core
    machine 2 threads ran 8-100x slower (measured). Modules use it with ``pytestmark = pytest.mark.usefixtures``."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
