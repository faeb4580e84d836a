"""Top Hessian eigenvalue of the loss by power iteration on Hessian-vector products (double backward).

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

from topoverify.formatting import ResultMixin, fmt


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
    """Power iteration v ← Hv/‖Hv‖ with H the Hessian of ``loss_fn`` w.r.t. ``params`` (all if None).

    Hessian-vector products come from double backward through one retained graph of ``loss_fn`` run on a
    private deep copy of the model (so a forward pass with side effects, such as a call counter or
    BatchNorm statistics, touches only the copy and is run once)."""
    private = copy.deepcopy(model)
    named = dict(private.named_parameters())
    chosen = list(named) if params is None else list(params)
    missing = [n for n in chosen if n not in named]
    if missing:
        raise KeyError(f"no parameters {missing} in the model")
    for n, p in named.items():
        p.requires_grad_(n in chosen)
    primal = [named[n] for n in chosen]
    loss = loss_fn(private, batch)
    grads = torch.autograd.grad(loss, primal, create_graph=True, allow_unused=True)
    grads = [torch.zeros_like(p) if g is None else g for g, p in zip(grads, primal)]
    differentiable = [g.requires_grad for g in grads]
    gen = torch.Generator().manual_seed(seed)
    v = [torch.randn(p.shape, generator=gen, dtype=p.dtype).to(p.device) for p in primal]
    v = _normalize(v)
    norm, rayleigh, it, converged = 0.0, 0.0, 0, False
    for it in range(1, iters + 1):
        hv = _hvp(grads, primal, v, differentiable)
        new_norm = float(torch.sqrt(sum((t * t).sum() for t in hv)))
        rayleigh = float(sum((a * b).sum() for a, b in zip(v, hv)))
        converged = abs(new_norm - norm) <= tol * max(new_norm, 1e-300)
        norm = max(norm, new_norm)
        if new_norm == 0.0:
            converged = True
            break
        v = [t / new_norm for t in hv]
        if converged:
            break
    return HessianEstimate(norm, rayleigh, it, converged, tuple(chosen))


def _hvp(grads, primal, v, differentiable):
    outs = [g for g, d in zip(grads, differentiable) if d]
    if not outs:
        return [torch.zeros_like(p) for p in primal]
    vs = [t for t, d in zip(v, differentiable) if d]
    hv = torch.autograd.grad(outs, primal, grad_outputs=vs, retain_graph=True, allow_unused=True)
    return [torch.zeros_like(p) if h is None else h.detach() for h, p in zip(hv, primal)]


def _normalize(v: list) -> list:
    total = torch.sqrt(sum((t * t).sum() for t in v))
    return [t / total for t in v]


__all__ = ["HessianEstimate", "top_hessian_eigenvalue"]
