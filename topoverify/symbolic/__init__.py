"""Symbolic (sympy) forms of the claims and the numeric functions lambdified from them.

The names listed under ``sympy =`` in ``spec/claims.toml`` are attributes of this package:

* T1 ``field_identity_residuals`` (and ``transposition_identity_residuals``)
* T2 ``one_step_bounds``
* T3 ``solve_eta_star`` (``ETA_STAR`` is its result, 1/K)
* T4 ``multistep_bounds`` (``compose_one_step``, ``constant_rate_multistep_bounds``)
* T5 ``interleaving_epsilon`` (``EPSILON = -log(1 - eta*K)``)
* T6 ``absorbing_symmetry_residuals``
* T7 ``additive_step_bounds`` (``ADDITIVE_DELTA`` = 2 eta sup|u|, ``sign_rule_sup_norm``, and the momentum
  coefficients ``sgd_momentum_coefficients`` with ``momentum_K_eff``)
  and T7(c)'s per-coordinate maps of the adaptive families (``SQRT_MAP``, ``MAX_MAP``, ``CENTERED_MAP``,
  ``LINEAR_MAP``, ``family_coefficients``, :mod:`.adaptive`)
* T8 ``solve_gd_quadratic_stability`` (``EDGE_OF_STABILITY`` = 2/lambda, ``collective_mode_example``), and the
  thresholds of momentum and Adam from the Jury conditions (``rate_stability_interval``, ``MOMENTUM_EDGE``,
  ``ADAM_EDGE``)
* T9 ``unit_symmetry_residuals`` (:mod:`.architectures`: LayerNorm, attention heads, Q/K and V/O dims, rotary
  embeddings, BatchNorm channels, tied weights; residuals 0 where T9 holds and nonzero where it fails)

Modules: :mod:`.bounds` (T2–T5 and their numeric forms), :mod:`.summary` (all of them for one (K, lr, steps)),
:mod:`.equivariance` (T1, T6), :mod:`.optimizer_steps` (T7(a), (b)), :mod:`.adaptive` (T7(c)),
:mod:`.stability` (T8), :mod:`.architectures` (T9).
"""

from topoverify.symbolic.bounds import (
    EPSILON,
    EPSILON_SCALE_FREE,
    ETA,
    ETA_STAR,
    ETA_T,
    K,
    K_T,
    ONE_STEP_BOUNDS,
    STEP,
    T,
    X,
    MultiStepBounds,
    bounds_numeric,
    compose_one_step,
    constant_rate_multistep_bounds,
    epsilon_blows_up_at_eta_star,
    epsilon_from_rate,
    epsilon_numeric,
    eta_star_numeric,
    interleaving_epsilon,
    interleaving_epsilon_numeric,
    lower_side_dominates,
    multistep_bounds,
    multistep_bounds_numeric,
    one_step_bounds,
    positivity_condition,
    solve_eta_star,
)
from topoverify.symbolic.optimizer_steps import (
    ADDITIVE_DELTA,
    DIM,
    DIST,
    DU,
    MU,
    RHO_B,
    TAU,
    U_SUP,
    additive_delta_numeric,
    additive_step_bounds,
    C_B,
    C_G,
    momentum_K_eff,
    momentum_K_eff_numeric,
    sgd_momentum_coefficients,
    sgd_momentum_coefficients_numeric,
    sign_rule_sup_norm,
)
from topoverify.symbolic.stability import (
    ADAM_EDGE,
    BETA1,
    EDGE_OF_STABILITY,
    H_RATE,
    LAM,
    MOMENTUM_EDGE,
    StabilityRegion,
    adam_edge_numeric,
    adam_ema_transition,
    momentum_edge_numeric,
    momentum_transition,
    rate_stability_interval,
    CollectiveModeExample,
    collective_mode_example,
    edge_of_stability_numeric,
    gd_quadratic_step,
    solve_gd_quadratic_stability,
)
from topoverify.symbolic.summary import BoundSummary, bound_summary
from topoverify.symbolic.adaptive import (
    CENTERED_MAP,
    LINEAR_MAP,
    MAX_MAP,
    SQRT_GRAD_BOUND,
    SQRT_MAP,
    SQRT_SUP_BOUND,
    adam_apriori_ratio_bound,
    family_coefficients,
)
from topoverify.symbolic.architectures import ArchitectureResiduals, unit_symmetry_residuals
from topoverify.symbolic.equivariance import (
    SymbolicRule,
    absorbing_symmetry_residuals,
    apply_rule,
    equivariance_residuals,
    field_identity_residuals,
    generic_equivariant_rule,
    transposition_identity_residuals,
)

__all__ = [
    "ArchitectureResiduals", "unit_symmetry_residuals",
    "ADAM_EDGE", "BETA1", "H_RATE", "MOMENTUM_EDGE", "StabilityRegion", "adam_edge_numeric", "adam_ema_transition",
    "momentum_edge_numeric", "momentum_transition", "rate_stability_interval",
    "SQRT_MAP", "MAX_MAP", "CENTERED_MAP", "LINEAR_MAP", "SQRT_GRAD_BOUND", "SQRT_SUP_BOUND", "family_coefficients",
    "adam_apriori_ratio_bound",
    "ADDITIVE_DELTA",
    "DIM",
    "DIST",
    "DU",
    "EDGE_OF_STABILITY",
    "LAM",
    "MU",
    "RHO_B",
    "TAU",
    "U_SUP",
    "CollectiveModeExample",
    "additive_delta_numeric",
    "additive_step_bounds",
    "collective_mode_example",
    "edge_of_stability_numeric",
    "gd_quadratic_step",
    "C_B",
    "C_G",
    "momentum_K_eff",
    "momentum_K_eff_numeric",
    "sgd_momentum_coefficients",
    "sgd_momentum_coefficients_numeric",
    "sign_rule_sup_norm",
    "solve_gd_quadratic_stability",
    "EPSILON",
    "EPSILON_SCALE_FREE",
    "ETA",
    "ETA_STAR",
    "ETA_T",
    "K",
    "K_T",
    "ONE_STEP_BOUNDS",
    "STEP",
    "T",
    "X",
    "BoundSummary",
    "MultiStepBounds",
    "SymbolicRule",
    "absorbing_symmetry_residuals",
    "apply_rule",
    "bound_summary",
    "bounds_numeric",
    "compose_one_step",
    "constant_rate_multistep_bounds",
    "epsilon_blows_up_at_eta_star",
    "epsilon_from_rate",
    "epsilon_numeric",
    "equivariance_residuals",
    "eta_star_numeric",
    "field_identity_residuals",
    "generic_equivariant_rule",
    "interleaving_epsilon",
    "interleaving_epsilon_numeric",
    "lower_side_dominates",
    "multistep_bounds",
    "multistep_bounds_numeric",
    "one_step_bounds",
    "positivity_condition",
    "solve_eta_star",
    "transposition_identity_residuals",
]

from topoverify.lazy import lazy_names as _lazy_names

# submodules on attribute access (topoverify.lazy), as after the eager imports of earlier versions
__getattr__, __dir__ = _lazy_names(__name__, {})
