"""T7(c): the adaptive families' per-coordinate maps (topoverify.symbolic.adaptive) against torch's recursions and
steps, their certified bounds against sampling plus gradient ascent on the autograd derivatives, Adam's a-priori
step bound, and the lambdified versions (proof: proofs_notes/T7_adaptive_rules.md).

Every certified bound is checked pointwise: at a sampled (g, A, B) the derivative is compared with the bound at
A_hi = |A|, B_lo = B (the sup over g at that state), and separately the bound is monotone in (A_hi, B_lo), which
lifts the pointwise check to a box of states.
"""

from __future__ import annotations

import math

import pytest
import sympy as sp
import torch

from topoverify.symbolic import adaptive as AD

M, V, VMAX, T, B1, B2 = sp.symbols("m v v_max t beta1 beta2", nonnegative=True)  # the module's state symbols
F64 = torch.float64
TOL = 1 + 1e-9


def _rat(rng: torch.Generator, lo: float, hi: float) -> sp.Rational:
    return sp.Rational(round(1000 * (lo + (hi - lo) * float(torch.rand((), generator=rng, dtype=F64))))) / 1000


def _fill(expr: sp.Expr, values: dict) -> sp.Expr:
    return expr.subs(values, simultaneous=True)


def _sqrt_map(co: dict, g: sp.Expr = AD.G) -> sp.Expr:
    return _fill(AD.SQRT_MAP, {AD.G: g, AD.A_: co["A"], AD.C_: co["c"], AD.B_: co["B"], AD.E_: co["e"],
                               AD.EPS: co["eps"]})


# ------------------------------------------------------------------------------------- (a) maps = recursions

def _family_cases(rng):
    """(family, map with family_coefficients, written-out recursion) with random rational hyper-parameters."""
    mu, mu_next, prod, rect, ratio = (_rat(rng, 0.1, 0.9) for _ in range(5))
    hp = {"mu": mu, "mu_next": mu_next, "mu_product": prod * mu}
    yield "adam", _sqrt_map(AD.family_coefficients("adam")), AD.adam_recursion()
    co = AD.family_coefficients("adam_amsgrad")
    yield "adam_amsgrad", _fill(AD.AMSGRAD_MAP, {AD.A_: co["A"], AD.C_: co["c"], AD.B_: co["B"], AD.E_: co["e"],
                                                AD.V_: co["V"]}), AD.adam_recursion(amsgrad=True)
    yield "nadam", _sqrt_map(AD.family_coefficients("nadam", **hp)), AD.nadam_recursion(mu, mu_next, prod * mu)
    yield ("radam_rectified", _sqrt_map(AD.family_coefficients("radam_rectified", rect=rect)),
           AD.radam_recursion(rect))
    co = AD.family_coefficients("radam_unrectified")
    yield "radam_unrectified", _fill(AD.LINEAR_MAP, {AD.A_: co["A"], AD.C_: co["c"]}), AD.radam_recursion(None)
    yield "rmsprop", _sqrt_map(AD.family_coefficients("rmsprop")), AD.rmsprop_recursion()
    co = AD.family_coefficients("rmsprop_centered")  # SQRT_MAP of h = g − ḡ
    yield "rmsprop_centered", _sqrt_map(co, AD.G - AD.GBAR), AD.centered_rmsprop_recursion()
    yield ("rmsprop_centered(CENTERED_MAP)", _fill(AD.CENTERED_MAP, {AD.B_: co["B"], AD.E_: co["e"]}),
           AD.centered_rmsprop_recursion())
    yield "adagrad", _sqrt_map(AD.family_coefficients("adagrad", ratio=ratio)), AD.adagrad_recursion(ratio)
    co = AD.family_coefficients("adamax")
    yield "adamax", _fill(AD.MAX_MAP, {AD.A_: co["A"], AD.C_: co["c"], AD.Q_: co["Q"]}), AD.adamax_recursion()


