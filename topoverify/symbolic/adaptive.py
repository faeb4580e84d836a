"""Symbolic forms of claim T7(c): the per-coordinate maps of the adaptive families and their certified bounds
(proof: ``proofs_notes/T7_adaptive_rules.md``).

Every family is one of three scalar maps of the gradient g (coupled weight decay included) at one coordinate,
with coefficients read off torch's recursion and the pre-step state (:func:`family_coefficients`):

* ``SQRT_MAP`` φ = (A + c g)/(√(B + e g²) + ε): Adam, AdamW, NAdam, RAdam (rectified), RMSprop, Adagrad;
  amsgrad is its max form ``AMSGRAD_MAP`` (√max(V, B + e g²), bounded with B_lo ≤ max(V, B)); centered RMSprop
  is this map of h = g − ḡ (``CENTERED_MAP``);
* ``MAX_MAP`` φ = (A + c g)/max(Q, |g| + ε): Adamax;
* ``LINEAR_MAP`` φ = A + c g: RAdam's unrectified steps.

For each map: the sup over g of |∂φ/∂g| (``*_GRAD_BOUND``), of |∂φ/∂A| and |∂φ/∂B| (state), and sup_g |φ|
(``*_SUP_BOUND``), in terms of a lower bound ``B_lo`` on B (or ``Q_lo`` on Q) and an upper bound ``A_hi`` on |A|
over the states involved. ``*_numeric`` are the same expressions lambdified for torch tensors (float64).
"""

from __future__ import annotations

import math

import sympy as sp
import torch

__all__ = [
    "G", "A_", "C_", "B_", "E_", "EPS", "Q_", "A_HI", "B_LO", "Q_LO", "GBAR", "ALPHA",
    "SQRT_MAP", "SQRT_GRAD_BOUND", "SQRT_DA_BOUND", "SQRT_DB_BOUND", "SQRT_DROOT_BOUND", "SQRT_SUP_BOUND",
    "sqrt_root_bound_numeric",
    "MAX_MAP", "MAX_GRAD_BOUND", "MAX_DA_BOUND", "MAX_DQ_BOUND", "MAX_SUP_BOUND",
    "CENTERED_MAP", "CENTERED_DGBAR_BOUND", "LINEAR_MAP", "V_", "AMSGRAD_MAP",
    "adam_recursion", "nadam_recursion", "radam_recursion", "rmsprop_recursion", "centered_rmsprop_recursion",
    "adagrad_recursion", "adamax_recursion", "family_coefficients", "adam_apriori_ratio_bound",
    "sqrt_map_numeric", "sqrt_bounds_numeric", "max_map_numeric", "max_bounds_numeric", "centered_dgbar_numeric",
]

G = sp.Symbol("g", real=True)
A_, C_ = sp.Symbol("A", real=True), sp.Symbol("c", nonnegative=True)
B_, E_, EPS = sp.Symbol("B", nonnegative=True), sp.Symbol("e", positive=True), sp.Symbol("epsilon", positive=True)
Q_ = sp.Symbol("Q", nonnegative=True)
A_HI, B_LO, Q_LO = sp.Symbol("A_hi", nonnegative=True), sp.Symbol("B_lo", nonnegative=True), sp.Symbol(
    "Q_lo", nonnegative=True)
GBAR, ALPHA = sp.Symbol("gbar", real=True), sp.Symbol("alpha", positive=True)

