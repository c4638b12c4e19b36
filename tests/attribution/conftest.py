"""Fixtures for the attribution tests."""
import pytest
import torch


@pytest.fixture(autouse=True)
def one_thread():
    # These tests run many tiny passes; on a shared 2-core machine a second torch thread only waits on the other
    # jobs (measured: 3.6 s with one thread, about 50 s with two under load).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def image():
    return torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(1))
