"""Validation of a user's ``loss_fn(model, batch)`` result, shared by every entry point."""

from __future__ import annotations

import torch

from topoverify.errors import NonFiniteError, TopoverifyError


def check_loss(loss, *, where: str = "", step: int | None = None) -> torch.Tensor:
    """Return ``loss`` if it is a finite scalar tensor that depends on the parameters; else raise a clear
    :class:`TopoverifyError` (:class:`NonFiniteError` for NaN/Inf, e.g. a diverging rate or a NaN batch)."""
    at = "" if step is None else f" at step {step}"
    ctx = f" ({where})" if where else ""
    if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
        shape = tuple(loss.shape) if isinstance(loss, torch.Tensor) else ""
        raise TopoverifyError(f"loss_fn(model, batch) must return a scalar tensor, got "
                              f"{type(loss).__name__}{shape}{ctx}. Reduce it, e.g. with .mean().")
    if not torch.isfinite(loss.detach()).all():
        raise NonFiniteError(f"the loss is {float(loss.detach())}{at}{ctx}: the batch contains NaN/Inf or is "
                             f"empty, or training has diverged (e.g. the learning rate is far above η*). Check the "
                             f"batch or lower the rate, or treat the divergence as the finding.")
    if not loss.requires_grad:
        raise TopoverifyError(f"the loss returned by loss_fn does not depend on the model's parameters{ctx} "
                              f"(it is detached or computed under torch.no_grad()); return the differentiable "
                              f"loss tensor.")
    return loss
