"""Symbolic forms of T1–T8 (topoverify.symbolic) and the numeric functions lambdified from them."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import sympy as sp
import torch
from hypothesis import given
from hypothesis import strategies as st

import topoverify.symbolic as S
from topoverify.cli.main import main
from topoverify.errors import TopoverifyError
from topoverify.symbolic import momentum_K_eff_numeric

pos_K = st.floats(min_value=1e-6, max_value=1e6, allow_nan=False, allow_infinity=False)
pos_lr = st.floats(min_value=1e-6, max_value=10.0, allow_nan=False, allow_infinity=False)
unit_x = st.floats(min_value=0.0, max_value=0.999999, allow_nan=False)


# --------------------------------------------------------------------------------------------- T1


def test_T1_field_identity_residuals_vanish():
    # default: tanh layer, tanh output; and a different activation / output non-linearity, 3 neurons
    assert all(r == 0 for r in S.field_identity_residuals())
    res = S.field_identity_residuals(3, 3, activation=lambda u: u**3 + sp.sin(u), output=sp.exp)
    assert len(res) == 9 and all(r == 0 for r in res)


def test_T1_transposition_identity_for_generic_equivariant_rule():
    rule = S.generic_equivariant_rule(3)
    assert all(r == 0 for r in S.equivariance_residuals(rule))  # the generic rule is equivariant on S_3
    assert all(r == 0 for r in S.transposition_identity_residuals(3))
    assert all(r == 0 for r in S.transposition_identity_residuals(4))


def test_T1_transposition_identity_fails_with_unpermuted_per_coordinate_noise():
    res = S.transposition_identity_residuals(3, noise=True)
    assert any(r != 0 for r in res)


# --------------------------------------------------------------------------------------------- T2


def test_T2_one_step_bounds_expressions():
    lo, hi = S.one_step_bounds()
    assert sp.simplify(lo - (1 - S.ETA * S.K)) == 0
    assert sp.simplify(hi - (1 + S.ETA * S.K)) == 0
    assert S.ONE_STEP_BOUNDS == (lo, hi)
    # function form with other arguments
    a, b = sp.symbols("a b", positive=True)
    assert S.one_step_bounds(a, b) == (1 - a * b, 1 + a * b)
    # the interval is centred at 1 with half-width eta*K
    assert sp.simplify((lo + hi) / 2) == 1 and sp.simplify((hi - lo) / 2 - S.ETA * S.K) == 0


@given(K=st.floats(min_value=0.0, max_value=1e4, allow_nan=False), lr=pos_lr)
def test_T2_numeric_bounds_agree_with_sympy(K, lr):
    lo_e, hi_e = S.one_step_bounds()
    lo, hi = S.bounds_numeric(K, lr)
    exact_lo = float(lo_e.subs({S.K: sp.Float(K), S.ETA: sp.Float(lr)}))
    exact_hi = float(hi_e.subs({S.K: sp.Float(K), S.ETA: sp.Float(lr)}))
    assert isinstance(lo, float) and isinstance(hi, float)
    assert lo == pytest.approx(exact_lo, rel=1e-12, abs=1e-12)
    assert hi == pytest.approx(exact_hi, rel=1e-12, abs=1e-12)
    # numpy arrays and torch tensors give the same numbers
    lo_np, hi_np = S.bounds_numeric(np.array([K, K]), lr)
    lo_t, hi_t = S.bounds_numeric(torch.tensor([K, K], dtype=torch.float64), lr)
    assert isinstance(lo_t, torch.Tensor) and lo_t.dtype == torch.float64
    np.testing.assert_allclose(lo_np, [lo, lo], rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(lo_t.numpy(), [lo, lo], rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(hi_t.numpy(), hi_np, rtol=1e-12)


def test_T2_numeric_bounds_torch_keeps_dtype_and_broadcasts():
    lo, hi = S.bounds_numeric(torch.tensor([1.0, 2.0], dtype=torch.float32), torch.tensor(0.1))
    assert lo.dtype == torch.float32
    torch.testing.assert_close(lo, torch.tensor([0.9, 0.8]))
    torch.testing.assert_close(hi, torch.tensor([1.1, 1.2]))
    lo_inf, hi_inf = S.bounds_numeric(math.inf, 0.1)
    assert lo_inf == -math.inf and hi_inf == math.inf


# --------------------------------------------------------------------------------------------- T3


def test_T3_solved_eta_star_is_one_over_K():
    solved = S.solve_eta_star()
    assert sp.simplify(solved - 1 / S.K) == 0
    assert sp.simplify(S.ETA_STAR - 1 / S.K) == 0
    # eta* is the boundary of the positivity condition: below it the condition holds, above it fails
    cond = S.positivity_condition()
    assert cond.subs(S.ETA, S.ETA_STAR / 2) == sp.true
    assert cond.subs(S.ETA, 2 * S.ETA_STAR) == sp.false
    assert sp.simplify(S.one_step_bounds()[0].subs(S.ETA, S.ETA_STAR)) == 0
    # the solver works for other symbols too (it is not a stored constant)
    a, b = sp.symbols("a b", positive=True)
    assert sp.simplify(S.solve_eta_star(a, b) - 1 / b) == 0


@given(K=pos_K)
def test_T3_eta_star_numeric_matches_solver(K):
    exact = float(S.ETA_STAR.subs(S.K, sp.Float(K, 30)))
    assert S.eta_star_numeric(K) == pytest.approx(exact, rel=1e-12)
    assert S.eta_star_numeric(K) == pytest.approx(1.0 / K, rel=1e-12)
    t = S.eta_star_numeric(torch.tensor([K], dtype=torch.float64))
    assert float(t[0]) == pytest.approx(1.0 / K, rel=1e-12)


def test_T3_eta_star_edge_cases():
    assert S.eta_star_numeric(0.0) == math.inf
    assert S.eta_star_numeric(math.inf) == 0.0
    np.testing.assert_array_equal(S.eta_star_numeric(np.array([0.0, 4.0])), [math.inf, 0.25])
    t = S.eta_star_numeric(torch.tensor([0.0, 4.0]))
    assert torch.isinf(t[0]) and float(t[1]) == 0.25


# --------------------------------------------------------------------------------------------- T4


@pytest.mark.parametrize("n", [1, 2, 3, 5])
def test_T4_composition_equals_product(n):
    lo_c, hi_c = S.compose_one_step(n)
    lo_p, hi_p = S.multistep_bounds(n)
    assert sp.expand(lo_c - lo_p.doit()) == 0
    assert sp.expand(hi_c - hi_p.doit()) == 0


def test_T4_constant_rate_is_power():
    lo, hi = S.constant_rate_multistep_bounds()
    assert sp.simplify(lo - (1 - S.ETA * S.K) ** S.T) == 0
    assert sp.simplify(hi - (1 + S.ETA * S.K) ** S.T) == 0
    # composing the constant one-step bound T times gives the same thing
    for n in (1, 4):
        lo_c, hi_c = S.compose_one_step(n)
        subs = {S.ETA_T[t]: S.ETA for t in range(1, n + 1)} | {S.K_T[t]: S.K for t in range(1, n + 1)}
        assert sp.expand(lo_c.subs(subs) - lo.subs(S.T, n)) == 0
        assert sp.expand(hi_c.subs(subs) - hi.subs(S.T, n)) == 0


@given(
    data=st.lists(
        st.tuples(st.floats(0.0, 50.0, allow_nan=False), st.floats(1e-4, 0.5, allow_nan=False)),
        min_size=1,
        max_size=12,
    )
)
def test_T4_numeric_multistep_composes(data):
    Ks = np.array([k for k, _ in data])
    lrs = np.array([lr for _, lr in data])
    res = S.multistep_bounds_numeric(Ks, lrs)
    lower, upper = res  # unpacks like a tuple
    # reference: compose the one-step numeric bounds step by step, clipping the lower factor at 0
    lo_ref, hi_ref = 1.0, 1.0
    for k, lr in data:
        lo1, hi1 = S.bounds_numeric(k, lr)
        lo_ref *= max(lo1, 0.0)
        hi_ref *= hi1
    assert lower == pytest.approx(lo_ref, rel=1e-9, abs=1e-300)
    assert upper == pytest.approx(hi_ref, rel=1e-9)
    assert res.clipped == any(k * lr >= 1 for k, lr in data)
    # and the symbolic product, evaluated, agrees where all factors are positive
    if not res.clipped:
        n = len(data)
        lo_e, hi_e = S.multistep_bounds(n)
        subs = {S.ETA_T[t + 1]: sp.Float(lr, 30) for t, (_, lr) in enumerate(data)}
        subs |= {S.K_T[t + 1]: sp.Float(k, 30) for t, (k, _) in enumerate(data)}
        assert lower == pytest.approx(float(lo_e.doit().subs(subs)), rel=1e-9, abs=1e-300)
        assert upper == pytest.approx(float(hi_e.doit().subs(subs)), rel=1e-9)
    # cumulative form: numpy and torch agree and end at the totals
    cum = S.multistep_bounds_numeric(Ks, lrs, cumulative=True)
    cum_t = S.multistep_bounds_numeric(torch.tensor(Ks), torch.tensor(lrs), cumulative=True)
    np.testing.assert_allclose(cum_t.lower.numpy(), cum.lower, rtol=1e-12)
    np.testing.assert_allclose(cum_t.upper.numpy(), cum.upper, rtol=1e-12)
    assert cum.lower[-1] == pytest.approx(lower, rel=1e-12, abs=1e-300)
    assert np.all(np.diff(cum.upper) >= 0)


def test_T4_two_negative_factors_do_not_make_a_positive_lower_bound():
    res = S.multistep_bounds_numeric([20.0, 20.0], 0.1)  # raw factors (-1)(-1) = 1 would be wrong
    assert res.lower == 0.0 and res.clipped and res.first_nonpositive_step == 0
    assert res.upper == pytest.approx(9.0)
    assert "clipped" in str(res)


# --------------------------------------------------------------------------------------------- T5


def test_T5_epsilon_picks_lower_side():
    assert S.lower_side_dominates()
    assert sp.simplify(S.EPSILON + sp.log(1 - S.ETA * S.K)) == 0
    # the max(log b, -log a) form evaluated at a point of the preserving phase gives the lower side
    a, b = S.one_step_bounds()
    eps_max = S.interleaving_epsilon(a, b)
    for x in (sp.Rational(1, 10), sp.Rational(1, 2), sp.Rational(99, 100)):
        v = eps_max.subs({S.ETA: x, S.K: 1})
        assert sp.simplify(v - (-sp.log(1 - x))) == 0


@given(x=unit_x)
def test_T5_epsilon_at_least_log_one_plus(x):
    assert S.interleaving_epsilon_numeric(1 - x, 1 + x) >= math.log1p(x) - 1e-15
    eps = S.epsilon_numeric(1.0, x) if x > 0 else 0.0
    assert eps >= math.log1p(x) - 1e-12


def test_T5_epsilon_blows_up_at_eta_star():
    assert S.epsilon_blows_up_at_eta_star()
    assert sp.limit(S.EPSILON.subs(S.ETA, S.X / S.K), S.X, 1, dir="-") == sp.oo
    assert S.epsilon_numeric(2.0, 0.5) == math.inf
    assert S.epsilon_numeric(2.0, 0.6) == math.inf
    assert S.epsilon_numeric(2.0, 0.5 - 1e-12) > 20


@given(K=st.floats(min_value=0.0, max_value=1e3, allow_nan=False), lr=pos_lr)
def test_T5_epsilon_numeric_agrees_with_sympy(K, lr):
    eps = S.epsilon_numeric(K, lr)
    if K * lr >= 1:
        assert eps == math.inf
    else:
        exact = float(S.EPSILON.subs({S.K: sp.Float(K, 30), S.ETA: sp.Float(lr, 30)}))
        assert eps == pytest.approx(exact, rel=1e-9, abs=1e-15)
    t = S.epsilon_numeric(torch.tensor([K], dtype=torch.float64), lr)
    n = S.epsilon_numeric(np.array([K]), lr)
    assert float(t[0]) == pytest.approx(float(n[0]), rel=1e-12, abs=1e-15) or (
        math.isinf(float(t[0])) and math.isinf(float(n[0]))
    )


def test_T5_scale_free_epsilon_is_smaller():
    x = sp.Symbol("x", positive=True)
    e_sf = S.EPSILON_SCALE_FREE.subs(S.ETA, x / S.K)
    e = S.EPSILON.subs(S.ETA, x / S.K)
    # eps - eps_scale_free = (-log(1-x) - log(1+x))/2 = -log(1 - x^2)/2 >= 0
    diff = sp.simplify(sp.expand_log(e - e_sf, force=True) - (-sp.log(1 - x) - sp.log(1 + x)) / 2)
    assert diff == 0
    assert sp.simplify(e_sf.rewrite(sp.atanh) - sp.atanh(x)) == 0 or math.isclose(
        float(e_sf.subs(x, sp.Rational(1, 3))), math.atanh(1 / 3), rel_tol=1e-12
    )


# --------------------------------------------------------------------------------------------- T6


def test_T6_absorbing_residuals_vanish():
    assert S.absorbing_symmetry_residuals() == [0, 0]
    assert S.absorbing_symmetry_residuals(4, 1, 3) == [0, 0]


def test_T6_per_coordinate_noise_leaves_residual():
    du, ds = S.absorbing_symmetry_residuals(noise=True)
    xi0, xi1 = sp.symbols("xi0 xi1", real=True)
    assert sp.simplify(du - (xi0 - xi1)) == 0
    assert ds == 0


# --------------------------------------------------------------------------------------------- T7


def test_T7_momentum_coefficients_follow_from_the_sgd_recursion():
    mu, tau = S.MU, S.TAU
    assert S.sgd_momentum_coefficients() == (1 - tau, mu)
    c_g, c_b = S.sgd_momentum_coefficients(nesterov=True)
    assert sp.simplify(c_g - (1 + mu * (1 - tau))) == 0 and sp.simplify(c_b - mu**2) == 0
    assert S.sgd_momentum_coefficients(first_step=True) == (1, 0)
    c_g, c_b = S.sgd_momentum_coefficients(nesterov=True, first_step=True)
    assert sp.simplify(c_g - (1 + mu)) == 0 and c_b == 0
    with pytest.raises(TopoverifyError, match="momentum"):
        S.sgd_momentum_coefficients_numeric(-0.5)


@given(mu=st.floats(0.05, 0.99), tau=st.floats(0.0, 1.0), nesterov=st.booleans(), lr=st.floats(1e-3, 1.0),
       g1=st.floats(-3, 3), g2=st.floats(-3, 3))
def test_T7_momentum_coefficients_match_torch_sgd(mu, tau, nesterov, lr, g1, g2):
    """Two real torch.optim.SGD steps on one coordinate: each moves it by lr (c_g g + c_b b), b the buffer
    before the step (T7(a)); torch's Nesterov needs zero dampening."""
    tau = 0.0 if nesterov else tau
    p = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.SGD([p], lr=lr, momentum=mu, dampening=tau, nesterov=nesterov)
    buffer = 0.0
    for first, g in ((True, g1), (False, g2)):
        c_g, c_b = S.sgd_momentum_coefficients_numeric(mu, tau, nesterov=nesterov, first_step=first)
        before = float(p.detach())
        p.grad = torch.tensor([g], dtype=torch.float64)
        opt.step()
        assert before - float(p.detach()) == pytest.approx(lr * (c_g * g + c_b * buffer), rel=1e-12, abs=1e-14)
        buffer = float(opt.state[p]["momentum_buffer"])


