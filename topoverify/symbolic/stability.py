"""Symbolic forms of claim T8 (edge of stability) and their numeric versions.

* Gradient descent on a quadratic with curvature λ > 0, x ↦ (1 − ηλ) x, converges for every start iff
  |1 − ηλ| < 1, i.e. 0 < ηλ < 2: :func:`solve_gd_quadratic_stability` *solves* this for η (``EDGE_OF_STABILITY``
  = 2/λ is the supremum of the solution set).
* The collective mode: a displacement that moves every neuron by the same vector changes no pairwise
  difference θ_i − θ_j. :func:`collective_mode_example` builds the update u = (c 11ᵀ + k I) θ of N scalar
  neurons: λ_max = N c + k (on the collective mode 1) while u_i − u_j = k (θ_i − θ_j), so T2's K = k can be
  arbitrarily far below λ_max (``proofs_notes/T8_edge_of_stability.md``).
"""

from __future__ import annotations

import dataclasses
import math

import sympy as sp

from topoverify.errors import TopoverifyError
from topoverify.formatting import ResultMixin
from topoverify.symbolic.bounds import ETA

__all__ = [
    "LAM",
    "EDGE_OF_STABILITY",
    "gd_quadratic_step",
    "solve_gd_quadratic_stability",
    "edge_of_stability_numeric",
    "CollectiveModeExample",
    "collective_mode_example",
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
