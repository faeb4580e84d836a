"""Symbolic forms of claim T8 (edge of stability) and their numeric versions.

* Gradient descent on a quadratic with curvature λ > 0, x ↦ (1 − ηλ) x, converges for every start iff
  |1 − ηλ| < 1, i.e. 0 < ηλ < 2: :func:`solve_gd_quadratic_stability` *solves* this for η (``EDGE_OF_STABILITY``
  = 2/λ is the supremum of the solution set).
* The collective mode: a displacement that moves every neuron by the same vector changes no pairwise
  difference θ_i − θ_j. :func:`collective_mode_example` builds the update u = (c 11ᵀ + k I) θ of N scalar
  neurons: λ_max = N c + k (on the collective mode 1) while u_i − u_j = k (θ_i − θ_j), so T2's K = k can be
  arbitrarily far below λ_max (``proofs_notes/T8_edge_of_stability.md``).
* Momentum and Adam on a quadratic: each rule is a linear recursion s_{t+1} = A(h) s_t in h = lr·λ (for Adam
  λ an eigenvalue of P⁻¹H with the preconditioner P frozen, Cohen et al. 2022). :func:`rate_stability_interval`
  takes A's characteristic polynomial and applies the Schur–Cohn (Jury) conditions of a monic quadratic
  z² + a₁z + a₀ (all roots in the open unit disc iff p(1) > 0, p(−1) > 0, |a₀| < 1), solving each for h:
  heavy-ball momentum μ with dampening τ gives 0 < h < 2(1 + μ)/(1 − τ) (``MOMENTUM_EDGE``); Adam's EMA
  β₁ gives 0 < lr·λ(P⁻¹H) < (2 + 2β₁)/(1 − β₁) (``ADAM_EDGE``); plain GD (μ = τ = 0) gives back 2.
"""

from __future__ import annotations

import dataclasses
import math

import sympy as sp

from topoverify.errors import TopoverifyError
from topoverify.formatting import ResultMixin
from topoverify.symbolic.bounds import ETA
from topoverify.symbolic.optimizer_steps import MU, TAU

__all__ = [
    "LAM",
    "EDGE_OF_STABILITY",
    "gd_quadratic_step",
    "solve_gd_quadratic_stability",
    "edge_of_stability_numeric",
    "CollectiveModeExample",
    "collective_mode_example",
    "BETA1",
    "H_RATE",
    "StabilityRegion",
    "rate_stability_interval",
    "momentum_transition",
    "adam_ema_transition",
    "MOMENTUM_EDGE",
    "ADAM_EDGE",
    "momentum_edge_numeric",
    "adam_edge_numeric",
]

#: curvature λ > 0 of a quadratic (an eigenvalue of the loss Hessian)
LAM = sp.Symbol("lambda", positive=True)


def gd_quadratic_step(eta: sp.Expr = ETA, lam: sp.Expr = LAM) -> sp.Expr:
    """The factor of one GD step on q(x) = λ x²/2: x' = x − η q'(x) = (1 − ηλ) x (derived with sympy)."""
    x = sp.Symbol("x", real=True)
    q = lam * x**2 / 2
    return sp.simplify((x - eta * sp.diff(q, x)) / x)


def solve_gd_quadratic_stability(eta: sp.Symbol = ETA, lam: sp.Symbol = LAM) -> sp.Interval:
    """T8: the set of real rates η with |1 − ηλ| < 1 (every start converges), solved by sympy: (0, 2/λ).

    ``eta``'s own assumptions (e.g. ``ETA`` is positive) are dropped: the inequality is solved for a real
    symbol over all reals, so the lower end 0 is found, not assumed; ``reduce_inequalities`` must agree on
    both ends. ``lam`` must be a positive symbol (or number); otherwise TopoverifyError.
    """
    real_eta = sp.Dummy(str(eta), real=True)
    factor = gd_quadratic_step(eta, lam).subs(eta, real_eta)
    solset = sp.solveset(sp.Abs(factor) < 1, real_eta, domain=sp.S.Reals)
    if not (isinstance(solset, sp.Interval) and solset.left_open and solset.right_open and solset.inf == 0):
        raise TopoverifyError(f"unexpected solution set of |{factor}| < 1: {solset}; pass a positive curvature "
                              f"lam, e.g. sympy.Symbol('lambda', positive=True)")
    reduced = sp.reduce_inequalities([sp.Abs(factor) < 1], real_eta)  # 0 < η ∧ η < 2/λ: both ends compared
    if reduced != solset.as_relational(real_eta):
        raise TopoverifyError(f"solveset gives {solset} but reduce_inequalities gives {reduced} for "
                              f"|{factor}| < 1")  # pragma: no cover
    return solset


