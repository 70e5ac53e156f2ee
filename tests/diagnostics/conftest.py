"""What the tests that train tiny runs share."""

import pytest
import torch


@pytest.fixture()
def one_torch_thread():
    """Torch on one thread for the test (tiny models: the fastest on a busy machine), then back."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
