"""Shared fixtures for detector tests; registers the ``gpu`` marker."""

from __future__ import annotations

import numpy as np
import pytest


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "gpu: needs cupy and a CUDA GPU (skipped without cupy)")


def make_series(n: int = 1500, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Daily-seasonal noisy series at 5-minute steps with a spike and a level shift."""
    rng = np.random.default_rng(seed)
    t = 1.4e9 + 300.0 * np.arange(n)
    v = 50 + 10 * np.sin(2 * np.pi * t / 86400.0) + rng.normal(0, 1, n)
    v[n // 2] += 25.0
    v[int(n * 0.8) :] += 15.0
    return v, t


@pytest.fixture
def series() -> tuple[np.ndarray, np.ndarray]:
    return make_series()
