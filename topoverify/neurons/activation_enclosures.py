"""Certified interval enclosures of σ' and σ'' for every activation of the registry, proved without sampling.

:func:`build_model` gives, for an activation name and its parameters, a :class:`DerivativeModel` whose
``bounds(order, lo, hi)`` provably holds σ^{(k)}(x) for all x ∈ [lo, hi] (k = 1, 2). These feed the
certified constants K_upper and μ_upper of the update field (T1, T2; ``spec/claims.toml``).

* Each smooth piece has a closed form for σ' and σ'' (written out below), evaluated in outward-rounded
  interval arithmetic (:mod:`topoverify.measure.interval`). On u ∈ [−U0, U0] = [−40, 40] (u = βx for
  softplus, x/α for CELU, x otherwise) the closed form is evaluated once on each of 40 960 cells of width
  2⁻⁹; the enclosure for a query is the hull of the enclosures of every cell the query touches (a
  range-extremum table), so it is sound and at most about one cell's variation wider than the true range.
* For |u| > 40 a hand-proved tail enclosure is used (``_TAILS``, proofs beside it), checked against mpmath in
  ``tests/claims/test_certificates.py``.
* Piecewise-linear activations (ReLU, leaky ReLU, ReLU6, hardtanh, identity) have σ' piecewise constant and
  σ'' = 0 between their breakpoints: their enclosures are exact.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from topoverify.measure.interval import Interval, down, lib_down, lib_up, up
from topoverify.neurons.activation_registry import ACTIVATION_TABLE

U0 = 40.0            # tabulated range of u
CELL = 2.0 ** -9     # cell width (a power of 2: cell edges are exact floats)
_SELU_ALPHA = 1.6732632423543772848170429916717
_SELU_SCALE = 1.0507009873554804934193349852946


# ----------------------------------------------------------------------------------------------------------
# Closed forms (σ', σ'') on finite intervals of u
# ----------------------------------------------------------------------------------------------------------

def _d_tanh(U: Interval):
    t = U.tanh()
    q = 1 - t.square()                      # σ' = 1 − tanh²
    return q, -(t * q).scale_pos(2.0)       # σ'' = −2 tanh (1 − tanh²)


def _d_sigmoid(U: Interval):
    s, r = U.sigmoid(), (-U).sigmoid()      # r = 1 − s
    q = s * r                               # σ' = s(1 − s)
    return q, q * (r - s)                   # σ'' = s(1 − s)(1 − 2s)


def _d_silu(U: Interval):
    s, r = U.sigmoid(), (-U).sigmoid()
    q = s * r
    return s + U * q, q * (2 + U * (r - s))  # σ = u s: σ' = s + u s(1−s), σ'' = s(1−s)(2 + u(1−2s))


def _d_softplus_log(U: Interval):
    s, r = U.sigmoid(), (-U).sigmoid()
    return s, s * r                          # log(1 + e^u): σ' = s, σ'' = s(1 − s)


def _d_gelu(U: Interval):
    phi = (-(U.square().scale_pos(0.5))).exp() * Interval.const(1.0 / math.sqrt(2.0 * math.pi), U.lo)
    Phi = ((U * Interval.const(math.sqrt(0.5), U.lo)).erf() + 1).scale_pos(0.5)
    return Phi + U * phi, phi * (2 - U.square())  # σ = uΦ: σ' = Φ + uφ, σ'' = φ(2 − u²)


def _d_gelu_tanh(U: Interval):
    # σ = ½u(1 + tanh y), y = k(u + c u³), k = √(2/π), c = 0.044715 (torch's approximate='tanh')
    k, c = Interval.const(math.sqrt(2.0 / math.pi), U.lo), Interval.const(0.044715, U.lo)
    y = k * (U + c * U.cube())
    T = y.tanh()
    sech2 = 1 - T.square()
    yp = k * (1 + (c * U.square()).scale_pos(3.0))
    ypp = (k * c * U).scale_pos(6.0)
    d1 = (1 + T).scale_pos(0.5) + (U * sech2 * yp).scale_pos(0.5)
    d2 = sech2 * (yp + (U * (ypp - (T * yp.square()).scale_pos(2.0))).scale_pos(0.5))
    return d1, d2


def _d_mish(U: Interval):
    # σ = u tanh(sp), sp = log(1 + e^u): σ' = T + u g, σ'' = 2g + u g((1 − s) − 2Ts), g = sech²(sp) s
    sp = U.exp().log1p()
    T = sp.tanh()
    s, r = U.sigmoid(), (-U).sigmoid()
    g = (1 - T.square()) * s
    return T + U * g, g.scale_pos(2.0) + U * g * (r - (T * s).scale_pos(2.0))


def _d_softsign_left(U: Interval):  # u ≤ 0: σ = u/(1 − u), σ' = (1 − u)⁻², σ'' = 2(1 − u)⁻³
    w = 1 - U
    return w.square().recip_positive(), w.cube().recip_positive().scale_pos(2.0)


def _d_softsign_right(U: Interval):  # u ≥ 0: σ' = (1 + u)⁻², σ'' = −2(1 + u)⁻³
    w = 1 + U
    return w.square().recip_positive(), -(w.cube().recip_positive().scale_pos(2.0))


def _d_tanhshrink(U: Interval):
    t = U.tanh()
    return t.square(), (t * (1 - t.square())).scale_pos(2.0)  # σ = u − tanh u


def _d_exp(coef: float, exact: bool):
    def d(U: Interval):  # σ = coef (e^u − 1): σ' = σ'' = coef e^u
        e = U.exp() * (Interval.exact(coef, U.lo) if exact else Interval.const(coef, U.lo))
        return e, e
    return d


def _d_const(value: float, exact: bool):
    def d(U: Interval):
        v = Interval.exact(value, U.lo) if exact else Interval.const(value, U.lo)
        return v, Interval.exact(0.0, U.lo)
    return d


# Tail enclosures for |u| ≥ 40, as ((σ' lo, σ' hi), (σ'' lo, σ'' hi)) before outward widening. Proofs (u ≥ 40
# unless said; e = e^{−40} ≈ 4.25e-18):
#   tanh: σ' = sech² ≤ 4e^{−2u} ≤ 4e^{−80} < 1e-33; |σ''| ≤ 2 sech² < 1e-33 (both sides).
#   sigmoid: σ' = s(1 − s) ≤ e^{−|u|} ≤ e; |σ''| ≤ σ' (both sides).
#   softplus: left σ' = s(u) ≤ e^u ≤ e, 0 ≤ σ'' ≤ e; right σ' ∈ [s(40), 1] ⊂ [1 − e, 1] (or = 1 past the
#     threshold), 0 ≤ σ'' ≤ e.
#   silu: right σ' − 1 = (1 − s)(us − 1) ∈ [0, u e^{−u}] ⊂ [0, 40e]; |σ''| ≤ (1 − s)u ≤ 40e. left: s ≤ e^u,
#     |σ'| ≤ (1 + |u|)e^u ≤ 41e, |σ''| ≤ (2 + |u|)e^u ≤ 42e (x ↦ (a + x)e^{−x} decreases for x ≥ 1). 42e < 2e-16.
#   gelu: 1 − Φ(u) ≤ φ(u)/u (Mills), |u|φ(u) and u²φ(u) decrease for |u| ≥ 2: |σ' − [u > 0]| ≤ 41φ(40),
#     |σ''| ≤ 1600φ(40), and φ(40) = e^{−800}/√(2π) < 1e-340.
#   gelu_tanh: |y| ≥ k(40 + c·40³) > 2300, 1 ∓ tanh y ≤ 2e^{−2|y|}, sech² y ≤ 4e^{−2|y|}; every term of σ' − [u>0]
#     and σ'' is a polynomial of degree ≤ 5 in |u| times e^{−2|y|}, < 1e-300 (and decreasing) for |u| ≥ 40.
#   mish: right sp ≥ u, sech²(sp) ≤ 4e^{−2u}: σ' ∈ [1 − 2e^{−80}, 1 + 160e^{−80}], |σ''| ≤ (8 + 12u)e^{−2u}
#     < 1e-32. left sp ≤ e^u, tanh(sp) ≤ e^u, s ≤ e^u: |σ'| ≤ (1 + |u|)e^u ≤ 41e, |σ''| ≤ (2 + 1.01|u|)e^u ≤ 43e.
#   softsign: σ' = (1 + |u|)⁻² ≤ 1/41², |σ''| = 2(1 + |u|)⁻³ ≤ 2/41³, signs as written.
#   tanhshrink: σ' = tanh² ∈ [1 − 4e^{−80}, 1], |σ''| ≤ 2 sech² < 1e-33.
#   elu/selu (coefficient a): left σ' = σ'' = a e^u ∈ [0, a e]; right σ' = 1 (selu: λ), σ'' = 0.
_E40 = 4.3e-18
_TAILS: dict[str, tuple] = {
    "tanh": (((0.0, 1e-33), (-1e-33, 1e-33)), ((0.0, 1e-33), (-1e-33, 1e-33))),
    "sigmoid": (((0.0, _E40), (-_E40, _E40)), ((0.0, _E40), (-_E40, _E40))),
    "softplus": (((0.0, _E40), (0.0, _E40)), ((1.0 - _E40, 1.0), (0.0, _E40))),
    "silu": (((-2e-16, 2e-16), (-2e-16, 2e-16)), ((1.0, 1.0 + 2e-16), (-2e-16, 2e-16))),
    "gelu": (((-1e-300, 1e-300), (-1e-300, 1e-300)), ((1.0 - 1e-300, 1.0 + 1e-300), (-1e-300, 1e-300))),
    "gelu_tanh": (((-1e-300, 1e-300), (-1e-300, 1e-300)), ((1.0 - 1e-300, 1.0 + 1e-300), (-1e-300, 1e-300))),
    "mish": (((-2e-16, 2e-16), (-2e-16, 2e-16)), ((1.0 - 1e-32, 1.0 + 1e-32), (-1e-32, 1e-32))),
    "softsign": (((0.0, 1 / 1681), (0.0, 2 / 68921)), ((0.0, 1 / 1681), (-2 / 68921, 0.0))),
    "tanhshrink": (((1.0 - 1e-33, 1.0), (-1e-33, 1e-33)), ((1.0 - 1e-33, 1.0), (-1e-33, 1e-33))),
}


# ----------------------------------------------------------------------------------------------------------
# Models: tabulated closed forms and piecewise-linear functions
# ----------------------------------------------------------------------------------------------------------

class _RangeTable:
    """Sparse table for range minima and maxima of fixed arrays (O(1) per query after O(n log n) set-up)."""

    def __init__(self, lo: torch.Tensor, hi: torch.Tensor):
        mins, maxs = [lo], [hi]
        span = 1
        while 2 * span <= lo.numel():
            mins.append(torch.minimum(mins[-1][:-span], mins[-1][span:]))
            maxs.append(torch.maximum(maxs[-1][:-span], maxs[-1][span:]))
            span *= 2
        n = lo.numel()
        self.mins = torch.stack([torch.cat([m, m.new_full((n - m.numel(),), math.inf)]) for m in mins])
        self.maxs = torch.stack([torch.cat([m, m.new_full((n - m.numel(),), -math.inf)]) for m in maxs])

    def query(self, a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(min lo[a..b], max hi[a..b]) elementwise for index tensors a ≤ b."""
        length = b - a + 1
        j = torch.floor(torch.log2(length.to(torch.float64))).long()
        j = torch.where(2 ** (j + 1) <= length, j + 1, j)
        j = torch.where(2 ** j > length, j - 1, j)
        right = b - 2 ** j + 1
        lo = torch.minimum(self.mins[j, a], self.mins[j, right])
        hi = torch.maximum(self.maxs[j, a], self.maxs[j, right])
        return lo, hi