@given(lr=pos_lr, u_sup=st.floats(0.0, 1e3, allow_nan=False))
def test_T7_additive_delta_numeric_agrees_with_sympy(lr, u_sup):
    assert S.ADDITIVE_DELTA == 2 * S.ETA * S.U_SUP
    exact = float(S.ADDITIVE_DELTA.subs({S.ETA: sp.Float(lr, 30), S.U_SUP: sp.Float(u_sup, 30)}))
    assert S.additive_delta_numeric(lr, u_sup) == pytest.approx(exact, rel=1e-12, abs=1e-300)


def test_T7_dampening_above_one_gives_negative_c_g_and_K_eff_takes_its_size():
    """torch accepts dampening tau > 1: c_g = 1 - tau < 0, and K_eff = |c_g| K + |c_b| rho_b stays >= 0."""
    assert S.sgd_momentum_coefficients_numeric(0.9, 2.0) == pytest.approx((-1.0, 0.9))
    c_g, c_b = S.sgd_momentum_coefficients()
    assert S.momentum_K_eff(c_g, c_b).subs({S.TAU: 3, S.MU: sp.Rational(1, 2)}) == 2 * S.K + S.RHO_B / 2
    assert momentum_K_eff_numeric(-1.0, 0.9, 2.0, 1.0) == pytest.approx(2.9)


