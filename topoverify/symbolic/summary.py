"""All of T2–T5 evaluated for one ``(K, lr, steps)``: :func:`bound_summary` (the body of ``topoverify bounds``).

Every number comes from the lambdified forms of :mod:`topoverify.symbolic.bounds`.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np

from topoverify.errors import TopoverifyError
from topoverify.formatting import ResultMixin, fmt
from topoverify.symbolic.bounds import (
    K_FIX,
    LR_FIX,
    bounds_numeric,
    epsilon_numeric,
    eta_star_numeric,
    multistep_bounds_numeric,
)

__all__ = ["BoundSummary", "bound_summary"]


@dataclasses.dataclass(frozen=True)
class BoundSummary(ResultMixin):
    """What the theory predicts for a step rule with constant ``K`` and learning rate ``lr``.

    ``multistep_*`` assume the same K at every step (a what-if; T4 proper uses each step's own K_t).
    ``survival_threshold = 2*epsilon`` is the log-persistence above which a feature of the neuron cloud's
    Vietoris–Rips diagram survives the step (T5). Both lower bounds are in their sharp form max(0, ·):
    distances are ≥ 0, so with lr*K ≥ 1 the lower bound is 0 (``one_step_clipped``); the upper bounds hold
    at every rate (triangle inequality).
    """

    K: float
    lr: float
    steps: int
    lr_times_K: float
    eta_star: float
    phase: str
    one_step_lower: float
    one_step_upper: float
    one_step_clipped: bool
    multistep_lower: float
    multistep_upper: float
    multistep_clipped: bool
    epsilon: float
    survival_threshold: float

    def __str__(self) -> str:
        lines = [
            f"K = {fmt(self.K)}, lr = {fmt(self.lr)}, steps = {self.steps}",
            f"  lr*K                     = {fmt(self.lr_times_K)}",
            f"  eta* = 1/K               = {fmt(self.eta_star)}",
            f"  phase                    = {self.phase}"
            + ("  (lr < eta*: every step is bi-Lipschitz on the cloud)" if self.phase == "preserving"
               else "  (lr >= eta*: folding / merging of neurons is possible, not certain)"),
            f"  one-step ratio bounds    = [{fmt(self.one_step_lower)}, {fmt(self.one_step_upper)}]"
            + ("  (lower clipped at 0: lr*K >= 1)" if self.one_step_clipped else ""),
            f"  {f'{self.steps}-step ratio bounds':<25}"
            + f"= [{fmt(self.multistep_lower)}, {fmt(self.multistep_upper)}]  (constant K and lr"
            + ("; lower clipped at 0)" if self.multistep_clipped else ")"),
            f"  epsilon = -log(1 - lr*K) = {fmt(self.epsilon)}  (log-scale bottleneck bound per step)",
            f"  survival threshold 2eps  = {fmt(self.survival_threshold)}  (log-persistence that surely survives)",
        ]
        return "\n".join(lines)


def _validate_scalar(name: str, value: Any, *, minimum: float, strict: bool, fix: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TopoverifyError(f"{name} must be a real number (got {value!r}); {fix}")
    v = float(value)
    if math.isnan(v):
        raise TopoverifyError(f"{name} is NaN; {fix}")
    if (strict and v <= minimum) or (not strict and v < minimum):
        raise TopoverifyError(f"{name} must be {'>' if strict else '>='} {minimum:g} (got {v:g}); {fix}")
    return v


def bound_summary(K: float, lr: float, steps: int = 1) -> BoundSummary:  # noqa: N803
    """Evaluate T2–T5 for one ``(K, lr, steps)``; bad input raises :class:`TopoverifyError` naming the fix."""
    k = _validate_scalar("K", K, minimum=0.0, strict=False, fix=K_FIX)
    l = _validate_scalar("lr", lr, minimum=0.0, strict=True, fix=LR_FIX)
    if math.isinf(l):
        raise TopoverifyError(f"lr must be finite (got {l}); {LR_FIX}")
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 1:
        raise TopoverifyError(f"steps must be an integer >= 1 (got {steps!r}); pass the number of steps T")
    steps = int(steps)
    x = k * l
    lo, hi = bounds_numeric(k, l)
    multi = multistep_bounds_numeric(np.full(steps, k), np.full(steps, l))
    eps = epsilon_numeric(k, l)
    return BoundSummary(
        K=k,
        lr=l,
        steps=steps,
        lr_times_K=x,
        eta_star=eta_star_numeric(k),
        phase="preserving" if x < 1 else "breakdown-possible",
        one_step_lower=max(0.0, lo),
        one_step_upper=hi,
        one_step_clipped=lo <= 0,
        multistep_lower=multi.lower,
        multistep_upper=multi.upper,
        multistep_clipped=multi.clipped,
        epsilon=eps,
        survival_threshold=2 * eps,
    )
