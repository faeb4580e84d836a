"""Outward-rounded interval arithmetic on float64 tensors (elementwise), for certified activation bounds.

An :class:`Interval` holds tensors ``lo`` ≤ ``hi``; every operation returns an interval that contains the
exact real result for every choice of real arguments inside the input intervals:

* ``+ − × /`` are correctly rounded in IEEE arithmetic (error ≤ ½ ulp), so moving each computed endpoint one
  ulp outward (``torch.nextafter``) encloses the exact result.
* ``exp, tanh, sigmoid, erf, log1p`` are increasing; their endpoints come from the math library, whose error is
  a few ulps (glibc and SLEEF document ≤ 1–4 ulp), so they are widened by 2⁻⁴⁸ relative (16 ulps) plus 1e-300
  absolute (covering underflow). This is the one assumption beyond IEEE arithmetic.

Only finite endpoints are used (callers evaluate on bounded cells); products use all four endpoint
combinations, squares and reciprocals their monotone pieces. :func:`gamma` is the rounding-error constant
γ_n of a floating-point sum of n products, used by every certified bound built from matrix products.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

LIB_REL = 2.0 ** -48   # relative widening of math-library results
LIB_ABS = 1e-300       # absolute widening (underflow, results at 0)
U64 = 2.0 ** -53       # unit roundoff of float64
_INF = math.inf


def gamma(n: int, u: float = U64) -> float:
    """γ_n = n·u/(1 − n·u): with unit roundoff ``u``, a computed n-term sum of products differs from the
    exact one by at most γ_n times the sum of the terms' absolute values (Higham, Accuracy and Stability of
    Numerical Algorithms, §3.1); ``inf`` when n·u ≥ 1."""
    nu = n * u
    return nu / (1 - nu) if nu < 1 else _INF


def round_up(x: float, n: int = 4) -> float:
    """A float x ≥ 0 enlarged by the rounding of about ``n`` float64 operations (γ_{n+4}), plus the smallest
    normal-ish slack; inf and nan pass through."""
    return x if not math.isfinite(x) else x * (1 + gamma(n + 4, U64)) + 1e-300


def block_top(a: float, b2: float) -> float:
    """(a + √(a² + 4b²))/2 ≥ λ_max([[A, B], [Bᵀ, 0]]) when a ≥ λ_max(A) and b² ≥ ‖B‖² (for a unit vector (x, y):
    xᵀAx + 2xᵀBy ≤ a|x|² + 2b|x||y|), rounded up; inf when either is not finite."""
    if not (math.isfinite(a) and math.isfinite(b2)):
        return math.inf
    return round_up((a + math.sqrt(a * a + 4 * b2)) / 2, 0)  # ~3.5 roundings of u, relative, all told


def down(x: torch.Tensor) -> torch.Tensor:
    """The next float64 below ``x`` (one ulp outward for a correctly rounded result)."""
    return torch.nextafter(x, torch.full_like(x, -_INF))


def up(x: torch.Tensor) -> torch.Tensor:
    return torch.nextafter(x, torch.full_like(x, _INF))


def lib_down(x: torch.Tensor) -> torch.Tensor:
    """``x`` lowered by the math-library allowance (see module docstring)."""
    return x - x.abs() * LIB_REL - LIB_ABS


def lib_up(x: torch.Tensor) -> torch.Tensor:
    return x + x.abs() * LIB_REL + LIB_ABS


@dataclass(frozen=True)
class Interval:
    """Elementwise intervals [lo, hi] of float64 tensors (module docstring)."""

    lo: torch.Tensor
    hi: torch.Tensor

    @staticmethod
    def point(x: torch.Tensor) -> "Interval":
        x = x.to(torch.float64)
        return Interval(x, x.clone())

    @staticmethod
    def const(c: float, like: torch.Tensor) -> "Interval":
        """An interval holding the real constant that the float ``c`` approximates to within a few ulps (for
        constants like √(2/π) computed with several roundings): widened like a math-library result."""
        t = torch.full_like(like, c, dtype=torch.float64)
        return Interval(lib_down(t), lib_up(t))

    @staticmethod
    def exact(c: float, like: torch.Tensor) -> "Interval":
        """An interval holding exactly the float ``c`` (a constant that is exact in binary, e.g. 2 or 0.5)."""
        t = torch.full_like(like, c, dtype=torch.float64)
        return Interval(t, t.clone())

    def _as(self, other) -> "Interval":
        return other if isinstance(other, Interval) else Interval.exact(float(other), self.lo)

    def __add__(self, other) -> "Interval":
        o = self._as(other)
        return Interval(down(self.lo + o.lo), up(self.hi + o.hi))

    __radd__ = __add__

    def __neg__(self) -> "Interval":
        return Interval(-self.hi, -self.lo)

    def __sub__(self, other) -> "Interval":
        return self + (-self._as(other))

    def __rsub__(self, other) -> "Interval":
        return self._as(other) + (-self)

    def __mul__(self, other) -> "Interval":
        o = self._as(other)
        p = torch.stack([self.lo * o.lo, self.lo * o.hi, self.hi * o.lo, self.hi * o.hi])
        return Interval(down(p.amin(0)), up(p.amax(0)))

    __rmul__ = __mul__

    def square(self) -> "Interval":
        a, b = self.lo.abs(), self.hi.abs()
        straddles = (self.lo <= 0) & (self.hi >= 0)
        lo = torch.where(straddles, torch.zeros_like(a), torch.minimum(a, b) ** 2)
        return Interval(torch.where(straddles, lo, down(lo)), up(torch.maximum(a, b) ** 2))

    def cube(self) -> "Interval":
        """x³ is increasing: endpoints rounded twice (x·x, then ·x), so widened by two ulps per product."""
        return Interval(_cube_down(self.lo), _cube_up(self.hi))

    def recip_positive(self) -> "Interval":
        """1/x for an interval with lo > 0 (checked)."""
        if bool((self.lo <= 0).any()):
            raise ValueError("recip_positive needs lo > 0")
        return Interval(down(1.0 / self.hi), up(1.0 / self.lo))

    def abs(self) -> "Interval":
        straddles = (self.lo <= 0) & (self.hi >= 0)
        a, b = self.lo.abs(), self.hi.abs()
        return Interval(torch.where(straddles, torch.zeros_like(a), torch.minimum(a, b)), torch.maximum(a, b))

    def scale_pos(self, c: float) -> "Interval":
        """Multiply by a positive float constant taken as exact."""
        return Interval(down(self.lo * c), up(self.hi * c))

    def _increasing(self, fn) -> "Interval":
        return Interval(lib_down(fn(self.lo)), lib_up(fn(self.hi)))

    def exp(self) -> "Interval":
        r = self._increasing(torch.exp)
        return Interval(r.lo.clamp_min(0.0), r.hi)

    def tanh(self) -> "Interval":
        r = self._increasing(torch.tanh)
        return Interval(r.lo.clamp_min(-1.0), r.hi.clamp_max(1.0))

    def sigmoid(self) -> "Interval":
        r = self._increasing(torch.sigmoid)
        return Interval(r.lo.clamp_min(0.0), r.hi.clamp_max(1.0))

    def erf(self) -> "Interval":
        r = self._increasing(torch.erf)
        return Interval(r.lo.clamp_min(-1.0), r.hi.clamp_max(1.0))

    def log1p(self) -> "Interval":
        return self._increasing(torch.log1p)

    def hull(self, other: "Interval") -> "Interval":
        return Interval(torch.minimum(self.lo, other.lo), torch.maximum(self.hi, other.hi))

    def where(self, mask: torch.Tensor, other: "Interval") -> "Interval":
        """Elementwise ``self`` where ``mask`` else ``other``."""
        return Interval(torch.where(mask, self.lo, other.lo), torch.where(mask, self.hi, other.hi))


def _cube_down(x: torch.Tensor) -> torch.Tensor:
    sq = x * x
    # x·x rounded to nearest, then times x: move each rounding outward in the direction that lowers x³
    sq_for_low = torch.where(x >= 0, down(sq), up(sq))
    return down(sq_for_low * x)


def _cube_up(x: torch.Tensor) -> torch.Tensor:
    sq = x * x
    sq_for_high = torch.where(x >= 0, up(sq), down(sq))
    return up(sq_for_high * x)


__all__ = ["Interval", "round_up", "block_top", "down", "up", "lib_down", "lib_up", "gamma", "LIB_REL", "LIB_ABS", "U64"]
