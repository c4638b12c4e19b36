"""Fixtures shared across the test folders."""
import random

import numpy as np
import pytest
import torch


@pytest.fixture(autouse=True)
def seeded():
    """Every test starts from the same random state, whatever ran before it: its random inputs, and the numbers
    computed from them, are the same on every run and in any selection of tests."""
    torch.manual_seed(0)
    np.random.seed(0)
    random.seed(0)


@pytest.fixture
def one_thread():
    # Tests of many tiny passes: on a shared 2-core machine a second torch thread only waits on the other jobs
    # (measured: 3.6 s with one thread, about 50 s with two under load).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
