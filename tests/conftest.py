"""Fixtures shared across the test folders."""
import pytest
import torch


@pytest.fixture
def one_thread():
    # Tests of many tiny passes: on a shared 2-core machine a second torch thread only waits on the other jobs
    # (measured: 3.6 s with one thread, about 50 s with two under load).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