# --- φ = (A + c g)/(√(B + e g²) + ε) ------------------------------------------------------------------------
SQRT_MAP = (A_ + C_ * G) / (sp.sqrt(B_ + E_ * G**2) + EPS)
#: sup_g |∂φ/∂g| ≤ c/(√B + ε) + |A|√e/(√B + ε)²: ∂φ/∂g = c/(r+ε)·(1 − e g²/(r(r+ε))) − A e g/(r(r+ε)²),
#: r = √(B + e g²); the first term lies in (0, c/(r+ε)], e|g| ≤ √e r bounds the second; decreasing in B
SQRT_GRAD_BOUND = C_ / (sp.sqrt(B_LO) + EPS) + A_HI * sp.sqrt(E_) / (sp.sqrt(B_LO) + EPS) ** 2
#: |∂φ/∂A| = 1/(√(B + e g²) + ε) ≤ 1/(√B + ε)
SQRT_DA_BOUND = 1 / (sp.sqrt(B_LO) + EPS)
#: |∂φ/∂B| = |A + c g| / (2√S (√S + ε)²) ≤ (|A|/√B + c/√e) / (2 (√B + ε)²), S = B + e g² (c|g| ≤ c√S/√e)
SQRT_DB_BOUND = (A_HI / sp.sqrt(B_LO) + C_ / sp.sqrt(E_)) / (2 * (sp.sqrt(B_LO) + EPS) ** 2)
#: with B = β r² (r = √v, the state's root): |∂φ/∂r| = |A + c g| β r/(√S (√S + ε)²) ≤ √β (|A|/(√B + ε)² +
#: c/(√e (√B + ε))) (β r² ≤ S and c|g| ≤ c√S/√e); this is that bound per unit √β: finite at B = 0, unlike
#: |∂φ/∂B|, so the state term is measured on √v (proof note, "the state term on √v")
SQRT_DROOT_BOUND = A_HI / (sp.sqrt(B_LO) + EPS) ** 2 + C_ / (sp.sqrt(E_) * (sp.sqrt(B_LO) + EPS))
#: sup_g |φ| ≤ |A|/(√B + ε) + c/√e
SQRT_SUP_BOUND = sp.Abs(A_) / (sp.sqrt(B_) + EPS) + C_ / sp.sqrt(E_)

# --- Adamax: φ = (A + c g)/max(Q, |g| + ε) --------------------------------------------------------------------
MAX_MAP = (A_ + C_ * G) / sp.Max(Q_, sp.Abs(G) + EPS)
_D_LO = sp.Max(Q_LO, EPS)
#: sup_g |∂φ/∂g| ≤ c/max(Q, ε) + |A|/max(Q, ε)²: c/Q where Q is the max, (cε − A sgn g)/(|g| + ε)² elsewhere
MAX_GRAD_BOUND = C_ / _D_LO + A_HI / _D_LO**2
MAX_DA_BOUND = 1 / _D_LO
#: |∂φ/∂Q| = |A + c g|/Q² where Q is the max (then |g| < Q): ≤ |A|/max(Q, ε)² + c/max(Q, ε)
MAX_DQ_BOUND = A_HI / _D_LO**2 + C_ / _D_LO
MAX_SUP_BOUND = sp.Abs(A_) / sp.Max(Q_, EPS) + C_

# --- centered RMSprop: avg = √(α v + (1−α) g² − (α ḡ + (1−α) g)²) = √(α(v − ḡ²) + α(1−α)(g − ḡ)²) -------------
#: φ = g/(√(B + e (g − ḡ)²) + ε) with B = α(v − ḡ²), e = α(1 − α): SQRT_MAP of h = g − ḡ with A = ḡ, c = 1
CENTERED_MAP = G / (sp.sqrt(B_ + E_ * (G - GBAR) ** 2) + EPS)
#: |∂φ/∂ḡ| ≤ 1/(√B + ε) + α(2 − α)|ḡ|/(√e (√B + ε)²) + α ḡ²/(√B (√B + ε)²)   (proof note, centered RMSprop)
CENTERED_DGBAR_BOUND = (1 / (sp.sqrt(B_LO) + EPS) + ALPHA * (2 - ALPHA) * A_HI / (sp.sqrt(E_) * (sp.sqrt(B_LO) + EPS) ** 2)
                        + ALPHA * A_HI**2 / (sp.sqrt(B_LO) * (sp.sqrt(B_LO) + EPS) ** 2))

LINEAR_MAP = A_ + C_ * G

# --- amsgrad: φ = (A + c g)/(√max(V, B + e g²) + ε), V = v_max/(1−β2^t) ------------------------------------------
V_ = sp.Symbol("V", nonnegative=True)
#: the SQRT bounds hold for this map with B_lo a lower bound of max(V, B) (proof note, amsgrad); |∂φ/∂V| and
#: |∂φ/∂B| are each at most SQRT_DB_BOUND there, and the other one is 0 (only the larger argument of the max acts)
AMSGRAD_MAP = (A_ + C_ * G) / (sp.sqrt(sp.Max(V_, B_ + E_ * G**2)) + EPS)