#: 2/λ, the edge of stability of GD on a quadratic with curvature λ
EDGE_OF_STABILITY: sp.Expr = solve_gd_quadratic_stability().sup

_EDGE_NUMERIC = sp.lambdify((LAM,), EDGE_OF_STABILITY, modules="math")


def edge_of_stability_numeric(lam: float) -> float:
    """T8 numerically: 2/λ (lambdified from ``EDGE_OF_STABILITY``); inf for λ = 0 (no curvature to blow up).

    λ < 0 raises TopoverifyError: |1 − ηλ| > 1 for every η > 0, so GD diverges at every rate (T8 assumes
    λ > 0, an eigenvalue of a loss Hessian at a minimum)."""
    try:
        if isinstance(lam, bool):
            raise TypeError("a bool is not a curvature")
        lam = float(lam)
    except (TypeError, ValueError) as err:
        raise TopoverifyError(f"lambda must be a real number (got {lam!r}); pass the top eigenvalue of the loss "
                              f"Hessian as a float") from err
    if math.isnan(lam):
        raise TopoverifyError("lambda is NaN; pass the top eigenvalue of the loss Hessian")
    if lam < 0:
        raise TopoverifyError(f"lambda = {lam} < 0: gradient descent diverges along that direction at every rate "
                              f"(|1 - eta*lambda| > 1), so there is no edge of stability; T8 needs lambda > 0 "
                              f"(pass the top eigenvalue of the Hessian at a minimum)")
    if lam == 0:
        return math.inf
    return float(_EDGE_NUMERIC(lam))


@dataclasses.dataclass(frozen=True)
class CollectiveModeExample(ResultMixin):
    """Result of :func:`collective_mode_example` (sympy expressions)."""

    matrix: sp.Matrix
    lambda_max: sp.Expr
    collective_eigenvalue: sp.Expr
    pairwise_residuals: tuple[sp.Expr, ...]
    pairwise_K: sp.Expr


def collective_mode_example(n: int, c: sp.Expr | None = None, k: sp.Expr | None = None) -> CollectiveModeExample:
    """T8: the update u = A θ, A = c 11ᵀ + k I (N = n scalar neurons, c, k > 0; A is the Hessian of θᵀAθ/2).

    Returns λ_max(A) (computed from the eigenvalues), A's eigenvalue on the collective mode 1 (all neurons
    moving together), the residuals (u_i − u_j) − k (θ_i − θ_j) for all pairs (all 0: the collective part
    c 11ᵀ θ is the same for every neuron), and the pairwise constant K = k.
    """
    if n < 2:
        raise TopoverifyError(f"n must be >= 2 (got {n}); pairwise distances need two neurons")
    c = sp.Symbol("c", positive=True) if c is None else c
    k = sp.Symbol("k", positive=True) if k is None else k
    A = c * sp.ones(n, n) + k * sp.eye(n)
    theta = sp.Matrix(sp.symbols(f"theta1:{n + 1}", real=True))
    u = A * theta
    residuals = [sp.expand((u[i] - u[j]) - k * (theta[i] - theta[j])) for i in range(n) for j in range(i + 1, n)]
    ones = sp.ones(n, 1)
    collective = sp.simplify((A * ones)[0] / ones[0])
    if sp.simplify(A * ones - collective * ones) != sp.zeros(n, 1):  # pragma: no cover
        raise TopoverifyError("1 is not an eigenvector of c 11^T + k I")
    lam_max = sp.Max(*A.eigenvals().keys())
    return CollectiveModeExample(A, lam_max, collective, tuple(residuals), k)


