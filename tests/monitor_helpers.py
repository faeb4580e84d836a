"""A small regression model and loss shared by the monitor tests (tests/components/test_monitor.py,
tests/claims/test_monitor_bound.py)."""

from __future__ import annotations

import torch
from torch import nn


def small_regression(seed: int = 0, n: int = 16, batch: int = 32):
    """Linear(3, n) → tanh → Linear(n, 2) in float64 and one batch (x, y) of Gaussian data."""
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(3, n), nn.Tanh(), nn.Linear(n, 2)).double()
    x = torch.randn(batch, 3, dtype=torch.float64)
    y = torch.randn(batch, 2, dtype=torch.float64)
    return model, (x, y)


def mse(m, b):
    """Mean squared error of ``m`` on ``b = (x, y)``."""
    return ((m(b[0]) - b[1]) ** 2).mean()
