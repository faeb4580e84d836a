"""The algebraic steps of the proofs in proofs_notes/, checked with sympy (and a few exact/numeric evaluations).

Each test names the proof step it checks; the proofs refer back to these tests.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import persim  # a test dependency (pyproject's "test" extra)
import pytest
import ripser
import sympy as sp
import torch
from hypothesis import given
from hypothesis import strategies as st

import topoverify.symbolic as S
from topoverify.errors import TopoverifyError

x = sp.Symbol("x", positive=True)  # x = eta*K
eta, K = S.ETA, S.K


# --------------------------------------------------------------------------------------------- T1


def test_T1_non_additive_entry_breaks_the_field_identity():
    """Assumption A2 is needed: a normalisation across neurons couples them beyond delta."""
    assert all(r == 0 for r in S.field_identity_residuals())
    res = S.field_identity_residuals(normalized=True)
    # evaluate at a generic point instead of simplifying (fast and conclusive for "not identically 0")
    syms = sorted(set().union(*(r.free_symbols for r in res)), key=str)
    point = {v: sp.Rational(k + 2, 7) * (-1) ** k for k, v in enumerate(syms)}
    values = [abs(float(r.subs(point).evalf())) for r in res]
    assert max(values) > 1e-6


def test_T1_field_jacobian_is_symmetric():
    """g = grad Phi, so J_g = Hess Phi is symmetric (its operator norm is max |eigenvalue|)."""
    zw, zb, za, d, h = sp.symbols("z_w z_b z_a delta h", real=True)
    Phi = d * za * sp.tanh(zw * h + zb)
    z = (zw, zb, za)
    g = sp.Matrix([sp.diff(Phi, v) for v in z])
    J = g.jacobian(z)
    assert sp.simplify(J - J.T) == sp.zeros(3, 3)


def test_T1_transposition_identity_from_equivariance():
    """(tau U(theta))_i = U(theta)_j and U(tau theta) = tau U(theta) give u_j(theta) = u_i(tau theta)."""
    rule = S.generic_equivariant_rule(3)
    assert all(r == 0 for r in S.equivariance_residuals(rule))
    assert all(r == 0 for r in S.transposition_identity_residuals(3))


# --------------------------------------------------------------------------------------------- T2


def test_T2_triangle_inequality_step():
    """theta'_i - theta'_j = (theta_i - theta_j) - eta (u_i - u_j), then the (reverse) triangle inequality."""
    ti = sp.Matrix(sp.symbols("ti0:3", real=True))
    tj = sp.Matrix(sp.symbols("tj0:3", real=True))
    ui = sp.Matrix(sp.symbols("ui0:3", real=True))
    uj = sp.Matrix(sp.symbols("uj0:3", real=True))
    lhs = (ti - eta * ui) - (tj - eta * uj)
    assert sp.simplify(lhs - ((ti - tj) - eta * (ui - uj))) == sp.zeros(3, 1)
    # with ||u_i - u_j|| <= K d:   d - eta*K*d <= ||...|| <= d + eta*K*d, i.e. the factors of one_step_bounds
    d = sp.Symbol("d", positive=True)
    lo, hi = S.one_step_bounds()
    assert sp.expand(d - eta * K * d - lo * d) == 0
    assert sp.expand(d + eta * K * d - hi * d) == 0
    # the lower bound is positive exactly below eta* (so informative only there)
    assert sp.solveset(lo > 0, eta, sp.S.Reals) == sp.Interval.open(-sp.oo, 1 / K)


def test_T2_mean_value_integral_identity():
    """g(x) - g(y) = (int_0^1 J_g(y + s(x - y)) ds) (x - y): the step behind K = sup ||J_g||_op on segments."""
    s = sp.Symbol("s", real=True)
    X = sp.Matrix(sp.symbols("x0:2", real=True))
    Y = sp.Matrix(sp.symbols("y0:2", real=True))
    z0, z1 = sp.symbols("z0 z1", real=True)
    g = sp.Matrix([z0**3 - z0 * z1, z1**2 + 2 * z0])  # a polynomial field, so the integral is exact
    J = g.jacobian((z0, z1))
    path = {z0: Y[0] + s * (X[0] - Y[0]), z1: Y[1] + s * (X[1] - Y[1])}
    avg_J = J.subs(path).applyfunc(lambda e: sp.integrate(e, (s, 0, 1)))
    lhs = g.subs({z0: X[0], z1: X[1]}) - g.subs({z0: Y[0], z1: Y[1]})
    assert sp.expand(lhs - avg_J * (X - Y)) == sp.zeros(2, 1)


def test_T2_inverse_lipschitz_constant_dominates_upper():
    """1/(1 - x) >= 1 + x on [0, 1): the inverse map's constant is at least the forward upper factor."""
    diff = sp.simplify(1 / (1 - x) - (1 + x))
    assert sp.simplify(diff - x**2 / (1 - x)) == 0
    assert sp.solveset(x**2 / (1 - x) < 0, x, sp.Interval.Ropen(0, 1)) == sp.S.EmptySet


