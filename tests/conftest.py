import os

import pytest
import torch
from hypothesis import settings

# Hypothesis profiles: "ci" (the default) is derandomised, so every run and every machine tries the same
# examples; "explore" (nightly-style: HYPOTHESIS_PROFILE=explore) draws fresh random examples, more of
# them. Tests that set their own max_examples keep that number under "ci".
settings.register_profile("ci", derandomize=True, max_examples=30, deadline=None, print_blob=True)
settings.register_profile("explore", derandomize=False, max_examples=300, deadline=None, print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture
def one_thread():
    """Tiny tensors gain nothing from threads, and on a shared machine threads only contend."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