def _random_point(rng) -> dict:
    v, gbar = _rat(rng, 0, 4), _rat(rng, -1, 1)
    return {AD.G: _rat(rng, -3, 3), M: _rat(rng, -2, 2), V: v + gbar**2, VMAX: _rat(rng, 0, 6), AD.GBAR: gbar,
            T: sp.Integer(int(1 + 30 * float(torch.rand((), generator=rng, dtype=F64)))), B1: _rat(rng, 0, 0.99),
            B2: _rat(rng, 0.5, 0.999), AD.ALPHA: _rat(rng, 0.5, 0.99), AD.EPS: _rat(rng, 0.001, 0.5)}


@pytest.mark.parametrize("index", range(10))
def test_T7_adaptive_maps_equal_the_recursions(index):
    """The map with family_coefficients equals the recursion at random rational points (50 digits)."""
    rng = torch.Generator().manual_seed(index)
    name, mapped, recursion = list(_family_cases(rng))[index]
    for _ in range(4):
        pt = _random_point(rng)
        a, b = mapped.evalf(50, subs=pt), recursion.evalf(50, subs=pt)
        assert abs(a - b) <= sp.Float(1e-40) * (1 + abs(b)), (name, pt, a, b)


def test_T7_adaptive_maps_simplify_to_the_recursions():
    """Exact identity (not only at points) where sympy's simplify is cheap."""
    rng = torch.Generator().manual_seed(0)
    cases = {name: (m, r) for name, m, r in _family_cases(rng)}
    for name in ("adam", "rmsprop", "adagrad", "radam_unrectified", "adamax"):
        mapped, recursion = cases[name]
        assert sp.simplify(mapped - recursion) == 0, name


# ------------------------------------------------------------------- (a') the recursions against torch's steps

def _rect(b2: float, t: int) -> float | None:
    rho_inf = 2 / (1 - b2) - 1
    rho_t = rho_inf - 2 * t * b2**t / (1 - b2**t)
    return None if rho_t <= 5 else math.sqrt((rho_t - 4) * (rho_t - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2)
                                                                                      * rho_t))


_TORCH = [  # (optimizer, kwargs, warm-up steps)
    (torch.optim.Adam, {"betas": (0.8, 0.95)}, 0), (torch.optim.Adam, {"betas": (0.8, 0.95)}, 4),
    (torch.optim.AdamW, {"betas": (0.9, 0.99), "weight_decay": 0.0}, 3),
    (torch.optim.Adam, {"betas": (0.7, 0.9), "amsgrad": True}, 5), (torch.optim.NAdam, {"betas": (0.8, 0.9)}, 3),
    (torch.optim.RAdam, {"betas": (0.8, 0.9)}, 1), (torch.optim.RAdam, {"betas": (0.8, 0.9)}, 8),
    (torch.optim.Adamax, {"betas": (0.8, 0.9)}, 3), (torch.optim.RMSprop, {"alpha": 0.9}, 3),
    (torch.optim.RMSprop, {"alpha": 0.9, "centered": True}, 3),
    (torch.optim.RMSprop, {"alpha": 0.9, "centered": True, "momentum": 0.5}, 3),
    (torch.optim.Adagrad, {"lr_decay": 0.1}, 3),
]