# --------------------------------------------------------------------------------------------- T3


def test_T3_banach_contraction_constant():
    """F(z) = z - eta g(z); F^{-1}(w) is the fixed point of T_w(z) = w + eta g(z), Lipschitz constant eta*K."""
    z, w, c = sp.symbols("z w c", real=True)
    g = K * sp.sin(z)  # a K-Lipschitz field on R (|g'| <= K, attained at z = 0)
    Tw = w + eta * g
    dT = sp.diff(Tw, z)
    assert sp.simplify(dT - eta * K * sp.cos(z)) == 0
    assert sp.maximum(sp.cos(z), z, sp.Interval(-sp.pi, sp.pi)) == 1  # sup |T_w'| = eta*K ...
    assert sp.minimum(sp.cos(z), z, sp.Interval(-sp.pi, sp.pi)) == -1  # ... (cos is 2pi-periodic)
    # the fixed point solves F(z) = w
    F = z - eta * g
    assert sp.simplify(F.subs(z, Tw) - (Tw - eta * g.subs(z, Tw))) == 0
    # numerically: iterate T_w for eta*K = 0.9 and check F(z*) = w and the inverse-Lipschitz bound
    vals = {K: 3.0, eta: 0.3}
    Fn = sp.lambdify(z, F.subs(vals))
    Tn = sp.lambdify((z, w), Tw.subs(vals))
    for target in (-2.0, 0.1, 5.0):
        zz = 0.0
        for _ in range(2000):
            zz = Tn(zz, target)
        assert Fn(zz) == pytest.approx(target, abs=1e-9)
    # (1 - eta K)|x - y| <= |F(x) - F(y)|, hence Lip(F^{-1}) <= 1/(1 - eta K)
    for a_, b_ in itertools.combinations([-3.0, -1.0, 0.2, 0.5, 4.0], 2):
        assert abs(Fn(a_) - Fn(b_)) >= (1 - 0.9) * abs(a_ - b_) - 1e-12


def test_T3_folding_possible_above_eta_star():
    """Above eta*: z - c sin z with c = eta*K > 1 folds (F' changes sign, two points share an image);
    a linear field does not fold for eta*K != 1, so breakdown is possible, not certain."""
    z = sp.Symbol("z", real=True)
    c = sp.Integer(2)
    F = z - c * sp.sin(z)
    dF = sp.diff(F, z)
    assert dF.subs(z, 0) < 0 and dF.subs(z, sp.pi) > 0  # det(I - eta J_g) changes sign
    z_star = sp.nsolve(F, z, 1.9)
    assert float(z_star) > 1.0 and abs(float(F.subs(z, z_star))) < 1e-12  # F(z*) = F(0) = 0, z* != 0
    # linear field g(z) = K A z with ||A|| = 1: F = (I - eta K A), det != 0 unless eta*K is an eigenvalue^-1
    A = sp.diag(1, -1)
    M = sp.eye(2) - x * A
    assert sp.factor(M.det()) == sp.factor((1 - x) * (1 + x))
    assert M.subs(x, 3).det() != 0  # eta*K = 3 > 1, still injective


def test_T3_linear_field_injective_iff_reciprocal_is_not_an_eigenvalue():
    """g(z) = K A z, ||A|| = 1: F = I - eta K A is injective iff det != 0 iff 1/(eta K) is no eigenvalue of A.
    eta*K != 1 is NOT enough: A = diag(1, 1/2) with eta*K = 2 gives I - 2A = diag(-1, 0), singular."""
    a1, a2 = sp.symbols("a1 a2", real=True)
    A = sp.diag(a1, a2)
    M = sp.eye(2) - x * A
    assert sp.expand(M.det() - (1 - x * a1) * (1 - x * a2)) == 0
    assert set(sp.solve(M.det(), x)) == {1 / a1, 1 / a2}
    B = sp.diag(1, sp.Rational(1, 2))
    assert max(abs(v) for v in B.eigenvals()) == 1  # ||B|| = 1, K = 1
    singular = sp.eye(2) - 2 * B
    assert singular == sp.diag(-1, 0) and singular.det() == 0  # eta*K = 2 != 1, yet not injective
    # the map collapses the second axis: two distinct points with the same image
    p1, p2 = sp.Matrix([0, 0]), sp.Matrix([0, 1])
    assert singular * p1 == singular * p2


