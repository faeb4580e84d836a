"""Symbolic forms of the equivariance claims: T1 (transposition identity, one update field) and T6 (symmetry
is absorbing), computed with sympy on small generic examples.

* A *generic equivariant rule* on N neurons with scalar parameter ``theta_i`` and scalar optimizer state
  ``s_i`` is built as ``U_i = f(theta_i, s_i, P)``, ``S_i = h(theta_i, s_i, P)`` with ``f, h`` undefined
  sympy functions and ``P`` a tuple of permutation-invariant power sums ``sum_j theta_j**a * s_j**b``.  Every
  such rule is permutation-equivariant (checked over all of S_N by :func:`equivariance_residuals`) and
  nothing else is assumed about ``f`` and ``h``.
* :func:`transposition_identity_residuals` returns ``u_j(theta) - u_i(tau_ij theta)`` (T1, first part).
* :func:`absorbing_symmetry_residuals` returns ``U_i - U_j`` and ``S_i - S_j`` at a state with
  ``theta_i = theta_j``, ``s_i = s_j`` (T6); with ``noise=True`` a per-coordinate random term ``xi_i`` is added
  and the residual is ``xi_i - xi_j``, not 0.
* :func:`field_identity_residuals` checks T1's update field on a two-layer network: the loss gradient of
  neuron i equals ``grad Phi(theta_i)`` with ``Phi(z) = sum_x delta(x) * a * sigma(w*x + b)`` and the
  back-propagated signal ``delta`` held at its pre-step value.
"""

from __future__ import annotations

import dataclasses
import itertools
from typing import Callable

import sympy as sp

from topoverify.errors import TopoverifyError

__all__ = [
    "SymbolicRule",
    "generic_equivariant_rule",
    "apply_rule",
    "equivariance_residuals",
    "transposition_identity_residuals",
    "absorbing_symmetry_residuals",
    "field_identity_residuals",
]


@dataclasses.dataclass(frozen=True)
class SymbolicRule:
    """A symbolic learning rule on N neurons: update ``U`` and state map ``S`` (one expression per neuron)."""

    n: int
    thetas: tuple[sp.Symbol, ...]
    states: tuple[sp.Symbol, ...]
    noise: tuple[sp.Symbol, ...]
    U: tuple[sp.Expr, ...]
    S: tuple[sp.Expr, ...]


def _power_sums(thetas: tuple[sp.Expr, ...], states: tuple[sp.Expr, ...], degree: int) -> tuple[sp.Expr, ...]:
    sums = []
    for a in range(degree + 1):
        for b in range(degree + 1 - a):
            if a + b == 0:
                continue
            sums.append(sp.Add(*[t**a * s**b for t, s in zip(thetas, states)]))
    return tuple(sums)


def generic_equivariant_rule(n: int = 3, *, degree: int = 2, noise: bool = False) -> SymbolicRule:
    """Build ``U_i = f(theta_i, s_i, P) [+ xi_i]``, ``S_i = h(theta_i, s_i, P)`` for ``i = 0..n-1``.

    With ``noise=True`` each neuron gets its own random symbol ``xi_i`` in the update (per-coordinate noise,
    a rule that is equivariant only when the noise is permuted along, i.e. in distribution).
    """
    if n < 2:
        raise TopoverifyError(f"n must be >= 2 (got {n}); symmetry needs at least two neurons")
    thetas = sp.symbols(f"theta0:{n}", real=True)
    states = sp.symbols(f"s0:{n}", real=True)
    xis = sp.symbols(f"xi0:{n}", real=True) if noise else ()
    f, h = sp.Function("f"), sp.Function("h")
    P = _power_sums(thetas, states, degree)
    U = tuple(f(thetas[i], states[i], *P) + (xis[i] if noise else 0) for i in range(n))
    S = tuple(h(thetas[i], states[i], *P) for i in range(n))
    return SymbolicRule(n=n, thetas=thetas, states=states, noise=xis, U=U, S=S)


def apply_rule(rule: SymbolicRule, thetas: tuple[sp.Expr, ...], states: tuple[sp.Expr, ...]) -> tuple[
    tuple[sp.Expr, ...], tuple[sp.Expr, ...]
]:
    """Evaluate the rule at another state (simultaneous substitution; the noise symbols stay in place)."""
    subs = dict(zip(rule.thetas, thetas)) | dict(zip(rule.states, states))
    return (
        tuple(u.subs(subs, simultaneous=True) for u in rule.U),
        tuple(s.subs(subs, simultaneous=True) for s in rule.S),
    )


def equivariance_residuals(rule: SymbolicRule) -> list[sp.Expr]:
    """``U(P theta, P s) - P U(theta, s)`` and the same for ``S``, for every permutation P of S_N."""
    out: list[sp.Expr] = []
    for perm in itertools.permutations(range(rule.n)):
        pt = tuple(rule.thetas[p] for p in perm)
        ps = tuple(rule.states[p] for p in perm)
        U_p, S_p = apply_rule(rule, pt, ps)
        for i, p in enumerate(perm):
            # (P v)_i = v_{perm[i]}; with noise the noise is *not* permuted (one realisation of xi)
            out.append(sp.simplify(U_p[i] - rule.U[p]))
            out.append(sp.simplify(S_p[i] - rule.S[p]))
    return out


