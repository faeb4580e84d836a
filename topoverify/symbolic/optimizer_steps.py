"""Symbolic forms of claim T7 (optimizer-specific K) and their numeric versions.

* T7(a) SGD with momentum μ, dampening τ, Nesterov: one step moves neuron i by lr (c_g g(θ_i) + c_b b_i),
  with (c_g, c_b) *derived* here from torch's recursion (:func:`sgd_momentum_coefficients`); the triangle
  inequality then gives T2's band with K_eff = |c_g| K + |c_b| ρ_b (:func:`momentum_K_eff`; c_g < 0 for
  dampening > 1), ρ_b the pairwise Lipschitz ratio of the pre-step buffer. A bound on θ-distances
  conditional on the buffer.
* T7(b) any rule with a bounded update: | ‖θ'_i − θ'_j‖ − ‖θ_i − θ_j‖ | ≤ lr ‖u_i − u_j‖ ≤ 2 lr sup‖u‖
  (:func:`additive_step_bounds`, ``ADDITIVE_DELTA``); for sign rules sup‖u‖ = √d per neuron
  (:func:`sign_rule_sup_norm`). Rips diagrams (absolute scale) then move by at most δ = 2 lr sup‖u‖ in
  bottleneck distance (``proofs_notes/T7_optimizer_specific_K.md``).
"""

from __future__ import annotations

import math
import numbers

import sympy as sp

from topoverify.errors import TopoverifyError
from topoverify.symbolic.bounds import ETA, K

__all__ = [
    "MU",
    "TAU",
    "RHO_B",
    "C_G",
    "C_B",
    "DIST",
    "DU",
    "U_SUP",
    "DIM",
    "ADDITIVE_DELTA",
    "sgd_momentum_coefficients",
    "sgd_momentum_coefficients_numeric",
    "momentum_K_eff",
    "momentum_K_eff_numeric",
    "additive_step_bounds",
    "sign_rule_sup_norm",
    "additive_delta_numeric",
]

#: momentum μ and dampening τ of torch.optim.SGD
MU = sp.Symbol("mu", nonnegative=True)
TAU = sp.Symbol("tau", nonnegative=True)
#: the coefficients c_g, c_b of the direction c_g g + c_b b (c_g = 1 − τ < 0 when dampening τ > 1)
C_G, C_B = sp.symbols("c_g c_b", real=True)
#: ρ_b = max_{i≠j} ‖b_i − b_j‖ / ‖θ_i − θ_j‖, read from the pre-step momentum buffer
RHO_B = sp.Symbol("rho_b", nonnegative=True)
#: a pairwise distance ‖θ_i − θ_j‖, the norm of an update difference ‖u_i − u_j‖, and sup_i ‖u_i‖
DIST = sp.Symbol("d", nonnegative=True)
DU = sp.Symbol("Delta_u", nonnegative=True)
U_SUP = sp.Symbol("U", nonnegative=True)
#: number of coordinates of one neuron
DIM = sp.Symbol("D", integer=True, positive=True)

_G, _B = sp.symbols("g b")  # one neuron's gradient (with weight decay) and pre-step buffer, as scalars


def sgd_momentum_coefficients(mu: sp.Expr = MU, tau: sp.Expr = TAU, *, nesterov: bool = False,
                              first_step: bool = False) -> tuple[sp.Expr, sp.Expr]:
    """T7(a): ``(c_g, c_b)`` with direction = c_g g + c_b b, read off torch.optim.SGD's recursion.

    torch: ``b' = g`` on the first step (no dampening), else ``b' = μ b + (1 − τ) g``; the direction is
    ``b'`` (heavy ball) or ``g + μ b'`` (Nesterov). The coefficients are collected from that expression, so
    they are not typed in: heavy ball (1 − τ, μ), Nesterov (1 + μ(1 − τ), μ²), first step (1, 0) / (1 + μ, 0).
    """
    new_buffer = _G if first_step else mu * _B + (1 - tau) * _G
    direction = sp.expand(_G + mu * new_buffer if nesterov else new_buffer)
    c_g, c_b = direction.coeff(_G), direction.coeff(_B)
    if sp.expand(direction - c_g * _G - c_b * _B) != 0:  # pragma: no cover - the recursion is linear
        raise TopoverifyError(f"the SGD direction {direction} is not linear in (g, b)")
    return sp.simplify(c_g), sp.simplify(c_b)


