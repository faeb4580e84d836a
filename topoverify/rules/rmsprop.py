"""The rules of ``torch.optim.RMSprop`` (plain, centered, with momentum) and ``torch.optim.Adagrad`` (claim T7(c)
in ``spec/claims.toml``; proof in ``proofs_notes/T7_adaptive_rules.md``).

RMSprop: φ = g/(√(α v + (1−α) g²) + ε) (SQRT_MAP with A = 0, B = α v, e = 1 − α); centered: the same map of
h = g − ḡ with B = α(v − ḡ²), e = α(1 − α) (CENTERED_MAP); with momentum μ the step is lr·(μ b + φ), so the
buffer b enters K_eff as μ·ρ_b and the additive bound as μ|b|. Adagrad: (clr/lr)·g/(√(s + g²) + ε),
clr = lr/(1 + (t−1)·lr_decay), from the accumulated ``sum`` s (which torch creates at construction, so its first
step has a state: s = initial_accumulator_value).
"""

from __future__ import annotations

import sympy as sp
import torch
from torch import nn

from topoverify.neurons.layouts import NeuronLayer
from topoverify.rules.base import OptimizerRule, StepMap
from topoverify.rules.reading import check_hyper, float32_coefficients, member_groups, read_state, shared_hyper
from topoverify.rules.maps import family_constants
from topoverify.rules.registry import register_rule
from topoverify.symbolic.adaptive import family_coefficients

_V = sp.Symbol("v", nonnegative=True)


def read_rmsprop(optimizer: torch.optim.RMSprop, model: nn.Module, layer: NeuronLayer) -> StepMap:
    """RMSprop: α, ε, momentum μ, centered; state square_avg (+ grad_avg, momentum_buffer)."""
    groups = member_groups(optimizer, model, layer)
    ref = shared_hyper(layer, groups, ("lr", "alpha", "eps", "momentum", "centered", "maximize"))
    lr = check_hyper(layer, "lr", ref["lr"], "lr")
    alpha = check_hyper(layer, "alpha", ref["alpha"], "beta")
    eps = check_hyper(layer, "eps", ref["eps"], "eps")
    mu = check_hyper(layer, "momentum", ref["momentum"], "nonneg")
    wd = tuple(check_hyper(layer, "weight_decay", g["weight_decay"], "nonneg") for g in groups)
    centered = bool(ref["centered"])
    names = ("square_avg",) + (("grad_avg",) if centered else ()) + (("momentum_buffer",) if mu > 0 else ())
    clouds, steps = read_state(optimizer, model, layer, names)
    fam = "rmsprop_centered" if centered else "rmsprop"
    coef = family_coefficients(fam, alpha=sp.Float(alpha), eps=sp.Float(eps))
    hyper = {"alpha": alpha, "eps": eps, "momentum": mu, "c": 1.0, "e": float(coef["e"]), "t": float(steps + 1),
             "centered": float(centered), "float32_coefficients": float32_coefficients(groups)}
    if not centered:
        hyper["b"] = float(sp.diff(coef["B"], _V))
    desc = f"RMSprop{' centered' if centered else ''}{f' momentum {mu:g}' if mu else ''} (conditional on the state)"
    return StepMap(type(optimizer).__name__, lr, 1.0, 0.0, wd, desc, bool(ref["maximize"]), family=fam, hyper=hyper,
                   state=clouds)


def read_adagrad(optimizer: torch.optim.Adagrad, model: nn.Module, layer: NeuronLayer) -> StepMap:
    """Adagrad: lr_decay, ε; state sum (and step)."""
    groups = member_groups(optimizer, model, layer)
    ref = shared_hyper(layer, groups, ("lr", "lr_decay", "eps", "maximize"))
    lr = check_hyper(layer, "lr", ref["lr"], "lr")
    decay = check_hyper(layer, "lr_decay", ref["lr_decay"], "nonneg")
    eps = check_hyper(layer, "eps", ref["eps"], "eps")
    wd = tuple(check_hyper(layer, "weight_decay", g["weight_decay"], "nonneg") for g in groups)
    clouds, steps = read_state(optimizer, model, layer, ("sum",))
    t = steps + 1
    coef = family_coefficients("adagrad", ratio=sp.Float(1 / (1 + (t - 1) * decay)), eps=sp.Float(eps))
    hyper = {"c": float(coef["c"]), "e": float(coef["e"]), "b": float(sp.diff(coef["B"], _V)), "eps": eps,
             "t": float(t), "lr_decay": decay, "float32_coefficients": float32_coefficients(groups)}
    return StepMap(type(optimizer).__name__, lr, 1.0, 0.0, wd, f"Adagrad (conditional on the sum, t={t})",
                   bool(ref["maximize"]), family="adagrad", hyper=hyper, state=clouds)


_STEP = ("step", "_init_group")
RMSPROP_RULE = OptimizerRule(read_rmsprop, family_constants, "θ − lr·(μ b + g/(√v' + ε))", _STEP)
ADAGRAD_RULE = OptimizerRule(read_adagrad, family_constants, "θ − clr·g/(√(s + g²) + ε)", _STEP)
register_rule(torch.optim.RMSprop, RMSPROP_RULE)
register_rule(torch.optim.Adagrad, ADAGRAD_RULE)

__all__ = ["RMSPROP_RULE", "ADAGRAD_RULE", "read_rmsprop", "read_adagrad"]