def test_T7_K_eff_numeric_drops_a_term_whose_coefficient_is_zero():
    """A zero coefficient means the term is absent: 0 * inf is 0 there, never NaN."""
    assert momentum_K_eff_numeric(0.0, 0.9, math.inf, 2.0) == pytest.approx(1.8)
    assert momentum_K_eff_numeric(1.5, 0.0, 2.0, math.inf) == pytest.approx(3.0)
    assert momentum_K_eff_numeric(0.5, 0.9, math.inf, 1.0) == math.inf
    assert momentum_K_eff_numeric(0.0, 0.0, math.inf, math.inf) == 0.0
    with pytest.raises(TopoverifyError, match="K"):
        momentum_K_eff_numeric(1.0, 0.0, float("nan"), 0.0)


@pytest.mark.parametrize("args", [(True, 0.0), (0.9, False), (0.9, None), ("0.9", 0.0), (0.9, float("inf"))])
def test_T7_momentum_coefficients_reject_bools_and_non_numbers(args):
    with pytest.raises(TopoverifyError, match="momentum|dampening"):
        S.sgd_momentum_coefficients_numeric(*args)


def test_T7_additive_delta_bad_input_names_the_fix():
    with pytest.raises(TopoverifyError, match="lr"):
        S.additive_delta_numeric(0.0, 1.0)
    with pytest.raises(TopoverifyError, match="sqrt"):
        S.additive_delta_numeric(0.1, -1.0)