def _expected_direction(opt, kw, st: dict, g: torch.Tensor) -> list[float]:
    """The recursion of ``opt`` at torch's pre-step state, entry by entry (lr excluded)."""
    t = int(st.get("step", 0)) + 1
    b1, b2 = (sp.Float(x) for x in kw.get("betas", (0.9, 0.999)))
    eps = sp.Float(1e-10 if opt is torch.optim.Adagrad else 1e-8)
    common = {B1: b1, B2: b2, T: t, AD.EPS: eps, AD.ALPHA: sp.Float(kw.get("alpha", 0.99))}
    names = {"exp_avg": M, "exp_avg_sq": V, "max_exp_avg_sq": VMAX, "exp_inf": V, "square_avg": V,
             "grad_avg": AD.GBAR, "sum": V}
    if opt is torch.optim.NAdam:
        mus = [b1 * (1 - sp.Float(0.5) * sp.Float(0.96) ** (k * sp.Float(4e-3))) for k in (t, t + 1)]
        expr = AD.nadam_recursion(mus[0], mus[1], sp.Float(float(st.get("mu_product", 1.0))) * mus[0])
    elif opt is torch.optim.RAdam:
        rect = _rect(float(b2), t)
        expr = AD.radam_recursion(None if rect is None else sp.Float(rect))
    elif opt is torch.optim.Adamax:
        expr = AD.adamax_recursion()
    elif opt is torch.optim.RMSprop:
        expr = AD.centered_rmsprop_recursion() if kw.get("centered") else AD.rmsprop_recursion()
    elif opt is torch.optim.Adagrad:
        expr = AD.adagrad_recursion(1 / (1 + (t - 1) * sp.Float(kw["lr_decay"])))
    else:
        expr = AD.adam_recursion(amsgrad=kw.get("amsgrad", False))
    out = []
    for k in range(g.numel()):
        pt = {**common, AD.G: sp.Float(float(g[k])), M: 0, V: 0, VMAX: 0, AD.GBAR: 0}
        pt.update({sym: sp.Float(float(st[n][k])) for n, sym in names.items() if n in st})
        val = float(expr.evalf(30, subs=pt))
        out.append(val + kw.get("momentum", 0.0) * float(st["momentum_buffer"][k]) if "momentum_buffer" in st
                   else val)
    return out


@pytest.mark.parametrize("opt,kw,warm", _TORCH, ids=lambda x: getattr(x, "__name__", None))
def test_T7_adaptive_recursions_match_torch_steps(opt, kw, warm):
    """The written-out recursion gives torch's own step (float64), after a random warm-up."""
    rng = torch.Generator().manual_seed(warm + 7 * len(kw))
    p = torch.nn.Parameter(torch.randn(6, generator=rng, dtype=F64))
    o = opt([p], lr=0.1, **kw)
    for _ in range(warm):
        p.grad = torch.randn(6, generator=rng, dtype=F64)
        o.step()
    st = {k: v.detach().clone() if torch.is_tensor(v) and v.dim() else (float(v) if torch.is_tensor(v) else v)
          for k, v in o.state[p].items()}
    g = torch.randn(6, generator=rng, dtype=F64)
    before = p.detach().clone()
    p.grad = g.clone()
    o.step()
    got = ((before - p.detach()) / 0.1).tolist()
    want = _expected_direction(opt, kw, st, g)
    assert got == pytest.approx(want, rel=1e-9, abs=1e-12)


# ---------------------------------------------------------- (b) certified bounds against sampling plus ascent

def _ascend(ratio, params: list[torch.Tensor], steps: int = 40) -> torch.Tensor:
    """Batched gradient ascent of log(ratio) over ``params`` (each sample independent); every ratio seen."""
    opt = torch.optim.Adam(params, lr=0.2)
    seen = []
    for _ in range(steps):
        r = ratio()
        seen.append(r.detach())
        loss = -torch.log(r.clamp_min(1e-300)).nan_to_num(0.0).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    seen.append(ratio().detach())
    return torch.stack(seen)


def _logu(n, lo, hi, rng):
    return (math.log(lo) + (math.log(hi) - math.log(lo)) * torch.rand(n, generator=rng, dtype=F64)).requires_grad_()


def _d(out, x):
    return torch.autograd.grad(out.sum(), x, create_graph=True)[0].abs()


def _bounds(c, e, eps):
    """The SQRT bounds at (A_hi, B_lo) tensors, evaluated from the sympy forms (not the module's numeric ones)."""
    f = sp.lambdify((AD.A_HI, AD.B_LO), [AD.SQRT_GRAD_BOUND.subs({AD.C_: c, AD.E_: e, AD.EPS: eps}),
                                         AD.SQRT_DA_BOUND.subs({AD.EPS: eps}),
                                         AD.SQRT_DB_BOUND.subs({AD.C_: c, AD.E_: e, AD.EPS: eps})], "torch")
    sup = sp.lambdify((AD.A_, AD.B_), AD.SQRT_SUP_BOUND.subs({AD.C_: c, AD.E_: e, AD.EPS: eps}), "torch")
    return lambda a, b: [torch.as_tensor(x, dtype=F64) * torch.ones_like(a) for x in f(a, b)], \
        lambda a, b: sup(a, b) * torch.ones_like(a)