# --- torch's recursions, written out (the coefficients below are tested equal to them) -----------------------
_M, _V, _VMAX, _T, _B1, _B2 = sp.symbols("m v v_max t beta1 beta2", nonnegative=True)


def adam_recursion(amsgrad: bool = False) -> sp.Expr:
    """torch.optim.Adam/AdamW's update direction (lr and decoupled decay excluded): m̂/(√v̂ + ε) with
    m' = β1 m + (1−β1) g, v' = β2 v + (1−β2) g², v̂ = v'/(1−β2^t) (amsgrad: max(v_max, v')/(1−β2^t))."""
    m1, v1 = _B1 * _M + (1 - _B1) * G, _B2 * _V + (1 - _B2) * G**2
    vhat = (sp.Max(_VMAX, v1) if amsgrad else v1) / (1 - _B2**_T)
    return m1 / (1 - _B1**_T) / (sp.sqrt(vhat) + EPS)


def nadam_recursion(mu: sp.Expr, mu_next: sp.Expr, mu_product: sp.Expr) -> sp.Expr:
    """torch.optim.NAdam: ((1−μ_t)/(1−Π) g + μ_{t+1}/(1−Π μ_{t+1}) m')/(√v̂ + ε), Π = μ-product incl. μ_t."""
    m1, v1 = _B1 * _M + (1 - _B1) * G, _B2 * _V + (1 - _B2) * G**2
    num = (1 - mu) / (1 - mu_product) * G + mu_next / (1 - mu_product * mu_next) * m1
    return num / (sp.sqrt(v1 / (1 - _B2**_T)) + EPS)


def radam_recursion(rect: sp.Expr | None) -> sp.Expr:
    """torch.optim.RAdam: m̂ · rect · √(1−β2^t)/(√v' + ε) when ρ_t > 5 (``rect`` given), else m̂."""
    m1, v1 = _B1 * _M + (1 - _B1) * G, _B2 * _V + (1 - _B2) * G**2
    mhat = m1 / (1 - _B1**_T)
    return mhat if rect is None else mhat * rect * sp.sqrt(1 - _B2**_T) / (sp.sqrt(v1) + EPS)


def rmsprop_recursion() -> sp.Expr:
    """torch.optim.RMSprop (not centered): g/(√(α v + (1−α) g²) + ε)."""
    return G / (sp.sqrt(ALPHA * _V + (1 - ALPHA) * G**2) + EPS)


def centered_rmsprop_recursion() -> sp.Expr:
    """torch.optim.RMSprop(centered=True): g/(√(v' − ḡ'²) + ε), v' = α v + (1−α) g², ḡ' = α ḡ + (1−α) g."""
    v1, gb1 = ALPHA * _V + (1 - ALPHA) * G**2, ALPHA * GBAR + (1 - ALPHA) * G
    return G / (sp.sqrt(v1 - gb1**2) + EPS)


def adagrad_recursion(ratio: sp.Expr) -> sp.Expr:
    """torch.optim.Adagrad: (clr/lr)·g/(√(s + g²) + ε), ``ratio`` = clr/lr = 1/(1 + (t−1)·lr_decay)."""
    return ratio * G / (sp.sqrt(_V + G**2) + EPS)


def adamax_recursion() -> sp.Expr:
    """torch.optim.Adamax: m'/((1−β1^t) max(β2 u, |g| + ε)), u = the infinity-norm state."""
    return (_B1 * _M + (1 - _B1) * G) / (1 - _B1**_T) / sp.Max(_B2 * _V, sp.Abs(G) + EPS)


