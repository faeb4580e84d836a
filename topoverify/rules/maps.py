"""The coordinate-wise maps φ of the adaptive families as :class:`CoordinateFamily` objects (claim T7(c)).

Each reads its coefficients from the step map's ``hyper`` (evaluated from
:func:`topoverify.symbolic.adaptive.family_coefficients` by the family's ``read``) and its state from the
step map's state clouds; the bounds are the lambdified sympy forms of :mod:`topoverify.symbolic.adaptive`.
State names are torch's (``exp_avg``, ``exp_avg_sq``, ``max_exp_avg_sq``, ``exp_inf``, ``square_avg``,
``grad_avg``, ``momentum_buffer``, ``sum``).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from topoverify.errors import TopoverifyError
from topoverify.rules.base import RuleConstants
from topoverify.rules.coordinatewise import CoordinateFamily, Hyper, StateBox, coordinate_constants
from topoverify.symbolic.adaptive import (centered_dgbar_numeric, max_bounds_numeric, max_map_numeric,
                                          sqrt_bounds_numeric, sqrt_map_numeric, sqrt_root_bound_numeric)

_F64 = torch.float64
_TINY = torch.finfo(_F64).tiny  # √ of at least this: autograd's one-sided limit at 0, not NaN


def _t(x: float) -> torch.Tensor:
    return torch.as_tensor(float(x), dtype=_F64)


def _abs_hi(box: StateBox, name: str) -> torch.Tensor:
    lo, hi = box[name]
    return torch.maximum(lo.abs(), hi.abs())


def _momentum(u: torch.Tensor, state: Mapping[str, torch.Tensor], hyper: Hyper) -> torch.Tensor:
    """u + μ b for rules whose buffer takes the adaptive direction (RMSprop with momentum); no-op otherwise."""
    mu = hyper.get("momentum", 0.0)
    return u + mu * state["momentum_buffer"] if mu and "momentum_buffer" in state else u


# ----------------------------------------------------------------------------------------------------------
# φ = (A + c g)/(√B(g) + ε): Adam, AdamW, amsgrad, NAdam, rectified RAdam, RMSprop, Adagrad
# hyper: a (A = a·state[m]; absent: A = 0), c, e, eps, b (B = b·state[v]); amsgrad: B = b·max(v_max, β2 v)
# ----------------------------------------------------------------------------------------------------------

class _Sqrt:
    """Coefficients of SQRT_MAP from hyper and state: ``m``/``v`` name the states read as m and v."""

    def __init__(self, m: str | None, v: str, v_max: str | None = None):
        self.m, self.v, self.v_max = m, v, v_max

    def A(self, st, h):
        return h["a"] * st[self.m] if self.m else torch.zeros_like(st[self.v])

    def B_floor(self, v, v_max, h):
        """B at g = 0: b·v (b·max(v_max, β2·v) with amsgrad)."""
        return h["b"] * (torch.maximum(v_max, h["beta2"] * v) if self.v_max else v)

    def update(self, g, st, h):
        if self.v_max:  # amsgrad: v̂ = max(v_max, β2 v + (1−β2) g²)/(1−β2^t)
            S = h["b"] * torch.maximum(st[self.v_max], h["beta2"] * st[self.v] + (1 - h["beta2"]) * g * g)
            u = (self.A(st, h) + h["c"] * g) / (S.clamp_min(_TINY).sqrt() + h["eps"])
        else:
            u = sqrt_map_numeric(g, self.A(st, h), _t(h["c"]), h["b"] * st[self.v], _t(h["e"]), _t(h["eps"]))
        return _momentum(u, st, h)

    def _bounds(self, box, h):
        A_hi = abs(h["a"]) * _abs_hi(box, self.m) if self.m else torch.zeros_like(box[self.v][0])
        B_lo = self.B_floor(box[self.v][0], box[self.v_max][0] if self.v_max else None, h)
        return sqrt_bounds_numeric(A_hi, _t(h["c"]), B_lo, _t(h["e"]), _t(h["eps"]), A_hi, B_lo)

    def grad_bound(self, box, h):
        return self._bounds(box, h)[0]

    def state_bounds(self, box, h):
        """|∂φ/∂m| and, on r = √v (and √v_max), |∂φ/∂r| ≤ √β·SQRT_DROOT_BOUND with B = β r²: β = b (b·β2 for v
        under amsgrad's max, b for v_max)."""
        _, da, _, _ = self._bounds(box, h)
        A_hi = abs(h["a"]) * _abs_hi(box, self.m) if self.m else torch.zeros_like(box[self.v][0])
        B_lo = self.B_floor(box[self.v][0], box[self.v_max][0] if self.v_max else None, h)
        root = sqrt_root_bound_numeric(A_hi, _t(h["c"]), B_lo, _t(h["e"]), _t(h["eps"]))
        out = {}
        if self.m:
            out[self.m] = abs(h["a"]) * da
        out[self.v] = (h["b"] * (h["beta2"] if self.v_max else 1.0)) ** 0.5 * root
        if self.v_max:
            out[self.v_max] = h["b"] ** 0.5 * root
        if h.get("momentum", 0.0) and "momentum_buffer" in box:
            out["momentum_buffer"] = torch.full_like(root, h["momentum"])
        return out

    def sup_bound(self, st, h):
        A = self.A(st, h)
        B = self.B_floor(st[self.v], st[self.v_max] if self.v_max else None, h)
        sup = sqrt_bounds_numeric(A.abs(), _t(h["c"]), B, _t(h["e"]), _t(h["eps"]), A, B)[3]
        mu = h.get("momentum", 0.0)
        return sup + mu * st["momentum_buffer"].abs() if mu and "momentum_buffer" in st else sup


def sqrt_family(name: str, m: str | None, v: str, v_max: str | None = None) -> CoordinateFamily:
    """SQRT_MAP with A = a·state[m] (A = 0 without ``m``), B = b·state[v] (amsgrad: b·max(state[v_max], β2·v))."""
    s = _Sqrt(m, v, v_max)
    return CoordinateFamily(name, s.update, s.grad_bound, s.state_bounds, s.sup_bound,
                            root_states=(v,) + ((v_max,) if v_max else ()))


# ----------------------------------------------------------------------------------------------------------
# centered RMSprop: φ = g/(√(α(v − ḡ²) + α(1−α)(g − ḡ)²) + ε)  (hyper: alpha, eps, momentum)
# ----------------------------------------------------------------------------------------------------------

def _centered_update(g, st, h):
    a = h["alpha"]
    v1, gb1 = a * st["square_avg"] + (1 - a) * g * g, a * st["grad_avg"] + (1 - a) * g
    return _momentum(g / ((v1 - gb1 * gb1).clamp_min(_TINY).sqrt() + h["eps"]), st, h)


def _centered_parts(box, h):
    a = h["alpha"]
    gb_hi = _abs_hi(box, "grad_avg")
    # v − ḡ² is concave along every segment of states (v linear, ḡ² convex), so its minimum over any segment
    # between two neurons is at one of them: the column minimum over the neurons is a lower bound on B/α
    st = box.state
    B_lo = (a * (st["square_avg"] - st["grad_avg"] ** 2).amin(dim=0)).clamp_min(0)
    e = _t(a * (1 - a))
    dg, _, db, _ = sqrt_bounds_numeric(gb_hi, _t(1.0), B_lo, e, _t(h["eps"]), gb_hi, B_lo)
    return dg, db, centered_dgbar_numeric(gb_hi, B_lo, e, _t(h["eps"]), _t(a))


def _centered_state_bounds(box, h):
    _, db, dgbar = _centered_parts(box, h)
    out = {"square_avg": h["alpha"] * db, "grad_avg": dgbar}
    if h.get("momentum", 0.0) and "momentum_buffer" in box:
        out["momentum_buffer"] = torch.full_like(db, h["momentum"])
    return out


def _centered_sup(st, h):
    a = h["alpha"]
    B = (a * (st["square_avg"] - st["grad_avg"] ** 2)).clamp_min(0)
    A = st["grad_avg"]
    sup = sqrt_bounds_numeric(A.abs(), _t(1.0), B, _t(a * (1 - a)), _t(h["eps"]), A, B)[3]
    mu = h.get("momentum", 0.0)
    return sup + mu * st["momentum_buffer"].abs() if mu and "momentum_buffer" in st else sup


CENTERED_RMSPROP = CoordinateFamily("RMSprop(centered)", _centered_update, lambda box, h: _centered_parts(box, h)[0],
                                    _centered_state_bounds, _centered_sup)


# ----------------------------------------------------------------------------------------------------------
# Adamax: φ = (a·m + c g)/max(β2 u, |g| + ε)  (hyper: a, c, beta2, eps)
# ----------------------------------------------------------------------------------------------------------

def _adamax_update(g, st, h):
    return max_map_numeric(g, h["a"] * st["exp_avg"], _t(h["c"]), h["beta2"] * st["exp_inf"], _t(h["eps"]))


def _adamax_bounds(box, h):
    A_hi, Q_lo = abs(h["a"]) * _abs_hi(box, "exp_avg"), h["beta2"] * box["exp_inf"][0]
    return max_bounds_numeric(A_hi, _t(h["c"]), Q_lo, _t(h["eps"]), A_hi, Q_lo)


ADAMAX = CoordinateFamily(
    "Adamax", _adamax_update, lambda box, h: _adamax_bounds(box, h)[0],
    lambda box, h: {"exp_avg": abs(h["a"]) * _adamax_bounds(box, h)[1],
                    "exp_inf": h["beta2"] * _adamax_bounds(box, h)[2]},
    lambda st, h: max_bounds_numeric(h["a"] * st["exp_avg"].abs(), _t(h["c"]), h["beta2"] * st["exp_inf"],
                                     _t(h["eps"]), h["a"] * st["exp_avg"], h["beta2"] * st["exp_inf"])[3])


# ----------------------------------------------------------------------------------------------------------
# RAdam before rectification: φ = a·m + c g (hyper: a, c): Lipschitz, unbounded
# ----------------------------------------------------------------------------------------------------------

LINEAR_MOMENTUM = CoordinateFamily(
    "RAdam(unrectified)", lambda g, st, h: h["a"] * st["exp_avg"] + h["c"] * g,
    lambda box, h: torch.full_like(box["exp_avg"][0], h["c"]),
    lambda box, h: {"exp_avg": torch.full_like(box["exp_avg"][0], abs(h["a"]))},
    lambda st, h: torch.full_like(st["exp_avg"], float("inf")))


# ----------------------------------------------------------------------------------------------------------
# sign rules: φ = sign(β1 m + (1 − β1) g) (Lion; signSGD with β1 = 0 and no state): bounded, not Lipschitz
# ----------------------------------------------------------------------------------------------------------

def _sign_update(g, st, h):
    b1 = h.get("beta1", 0.0)
    x = b1 * st["exp_avg"] + (1 - b1) * g if "exp_avg" in st and b1 else g
    return torch.sign(x)


SIGN = CoordinateFamily("sign", _sign_update, lambda box, h: torch.full_like(next(iter(box.values()))[0], float("inf")),
                        lambda box, h: {}, lambda st, h: torch.ones_like(next(iter(st.values()))), lipschitz=False)


#: every built-in map by the name a rule's ``read`` puts in ``StepMap.family``
FAMILIES: dict[str, CoordinateFamily] = {
    "adam": sqrt_family("Adam", "exp_avg", "exp_avg_sq"),  # Adam, AdamW, NAdam, rectified RAdam
    "adam_amsgrad": sqrt_family("Adam(amsgrad)", "exp_avg", "exp_avg_sq", "max_exp_avg_sq"),
    "radam_unrectified": LINEAR_MOMENTUM,
    "adamax": ADAMAX,
    "rmsprop": sqrt_family("RMSprop", None, "square_avg"),
    "rmsprop_centered": CENTERED_RMSPROP,
    "adagrad": sqrt_family("Adagrad", None, "sum"),
    "sign": SIGN,
}


def family_for(step_map) -> CoordinateFamily:
    """The :class:`CoordinateFamily` whose φ a step map's ``hyper`` and ``state`` parametrise."""
    try:
        return FAMILIES[step_map.family]
    except KeyError:
        raise TopoverifyError(f"the step map of {step_map.optimizer} names no coordinate-wise family "
                              f"(family={step_map.family!r}); known: {sorted(FAMILIES)}.") from None


def family_constants(step_map, ctx) -> RuleConstants:
    """:func:`coordinate_constants` of the step map's own family: the ``constants`` of every built-in
    coordinate-wise rule."""
    return coordinate_constants(family_for(step_map), step_map, ctx)


__all__ = ["family_constants", "sqrt_family", "CENTERED_RMSPROP", "ADAMAX", "LINEAR_MOMENTUM", "SIGN", "FAMILIES", "family_for"]