# --------------------------------------------------------------------------------------------- T8


def test_T8_gd_on_a_quadratic_is_stable_iff_eta_lambda_below_2():
    assert sp.simplify(S.gd_quadratic_step() - (1 - S.ETA * S.LAM)) == 0
    assert S.solve_gd_quadratic_stability() == sp.Interval.open(0, 2 / S.LAM)
    assert S.EDGE_OF_STABILITY == 2 / S.LAM
    # the iteration itself: |x_t| -> 0 inside, stays (|factor| = 1) at the edge, grows outside
    lam = 3.0
    for eta_lam, expect in ((0.5, "converges"), (1.9, "converges"), (2.0, "stays"), (2.1, "grows"), (-0.1, "grows")):
        factor = float(S.gd_quadratic_step().subs({S.ETA: eta_lam / lam, S.LAM: lam}))
        x = 1.0
        for _ in range(200):
            x *= factor
        got = "converges" if abs(x) < 1e-3 else ("stays" if abs(x) == pytest.approx(1.0) else "grows")
        assert got == expect, (eta_lam, x)


@given(lam=st.floats(1e-6, 1e6, allow_nan=False))
def test_T8_edge_of_stability_numeric_agrees_with_sympy(lam):
    exact = float(S.EDGE_OF_STABILITY.subs(S.LAM, sp.Float(lam, 30)))
    assert S.edge_of_stability_numeric(lam) == pytest.approx(exact, rel=1e-12)
    assert S.edge_of_stability_numeric(0.0) == math.inf  # no curvature: no rate blows it up
    with pytest.raises(TopoverifyError, match="diverges"):  # lambda < 0: GD diverges at every rate
        S.edge_of_stability_numeric(-lam)
    with pytest.raises(TopoverifyError, match="NaN"):
        S.edge_of_stability_numeric(float("nan"))