def test_T3_global_lipschitz_fails_for_T1_fields_with_curvature():
    """Assumption C1 (g K-Lipschitz on all of R^d) fails for every T1 field with sigma'' != 0 and delta != 0:
    the Hessian entry d2Phi/dw2 = delta a h^2 sigma''(w h + b) grows without bound in a. For the identity
    activation Phi is bilinear, its Hessian constant, and g is globally Lipschitz (the R^d remark)."""
    w, b, a, h, d = sp.symbols("w b a h delta", real=True)
    Phi = d * a * sp.tanh(w * h + b)
    hess = sp.hessian(Phi, (w, b, a))
    entry = sp.simplify(hess[0, 0] - d * a * h**2 * sp.diff(sp.tanh(x), x, 2).subs(x, w * h + b))
    assert entry == 0
    at = {w: sp.Rational(1, 2), b: 0, h: 1, d: 1}
    assert sp.limit(hess[0, 0].subs(at), a, sp.oo) in (sp.oo, -sp.oo)  # unbounded on R^d
    linear = sp.hessian(d * a * (w * h + b), (w, b, a))
    assert all(sp.diff(e, v) == 0 for e in linear for v in (w, b, a))  # identity: constant Hessian


def test_T3_block_matrix_top_eigenvalue_bound():
    """The certificates' block bound: for J = [[A, B], [B^T, 0]] and a unit (x, y),
    x^T A x + 2 x^T B y <= a|x|^2 + 2 b|x||y| <= lambda_max([[a, b], [b, 0]]) = (a + sqrt(a^2 + 4b^2))/2 for any
    a >= lambda_max(A), b >= ||B||; the bound increases with a (so a larger a stays a bound). With a = alpha
    >= ||A|| the same argument bounds |v^T J v|, hence ||J|| (K_upper); with a >= lambda_max(A) it bounds
    lambda_max(J) (mu_upper)."""
    a = sp.Symbol("a", real=True)
    b = sp.Symbol("b", nonnegative=True)
    s_, t_ = sp.symbols("s t", nonnegative=True)
    lam = (a + sp.sqrt(a**2 + 4 * b**2)) / 2
    M = sp.Matrix([[a, b], [b, 0]])
    assert sp.simplify((lam * sp.eye(2) - M).det()) == 0  # lam is an eigenvalue...
    assert any(sp.simplify(e - lam) == 0 for e in M.eigenvals())
    # ... the largest: sqrt(a^2 + 4b^2) >= |a| gives lam >= max(a, 0), so lam I - M (trace 2 lam - a >= 0,
    # det 0) is positive semidefinite
    for av, bv in [(2, 1), (-3, 2), (0, 5), (7, 0)]:
        lv = lam.subs({a: av, b: bv})
        P = (lv * sp.eye(2) - M).subs({a: av, b: bv})
        assert P.trace() >= 0 and sp.simplify(P.det()) == 0
    # quadratic form: lam (s^2 + t^2) - (a s^2 + 2 b s t) = (s, t) (lam I - M) (s, t)^T
    form = (sp.Matrix([[s_, t_]]) * (lam * sp.eye(2) - M) * sp.Matrix([s_, t_]))[0]
    assert sp.expand(form - (lam * (s_**2 + t_**2) - (a * s_**2 + 2 * b * s_ * t_))) == 0
    # monotone in a: d lam / d a = (1 + a / sqrt(a^2 + 4 b^2)) / 2 >= 0
    dlam = sp.diff(lam, a)
    assert sp.simplify(dlam - (1 + a / sp.sqrt(a**2 + 4 * b**2)) / 2) == 0
    # numerically on random blocks: lambda_max(J) and ||J|| stay below the bound
    import numpy as np
    rng = np.random.default_rng(0)
    for _ in range(200):
        A = rng.normal(size=(3, 3)); A = A + A.T
        B = rng.normal(size=(3, 2))
        J = np.block([[A, B], [B.T, np.zeros((2, 2))]])
        ev = np.linalg.eigvalsh(J)
        bnorm = np.linalg.norm(B, 2)
        top = lambda av: (av + np.sqrt(av * av + 4 * bnorm**2)) / 2
        assert ev[-1] <= top(np.linalg.eigvalsh(A)[-1]) + 1e-12
        assert np.abs(ev).max() <= top(np.abs(np.linalg.eigvalsh(A)).max()) + 1e-12


