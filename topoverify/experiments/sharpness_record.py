"""T8 along a run: the sharpness measured at each pre-step state next to its edge of stability (used by
:func:`topoverify.experiments.rate_sweep.sweep`; claim T8 in ``spec/claims.toml``).

* :func:`stability_edge`: which quantity the optimizer's edge is stated for and its value from
  :mod:`topoverify.symbolic.stability` — SGD (momentum μ, dampening τ): lr·λ_max(H) < 2(1 + μ)/(1 − τ);
  Adam/AdamW: lr·λ_max(P⁻¹H) < (2 + 2β₁)/(1 − β₁). Other rules (and Nesterov SGD, not derived) have none.
* :class:`SharpnessRecorder`: λ_max(H) and, for Adam, λ_max(P⁻¹H), each warm-started from the previous
  step's Ritz vector with a small Lanczos budget (estimates; the relative residual is recorded).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from topoverify.errors import NonFiniteError, TopoverifyError
from topoverify.measure.hessian import HessianOperator, hessian_lambda_max, preconditioned_sharpness
from topoverify.symbolic.stability import adam_edge_numeric, momentum_edge_numeric

__all__ = ["HESSIAN", "PRECONDITIONED", "stability_edge", "StepSharpness", "SharpnessRecorder"]

HESSIAN = "lr*lambda_max(H)"
PRECONDITIONED = "lr*lambda_max(P^-1 H)"


def stability_edge(optimizer: torch.optim.Optimizer) -> tuple[str, float | None, str]:
    """(quantity, edge, reason): the T8 edge of ``optimizer`` on a quadratic, or (\"\", None, why not)."""
    groups = optimizer.param_groups
    if isinstance(optimizer, (torch.optim.Adam, torch.optim.AdamW)):
        b1 = {float(g["betas"][0]) for g in groups}
        if len(b1) > 1:
            return "", None, f"param groups differ in beta1 {sorted(b1)}: no single edge"
        return PRECONDITIONED, adam_edge_numeric(b1.pop()), ""
    if type(optimizer) is torch.optim.SGD:
        hyper = {(float(g["lr"]), float(g.get("momentum", 0.0)),
                  float(g.get("dampening", 0.0)) if g.get("momentum", 0.0) else 0.0, bool(g.get("nesterov")))
                 for g in groups}
        if len(hyper) > 1:
            return "", None, f"param groups differ in (lr, momentum, dampening, nesterov) {sorted(hyper)}"
        _, mu, tau, nesterov = hyper.pop()
        if nesterov:
            return "", None, "no edge derived for Nesterov momentum (topoverify.symbolic.stability)"
        try:
            return HESSIAN, momentum_edge_numeric(mu, tau), ""
        except TopoverifyError as exc:
            return "", None, str(exc)
    return "", None, f"no edge of stability derived for {type(optimizer).__name__}"


@dataclass(frozen=True)
class StepSharpness:
    """One pre-step measurement: λ_max(H), λ_max(P⁻¹H) (Adam), the edge and the relative residual of the
    quantity held against it (None where not measured)."""

    lambda_max: float | None
    precond: float | None
    edge: float | None
    residual: float | None
    seconds: float


def _finite(x: float) -> float | None:
    return x if math.isfinite(x) else None


class SharpnessRecorder:
    """Measures T8's sharpness at each pre-step state of one run, warm-starting each Lanczos run from the
    previous step's Ritz vector. Reads model and optimizer only (the Hessian runs on a private copy)."""

    def __init__(self, loss_fn: Callable, iters: int = 20, tol: float = 1e-3, seed: int = 0):
        self.loss_fn, self.iters, self.tol, self.seed = loss_fn, iters, tol, seed
        self._v = self._pv = None
        self.reason = ""  # the first reason a quantity was not measured, with its step
        self._step = 0
        self.kind = ""  # the quantity held against the edge (HESSIAN or PRECONDITIONED)

    def _note(self, why: str) -> None:
        if why and not self.reason:
            self.reason = f"step {self._step}: {why}"

    def measure(self, model: nn.Module, optimizer: torch.optim.Optimizer, batch) -> StepSharpness:
        """λ_max(H) (and λ_max(P⁻¹H) for Adam) at the current pre-step state; call once per step, in order."""
        t0 = time.perf_counter()
        kind, edge, why = stability_edge(optimizer)
        self._note(why)
        self.kind = self.kind or kind
        lam = pre = resid = None
        try:
            op = HessianOperator(model, self.loss_fn, batch)
            est = hessian_lambda_max(model, self.loss_fn, batch, iters=self.iters, tol=self.tol, v0=self._v,
                                     seed=self.seed, operator=op)
            self._v, lam = est.vector, _finite(est.eigenvalue)
            if kind == HESSIAN:
                resid = est.relative_residual
            if kind == PRECONDITIONED:
                pest = preconditioned_sharpness(model, self.loss_fn, batch, optimizer, iters=self.iters,
                                                tol=self.tol, v0=self._pv, seed=self.seed, operator=op)
                if pest is None:
                    self._note("no Adam step taken yet (v_hat = v/(1 - beta2^t) undefined at t = 0)")
                else:
                    self._pv, pre, resid = pest.vector, _finite(pest.eigenvalue), pest.relative_residual
        except (NonFiniteError, RuntimeError) as exc:  # a diverging state: recorded as not measured
            self._note(f"sharpness not measured: {type(exc).__name__}: {exc}")
        self._step += 1
        return StepSharpness(lam, pre, edge, None if resid is None else _finite(resid),
                             time.perf_counter() - t0)
