"""Fixtures for the attribution tests."""
import pytest
import torch


@pytest.fixture(autouse=True)
def every_test_on_one_thread(one_thread):  # tests/conftest.py: many tiny passes, one torch thread
    yield


@pytest.fixture
def image():
    return torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(1))
