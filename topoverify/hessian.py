"""Top Hessian eigenvalue of the loss by power iteration on Hessian-vector products (torch.func).

These are the paper's coarser constants: λ_max of the full Hessian, and of the Hessian restricted to one
neuron layer's parameters (a principal submatrix, so ‖H_layer‖ ≤ ‖H‖ by Cauchy interlacing). Both bound the
Lipschitz constant of the whole gradient map, which includes the collective modes that move all neurons
together and change no pairwise distance; the field constant K of T1–T3 is typically far smaller (T8 note).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.func import functional_call, grad, jvp

from ._results import ResultMixin, fmt


class _LossModule(nn.Module):
    """Wraps ``loss_fn(model, batch)`` as a module so torch.func can substitute the parameters."""

    def __init__(self, model: nn.Module, loss_fn: Callable):
        super().__init__()
        self.model = model
        self.loss_fn = loss_fn

    def forward(self, batch):
        return self.loss_fn(self.model, batch)


@dataclass(frozen=True)
class HessianEstimate(ResultMixin):
    """Largest-magnitude Hessian eigenvalue found by power iteration (a lower bound on ‖H‖_op)."""

    norm: float          # ‖Hv‖ for the final unit v: a lower bound on the spectral norm
    eigenvalue: float    # Rayleigh quotient vᵀHv (signed; ≈ ±norm at convergence)
    iterations: int
    converged: bool
    params: tuple[str, ...]

    def __str__(self) -> str:
        return (f"|λ|max ≈ {fmt(self.norm)} (Rayleigh {fmt(self.eigenvalue)}, {self.iterations} iterations"
                f"{'' if self.converged else ', not converged'}) over {len(self.params)} parameter tensors")


@torch.enable_grad()
def top_hessian_eigenvalue(model: nn.Module, loss_fn: Callable, batch, params: Sequence[str] | None = None,
                           iters: int = 50, tol: float = 1e-4, seed: int = 0) -> HessianEstimate:
    """Power iteration v ← Hv/‖Hv‖ with H the Hessian of ``loss_fn`` w.r.t. ``params`` (all if None)."""
    wrapper = _LossModule(copy.deepcopy(model), loss_fn)
    named = {f"model.{n}": p.detach() for n, p in wrapper.model.named_parameters()}
    chosen = [f"model.{n}" for n in params] if params is not None else list(named)
    fixed = {n: p for n, p in named.items() if n not in chosen}

    def loss_of(free):
        return functional_call(wrapper, {**fixed, **free}, (batch,))

    primal = {n: named[n] for n in chosen}
    gen = torch.Generator().manual_seed(seed)
    v = {n: torch.randn(p.shape, generator=gen, dtype=p.dtype).to(p.device) for n, p in primal.items()}
    v = _normalize(v)
    norm, rayleigh, it, converged = 0.0, 0.0, 0, False
    for it in range(1, iters + 1):
        _, hv = jvp(grad(loss_of), (primal,), (v,))
        new_norm = float(torch.sqrt(sum((t * t).sum() for t in hv.values())))
        rayleigh = float(sum((a * b).sum() for a, b in zip(v.values(), hv.values())))
        converged = abs(new_norm - norm) <= tol * max(new_norm, 1e-300)
        norm = max(norm, new_norm)
        if new_norm == 0.0:
            converged = True
            break
        v = {n: t / new_norm for n, t in hv.items()}
        if converged:
            break
    return HessianEstimate(norm, rayleigh, it, converged, tuple(n[len("model."):] for n in chosen))


def _normalize(v: dict) -> dict:
    total = torch.sqrt(sum((t * t).sum() for t in v.values()))
    return {n: t / total for n, t in v.items()}


__all__ = ["HessianEstimate", "top_hessian_eigenvalue"]