def sgd_momentum_coefficients_numeric(momentum: float, dampening: float = 0.0, *, nesterov: bool = False,
                                      first_step: bool = False) -> tuple[float, float]:
    """:func:`sgd_momentum_coefficients` evaluated (floats); bad hyper-parameters raise TopoverifyError.

    Any dampening >= 0 is accepted (torch accepts τ > 1, which makes c_g = 1 − τ negative)."""
    for name, v in (("momentum", momentum), ("dampening", dampening)):
        if isinstance(v, bool) or not (isinstance(v, numbers.Real) and math.isfinite(v) and v >= 0):
            raise TopoverifyError(f"{name} must be a finite number >= 0, not a bool (got {v!r}); "
                                  f"pass SGD's {name} as a float")
    c_g, c_b = sgd_momentum_coefficients(nesterov=nesterov, first_step=first_step)
    subs = {MU: float(momentum), TAU: float(dampening)}
    return float(c_g.subs(subs)), float(c_b.subs(subs))


def momentum_K_eff(c_g: sp.Expr = C_G, c_b: sp.Expr = C_B, K_: sp.Expr = K, rho_b: sp.Expr = RHO_B) -> sp.Expr:
    """T7(a): ``K_eff = |c_g| K + |c_b| ρ_b``, the pairwise Lipschitz constant of the direction c_g g + c_b b:
    ‖(c_g g_i + c_b b_i) − (c_g g_j + c_b b_j)‖ ≤ |c_g| ‖g_i − g_j‖ + |c_b| ‖b_i − b_j‖ (triangle inequality,
    either sign; c_g = 1 − τ < 0 for torch's dampening τ > 1). For c_g, c_b ≥ 0 this is c_g K + c_b ρ_b."""
    return sp.Abs(c_g) * K_ + sp.Abs(c_b) * rho_b


_K_EFF_NUMERIC = sp.lambdify((C_G, C_B, K, RHO_B), momentum_K_eff(), modules="math")


def momentum_K_eff_numeric(c_g: float, c_b: float, K_: float, rho_b: float) -> float:
    """:func:`momentum_K_eff` numerically (lambdified). A term whose coefficient is 0 is absent, so its constant
    is not read: 0 · inf is 0 here, not NaN (e.g. heavy ball with dampening 1 has c_g = 0, any K_upper)."""
    values = {"c_g": c_g, "c_b": c_b, "K": K_, "rho_b": rho_b}
    for name, v in values.items():
        v = float(v)
        if math.isnan(v) or (name in ("K", "rho_b") and v < 0) or (name.startswith("c_") and math.isinf(v)):
            raise TopoverifyError(f"momentum_K_eff_numeric: {name}={v} is not valid; the coefficients must be "
                                  f"finite and K, rho_b >= 0 (inf allowed)")
    c_g, c_b = float(c_g), float(c_b)
    return float(_K_EFF_NUMERIC(c_g, c_b, float(K_) if c_g != 0 else 0.0, float(rho_b) if c_b != 0 else 0.0))


def additive_step_bounds(d: sp.Expr = DIST, eta: sp.Expr = ETA, du: sp.Expr = DU) -> tuple[sp.Expr, sp.Expr]:
    """T7(b): ``(d − eta Δu, d + eta Δu)`` bounds ‖θ'_i − θ'_j‖ for any rule θ' = θ − eta u, where
    d = ‖θ_i − θ_j‖ and Δu = ‖u_i − u_j‖ (triangle inequality and its reverse); Δu ≤ 2 sup‖u‖."""
    return d - eta * du, d + eta * du


def sign_rule_sup_norm(dim: sp.Expr = DIM) -> sp.Expr:
    """T7(b): the Euclidean norm of a vector of D entries ±1 (a sign rule's update of one neuron), √D."""
    i = sp.Symbol("i", integer=True, positive=True)
    return sp.sqrt(sp.Sum(sp.Integer(1) ** 2, (i, 1, dim)).doit())


#: δ = 2 eta sup‖u‖: the additive bound on every pairwise distance change, and on the bottleneck distance
#: between the (absolute-scale) Rips diagrams before and after the step
ADDITIVE_DELTA: sp.Expr = additive_step_bounds(eta=ETA, du=2 * U_SUP)[1] - DIST

_DELTA_NUMERIC = sp.lambdify((ETA, U_SUP), ADDITIVE_DELTA, modules="math")


def additive_delta_numeric(lr: float, u_sup: float) -> float:
    """T7(b) numerically: δ = 2 lr sup‖u‖ (lambdified from ``ADDITIVE_DELTA``)."""
    lr, u_sup = float(lr), float(u_sup)
    if not (math.isfinite(lr) and lr > 0):
        raise TopoverifyError(f"lr must be a finite number > 0 (got {lr}); pass the learning rate")
    if math.isnan(u_sup) or u_sup < 0:
        raise TopoverifyError(f"u_sup must be >= 0 (got {u_sup}); pass a bound on every neuron's update norm, "
                              "e.g. sqrt(d) for a sign rule on d coordinates")
    return float(_DELTA_NUMERIC(lr, u_sup))
