"""The simplification scenario: one set-up whose SGD runs show both phases of the paper (claims T3, T4, T5).

Set-up: the circle scenario (:mod:`topoverify.experiments.scenarios`) with fewer neurons and smaller output
weights: a tanh MLP 1 → ``n`` → 1 (float64, n = 32) whose neurons θ_i = (w_i, b_i, a_i) have (w_i, b_i) on
the unit circle and a_i = ``a`` = 0.3; sin(2x) on ``n_data`` = 200 points of [−2, 2]; full-batch GD (plain
SGD) on the MSE. Initial cloud: a circle in R^3, (β0, β1) = (1, 1), certain under the "log2" rule.

``seed`` (0: the evenly spaced circle) perturbs the initial neurons: each angle φ_i by a uniform jitter of
±``jitter`` × the spacing 2π/n, each radius by a factor 1 + U(−``jitter``/4, ``jitter``/4), from
``numpy.random.default_rng(seed)``; the data are the same for every seed.

Mechanism observed (150 steps; η* = 1/K ≈ 2 at θ_0; GD's edge 2/λ_max ≈ 0.114 at θ_0):

* ``preserve`` (lr = 0.05): plain descent, loss 0.44 → 0.019; certified lr·K_upper <= 0.086 at every step;
  β = (1, 1) and 32 distinct neurons kept (the loop's log-persistence shrinks from ≈ 1.9 to ≈ 1.2, above
  log 2).
* ``simplify`` (lr = 0.13, past the edge of stability): a catapult: the loss rises to 11–41 within 18–90
  steps, then falls to 0.007–0.03 (<= 0.07 × the initial loss). During the spike the certified
  lr·K_upper reaches 1.3–3.5 (the estimate lr·K 0.8–2.2), and the circle flattens: β1 dies (certainly; final
  log-persistence 0.06–0.5 < log 2) at recorded step 40–90, after the first step with lr·K_upper >= 1. The
  estimate lr·K reached 1 in 2 of 10 seeds only: the loop dies over the many catapult steps with lr·K
  ≈ 0.5–1, i.e. by the accumulated distortion T4/T5 allow (Σ ε ≈ 15–22 before the change), not by one
  non-injective step; T3's checker holds on every seed. No neurons merge (distinct stays 32); β0 ends 1 or 2.

Robustness (SIMPLIFICATION_SEEDS_MEASURED): without the per-step prediction, seeds 0–29 at 150 steps:
preserve 30/30 kept (0–29 at 200 steps as well), simplify 30/30 certain β1 change with convergence, none
diverged. The window is narrow: lr = 0.12 simplified in 6 of 20 seeds, 0.125 in 25 of 30 (200 steps), 0.135
diverged in 1 of 10 (300 steps), >= 0.14 diverges.
"""

from __future__ import annotations


import numpy as np
import torch

from topoverify.errors import TopoverifyError
from topoverify.experiments.scenarios import Scenario, _sin_data, jittered_unit_circle, mse_loss, two_layer_mlp

__all__ = ["simplification_scenario", "simplification_cloud", "SIMPLIFICATION_RATES", "SIMPLIFICATION_STEPS",
           "SIMPLIFICATION_SEEDS_MEASURED"]

#: SGD rates: "preserve" keeps the topology with lr·K_upper < 1 at every step; "simplify" passes through a
#: catapult (loss spike, lr·K_upper >= 1 for a few steps) and ends with β1 = 0 while the loss converges.
SIMPLIFICATION_RATES: dict[str, float] = {"preserve": 0.05, "simplify": 0.13}

#: Steps per run at which the rates above were measured.
SIMPLIFICATION_STEPS: int = 150

#: Robustness measured on this scenario (module docstring): seeds, and how many of them showed the phase.
SIMPLIFICATION_SEEDS_MEASURED: dict[str, object] = {
    "steps": 150, "seeds": tuple(range(30)), "preserve_kept": 30, "simplify_changed_and_converged": 30,
    "with_lr_K_every_step": {"seeds": tuple(range(10)), "preserve_lrK_upper_below_1": 10,
                             "lrK_upper_reached_1_before_change": 10, "lrK_estimate_reached_1": 2}}


def simplification_cloud(n: int = 32, a: float = 0.3, seed: int = 0, jitter: float = 0.2) -> np.ndarray:
    """The (n, 3) initial neurons (w_i, b_i, a_i): the unit circle, perturbed by ``seed`` (module docstring)."""
    if not isinstance(n, int) or n < 8:
        raise TopoverifyError(f"n must be an integer >= 8 (neurons on the circle); got {n!r}.")
    pts = jittered_unit_circle(n, seed, jitter)
    return np.concatenate([pts, np.full((n, 1), float(a))], axis=1)


def simplification_scenario(seed: int = 0, *, n: int = 32, a: float = 0.3, n_data: int = 200,
                            jitter: float = 0.2, dtype: torch.dtype = torch.float64) -> Scenario:
    """The simplification scenario (module docstring); ``seed`` perturbs the initial circle."""
    cloud = simplification_cloud(n=n, a=a, seed=seed, jitter=jitter)
    return Scenario(
        name="simplification",
        make_model=lambda: two_layer_mlp(cloud, 1, 1, "tanh", True, dtype),
        batch=_sin_data(n_data, dtype), loss_fn=mse_loss,
        description=f"2-layer tanh MLP, {n} neurons with (w, b) on the unit circle (seed {seed}: jitter "
                    f"{jitter if seed else 0:g}) and a = {a}; sin(2x) on {n_data} points of [-2, 2]; "
                    "full-batch GD, MSE; SGD at lr = "
                    f"{SIMPLIFICATION_RATES['preserve']:g} keeps the circle; at "
                    f"{SIMPLIFICATION_RATES['simplify']:g} a catapult kills beta1 while the loss converges",
        expected_betti=(1, 1),
        reseed=lambda s: simplification_scenario(s, n=n, a=a, n_data=n_data, jitter=jitter, dtype=dtype))
