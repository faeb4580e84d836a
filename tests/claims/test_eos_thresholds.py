"""T8: the edges of stability of GD, heavy-ball momentum and Adam (frozen P) derived in sympy from the Jury
conditions of each recursion's characteristic polynomial, held against simulating the recursion on a 1-D
quadratic on both sides of the edge, and against torch.optim.SGD itself."""

from __future__ import annotations

import math

import pytest
import sympy as sp
import torch
from hypothesis import given
from hypothesis import strategies as st

from topoverify.errors import TopoverifyError
from topoverify.symbolic import stability as S

_Z = sp.Symbol("z")


def test_T8_edges_are_the_known_closed_forms():
    assert sp.simplify(S.MOMENTUM_EDGE - 2 * (1 + S.MU) / (1 - S.TAU)) == 0
    assert sp.simplify(S.ADAM_EDGE - (2 + 2 * S.BETA1) / (1 - S.BETA1)) == 0
    gd = S.rate_stability_interval(_Z - (1 - S.H_RATE), z=_Z)  # GD: one state, factor 1 − h
    assert gd.interval == sp.Interval.open(0, 2) and gd.requires == ()
    assert sp.simplify(gd.edge / S.LAM - S.EDGE_OF_STABILITY) == 0
    hb = S.rate_stability_interval(S.momentum_transition(tau=0).charpoly(_Z).as_expr(), z=_Z)
    assert hb.interval == sp.Interval.open(0, 2 + 2 * S.MU)
    assert hb.requires == (1 - S.MU > 0,)   # |a0| = μ < 1 is the assumption, not solved for h
    assert sp.simplify(S.MOMENTUM_EDGE.subs({S.MU: 0, S.TAU: 0}) - 2) == 0  # plain GD again


def test_T8_jury_solver_refuses_what_it_cannot_decide():
    h = S.H_RATE
    with pytest.raises(TopoverifyError, match="degree 1 or 2"):
        S.rate_stability_interval(_Z**3 - h, z=_Z)
    with pytest.raises(TopoverifyError, match="not linear"):
        S.rate_stability_interval(_Z - (1 - h**2), z=_Z)
    with pytest.raises(TopoverifyError, match="sign"):
        S.rate_stability_interval(_Z - (1 - sp.Symbol("a", real=True) * h), z=_Z)


def _momentum_blows_up(h: float, mu: float, tau: float, steps: int = 3000) -> bool:
    """torch SGD's recursion on q(x) = x²/2 (λ = 1, lr = h): b ← μb + (1 − τ)x, x ← x − h b."""
    x, b = 1.0, 0.0
    for t in range(steps):
        b = (mu * b + (1 - tau) * x) if t else x  # torch: the first buffer is the gradient itself
        x -= h * b
        if abs(x) > 1e12:
            return True
    assert abs(x) < 1e-6  # and below the edge it has converged
    return False


def _adam_frozen_blows_up(h: float, beta1: float, p: float, steps: int = 3000) -> bool:
    """Adam with P frozen on q(x) = λx²/2, λ = p·h/lr: m ← β₁m + (1 − β₁)g, x ← x − lr·m/P (lr = 1)."""
    lam, x, m = p * h, 1.0, 0.0
    for _ in range(steps):
        m = beta1 * m + (1 - beta1) * lam * x
        x -= m / p
        if abs(x) > 1e12:
            return True
    assert abs(x) < 1e-6
    return False


_side = st.one_of(st.floats(0.4, 0.9), st.floats(1.1, 1.6))


@given(mu=st.floats(0.0, 0.95), tau=st.floats(0.0, 0.9), side=_side)
def test_T8_momentum_edge_matches_simulation_on_both_sides(mu, tau, side):
    edge = S.momentum_edge_numeric(mu, tau)
    assert edge == pytest.approx(float(S.MOMENTUM_EDGE.subs({S.MU: mu, S.TAU: tau})), rel=1e-12)
    assert _momentum_blows_up(side * edge, mu, tau) == (side > 1)


@given(beta1=st.floats(0.0, 0.95), p=st.floats(1e-3, 1e3), side=_side)
def test_T8_adam_edge_matches_simulation_on_both_sides(beta1, p, side):
    edge = S.adam_edge_numeric(beta1)
    assert edge == pytest.approx(float(S.ADAM_EDGE.subs(S.BETA1, beta1)), rel=1e-12)
    assert _adam_frozen_blows_up(side * edge, beta1, p) == (side > 1)


@pytest.mark.parametrize("mu,side", [(0.0, 0.9), (0.0, 1.1), (0.9, 0.9), (0.9, 1.1)])
def test_T8_momentum_edge_against_torch_sgd(mu, side):
    lam = 3.0
    lr = side * S.momentum_edge_numeric(mu) / lam
    x = torch.ones(1, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.SGD([x], lr=lr, momentum=mu)
    for _ in range(800):
        opt.zero_grad()
        (lam * x ** 2 / 2).sum().backward()
        opt.step()
        if not abs(float(x.detach())) < 1e6:
            break
    final = abs(float(x.detach()))
    assert (not final < 1e6) == (side > 1) and (final < 1e-6) == (side < 1)


@pytest.mark.parametrize("bad", [-0.1, 1.0, 1.5, float("nan"), "x"])
def test_T8_edges_reject_hyper_parameters_outside_their_range(bad):
    with pytest.raises(TopoverifyError):
        S.adam_edge_numeric(bad)
    with pytest.raises(TopoverifyError):
        S.momentum_edge_numeric(bad)
    assert math.isfinite(S.momentum_edge_numeric(0.5, 0.5))