def test_T3_positive_part_bounds_the_top_eigenvalue_of_the_curvature_block():
    """A = H^T diag(c s'') H <= H^T diag((c s'')_+) H (Loewner order, congruence keeps it), and
    (c s'')_+ = c_+ s''_+ + c_- s''_- <= max(sup c_+ sup s''_+, sup c_- sup s''_-): at most one term is nonzero."""
    c, s2 = sp.symbols("c s2", real=True)
    pos = lambda v: sp.Max(v, 0)
    for cv in (-2, 0, 3):
        for sv in (-sp.Rational(1, 2), 0, sp.Rational(3, 4)):
            lhs = pos(cv * sv)
            assert lhs == pos(cv) * pos(sv) + pos(-cv) * pos(-sv)
            assert (pos(cv) * pos(sv)) * (pos(-cv) * pos(-sv)) == 0
    import numpy as np
    rng = np.random.default_rng(1)
    for _ in range(200):
        H = rng.normal(size=(6, 3))
        w = rng.normal(size=6)
        lhs = np.linalg.eigvalsh(H.T @ np.diag(w) @ H)[-1]
        rhs = np.linalg.eigvalsh(H.T @ np.diag(np.maximum(w, 0)) @ H)[-1]
        assert lhs <= rhs + 1e-12


def test_T3_one_sided_condition_gives_strong_monotonicity_and_needs_strictness():
    """<F(x) - F(y), x - y> = |x - y|^2 - eta (x - y)^T (int_0^1 J(y + s(x - y)) ds)(x - y) >= (1 - eta mu)|x - y|^2
    when v^T J v <= mu |v|^2 on the segment; then |F(x) - F(y)| >= (1 - eta mu)|x - y| (Cauchy-Schwarz).
    eta mu = 1 is not enough: Phi = |z|^2/2 has J = I, mu = 1, and eta = 1 maps every point to 0.
    For the cloud alone: |D'| >= <D', D>/|D| = |D| (1 - eta <u_i - u_j, D>/|D|^2) with D' = D - eta (u_i - u_j)."""
    s = sp.Symbol("s", real=True)
    X = sp.Matrix(sp.symbols("x0:2", real=True))
    Y = sp.Matrix(sp.symbols("y0:2", real=True))
    z0, z1 = sp.symbols("z0 z1", real=True)
    Phi = z0**3 / 3 - z0 * z1**2 + z1**4 / 4
    g = sp.Matrix([sp.diff(Phi, v) for v in (z0, z1)])
    J = g.jacobian((z0, z1))
    assert J == J.T
    path = {z0: Y[0] + s * (X[0] - Y[0]), z1: Y[1] + s * (X[1] - Y[1])}
    avg = J.subs(path).applyfunc(lambda e: sp.integrate(e, (s, 0, 1)))
    F = lambda P: P - eta * g.subs({z0: P[0], z1: P[1]})
    D = X - Y
    lhs = ((F(X) - F(Y)).T * D)[0]
    rhs = (D.T * D)[0] - eta * (D.T * avg * D)[0]
    assert sp.expand(lhs - rhs) == 0
    # strictness: Phi = |z|^2 / 2, eta = 1, mu = 1
    G = sp.Matrix([z0, z1])  # grad of |z|^2/2
    Fq = sp.Matrix([z0, z1]) - 1 * G
    assert Fq == sp.zeros(2, 1)  # every point goes to 0: not injective at eta mu = 1
    # the per-pair form for the cloud
    d0, d1, u0, u1 = sp.symbols("d0 d1 u0 u1", real=True)
    Dv, Uv = sp.Matrix([d0, d1]), sp.Matrix([u0, u1])
    Dp = Dv - eta * Uv
    nrm2 = (Dv.T * Dv)[0]
    assert sp.simplify((Dp.T * Dv)[0] - nrm2 * (1 - eta * (Uv.T * Dv)[0] / nrm2)) == 0


def test_T3_one_sided_condition_for_gradient_fields():
    """Sharper for GD (symmetric J_g): only eigenvalues mu > 0 of Hess Phi can make I - eta J singular.
    Quadratic Phi with Hessian diag(-10, 1): K = 10, eta = 0.5 gives eta*K = 5 > 1, yet the step is a
    linear bijection with det = 6 * 0.5 != 0 and strong monotonicity constant 1 - eta*mu_max = 0.5."""
    H = sp.diag(-10, 1)
    e = sp.Rational(1, 2)
    M = sp.eye(2) - e * H
    Kval = max(abs(v) for v in H.eigenvals())
    assert e * Kval > 1
    assert M.det() == 3
    assert min(M.eigenvals()) == 1 - e * max(H.eigenvals())  # (1 - eta*mu_max) = 1/2 > 0


# --------------------------------------------------------------------------------------------- T4


