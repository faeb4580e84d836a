"""The rules of ``torch.optim.Adam``, ``AdamW``, ``Adam(amsgrad=True)``, ``NAdam``, ``RAdam`` (both regimes)
and ``Adamax`` (claim T7(c) in ``spec/claims.toml``; proof in ``proofs_notes/T7_adaptive_rules.md``).

Each ``read`` validates the hyper-parameters (lr > 0, β in [0, 1), ε > 0; one value per neuron), reads the
pre-step state (m = ``exp_avg``, v = ``exp_avg_sq``, ...; zero before the first step, as torch initialises it)
and the coming step t = step + 1, and evaluates the map's coefficients from
:func:`topoverify.symbolic.adaptive.family_coefficients`. Decoupled weight decay (AdamW, or
``decoupled_weight_decay=True``) enters K_eff as λ_dec; coupled decay is part of the gradient field.
``foreach``/``fused``/``capturable`` implement the same step, so they get the same prediction.

Adam's first step (m = v = 0) is sign-like: |φ'| reaches c/ε, so its K_eff is ~1/ε and only the additive bound
|u_k| ≤ 1 (from c/√e) is useful.
"""

from __future__ import annotations

import math

import sympy as sp
import torch
from torch import nn

from topoverify.errors import NonFiniteError, UnsupportedError
from topoverify.neurons.layouts import NeuronLayer

from topoverify.rules.base import OptimizerRule, StepMap
from topoverify.rules.reading import check_hyper, float32_coefficients, member_groups, read_state, shared_hyper
from topoverify.rules.maps import family_constants
from topoverify.rules.registry import register_rule
from topoverify.symbolic.adaptive import family_coefficients

_COMMON = ("lr", "betas", "eps", "maximize")


def read_common(optimizer: torch.optim.Optimizer, model: nn.Module, layer: NeuronLayer, extra: tuple[str, ...],
                states: tuple[str, ...]):
    """Validated shared hyper-parameters, per-member weight decays (coupled, decoupled), state clouds and the
    coming step t (shared by every Adam-type read)."""
    groups = member_groups(optimizer, model, layer)
    keys = tuple(k for k in (*_COMMON, "decoupled_weight_decay", *extra) if k in groups[0])
    ref = shared_hyper(layer, groups, keys)
    check_hyper(layer, "lr", ref["lr"], "lr")
    b1, b2 = ref["betas"]
    check_hyper(layer, "beta1 (betas[0])", b1, "beta", key="betas")
    check_hyper(layer, "beta2 (betas[1])", b2, "beta", key="betas")
    check_hyper(layer, "eps", ref["eps"], "eps")
    wd = tuple(check_hyper(layer, "weight_decay", g["weight_decay"], "nonneg") for g in groups)
    decoupled = bool(ref.get("decoupled_weight_decay", False))
    clouds, steps = read_state(optimizer, model, layer, states)
    ref["float32_coefficients"] = float32_coefficients(groups)  # the layer's own groups
    return ref, float(b1), float(b2), wd, decoupled, clouds, steps + 1


def _step_map(optimizer, ref, wd, decoupled, desc, hyper, clouds, family: str) -> StepMap:
    lr = float(ref["lr"])
    hyper["float32_coefficients"] = ref["float32_coefficients"]
    coupled = tuple(0.0 for _ in wd) if decoupled else wd
    return StepMap(type(optimizer).__name__, lr, 1.0, 0.0, coupled, desc, bool(ref.get("maximize", False)),
                   family=family, hyper=hyper, decoupled_decay=wd if decoupled else (), state=clouds)


def _floats(coef: dict) -> dict[str, float]:
    return {k: float(v) for k, v in coef.items() if not v.free_symbols}


def _coefficient(coef: dict, key: str, state: sp.Symbol) -> float:
    """The factor of ``state`` in a linear coefficient (A = a·m, B = b·v)."""
    return float(sp.diff(coef[key], state))


_M, _V, _VMAX = sp.symbols("m v v_max", nonnegative=True)