def family_coefficients(family: str, **hp) -> dict[str, sp.Expr]:
    """The map's coefficients for one family, in terms of the state symbols m, v (, v_max, ḡ, u): returns
    {"A", "c", "B", "e", "eps"} (SQRT/CENTERED), with "V" (AMSGRAD), {"A", "c", "Q", "eps"} (MAX) or {"A", "c"}
    (LINEAR).

    ``hp``: sympy or numbers for beta1, beta2, t, alpha, eps, rect, ratio, mu, mu_next, mu_product. The
    coefficients are what the rules evaluate; :mod:`tests` check that the map with them equals the
    recursion."""
    b1, b2, t = hp.get("beta1", _B1), hp.get("beta2", _B2), hp.get("t", _T)
    eps = hp.get("eps", EPS)
    bc1, bc2 = 1 - b1**t, 1 - b2**t
    if family == "adam":
        return {"A": b1 * _M / bc1, "c": (1 - b1) / bc1, "B": b2 * _V / bc2, "e": (1 - b2) / bc2, "eps": eps}
    if family == "adam_amsgrad":  # AMSGRAD_MAP; the bounds use B_lo ≤ max(V, B) = max(v_max, β2 v)/(1−β2^t)
        return {"A": b1 * _M / bc1, "c": (1 - b1) / bc1, "B": b2 * _V / bc2, "e": (1 - b2) / bc2, "eps": eps,
                "V": _VMAX / bc2}
    if family == "nadam":
        mu, mu_next, prod = hp["mu"], hp["mu_next"], hp["mu_product"]
        a_m = mu_next / (1 - prod * mu_next)
        return {"A": a_m * b1 * _M, "c": (1 - mu) / (1 - prod) + a_m * (1 - b1), "B": b2 * _V / bc2,
                "e": (1 - b2) / bc2, "eps": eps}
    if family == "radam_rectified":
        rect = hp["rect"]
        return {"A": rect * b1 * _M / bc1, "c": rect * (1 - b1) / bc1, "B": b2 * _V / bc2, "e": (1 - b2) / bc2,
                "eps": eps / sp.sqrt(bc2)}
    if family == "radam_unrectified":
        return {"A": b1 * _M / bc1, "c": (1 - b1) / bc1}
    if family == "rmsprop":
        a = hp.get("alpha", ALPHA)
        return {"A": sp.Integer(0), "c": sp.Integer(1), "B": a * _V, "e": 1 - a, "eps": eps}
    if family == "rmsprop_centered":
        a = hp.get("alpha", ALPHA)
        return {"A": GBAR, "c": sp.Integer(1), "B": a * (_V - GBAR**2), "e": a * (1 - a), "eps": eps}
    if family == "adagrad":
        r = hp["ratio"]
        return {"A": sp.Integer(0), "c": r, "B": _V, "e": sp.Integer(1), "eps": eps}
    if family == "adamax":
        return {"A": b1 * _M / bc1, "c": (1 - b1) / bc1, "Q": b2 * _V, "eps": eps}
    raise ValueError(f"unknown family {family!r}")


def adam_apriori_ratio_bound(beta1: sp.Expr = _B1, beta2: sp.Expr = _B2, t: sp.Expr = _T) -> sp.Expr:
    """T7(b), Adam from zero state with β1² < β2: |m̂_t|/√v̂_t ≤ (1−β1)/√(1−β2) · √((1−γ^t)/(1−γ)) · √(1−β2^t)
    /(1−β1^t), γ = β1²/β2 (Cauchy–Schwarz on m_t = (1−β1)Σ β1^{t−s} g_s against v_t = (1−β2)Σ β2^{t−s} g_s²):
    a bound on every coordinate of the step that does not depend on the gradients."""
    gam = beta1**2 / beta2
    return (1 - beta1) / sp.sqrt(1 - beta2) * sp.sqrt((1 - gam**t) / (1 - gam)) * sp.sqrt(1 - beta2**t) / (
        1 - beta1**t)


# --- numeric (torch) versions ------------------------------------------------------------------------------------
_TINY = sp.Symbol("tiny", positive=True)
# the same map with √ of max(S, tiny): equal wherever S ≥ tiny, and differentiable (by autograd) at S = 0
_sqrt_map = sp.lambdify((G, A_, C_, B_, E_, EPS, _TINY),
                        (A_ + C_ * G) / (sp.sqrt(sp.Max(B_ + E_ * G**2, _TINY)) + EPS), modules="torch")