@pytest.mark.parametrize("bad", [None, "two", True, [2.0]])
def test_T8_edge_of_stability_numeric_rejects_non_numbers(bad):
    with pytest.raises(TopoverifyError, match="lambda"):
        S.edge_of_stability_numeric(bad)


@pytest.mark.parametrize("eta", [sp.Symbol("eta", real=True), sp.Symbol("eta"), sp.Symbol("h", positive=True)])
def test_T8_stability_set_is_solved_over_all_reals(eta):
    """The lower end 0 is found, not assumed: eta's own assumptions (real, none, positive) do not change the
    solved set, and reduce_inequalities agrees on both ends."""
    assert S.solve_gd_quadratic_stability(eta=eta) == sp.Interval.open(0, 2 / S.LAM)


def test_T8_stability_set_needs_a_positive_curvature():
    assert S.solve_gd_quadratic_stability(lam=4) == sp.Interval.open(0, sp.Rational(1, 2))
    with pytest.raises(TopoverifyError, match="positive"):
        S.solve_gd_quadratic_stability(lam=sp.Symbol("l", negative=True))


# --------------------------------------------------------------------------------------------- summary / CLI


def test_bound_summary_fields_and_str():
    s = S.bound_summary(2.5, 0.1, 10)
    assert s.eta_star == pytest.approx(0.4)
    assert s.phase == "preserving"
    assert (s.one_step_lower, s.one_step_upper) == pytest.approx((0.75, 1.25))
    assert s.multistep_lower == pytest.approx(0.75**10) and s.multistep_upper == pytest.approx(1.25**10)
    assert s.epsilon == pytest.approx(S.interleaving_epsilon_numeric(0.75, 1.25))
    assert s.survival_threshold == pytest.approx(2 * s.epsilon)
    text = str(s)
    assert "eta*" in text and "preserving" in text and "10-step" in text
    d = s.to_dict()
    json.dumps(d)
    assert d["phase"] == "preserving" and d["steps"] == 10