def read_adam(optimizer: torch.optim.Adam, model: nn.Module, layer: NeuronLayer) -> StepMap:
    """Adam / AdamW / amsgrad: φ = m̂/(√v̂ + ε) as SQRT_MAP with A = a·m, B = b·v (amsgrad: b·max(v_max, β2 v))."""
    groups = member_groups(optimizer, model, layer)
    amsgrad = bool(shared_hyper(layer, groups, ("amsgrad",))["amsgrad"])  # the layer's own groups, not group 0
    names = ("exp_avg", "exp_avg_sq", "max_exp_avg_sq") if amsgrad else ("exp_avg", "exp_avg_sq")
    ref, b1, b2, wd, decoupled, clouds, t = read_common(optimizer, model, layer, (), names)
    coef = family_coefficients("adam", beta1=sp.Float(b1), beta2=sp.Float(b2), t=t, eps=sp.Float(ref["eps"]))
    hyper = {**_floats(coef), "a": _coefficient(coef, "A", _M), "beta1": b1, "beta2": b2, "t": float(t),
             # B = b·v, or with amsgrad b·max(v_max, β2 v): b = β2/(1 − β2^t), resp. 1/(1 − β2^t)
             "b": 1.0 / (1.0 - b2**t) if amsgrad else _coefficient(coef, "B", _V)}
    first = " first step (m = v = 0: sign-like)" if t == 1 else ""
    desc = f"{type(optimizer).__name__}{' amsgrad' if amsgrad else ''}{' decoupled decay' if decoupled else ''}" \
           f"{first} (conditional on m, v)"
    return _step_map(optimizer, ref, wd, decoupled, desc, hyper, clouds, "adam_amsgrad" if amsgrad else "adam")


def read_nadam(optimizer: torch.optim.NAdam, model: nn.Module, layer: NeuronLayer) -> StepMap:
    """NAdam: ((1−μ_t)/(1−Π) g + μ_{t+1}/(1−Π μ_{t+1}) m')/(√v̂ + ε), μ_t = β1(1 − ½·0.96^{tψ})."""
    ref, b1, b2, wd, decoupled, clouds, t = read_common(optimizer, model, layer, ("momentum_decay",),
                                                        ("exp_avg", "exp_avg_sq"))
    psi = check_hyper(layer, "momentum_decay", ref["momentum_decay"], "nonneg")
    prods = [optimizer.state[p]["mu_product"] for p in _members(model, layer) if optimizer.state.get(p)]
    if not all(math.isfinite(float(x)) for x in prods):
        raise NonFiniteError(f"layer {layer.name!r}: NAdam's state 'mu_product' is not finite "
                             f"({[float(x) for x in prods]}); the state was corrupted.")
    if len({float(x) for x in prods}) > 1:
        raise UnsupportedError(f"layer {layer.name!r}: the members' NAdam mu_product differ "
                               f"({sorted(float(x) for x in prods)}); the step is not one field.")
    mu = b1 * (1 - 0.5 * 0.96 ** (t * psi))
    mu_next = b1 * (1 - 0.5 * 0.96 ** ((t + 1) * psi))
    # torch keeps the product as a (float32 by default) tensor and updates it in that dtype: do the same
    before = prods[0] if prods else torch.ones((), dtype=torch.get_default_dtype())
    prod = float(before * mu)
    coef = family_coefficients("nadam", beta1=sp.Float(b1), beta2=sp.Float(b2), t=t, eps=sp.Float(ref["eps"]),
                               mu=sp.Float(mu), mu_next=sp.Float(mu_next), mu_product=sp.Float(prod))
    hyper = {**_floats(coef), "a": _coefficient(coef, "A", _M), "b": _coefficient(coef, "B", _V), "beta1": b1,
             "beta2": b2, "t": float(t), "mu": mu, "mu_next": mu_next, "mu_product": prod}
    return _step_map(optimizer, ref, wd, decoupled, f"NAdam (conditional on m, v; mu_t={mu:.4g})", hyper, clouds,
                     "adam")