def _transposition(n: int, i: int, j: int) -> list[int]:
    perm = list(range(n))
    perm[i], perm[j] = perm[j], perm[i]
    return perm


def transposition_identity_residuals(n: int = 3, *, noise: bool = False) -> list[sp.Expr]:
    """T1, first part: ``u_j(theta, s) - u_i(tau_ij theta, tau_ij s)`` for all ``i < j`` (all 0 if equivariant)."""
    rule = generic_equivariant_rule(n, noise=noise)
    out = []
    for i, j in itertools.combinations(range(n), 2):
        perm = _transposition(n, i, j)
        U_t, _ = apply_rule(rule, tuple(rule.thetas[p] for p in perm), tuple(rule.states[p] for p in perm))
        out.append(sp.simplify(rule.U[j] - U_t[i]))
    return out


def absorbing_symmetry_residuals(n: int = 3, i: int = 0, j: int = 1, *, noise: bool = False) -> list[sp.Expr]:
    """T6: ``[U_i - U_j, S_i - S_j]`` at a state with ``theta_j = theta_i`` and ``s_j = s_i``.

    Both are 0 for every equivariant rule (shared randomness only); with ``noise=True`` the update residual
    is ``xi_i - xi_j``.  The argument mirrors the proof: the state is fixed by the transposition tau_ij, so
    ``U = U(tau state) = tau U`` and coordinates i and j of U agree.
    """
    if not (0 <= i < n and 0 <= j < n and i != j):
        raise TopoverifyError(f"need two distinct neuron indices in [0, {n}) (got i={i}, j={j})")
    rule = generic_equivariant_rule(n, noise=noise)
    thetas = tuple(rule.thetas[i] if k == j else rule.thetas[k] for k in range(n))
    states = tuple(rule.states[i] if k == j else rule.states[k] for k in range(n))
    U, S = apply_rule(rule, thetas, states)
    return [sp.simplify(U[i] - U[j]), sp.simplify(S[i] - S[j])]


def field_identity_residuals(
    n_neurons: int = 2,
    n_points: int = 2,
    activation: Callable[[sp.Expr], sp.Expr] = sp.tanh,
    output: Callable[[sp.Expr], sp.Expr] = sp.tanh,
    *,
    normalized: bool = False,
) -> list[sp.Expr]:
    """T1, update field: residuals ``dL/dtheta_i - grad Phi(z)|_{z = theta_i}`` for a two-layer network.

    Network: ``pre(x) = sum_i a_i * activation(w_i*x + b_i) + c`` (neurons enter additively), prediction
    ``output(pre)``, loss ``L = (1/n) sum_x (output(pre(x)) - y_x)**2 / 2``.  The back-propagated signal is
    ``delta(x) = dL/dpre(x)`` computed at the current parameters and then *held fixed* as a number, and
    ``Phi(z) = sum_x delta(x) * a * activation(w*x + b)`` for ``z = (w, b, a)``.  Returns one residual per
    parameter of every neuron; all simplify to 0 (the identity is exact at the pre-step state).

    ``normalized=True`` is a negative control: ``pre(x) = sum_i a_i*activation(...) / sqrt(1 + sum_j a_j**2)``
    couples the neurons other than through ``delta`` (the additive-entry assumption fails), and the ``a``
    residuals are then not 0.
    """
    xs = sp.symbols(f"x0:{n_points}", real=True)
    ys = sp.symbols(f"y0:{n_points}", real=True)
    ws = sp.symbols(f"w0:{n_neurons}", real=True)
    bs = sp.symbols(f"b0:{n_neurons}", real=True)
    As = sp.symbols(f"a0:{n_neurons}", real=True)
    c = sp.Symbol("c", real=True)
    pre_sym = sp.symbols(f"p0:{n_points}", real=True)  # pre-activations of the next layer, as variables

    scale = 1 / sp.sqrt(1 + sp.Add(*[a**2 for a in As])) if normalized else sp.Integer(1)

    def pre(x: sp.Expr) -> sp.Expr:
        return scale * sp.Add(*[As[i] * activation(ws[i] * x + bs[i]) for i in range(n_neurons)]) + c

    loss_of_pre = sp.Rational(1, n_points) * sp.Add(
        *[(output(p) - y) ** 2 / 2 for p, y in zip(pre_sym, ys)]
    )
    pre_values = {p: pre(x) for p, x in zip(pre_sym, xs)}
    loss = loss_of_pre.subs(pre_values)
    delta = [sp.diff(loss_of_pre, p).subs(pre_values) for p in pre_sym]  # dL/dpre, at the current state

    zw, zb, za = sp.symbols("z_w z_b z_a", real=True)
    dsym = sp.symbols(f"delta0:{n_points}", real=True)  # delta held fixed: independent symbols
    Phi = sp.Add(*[d * za * activation(zw * x + zb) for d, x in zip(dsym, xs)])
    grad_Phi = [sp.diff(Phi, v) for v in (zw, zb, za)]

    residuals = []
    for i in range(n_neurons):
        at = {zw: ws[i], zb: bs[i], za: As[i]} | dict(zip(dsym, delta))
        for param, g in zip((ws[i], bs[i], As[i]), grad_Phi):
            residuals.append(sp.expand(sp.diff(loss, param) - g.subs(at, simultaneous=True)))
    return residuals
