import pytest
import torch


@pytest.fixture
def one_thread():
    """Tiny tensors gain nothing from threads, and on a shared machine threads only contend."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
