"""T7(c): the state term on r = √v (SQRT_DROOT_BOUND) against sampling plus ascent.

With B = β r², |∂φ/∂r| ≤ √β·(|A|/(√B + ε)² + c/(√e (√B + ε))) for φ = (A + c g)/(√(B + e g²) + ε), and under
amsgrad's max (S = max(V, β r² + e g²)) with B_lo = max(V, β r²), for r and for r_V = √(V/β_V) alike. Unlike
|∂φ/∂v| (SQRT_DB_BOUND), it is finite at v = 0: this is what keeps Adam's K_eff finite where v̂ ≈ 0.
"""

from __future__ import annotations

import sympy as sp
import torch
import pytest

from claims.test_adaptive_symbolic import F64, TOL, _ascend, _d, _logu
from topoverify.symbolic import adaptive as AD


def _root_bound(c, e, eps):
    f = sp.lambdify((AD.A_HI, AD.B_LO), AD.SQRT_DROOT_BOUND.subs({AD.C_: c, AD.E_: e, AD.EPS: eps}), "torch")
    return lambda a, b: torch.as_tensor(f(a, b), dtype=F64) * torch.ones_like(a)


@pytest.mark.parametrize("amsgrad", [False, True])
@pytest.mark.parametrize("c,e,eps,beta", [(1.0, 1.0, 1e-8, 1.0), (0.1, 1e-3, 1e-8, 0.999), (0.5, 0.01, 1e-4, 1e3)])
def test_T7_root_state_bound_holds_and_is_tight(c, e, eps, beta, amsgrad):
    rng = torch.Generator().manual_seed(int(1e3 * c + beta))
    n = 600
    lg, lr_, la, lv = _logu(n, 1e-14, 1e8, rng), _logu(n, 1e-16, 1e3, rng), _logu(n, 1e-6, 1e2, rng), \
        _logu(n, 1e-16, 1e3, rng)
    sg = torch.where(torch.rand(n, generator=rng) < 0.5, -1.0, 1.0).to(F64)
    sa = torch.where(torch.rand(n, generator=rng) < 0.5, -1.0, 1.0).to(F64)
    zero_a = torch.rand(n, generator=rng) < 0.2
    bound = _root_bound(c, e, eps)

    def ratio(which):
        def f():
            g, r, A, rv = sg * lg.exp(), lr_.exp(), torch.where(zero_a, 0.0, sa * la.exp()), lv.exp()
            B, V = beta * r * r, beta * rv * rv
            S = torch.maximum(V, B + e * g * g) if amsgrad else B + e * g * g
            phi = (A + c * g) / (S.sqrt() + eps)
            floor = torch.maximum(V, B) if amsgrad else B
            var = r if which == "r" else rv
            return _d(phi, var) / (beta**0.5 * bound(A.abs().detach(), floor.detach()))
        return f

    for which in ("r",) + (("rV",) if amsgrad else ()):
        seen = _ascend(ratio(which), [lg, lr_, la, lv])
        assert seen.isfinite().all() and float(seen.max()) <= TOL, (which, float(seen.max()))
        assert float(seen.max()) >= 0.25, (which, float(seen.max()))


def test_T7_root_state_bound_is_finite_at_v_zero():
    one, z = torch.ones(3, dtype=F64), torch.zeros(3, dtype=F64)
    got = AD.sqrt_root_bound_numeric(torch.tensor([0.0, 1.0, 5.0], dtype=F64), one, z, one, 1e-8 * one)
    assert torch.isfinite(got).all() and bool((got > 0).all())