def test_T4_telescoping_product():
    """d_T/d_0 = prod_t d_t/d_{t-1} (all d_t > 0, guaranteed by injectivity below eta*)."""
    n = 5
    d = sp.symbols(f"d0:{n + 1}", positive=True)
    assert sp.simplify(sp.Mul(*[d[t] / d[t - 1] for t in range(1, n + 1)]) - d[n] / d[0]) == 0
    # interval product: r1 r2 - l1 l2 = (r1 - l1) r2 + l1 (r2 - l2) >= 0 when l_t >= 0 and r_t >= l_t
    r1, r2, l1, l2, u1, u2 = sp.symbols("r1 r2 l1 l2 u1 u2", real=True)
    assert sp.expand(r1 * r2 - l1 * l2 - ((r1 - l1) * r2 + l1 * (r2 - l2))) == 0
    assert sp.expand(u1 * u2 - r1 * r2 - ((u1 - r1) * u2 + r1 * (u2 - r2))) == 0
    # so the T-step bounds are the products of the one-step factors (compose_one_step = Product.doit())
    lo_c, hi_c = S.compose_one_step(n)
    lo_p, hi_p = S.multistep_bounds(n)
    assert sp.expand(lo_c - lo_p.doit()) == 0 and sp.expand(hi_c - hi_p.doit()) == 0


def test_T4_negative_factors_need_clipping():
    """With l_t < 0 the raw product is no bound: ratios 0.1 and 0.1 with factors -1, -1 give 0.01 < 1."""
    ratios = [sp.Rational(1, 10), sp.Rational(1, 10)]
    lower_factors = [1 - 2, 1 - 2]  # eta*K = 2 at both steps
    assert all(r >= f for r, f in zip(ratios, lower_factors))  # each step's ratio obeys its bound
    assert sp.Mul(*ratios) < sp.Mul(*lower_factors)  # ... but the raw product "bound" is violated
    assert S.multistep_bounds_numeric([20.0, 20.0], 0.1).lower == 0.0


# --------------------------------------------------------------------------------------------- T5


def test_T5_log_interleaving_arithmetic():
    """VR_r(X) c VR_{br}(X') c VR_{(b/a) r}(X): log shifts log b and -log a, eps = max of the two."""
    a, b, r = sp.symbols("a b r", positive=True)
    s_ = sp.log(r)
    forward = sp.expand_log(sp.log(b * r), force=True) - s_
    backward = sp.expand_log(sp.log(r / a), force=True) - s_
    assert forward == sp.log(b) and backward == -sp.log(a)
    assert sp.expand_log(sp.log(b / a * r), force=True) - s_ == sp.log(b) - sp.log(a)  # round trip
    # with a = 1 - x, b = 1 + x: max(log(1+x), -log(1-x)) = -log(1-x) since -log(1-x) - log(1+x) = -log(1-x^2)
    gap = sp.expand_log(-sp.log(1 - x) - sp.log(1 + x), force=True)
    assert sp.simplify(sp.exp(gap) - 1 / (1 - x**2)) == 0
    assert S.lower_side_dominates()
    # rescaling the cloud by c: factors [a/c, b/c]; c = sqrt(ab) balances them: eps = log(b/a)/2
    c = sp.sqrt(a * b)
    up = sp.expand_log(sp.log(b / c), force=True)
    down = sp.expand_log(-sp.log(a / c), force=True)
    assert sp.simplify(up - down) == 0
    assert sp.simplify(up - (sp.log(b) - sp.log(a)) / 2) == 0


@given(
    birth=st.floats(-5, 5, allow_nan=False),
    pers=st.floats(0.0, 10, allow_nan=False, allow_subnormal=False),
    eps=st.floats(0.0, 3, allow_nan=False, allow_subnormal=False),
    db=st.floats(-1, 1, allow_nan=False),
    dd=st.floats(-1, 1, allow_nan=False),
)
def test_T5_survival_threshold_arithmetic(birth, pers, eps, db, dd):
    """A point (beta, delta) with delta - beta > 2 eps cannot be matched to the diagonal (cost (delta-beta)/2)
    within eps, and any partner within eps in L-infinity has positive persistence >= delta - beta - 2 eps."""
    death = birth + pers
    partner = (birth + db * eps, death + dd * eps)
    assert partner[1] - partner[0] >= pers - 2 * eps - 1e-9
    if pers > 2 * eps:
        assert pers / 2 > eps  # diagonal too far
        assert partner[1] - partner[0] > -1e-9