def test_bound_summary_breakdown_phase_and_json_infinities():
    s = S.bound_summary(2.5, 0.5, 3)
    assert s.phase == "breakdown-possible"
    assert s.epsilon == math.inf and s.multistep_lower == 0.0 and s.multistep_clipped
    d = s.to_dict()
    assert d["epsilon"] == "inf"
    json.dumps(d, allow_nan=False)
    z = S.bound_summary(0.0, 0.1, 5)
    assert z.eta_star == math.inf and z.epsilon == 0.0 and z.phase == "preserving"
    assert (z.multistep_lower, z.multistep_upper) == (1.0, 1.0)


@pytest.mark.parametrize(
    "args, word",
    [
        ((-1.0, 0.1, 1), "K"),
        ((float("nan"), 0.1, 1), "K"),
        ((1.0, 0.0, 1), "lr"),
        ((1.0, -0.1, 1), "lr"),
        ((1.0, float("nan"), 1), "lr"),
        ((1.0, float("inf"), 1), "lr"),
        ((1.0, 0.1, 0), "steps"),
        ((1.0, 0.1, 2.5), "steps"),
        (("2", 0.1, 1), "K"),
    ],
)
def test_bad_inputs_raise(args, word):
    with pytest.raises(TopoverifyError, match=word):
        S.bound_summary(*args)


def test_bad_numeric_inputs_raise():
    with pytest.raises(TopoverifyError, match="K"):
        S.bounds_numeric(-1.0, 0.1)
    with pytest.raises(TopoverifyError, match="lr"):
        S.epsilon_numeric(1.0, np.array([0.1, float("nan")]))
    with pytest.raises(TopoverifyError, match="K"):
        S.eta_star_numeric(torch.tensor([1.0, -2.0]))
    with pytest.raises(TopoverifyError, match="1-D"):
        S.multistep_bounds_numeric(np.ones((2, 2)), 0.1)
    with pytest.raises(TopoverifyError):
        S.compose_one_step(0)
    with pytest.raises(TopoverifyError):
        S.absorbing_symmetry_residuals(3, 1, 1)


def test_bounds_command(capsys):
    assert main(["bounds", "--K", "2.5", "--lr", "0.1", "--steps", "10"]) == 0
    out = capsys.readouterr().out
    assert "eta* = 1/K" in out and "0.4" in out
    assert main(["bounds", "--K", "2.5", "--lr", "0.1", "--steps", "10", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["eta_star"] == pytest.approx(0.4)
    assert main(["bounds", "--K", "-2.5", "--lr", "0.1", "--steps", "10"]) == 2
    assert "K must be" in capsys.readouterr().err