@dataclass(frozen=True)
class _Piece:
    a: float
    b: float
    fn: Callable


class _Tabulated:
    """Closed-form σ', σ'' of a function of u, tabulated on cells of [−U0, U0] with hand-proved tails."""

    def __init__(self, pieces: tuple[_Piece, ...], tails: tuple):
        self.pieces = pieces
        self.tails = tails
        n = int(round(2 * U0 / CELL))
        edges = -U0 + CELL * torch.arange(n + 1, dtype=torch.float64)
        self.n = n
        enc = self._evaluate(edges[:-1], edges[1:])
        self.tables = {order: _RangeTable(lo, hi) for order, (lo, hi) in enc.items()}

    def _evaluate(self, a: torch.Tensor, b: torch.Tensor) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
        """Enclosures of σ', σ'' over [a, b] (finite) from every piece that meets it."""
        out = {1: (torch.full_like(a, math.inf), torch.full_like(a, -math.inf)),
               2: (torch.full_like(a, math.inf), torch.full_like(a, -math.inf))}
        for p in self.pieces:
            meets = (b >= p.a) & (a <= p.b)
            if not bool(meets.any()):
                continue
            d1, d2 = p.fn(Interval(a.clamp(p.a, p.b), b.clamp(p.a, p.b)))
            for order, d in ((1, d1), (2, d2)):
                lo, hi = out[order]
                out[order] = (torch.where(meets, torch.minimum(lo, d.lo), lo),
                              torch.where(meets, torch.maximum(hi, d.hi), hi))
        return out

    def point(self, u: torch.Tensor, order: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Tight enclosure at single points (for matching the closed form against torch's autograd)."""
        return self._evaluate(u, u.clone())[order]

    def bounds(self, order: int, ulo: torch.Tensor, uhi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        n = self.n
        ka = ((ulo + U0) / CELL).clamp(-2, n + 1).floor().long() - 1
        kb = ((uhi + U0) / CELL).clamp(-2, n + 1).floor().long() + 1
        ka, kb = ka.clamp(0, n - 1), kb.clamp(0, n - 1)
        lo, hi = self.tables[order].query(ka, torch.maximum(ka, kb))
        for side, mask in ((0, ulo < -U0), (1, uhi > U0)):
            t_lo, t_hi = self.tails[side][order - 1]
            lo = torch.where(mask, torch.minimum(lo, lib_down(torch.tensor(t_lo, dtype=torch.float64))), lo)
            hi = torch.where(mask, torch.maximum(hi, lib_up(torch.tensor(t_hi, dtype=torch.float64))), hi)
        return lo, hi


class _PiecewiseLinear:
    """σ' = slopes[j] between breaks[j−1] and breaks[j]; σ'' = 0 off the breaks (exact enclosures)."""

    def __init__(self, breaks: tuple[float, ...], slopes: tuple[float, ...]):
        self.breaks, self.slopes = breaks, slopes

    def bounds(self, order: int, ulo: torch.Tensor, uhi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if order == 2:
            return torch.zeros_like(ulo), torch.zeros_like(uhi)
        edges = (-math.inf, *self.breaks, math.inf)
        lo, hi = torch.full_like(ulo, math.inf), torch.full_like(ulo, -math.inf)
        for j, s in enumerate(self.slopes):
            meets = (uhi >= edges[j]) & (ulo <= edges[j + 1])
            lo = torch.where(meets, torch.clamp_max(lo, s), lo)
            hi = torch.where(meets, torch.clamp_min(hi, s), hi)
        return lo, hi

    def point(self, u: torch.Tensor, order: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.bounds(order, u, u)


@dataclass(frozen=True)
class DerivativeModel:
    """A certified model of σ: u = x·mul or x/div; σ^{(k)}(x) = (mul or 1/div)^{k−1} f^{(k)}(u)."""

    core: object
    kinks_u: tuple[float, ...] = ()
    mul: float | None = None
    div: float | None = None

    def to_u(self, lo: torch.Tensor, hi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.mul is not None:
            return down(lo * self.mul), up(hi * self.mul)
        if self.div is not None:
            return down(lo / self.div), up(hi / self.div)
        return lo, hi

    def from_u(self, u: torch.Tensor) -> torch.Tensor:
        if self.mul is not None:
            return u / self.mul
        if self.div is not None:
            return u * self.div
        return u

    def scale_out(self, order: int, lo: torch.Tensor, hi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if order == 1 or (self.mul is None and self.div is None):
            return lo, hi
        if self.mul is not None:
            return down(lo * self.mul), up(hi * self.mul)
        return down(lo / self.div), up(hi / self.div)

    @property
    def kinks(self) -> tuple[float, ...]:
        return tuple(float(self.from_u(torch.tensor(k, dtype=torch.float64))) for k in self.kinks_u)


@functools.lru_cache(maxsize=None)
def _tabulated(kind: str, param: float = 0.0) -> _Tabulated:
    inf = math.inf
    if kind == "softplus":  # torch: x for βx > threshold, else log1p(exp(βx))/β
        pieces = (_Piece(-inf, param, _d_softplus_log), _Piece(param, inf, _d_const(1.0, True)))
        return _Tabulated(pieces, _TAILS["softplus"])
    if kind in ("elu", "selu"):  # ELU(α): α(e^u − 1) for u ≤ 0, u above; SELU: λ·ELU(α_selu)
        left = param if kind == "elu" else _SELU_SCALE * _SELU_ALPHA
        right = 1.0 if kind == "elu" else _SELU_SCALE
        exact = kind == "elu"
        pieces = (_Piece(-inf, 0.0, _d_exp(left, exact)), _Piece(0.0, inf, _d_const(right, exact)))
        tails = (((0.0, left * _E40 * 1.01), (0.0, left * _E40 * 1.01)), ((right, right), (0.0, 0.0)))
        return _Tabulated(pieces, tails)
    closed = {"tanh": _d_tanh, "sigmoid": _d_sigmoid, "silu": _d_silu, "gelu": _d_gelu,
              "gelu_tanh": _d_gelu_tanh, "mish": _d_mish, "tanhshrink": _d_tanhshrink}
    if kind in closed:
        return _Tabulated((_Piece(-inf, inf, closed[kind]),), _TAILS[kind])
    if kind == "softsign":
        pieces = (_Piece(-inf, 0.0, _d_softsign_left), _Piece(0.0, inf, _d_softsign_right))
        return _Tabulated(pieces, _TAILS["softsign"])
    raise KeyError(kind)


class NoClosedForm(Exception):
    """No certified model: the message says why (unknown activation, unreadable or unsupported parameters)."""


def build_model(name: str, params: dict) -> DerivativeModel:
    """The certified model of activation ``name`` with ``params``; :class:`NoClosedForm` with a reason if none."""
    p = dict(params)
    if "unreadable" in p:
        raise NoClosedForm(f"the arguments of the traced call {p['unreadable']!r} could not be read (only "
                           f"literal arguments can)")
    entry = ACTIVATION_TABLE.get(name)
    allowed = entry.parameters if entry is not None else ()
    unknown = sorted(k for k in p if k not in allowed)
    if unknown:
        raise NoClosedForm(f"{name} with unexpected parameters {unknown}")
    if name == "identity":
        return DerivativeModel(_PiecewiseLinear((), (1.0,)))
    if name == "relu":
        return DerivativeModel(_PiecewiseLinear((0.0,), (0.0, 1.0)), (0.0,))
    if name == "leaky_relu":
        s = float(p.get("negative_slope", 0.01))
        return DerivativeModel(_PiecewiseLinear((0.0,), (s, 1.0)), (0.0,) if s != 1.0 else ())
    if name == "relu6":
        return DerivativeModel(_PiecewiseLinear((0.0, 6.0), (0.0, 1.0, 0.0)), (0.0, 6.0))
    if name == "hardtanh":
        lo, hi = float(p.get("min_val", -1.0)), float(p.get("max_val", 1.0))
        if not lo < hi:
            raise NoClosedForm(f"hardtanh with min_val={lo} >= max_val={hi}")
        return DerivativeModel(_PiecewiseLinear((lo, hi), (0.0, 1.0, 0.0)), (lo, hi))
    if name == "gelu" and p.get("approximate", "none") == "tanh":
        name = "gelu_tanh"
    if name in ("tanh", "sigmoid", "silu", "gelu", "gelu_tanh", "mish", "softsign", "tanhshrink"):
        return DerivativeModel(_tabulated(name))
    if name == "softplus":
        beta, threshold = float(p.get("beta", 1.0)), float(p.get("threshold", 20.0))
        if not (beta > 0 and math.isfinite(beta)) or not threshold >= -U0:
            raise NoClosedForm(f"softplus with beta={beta}, threshold={threshold} (needs beta > 0, threshold >= -40)")
        kinks = (threshold,) if math.isfinite(threshold) else ()
        return DerivativeModel(_tabulated("softplus", min(threshold, 1e300)), kinks, mul=beta)
    if name == "elu":
        alpha = float(p.get("alpha", 1.0))
        if not (alpha > 0 and math.isfinite(alpha)):
            raise NoClosedForm(f"elu with alpha={alpha} (needs alpha > 0)")
        return DerivativeModel(_tabulated("elu", alpha), (0.0,) if alpha != 1.0 else ())
    if name == "celu":
        alpha = float(p.get("alpha", 1.0))
        if not (alpha > 0 and math.isfinite(alpha)):
            raise NoClosedForm(f"celu with alpha={alpha} (needs alpha > 0)")
        return DerivativeModel(_tabulated("elu", 1.0), (), div=alpha if alpha != 1.0 else None)
    if name == "selu":
        return DerivativeModel(_tabulated("selu"), (0.0,))
    raise NoClosedForm(f"no closed form is known for activation {name!r}")


__all__ = ["U0", "CELL", "DerivativeModel", "NoClosedForm", "build_model"]