_sqrt_bounds = sp.lambdify((A_HI, C_, B_LO, E_, EPS), (SQRT_GRAD_BOUND, SQRT_DA_BOUND, SQRT_DB_BOUND), modules="torch")
_sqrt_sup = sp.lambdify((A_, C_, B_, E_, EPS), SQRT_SUP_BOUND, modules="torch")
_sqrt_root = sp.lambdify((A_HI, C_, B_LO, E_, EPS), SQRT_DROOT_BOUND, modules="torch")
_max_map = sp.lambdify((G, A_, C_, Q_, EPS), MAX_MAP, modules="torch")
_max_bounds = sp.lambdify((A_HI, C_, Q_LO, EPS), (MAX_GRAD_BOUND, MAX_DA_BOUND, MAX_DQ_BOUND), modules="torch")
_max_sup = sp.lambdify((A_, C_, Q_, EPS), MAX_SUP_BOUND, modules="torch")
_centered_dgbar = sp.lambdify((A_HI, B_LO, E_, EPS, ALPHA), CENTERED_DGBAR_BOUND, modules="torch")


def sqrt_map_numeric(g, A, c, B, e, eps):
    """SQRT_MAP at tensors (B clamped at 0: a round-off-negative variance is 0; √ taken of at least the
    smallest normal float, so that autograd gives the one-sided limit c/ε at g = B = 0, not NaN)."""
    tiny = torch.as_tensor(torch.finfo(torch.float64).tiny, dtype=torch.float64)
    return _sqrt_map(g, A, c, B.clamp_min(0), e, eps, tiny)


def _nan_to_inf(x):
    return x.nan_to_num(nan=math.inf, posinf=math.inf)


def sqrt_root_bound_numeric(A_hi, c, B_lo, e, eps):
    """SQRT_DROOT_BOUND per column: |∂φ/∂r| per unit √β, for B = β r² (finite wherever ε > 0)."""
    return _sqrt_root(A_hi, c, B_lo.clamp_min(0), e, eps)


def sqrt_bounds_numeric(A_hi, c, B_lo, e, eps, A, B):
    """(grad bound, |∂φ/∂A| bound, |∂φ/∂B| bound) per column from (A_hi, B_lo), and sup_g |φ| per entry from
    (A, B); inf where a bound is unbounded (B_lo = 0 with A_hi > 0), never NaN (0·inf is read as inf)."""
    B_lo = B_lo.clamp_min(0)
    dg, da, db = (_nan_to_inf(x) for x in _sqrt_bounds(A_hi, c, B_lo, e, eps))
    db = torch_where_zero(A_hi, _sqrt_bounds_zero_A(c, B_lo, e, eps), db)
    return dg, da, db, _nan_to_inf(_sqrt_sup(A, c, B.clamp_min(0), e, eps))


def _sqrt_bounds_zero_A(c, B_lo, e, eps):
    # with A_hi = 0 the term A_hi/√B_lo is absent (0/0 at B_lo = 0 would read NaN)
    return c / e**0.5 / (2 * (B_lo.sqrt() + eps) ** 2)  # e: a float or a tensor of any shape


def torch_where_zero(selector, if_zero, otherwise):
    """``if_zero`` where ``selector`` == 0, else ``otherwise`` (elementwise)."""
    return if_zero.where(selector == 0, otherwise)


def max_map_numeric(g, A, c, Q, eps):
    return _max_map(g, A, c, Q, eps)


def max_bounds_numeric(A_hi, c, Q_lo, eps, A, Q):
    """Adamax: (grad bound, |∂φ/∂A| bound, |∂φ/∂Q| bound) per column, sup_g |φ| per entry."""
    dg, da, dq = _max_bounds(A_hi, c, Q_lo, eps)
    return dg, da, dq, _max_sup(A, c, Q, eps)


def centered_dgbar_numeric(gbar_hi, B_lo, e, eps, alpha):
    """Centered RMSprop: |∂φ/∂ḡ| bound per column (inf where B_lo = 0 and ḡ ≠ 0)."""
    B_lo = B_lo.clamp_min(0)
    out = _nan_to_inf(_centered_dgbar(gbar_hi, B_lo, e, eps, alpha))
    zero = 1 / (B_lo.sqrt() + eps)
    return zero.where(gbar_hi == 0, out)