_SQRT_CFG = [(1.0, 1.0, 1e-8), (0.1, 1e-3, 1e-8), (0.5, 0.01, 1e-4)]


@pytest.mark.parametrize("amsgrad", [False, True])
@pytest.mark.parametrize("c,e,eps", _SQRT_CFG)
def test_T7_sqrt_bounds_hold_and_are_tight(c, e, eps, amsgrad):
    """|∂φ/∂g|, |∂φ/∂A|, |∂φ/∂B| (and |∂φ/∂V| for amsgrad, B_lo = max(V, B)), sup|φ|: never above the bound,
    within a factor 4 of it somewhere; samples span v near 0 (B down to 1e-30) and |g| up to 1e8."""
    rng = torch.Generator().manual_seed(int(1e4 * c + 10 * eps))
    n = 600
    lg, lb, la, lv = _logu(n, 1e-14, 1e8, rng), _logu(n, 1e-30, 1e4, rng), _logu(n, 1e-6, 1e2, rng), \
        _logu(n, 1e-30, 1e4, rng)
    sg = torch.where(torch.rand(n, generator=rng) < 0.5, -1.0, 1.0).to(F64)
    sa = torch.where(torch.rand(n, generator=rng) < 0.5, -1.0, 1.0).to(F64)
    zero_a = torch.rand(n, generator=rng) < 0.2  # A = 0: RMSprop, Adagrad, Adam's first step
    grad_b, sup_b = _bounds(c, e, eps)

    def parts():
        g, B, A, Vv = sg * lg.exp(), lb.exp(), torch.where(zero_a, 0.0, sa * la.exp()), lv.exp()
        g = g.detach().requires_grad_() if not g.requires_grad else g
        den = torch.maximum(Vv, B + e * g * g).sqrt() if amsgrad else (B + e * g * g).sqrt()
        phi = (A + c * g) / (den + eps)
        floor = torch.maximum(Vv, B) if amsgrad else B
        return g, A, B, Vv, phi, floor

    def ratio(which):
        def f():
            g, A, B, Vv, phi, floor = parts()
            dg, da, db = grad_b(A.abs().detach(), floor.detach())
            if which == "sup":
                return phi.abs() / sup_b(A.abs().detach(), floor.detach())
            var = {"g": g, "A": A, "B": B, "V": Vv}[which]
            bound = {"g": dg, "A": da, "B": db, "V": db}[which]
            return _d(phi, var) / bound
        return f

    for which in ("g", "A", "B", "sup") + (("V",) if amsgrad else ()):
        seen = _ascend(ratio(which), [lg, lb, la, lv])
        assert seen.isfinite().all() and float(seen.max()) <= TOL, (which, float(seen.max()))
        assert float(seen.max()) >= 0.25, (which, float(seen.max()))