#: Adam's first-moment EMA coefficient β₁ ∈ [0, 1)
BETA1 = sp.Symbol("beta1", nonnegative=True)
#: h = lr·λ, the product the stability of a linear recursion on a quadratic depends on
H_RATE = sp.Symbol("h", real=True)
_Z = sp.Symbol("z")


@dataclasses.dataclass(frozen=True)
class StabilityRegion(ResultMixin):
    """The rates h = lr·λ for which every root of ``charpoly`` lies in the open unit disc (T8).

    ``interval`` is solved from the h-dependent Schur–Cohn conditions; ``requires`` are the conditions that do
    not involve h (e.g. |μ| < 1), which hold for the hyper-parameters' admissible range and are assumed."""

    charpoly: sp.Expr
    conditions: tuple[sp.Expr, ...]
    interval: sp.Interval
    requires: tuple[sp.Expr, ...]

    @property
    def edge(self) -> sp.Expr:
        return self.interval.sup


def _linear_interval(cond: sp.Expr, h: sp.Symbol) -> sp.Interval:
    """The set {h : cond(h) > 0} for cond = a·h + b with the sign of a decided by the symbols' assumptions."""
    poly = sp.Poly(sp.expand(cond), h)
    if poly.degree() != 1:
        raise TopoverifyError(f"stability condition {cond} > 0 is not linear in {h}; only recursions whose "
                              f"Schur-Cohn conditions are linear in lr*lambda are solved here")
    a, b = poly.all_coeffs()
    root = sp.simplify(-b / a)
    if a.is_positive:
        return sp.Interval.open(root, sp.oo)
    if a.is_negative:
        return sp.Interval.open(-sp.oo, root)
    raise TopoverifyError(f"the sign of {a} in {cond} > 0 is not decided by the assumptions; declare the "
                          f"hyper-parameter symbols positive/nonnegative (or substitute numbers)")


def rate_stability_interval(charpoly: sp.Expr, h: sp.Symbol = H_RATE, z: sp.Symbol = _Z) -> StabilityRegion:
    """T8: solve the Schur–Cohn (Jury) conditions of a monic polynomial of degree 1 or 2 in ``z`` for ``h``.

    Degree 1, z + a₀: p(1) > 0 and −p(−1) > 0 (i.e. |a₀| < 1). Degree 2, z² + a₁z + a₀: p(1) > 0,
    p(−1) > 0 and |a₀| < 1. Conditions free of h go to ``requires``; those with h must be linear in it."""
    poly = sp.Poly(sp.expand(charpoly), z)
    n = poly.degree()
    if n not in (1, 2) or poly.LC() != 1:
        raise TopoverifyError(f"{charpoly} is not a monic polynomial of degree 1 or 2 in {z}; the Jury "
                              f"conditions are implemented for one- and two-state recursions only")
    p = poly.as_expr()
    conds = [sp.expand(p.subs(z, 1)), sp.expand((-1) ** n * p.subs(z, -1))]
    if n == 2:
        a0 = poly.all_coeffs()[-1]
        conds += [sp.expand(1 - a0), sp.expand(1 + a0)]  # |a₀| < 1
    lows, highs, requires = [], [], []
    for c in conds:
        if c.has(h):
            piece = _linear_interval(c, h)
            (lows if piece.sup == sp.oo else highs).append(piece.inf if piece.sup == sp.oo else piece.sup)
        elif c.is_positive is not True:
            requires.append(c)
    interval = sp.Interval.open(sp.Max(*lows) if lows else -sp.oo, sp.Min(*highs) if highs else sp.oo)
    return StabilityRegion(p, tuple(conds), interval, tuple(sp.simplify(r) > 0 for r in requires))


