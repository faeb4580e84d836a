"""Symbolic (sympy) forms of the claims and the numeric functions lambdified from them.

The names listed under ``sympy =`` in ``spec/claims.toml`` are attributes of this package:

* T1 ``field_identity_residuals`` (and ``transposition_identity_residuals``)
* T2 ``one_step_bounds``
* T3 ``solve_eta_star`` (``ETA_STAR`` is its result, 1/K)
* T4 ``multistep_bounds`` (``compose_one_step``, ``constant_rate_multistep_bounds``)
* T5 ``interleaving_epsilon`` (``EPSILON = -log(1 - eta*K)``)
* T6 ``absorbing_symmetry_residuals``
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
    BoundSummary,
    MultiStepBounds,
    bound_summary,
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
    run_bounds_command,
    solve_eta_star,
)
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
    "run_bounds_command",
    "solve_eta_star",
    "transposition_identity_residuals",
]