@pytest.mark.parametrize("c,eps", [(1.0, 1e-8), (0.1, 1e-3), (0.5, 0.3)])
def test_T7_max_bounds_hold_and_are_tight(c, eps):
    """Adamax φ = (A + c g)/max(Q, |g| + ε): |∂φ/∂g|, |∂φ/∂A|, |∂φ/∂Q|, sup|φ| against MAX_* at (|A|, Q)."""
    rng = torch.Generator().manual_seed(int(100 * c))
    n = 600
    lg, lq, la = _logu(n, 1e-14, 1e8, rng), _logu(n, 1e-30, 1e4, rng), _logu(n, 1e-6, 1e2, rng)
    sg = torch.where(torch.rand(n, generator=rng) < 0.5, -1.0, 1.0).to(F64)
    sub = {AD.C_: c, AD.EPS: eps}
    sub.pop(AD.EPS)  # Max(Q, ε) needs tensors in torch
    eps_t = torch.full((n,), eps, dtype=F64)
    bnd = sp.lambdify((AD.A_HI, AD.Q_LO, AD.EPS), [b.subs(sub) for b in (AD.MAX_GRAD_BOUND, AD.MAX_DA_BOUND,
                                                                          AD.MAX_DQ_BOUND)], "torch")
    sup = sp.lambdify((AD.A_, AD.Q_, AD.EPS), AD.MAX_SUP_BOUND.subs(sub), "torch")

    def ratio(which):
        def f():
            g, Q, A = sg * lg.exp(), lq.exp(), la.exp()
            phi = (A + c * g) / torch.maximum(Q, g.abs() + eps)
            a, q = A.detach(), Q.detach()
            b = sup(a, q, eps_t) if which == "sup" else bnd(a, q, eps_t)[("g", "A", "Q").index(which)]
            return (phi.abs() if which == "sup" else _d(phi, {"g": g, "A": A, "Q": Q}[which])) / b
        return f

    for which in ("g", "A", "Q", "sup"):
        seen = _ascend(ratio(which), [lg, lq, la], )
        assert float(seen.max()) <= TOL and float(seen.max()) >= 0.25, (which, float(seen.max()))


@pytest.mark.parametrize("alpha,eps", [(0.99, 1e-8), (0.9, 1e-3), (0.5, 1e-6)])
def test_T7_centered_bounds_hold_and_are_tight(alpha, eps):
    """Centered RMSprop, written as torch computes it from (v, ḡ): |∂φ/∂ḡ| ≤ CENTERED_DGBAR_BOUND, |∂φ/∂g| ≤
    SQRT_GRAD_BOUND and |∂φ/∂v| ≤ α·SQRT_DB_BOUND at A_hi = |ḡ|, c = 1, B = α(v − ḡ²), e = α(1 − α)."""
    rng = torch.Generator().manual_seed(int(100 * alpha))
    n = 600
    lg, lb, la = _logu(n, 1e-14, 1e6, rng), _logu(n, 1e-24, 1e3, rng), _logu(n, 1e-6, 1e2, rng)
    sg = torch.where(torch.rand(n, generator=rng) < 0.5, -1.0, 1.0).to(F64)
    e = alpha * (1 - alpha)
    dgbar = sp.lambdify((AD.A_HI, AD.B_LO), AD.CENTERED_DGBAR_BOUND.subs({AD.E_: e, AD.EPS: eps, AD.ALPHA: alpha}),
                        "torch")
    grad_b, _ = _bounds(1.0, e, eps)

    def ratio(which):
        def f():
            g, gbar, B = sg * lg.exp(), la.exp(), lb.exp()
            v = (B / alpha + gbar * gbar).detach().requires_grad_()  # an independent leaf: ∂/∂ḡ at fixed v
            gbar = gbar.detach().requires_grad_() if which == "v" else gbar
            v1, gb1 = alpha * v + (1 - alpha) * g * g, alpha * gbar + (1 - alpha) * g
            phi = g / ((v1 - gb1 * gb1).clamp_min(0).sqrt() + eps)
            Bd, a = (alpha * (v - gbar**2)).detach().clamp_min(0), gbar.detach().abs()
            if which == "gbar":
                return _d(phi, gbar) / dgbar(a, Bd)
            dg, _, db = grad_b(a, Bd)
            return _d(phi, g) / dg if which == "g" else _d(phi, v) / (alpha * db)
        return f

    for which in ("gbar", "g", "v"):
        seen = _ascend(ratio(which), [lg, lb, la], )
        assert float(seen.max()) <= TOL and float(seen.max()) >= 0.25, (which, float(seen.max()))