@given(
    d=st.lists(st.floats(1e-3, 10, allow_nan=False), min_size=2, max_size=8),
    x_=st.floats(0.0, 0.9, allow_nan=False),
    data=st.data(),
)
def test_T5_H0_sorted_log_deaths_move_by_at_most_eps(d, x_, data):
    """Scaling each value by a factor in [1-x, 1+x] moves each *sorted* value by a factor in that range
    (order statistics are monotone), so sorted log values move by at most -log(1-x) = eps."""
    factors = [data.draw(st.floats(1 - x_, 1 + x_, allow_nan=False)) for _ in d]
    new = sorted(v * f for v, f in zip(d, factors))
    old = sorted(d)
    eps = S.interleaving_epsilon_numeric(1 - x_, 1 + x_)
    for o, n_ in zip(old, new):
        assert abs(math.log(n_) - math.log(o)) <= eps + 1e-12


# --------------------------------------------------------------------------------------------- T6


def test_T6_transposition_argument():
    """tau fixes the state, so U = U(tau state) = tau U, i.e. U_i = U_j; by induction forever."""
    rule = S.generic_equivariant_rule(3)
    th, st_ = rule.thetas, rule.states
    fixed_t = (th[0], th[0], th[2])
    fixed_s = (st_[0], st_[0], st_[2])
    Pm = sp.Matrix([[0, 1, 0], [1, 0, 0], [0, 0, 1]])  # tau_01 as a matrix
    assert Pm * sp.Matrix(fixed_t) == sp.Matrix(fixed_t)  # the merged state is a fixed point of tau
    U, Sx = S.apply_rule(rule, fixed_t, fixed_s)
    U_tau, _ = S.apply_rule(rule, tuple(Pm * sp.Matrix(fixed_t)), tuple(Pm * sp.Matrix(fixed_s)))
    assert sp.Matrix(U_tau) - Pm * sp.Matrix(U) == sp.zeros(3, 1)  # equivariance
    assert U[0] - U[1] == 0 and Sx[0] - Sx[1] == 0
    assert S.absorbing_symmetry_residuals() == [0, 0]


def _adam_like_run(grads, theta0, *, steps, beta1, beta2, lr, e, noise_scale=None):
    """An equivariant rule: momentum m, second moment v, update m / (v + e) (a rational stand-in for Adam's
    m / (sqrt(v) + eps)); optional per-coordinate noise (deterministic pseudo-noise, distinct per index)."""
    theta = list(theta0)
    m = [0 * t for t in theta]
    v = [0 * t for t in theta]
    for step in range(steps):
        g = [gi(*theta) for gi in grads]
        m = [beta1 * mi + (1 - beta1) * gi for mi, gi in zip(m, g)]
        v = [beta2 * vi + (1 - beta2) * gi**2 for vi, gi in zip(v, g)]
        theta = [t - lr * mi / (vi + e) for t, mi, vi in zip(theta, m, v)]
        if noise_scale is not None:
            theta = [t + noise_scale * ((7 * i + 3 * step) % 5 - 2) for i, t in enumerate(theta)]
    return theta


def test_T6_exact_equality_after_many_steps_of_an_adam_like_rule():
    """A concrete equivariant rule on the gradient of a permutation-invariant loss: merged neurons stay
    exactly equal (exact rationals, and bitwise in floating point over many steps); per-coordinate noise
    splits them."""
    th = sp.symbols("th0:3", real=True)
    data = [(sp.Rational(1, 2), sp.Rational(1, 3)), (sp.Rational(-1, 1), sp.Rational(2, 1))]
    L = sum((sum(t * xx + t**2 * xx**2 / 3 for t in th) - y) ** 2 for xx, y in data)
    dL = [sp.diff(L, t) for t in th]

    exact = dict(beta1=sp.Rational(9, 10), beta2=sp.Rational(99, 100), lr=sp.Rational(1, 100), e=sp.Rational(1, 10))
    grads_q = [sp.lambdify(th, d, modules="sympy") for d in dL]
    theta0_q = [sp.Rational(1, 5), sp.Rational(1, 5), sp.Rational(-1, 2)]
    clean = _adam_like_run(grads_q, theta0_q, steps=3, **exact)  # rational sizes grow fast with steps
    assert clean[0] == clean[1] and clean[0] != clean[2]
    noisy = _adam_like_run(grads_q, theta0_q, steps=3, noise_scale=sp.Rational(1, 10**6), **exact)
    assert noisy[0] != noisy[1]

    floats = dict(beta1=0.9, beta2=0.99, lr=0.01, e=0.1)
    grads_f = [sp.lambdify(th, d) for d in dL]
    clean_f = _adam_like_run(grads_f, [0.2, 0.2, -0.5], steps=300, **floats)
    assert clean_f[0] == clean_f[1] and clean_f[0] != clean_f[2]
    noisy_f = _adam_like_run(grads_f, [0.2, 0.2, -0.5], steps=300, noise_scale=1e-6, **floats)
    assert noisy_f[0] != noisy_f[1]


