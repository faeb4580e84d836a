"""A user's own model and data for ``topoverify report --config examples/report_config.toml``.

The config names these callables as ``report_user_model:make_model`` and ``report_user_model:make_data``;
``topoverify report`` puts the config file's directory (here examples/) on ``sys.path``, so this file imports
as ``report_user_model`` from any working directory.

* :func:`make_model`: ``Linear(2, width) -> tanh -> Linear(width, 1)`` in float64 (topoverify's predictions
  need full precision); its hidden layer is detected automatically as the neuron layer ``"0"``.
* :func:`make_data`: a synthetic regression task y = sin(x1) cos(2 x2) + noise on Gaussian inputs, one full
  batch (topoverify passes the run's ``seed``).
* :func:`no_layer_model`: a model without a detectable neuron layer (a single Linear), to see how the report
  records a section that cannot run.
"""

from __future__ import annotations

import torch
from torch import nn


def make_model(width: int = 32, d_in: int = 2) -> nn.Module:
    """A two-layer tanh MLP; the initialisation follows torch's global seed (set by topoverify per seed)."""
    return nn.Sequential(nn.Linear(d_in, width), nn.Tanh(), nn.Linear(width, 1)).double()


def make_data(n: int = 256, noise: float = 0.05, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(x, y): ``n`` Gaussian points in R^2 and y = sin(x1) cos(2 x2) + noise."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 2, generator=gen, dtype=torch.float64)
    y = torch.sin(x[:, :1]) * torch.cos(2 * x[:, 1:]) + noise * torch.randn(n, 1, generator=gen,
                                                                               dtype=torch.float64)
    return x, y


def no_layer_model(d_in: int = 2) -> nn.Module:
    """A single linear map: no permutation-symmetric hidden layer to track."""
    return nn.Sequential(nn.Linear(d_in, 1)).double()