def test_T7_adaptive_bounds_are_monotone_in_the_box():
    """Each derivative bound grows with A_hi and shrinks with B_lo (Q_lo), so the bound at the box's corner
    (A_hi = max|A|, B_lo = min B) covers every state in the box: the signs of the partial derivatives."""
    rng = torch.Generator().manual_seed(3)
    syms = (AD.A_HI, AD.B_LO, AD.Q_LO, AD.C_, AD.E_, AD.EPS, AD.ALPHA)
    exprs = (AD.SQRT_GRAD_BOUND, AD.SQRT_DA_BOUND, AD.SQRT_DB_BOUND, AD.CENTERED_DGBAR_BOUND, AD.MAX_GRAD_BOUND,
             AD.MAX_DA_BOUND, AD.MAX_DQ_BOUND)
    for _ in range(12):
        pt = {s: _rat(rng, 0.001, 3) for s in syms}
        pt[AD.ALPHA] = _rat(rng, 0.01, 0.99)
        pt[AD.Q_LO] = pt[AD.EPS] + _rat(rng, 0.001, 3) if float(torch.rand((), generator=rng)) < 0.5 else pt[AD.Q_LO]
        for ex in exprs:
            assert sp.diff(ex, AD.A_HI).subs(pt) >= 0
            assert sp.diff(ex, AD.B_LO).subs(pt) <= 0
            if pt[AD.Q_LO] > pt[AD.EPS]:  # below ε, max(Q, ε) = ε does not depend on Q
                assert sp.diff(ex, AD.Q_LO).subs(pt) <= 0


# -------------------------------------------------------------------- (c) Adam's a-priori bound, β1² < β2

@pytest.mark.parametrize("b1,b2,amsgrad", [(0.9, 0.999, False), (0.5, 0.3, False), (0.9, 0.95, True),
                                           (0.0, 0.5, False)])
def test_T7_adam_apriori_bound_holds_on_random_gradient_sequences(b1, b2, amsgrad):
    """|torch Adam's step|/lr ≤ R(t) on every coordinate (ε = 0, from zero state): Gaussian, heavy-tailed,
    sign-alternating and geometrically growing gradient sequences."""
    rng = torch.Generator().manual_seed(int(100 * b1 + 10 * b2))
    n, steps = 64, 40
    R = sp.lambdify(T, AD.adam_apriori_ratio_bound(sp.Float(b1), sp.Float(b2), T), "math")
    p = torch.nn.Parameter(torch.zeros(4 * n, dtype=F64))
    o = torch.optim.Adam([p], lr=1.0, betas=(b1, b2), eps=0.0, amsgrad=amsgrad)
    worst = 0.0
    for t in range(1, steps + 1):
        z = torch.randn(n, generator=rng, dtype=F64)
        growth = (b1 / b2) ** (-t) if b1 > 0 else 1.0
        p.grad = torch.cat([z, z / torch.rand(n, generator=rng, dtype=F64) ** 2, (-1.0) ** t * (1 + 0 * z),
                            growth * (1 + 0.1 * z.abs())])
        before = p.detach().clone()
        o.step()
        ratio = float((before - p.detach()).abs().max()) / R(t)
        worst = max(worst, ratio)
        assert ratio <= TOL, (t, ratio)
    assert worst > 0.3  # the bound is not vacuous on these sequences


@pytest.mark.parametrize("b1,b2", [(0.9, 0.999), (0.5, 0.3), (0.8, 0.99)])
def test_T7_adam_apriori_bound_is_attained(b1, b2):
    """Cauchy–Schwarz is an equality for g_s = (β1/β2)^{t−s}: R(t) is the sup, not only a bound; and R stays
    bounded as t → ∞ (limit (1−β1)/√((1−β2)(1−β1²/β2)))."""
    R = AD.adam_apriori_ratio_bound(sp.Float(b1), sp.Float(b2), T)
    for t in (1, 2, 7, 30):
        p = torch.nn.Parameter(torch.zeros(1, dtype=F64))
        o = torch.optim.Adam([p], lr=1.0, betas=(b1, b2), eps=0.0)
        for s in range(1, t + 1):
            before = p.detach().clone()
            p.grad = torch.full((1,), (b1 / b2) ** (t - s), dtype=F64)
            o.step()
        assert float((before - p.detach()).abs()) == pytest.approx(float(R.subs(T, t)), rel=1e-9)
    limit = (1 - b1) / math.sqrt((1 - b2) * (1 - b1**2 / b2))
    assert float(R.subs(T, 10**6)) == pytest.approx(limit, rel=1e-9)


