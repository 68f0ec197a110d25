"""Shared fixtures of the test suite."""
import os

import pytest
import torch


def pytest_configure(config: pytest.Config) -> None:
    # Under pytest-xdist (make test runs `-n 2`) the workers share the machine's cores: one
    # intra-op thread pool each of the full size would oversubscribe them. Tests that measure
    # threading set their own counts.
    workers = int(os.environ.get('PYTEST_XDIST_WORKER_COUNT', '0'))
    if workers > 1:
        threads = max(1, (os.cpu_count() or 1) // workers)
        torch.set_num_threads(threads)
        os.environ.setdefault('OMP_NUM_THREADS', str(threads))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