# --------------------------------------------------------------------------------------------- T7


def _vec(data, dim, scale):
    return np.array([data.draw(st.floats(-scale, scale, allow_nan=False)) for _ in range(dim)])


def _with_norm(v, length):
    """v rescaled to the given norm (0 stays 0); divides by the largest entry first, so that a tiny v (whose
    squared entries underflow) is not blown up."""
    m = float(np.abs(v).max())
    if m == 0:
        return v * 0.0
    u = v / m
    return u * (length / float(np.linalg.norm(u)))


def test_T7_momentum_K_eff_by_the_triangle_inequality():
    """||c_g dg + c_b db|| <= |c_g| ||dg|| + |c_b| ||db|| <= (|c_g| K + |c_b| rho_b) d for either sign of the
    coefficients (torch accepts dampening tau > 1, where c_g = 1 - tau < 0); for mu >= 0, 0 <= tau <= 1 both
    are >= 0 in all four cases and K_eff = c_g K + c_b rho_b. K_eff then plays K's role in T2's factors."""
    d = sp.Symbol("d", positive=True)
    sigma = sp.Symbol("sigma", nonnegative=True)  # sigma = 1 - tau >= 0
    for nesterov in (False, True):
        for first in (False, True):
            c_g, c_b = S.sgd_momentum_coefficients(nesterov=nesterov, first_step=first)
            k_eff = S.momentum_K_eff(c_g, c_b)
            assert sp.expand(k_eff * d - (sp.Abs(c_g) * K * d + sp.Abs(c_b) * S.RHO_B * d)) == 0
            lo, hi = S.one_step_bounds(eta, k_eff)
            assert sp.expand(hi - (1 + eta * (sp.Abs(c_g) * K + sp.Abs(c_b) * S.RHO_B))) == 0
            assert sp.expand(lo + hi) == 2
            for c in (c_g, c_b):  # tau <= 1: a polynomial in mu, 1 - tau >= 0 with coefficients >= 0 is >= 0
                poly = sp.Poly(sp.expand(c.subs(S.TAU, 1 - sigma)), S.MU, sigma)
                assert all(coef >= 0 for coef in poly.coeffs()), c
            assert sp.expand(k_eff.subs(S.TAU, 1 - sigma) - (c_g * K + c_b * S.RHO_B).subs(S.TAU, 1 - sigma)) == 0
    c_g, c_b = S.sgd_momentum_coefficients()  # heavy ball, tau = 2: c_g = -1, and K_eff takes its size
    assert S.momentum_K_eff(c_g, c_b).subs(S.TAU, 2) == K + S.MU * S.RHO_B


@given(data=st.data(), mu=st.floats(0.0, 0.99), tau=st.floats(0.0, 3.0), nesterov=st.booleans(),
       lr=st.floats(1e-3, 2.0), K_=st.floats(0.0, 5.0), rho=st.floats(0.0, 5.0))
def test_T7_momentum_step_stays_in_the_K_eff_band(data, mu, tau, nesterov, lr, K_, rho):
    """Any gradient and buffer differences within K d and rho_b d give a ratio inside 1 -/+ lr K_eff, for any
    dampening tau >= 0 (c_g < 0 when tau > 1)."""
    dtheta = _vec(data, 3, 1.0)
    dist = float(np.linalg.norm(dtheta))
    if dist < 1e-6:
        return
    dg, db = _vec(data, 3, 1.0), _vec(data, 3, 1.0)
    dg = _with_norm(dg, K_ * dist * data.draw(st.floats(0.0, 1.0)))
    db = _with_norm(db, rho * dist * data.draw(st.floats(0.0, 1.0)))
    c_g, c_b = S.sgd_momentum_coefficients_numeric(mu, tau, nesterov=nesterov)
    k_eff = float(S.momentum_K_eff(c_g, c_b).subs({S.K: K_, S.RHO_B: rho}))
    ratio = float(np.linalg.norm(dtheta - lr * (c_g * dg + c_b * db))) / dist
    lo, hi = S.bounds_numeric(k_eff, lr)
    assert lo - 1e-9 <= ratio <= hi + 1e-9