# ------------------------------------------------------------- (d) numeric (torch) versions against sympy

def test_T7_adaptive_numeric_agrees_with_sympy():
    rng = torch.Generator().manual_seed(11)
    for _ in range(12):
        g, A, B, Q, gb = (_rat(rng, -3, 3), _rat(rng, -2, 2), _rat(rng, 0, 4), _rat(rng, 0, 4), _rat(rng, -2, 2))
        c, e, eps, alpha = _rat(rng, 0.01, 2), _rat(rng, 0.01, 1), _rat(rng, 0.001, 0.5), _rat(rng, 0.01, 0.99)
        A_hi, B_lo, Q_lo = abs(A) + _rat(rng, 0, 1), B / 2, Q / 2
        tt = lambda x: torch.tensor([float(x)], dtype=F64)  # noqa: E731
        sub = {AD.G: g, AD.A_: A, AD.C_: c, AD.B_: B, AD.E_: e, AD.EPS: eps, AD.Q_: Q, AD.A_HI: A_hi, AD.B_LO: B_lo,
               AD.Q_LO: Q_lo, AD.ALPHA: alpha}
        want = lambda ex: float(ex.subs(sub).evalf(30))  # noqa: E731
        got = AD.sqrt_map_numeric(tt(g), tt(A), tt(c), tt(B), tt(e), tt(eps))
        assert float(got) == pytest.approx(want(AD.SQRT_MAP), rel=1e-12)
        got = AD.sqrt_bounds_numeric(tt(A_hi), tt(c), tt(B_lo), tt(e), tt(eps), tt(A), tt(B))
        for x, ex in zip(got, (AD.SQRT_GRAD_BOUND, AD.SQRT_DA_BOUND, AD.SQRT_DB_BOUND, AD.SQRT_SUP_BOUND)):
            assert float(x) == pytest.approx(want(ex), rel=1e-12)
        assert float(AD.max_map_numeric(tt(g), tt(A), tt(c), tt(Q), tt(eps))) == pytest.approx(want(AD.MAX_MAP),
                                                                                             rel=1e-12)
        got = AD.max_bounds_numeric(tt(A_hi), tt(c), tt(Q_lo), tt(eps), tt(A), tt(Q))
        for x, ex in zip(got, (AD.MAX_GRAD_BOUND, AD.MAX_DA_BOUND, AD.MAX_DQ_BOUND, AD.MAX_SUP_BOUND)):
            assert float(x) == pytest.approx(want(ex), rel=1e-12)
        got = AD.centered_dgbar_numeric(tt(abs(gb)), tt(B_lo), tt(e), tt(eps), tt(alpha))
        assert float(got) == pytest.approx(want(AD.CENTERED_DGBAR_BOUND.subs(AD.A_HI, abs(gb))), rel=1e-12)


def test_T7_adaptive_numeric_infinities_are_inf_not_nan():
    """B_lo = 0: |∂φ/∂B| is unbounded when A ≠ 0 (inf), finite c/(2√e ε²) when A = 0; ḡ = 0: 1/(√B + ε)."""
    z, one, eps = torch.zeros(2, dtype=F64), torch.ones(2, dtype=F64), torch.full((2,), 1e-3, dtype=F64)
    A_hi = torch.tensor([0.0, 1.0], dtype=F64)
    dg, da, db, sup = AD.sqrt_bounds_numeric(A_hi, one, z, one, eps, A_hi, z)
    assert not any(x.isnan().any() for x in (dg, da, db, sup))
    assert float(db[0]) == pytest.approx(1 / (2 * 1e-6)) and math.isinf(float(db[1]))
    assert dg.tolist() == pytest.approx([1e3, 1e3 + 1e6]) and da.tolist() == pytest.approx([1e3, 1e3])
    assert AD.centered_dgbar_numeric(A_hi, z, one, eps, one / 2).tolist() == pytest.approx([1e3, math.inf])
