"""Deep copies of a model together with its optimizer, so the kit never touches the caller's objects."""

from __future__ import annotations

import copy

import torch
from torch import nn


def clone(model: nn.Module, optimizer: torch.optim.Optimizer | None = None):
    """Deep-copy ``model`` (and ``optimizer`` bound to the copied parameters, state included).

    ``Optimizer.__getstate__`` keeps only defaults, state and param groups; attributes an optimizer sets in
    ``__init__`` (LBFGS's ``_params``, caches of third-party rules) are copied too, through the same memo so
    that they refer to the copied parameters.
    """
    memo: dict = {}
    new_model = copy.deepcopy(model, memo)
    if optimizer is None:
        return new_model
    new_opt = copy.deepcopy(optimizer, memo)
    for key, value in optimizer.__dict__.items():
        if key not in new_opt.__dict__:
            new_opt.__dict__[key] = copy.deepcopy(value, memo)
    return new_model, new_opt