def momentum_transition(h: sp.Expr = H_RATE, mu: sp.Expr = MU, tau: sp.Expr = TAU) -> sp.Matrix:
    """torch.optim.SGD with momentum μ, dampening τ (nesterov off) on q(x) = λx²/2, h = lr·λ:
    b_t = μ b_{t−1} + (1 − τ) λ x_t, x_{t+1} = x_t − lr b_t; state (x_t, lr·b_{t−1}) ↦ (x_{t+1}, lr·b_t)."""
    c_t = sp.Matrix([[(1 - tau) * h, mu]])           # lr·b_t as a row acting on (x_t, lr·b_{t−1})
    x_next = sp.Matrix([[1, 0]]) - c_t
    return sp.Matrix.vstack(x_next, c_t)


def adam_ema_transition(h: sp.Expr = H_RATE, beta1: sp.Expr = BETA1) -> sp.Matrix:
    """Adam with the preconditioner P frozen and m's bias correction omitted (its t → ∞ form), on
    q(x) = xᵀHx/2 along an eigenvector of P^{-1/2} H P^{-1/2} with eigenvalue λ, h = lr·λ, y = P^{1/2}x:
    n_t = β₁ n_{t−1} + (1 − β₁) λ y_t, y_{t+1} = y_t − lr n_t (n = P^{-1/2} m); state (y_t, lr·n_{t−1})."""
    n_t = sp.Matrix([[(1 - beta1) * h, beta1]])
    y_next = sp.Matrix([[1, 0]]) - n_t
    return sp.Matrix.vstack(y_next, n_t)


def _edge_from(transition: sp.Matrix, subs: dict, h: sp.Symbol = H_RATE) -> sp.Expr:
    region = rate_stability_interval(transition.subs(subs).charpoly(_Z).as_expr(), h)
    if not (region.interval.inf == 0 and region.interval.left_open and region.interval.right_open):
        raise TopoverifyError(f"unexpected stability set {region.interval}")  # pragma: no cover
    return region.edge


_C = sp.Dummy("c", positive=True)  # 1 − τ > 0 (τ < 1), or 1 − β₁ > 0: lets the Jury conditions be solved
#: T8: heavy-ball momentum is stable on a quadratic iff 0 < lr·λ < 2(1 + μ)/(1 − τ)
MOMENTUM_EDGE: sp.Expr = sp.simplify(_edge_from(momentum_transition(), {TAU: 1 - _C}).subs(_C, 1 - TAU))
_B1 = sp.Dummy("b1", positive=True)
#: T8: Adam (frozen P, EMA β₁) is stable on a quadratic iff 0 < lr·λ_max(P⁻¹H) < (2 + 2β₁)/(1 − β₁)
ADAM_EDGE: sp.Expr = sp.simplify(_edge_from(adam_ema_transition(beta1=1 - _C), {}).subs(_C, 1 - BETA1))

_MOMENTUM_EDGE_NUMERIC = sp.lambdify((MU, TAU), MOMENTUM_EDGE, modules="math")
_ADAM_EDGE_NUMERIC = sp.lambdify((BETA1,), ADAM_EDGE, modules="math")


def _unit_interval(name: str, value: float) -> float:
    try:
        value = float(value)
    except (TypeError, ValueError) as err:
        raise TopoverifyError(f"{name} must be a real number in [0, 1) (got {value!r})") from err
    if not 0 <= value < 1:
        raise TopoverifyError(f"{name} = {value} is outside [0, 1): the recursion has no stable rate there; "
                              f"pass the optimizer's own {name} (torch requires it in [0, 1))")
    return value


def momentum_edge_numeric(mu: float = 0.0, dampening: float = 0.0) -> float:
    """T8 numerically: the edge 2(1 + μ)/(1 − τ) on lr·λ_max for SGD momentum (lambdified ``MOMENTUM_EDGE``;
    μ = τ = 0 is plain GD's 2). μ, τ outside [0, 1) → TopoverifyError."""
    return float(_MOMENTUM_EDGE_NUMERIC(_unit_interval("momentum", mu), _unit_interval("dampening", dampening)))


def adam_edge_numeric(beta1: float) -> float:
    """T8 numerically: the edge (2 + 2β₁)/(1 − β₁) on lr·λ_max(P⁻¹H) for Adam (lambdified ``ADAM_EDGE``)."""
    return float(_ADAM_EDGE_NUMERIC(_unit_interval("beta1", beta1)))