def radam_rectification(beta2: float, t: int) -> float | None:
    """RAdam's rect(t) when ρ_t > 5, else None (the unrectified, momentum-SGD regime)."""
    rho_inf = 2 / (1 - beta2) - 1
    rho_t = rho_inf - 2 * t * beta2**t / (1 - beta2**t)
    if rho_t <= 5:
        return None
    return math.sqrt((rho_t - 4) * (rho_t - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho_t))


def read_radam(optimizer: torch.optim.RAdam, model: nn.Module, layer: NeuronLayer) -> StepMap:
    """RAdam: rect·m̂·√(1−β2^t)/(√v + ε) when ρ_t > 5 (SQRT_MAP, ε/√(1−β2^t)), else m̂ (LINEAR_MAP)."""
    ref, b1, b2, wd, decoupled, clouds, t = read_common(optimizer, model, layer, (), ("exp_avg", "exp_avg_sq"))
    rect = radam_rectification(b2, t)
    fam = "radam_unrectified" if rect is None else "radam_rectified"
    coef = family_coefficients(fam, beta1=sp.Float(b1), beta2=sp.Float(b2), t=t, eps=sp.Float(ref["eps"]),
                               rect=None if rect is None else sp.Float(rect))
    hyper = {**_floats(coef), "a": _coefficient(coef, "A", _M), "beta1": b1, "beta2": b2, "t": float(t),
             "rectified": float(rect is not None)}
    if rect is not None:
        hyper["b"] = _coefficient(coef, "B", _V)
        hyper["rect"] = rect
    desc = f"RAdam {'rectified' if rect else 'unrectified (momentum-like: rho_t <= 5)'} (conditional on m, v)"
    return _step_map(optimizer, ref, wd, decoupled, desc, hyper, clouds, "adam" if rect else "radam_unrectified")


def read_adamax(optimizer: torch.optim.Adamax, model: nn.Module, layer: NeuronLayer) -> StepMap:
    """Adamax: m'/((1−β1^t) max(β2 u, |g| + ε)) (MAX_MAP with Q = β2 u)."""
    ref, b1, b2, wd, decoupled, clouds, t = read_common(optimizer, model, layer, (), ("exp_avg", "exp_inf"))
    coef = family_coefficients("adamax", beta1=sp.Float(b1), beta2=sp.Float(b2), t=t, eps=sp.Float(ref["eps"]))
    hyper = {**_floats(coef), "a": _coefficient(coef, "A", _M), "beta1": b1, "beta2": b2, "t": float(t)}
    return _step_map(optimizer, ref, wd, False, "Adamax (conditional on m, u)", hyper, clouds, "adamax")


def _members(model: nn.Module, layer: NeuronLayer):
    params = dict(model.named_parameters())
    return [params[m.name] for m in layer.members]


_STEP = ("step", "_init_group")
ADAM_RULE = OptimizerRule(read_adam, family_constants, "θ − lr·m̂/(√v̂ + ε) (− lr·λθ decoupled)", _STEP)
NADAM_RULE = OptimizerRule(read_nadam, family_constants, "θ − lr·(a_g g + a_m m')/(√v̂ + ε)", _STEP)
RADAM_RULE = OptimizerRule(read_radam, family_constants, "θ − lr·rect·m̂/(√v̂ + ε') or θ − lr·m̂", _STEP)
ADAMAX_RULE = OptimizerRule(read_adamax, family_constants, "θ − lr·m̂/max(β2 u, |g| + ε)", _STEP)
register_rule(torch.optim.Adam, ADAM_RULE)
register_rule(torch.optim.AdamW, ADAM_RULE)
register_rule(torch.optim.NAdam, NADAM_RULE)
register_rule(torch.optim.RAdam, RADAM_RULE)
register_rule(torch.optim.Adamax, ADAMAX_RULE)

__all__ = ["ADAM_RULE", "NADAM_RULE", "RADAM_RULE", "ADAMAX_RULE", "read_adam", "read_nadam", "read_radam",
           "read_adamax", "radam_rectification", "read_common"]