def test_T7_additive_step_triangle_inequality():
    """theta'_i - theta'_j = (theta_i - theta_j) - eta (u_i - u_j), so | ||.'|| - ||.|| | <= eta ||u_i - u_j||
    <= eta (||u_i|| + ||u_j||) <= 2 eta U = ADDITIVE_DELTA."""
    ti, tj, ui, uj = (sp.Matrix(sp.symbols(f"{n}0:3", real=True)) for n in ("ti", "tj", "ui", "uj"))
    assert sp.simplify(((ti - eta * ui) - (tj - eta * uj)) - ((ti - tj) - eta * (ui - uj))) == sp.zeros(3, 1)
    lo, hi = S.additive_step_bounds()
    assert sp.expand(hi - S.DIST) == sp.expand(S.DIST - lo) == eta * S.DU
    assert sp.expand(S.additive_step_bounds(du=2 * S.U_SUP)[1] - S.DIST - S.ADDITIVE_DELTA) == 0


@given(data=st.data(), lr=st.floats(1e-3, 1.0), u_sup=st.floats(0.0, 3.0))
def test_T7_additive_step_moves_rips_diagrams_by_at_most_delta(data, lr, u_sup):
    """Every pairwise distance moves by at most delta, so VR_r(X) c VR_{r+delta}(X') and back: the absolute
    Rips diagrams (ripser, diameter filtration) are within bottleneck distance delta (persim's convention)."""
    rng = np.random.default_rng(data.draw(st.integers(0, 2**31)))
    X = rng.normal(size=(18, 2))
    u = rng.normal(size=X.shape)
    u *= u_sup * rng.uniform(0, 1, size=(len(X), 1)) / np.linalg.norm(u, axis=1, keepdims=True)
    Y = X - lr * u
    delta = S.additive_delta_numeric(lr, u_sup)
    dx = np.linalg.norm(X[:, None] - X[None], axis=-1)
    dy = np.linalg.norm(Y[:, None] - Y[None], axis=-1)
    assert np.max(np.abs(dy - dx)) <= delta + 1e-12
    dgx, dgy = ripser.ripser(X, maxdim=1)["dgms"], ripser.ripser(Y, maxdim=1)["dgms"]
    for a, b in zip(dgx, dgy):
        a, b = a[np.isfinite(a[:, 1])], b[np.isfinite(b[:, 1])]
        assert persim.bottleneck(a, b) <= delta + 1e-9


def test_T7_sign_rule_update_norm_is_sqrt_D():
    """A sign rule's update of one neuron has entries in {-1, 0, 1}: its norm is at most sqrt(D), with equality
    for entries +-1; so U = sqrt(D) and delta = 2 lr sqrt(D)."""
    assert S.sign_rule_sup_norm() == sp.sqrt(S.DIM)
    for dim in range(1, 6):
        norms = {math.sqrt(sum(v * v for v in signs)) for signs in itertools.product((-1, 0, 1), repeat=dim)}
        assert max(norms) == pytest.approx(float(S.sign_rule_sup_norm(dim)))
    g = torch.randn(1000, 7, dtype=torch.float64)
    assert float(torch.sign(g).norm(dim=1).max()) <= float(S.sign_rule_sup_norm(7)) + 1e-12
    assert S.ADDITIVE_DELTA.subs(S.U_SUP, S.sign_rule_sup_norm()) == 2 * eta * sp.sqrt(S.DIM)


# --------------------------------------------------------------------------------------------- T8


def test_T8_collective_mode_changes_no_pairwise_distance():
    """Moving every neuron by the same vector v leaves every theta_i - theta_j unchanged."""
    thetas = [sp.Matrix(sp.symbols(f"t{i}_0:3", real=True)) for i in range(4)]
    v = sp.Matrix(sp.symbols("v0:3", real=True))
    for i, j in itertools.combinations(range(4), 2):
        assert sp.simplify((thetas[i] + v) - (thetas[j] + v) - (thetas[i] - thetas[j])) == sp.zeros(3, 1)


@pytest.mark.parametrize("n", [2, 3, 5])
def test_T8_K_can_be_far_below_lambda_max(n):
    """u = (c 11^T + k I) theta: lambda_max = n c + k on the collective mode, every other eigenvalue is k (the
    pairwise-difference directions), and u_i - u_j = k (theta_i - theta_j), so K = k while lambda_max / K
    grows without bound in n and c."""
    c, k = sp.symbols("c k", positive=True)
    ex = S.collective_mode_example(n, c, k)
    assert all(r == 0 for r in ex.pairwise_residuals) and ex.pairwise_K == k
    assert ex.matrix.eigenvals() == {n * c + k: 1, k: n - 1}
    assert sp.simplify(ex.lambda_max - (n * c + k)) == 0 and ex.collective_eigenvalue == n * c + k
    assert sp.limit(ex.lambda_max / ex.pairwise_K, c, sp.oo) == sp.oo
    with pytest.raises(TopoverifyError):
        S.collective_mode_example(1)

