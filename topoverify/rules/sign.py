"""Sign rules (Lion, signSGD): u = sign(β1 m + (1 − β1) g), bounded but not Lipschitz (claim T7(b) in
``spec/claims.toml``): only the additive bound holds, |‖θ'_i − θ'_j‖ − (1 − lr·λ)‖θ_i − θ_j‖| ≤ 2 lr √D.

torch has no sign rule, so none is registered: :func:`sign_rule` builds the rule for a Lion-style optimizer
(param groups with ``lr``, ``betas`` (or ``beta1``), decoupled ``weight_decay``; state ``exp_avg`` after the
first step), to register with ``topoverify.register_rule(Lion, sign_rule())``. signSGD is the case β1 = 0.
"""

from __future__ import annotations

import torch
from torch import nn

from topoverify.neurons.layouts import NeuronLayer, neuron_cloud
from topoverify.rules.base import OptimizerRule, StepMap
from topoverify.rules.reading import check_hyper, member_groups, read_state, shared_hyper
from topoverify.rules.maps import family_constants


def read_sign(optimizer: torch.optim.Optimizer, model: nn.Module, layer: NeuronLayer) -> StepMap:
    """A Lion-style step map: β1 from ``betas[0]`` (or ``beta1``; 0 when neither), decoupled weight decay."""
    groups = member_groups(optimizer, model, layer)
    g0 = groups[0]
    beta_key = "betas" if "betas" in g0 else ("beta1" if "beta1" in g0 else None)
    keys = ("lr",) + ((beta_key,) if beta_key else ()) + (("maximize",) if "maximize" in g0 else ())
    ref = shared_hyper(layer, groups, keys)
    lr = check_hyper(layer, "lr", ref["lr"], "lr")
    b1 = 0.0
    if beta_key:
        raw = ref[beta_key][0] if beta_key == "betas" else ref[beta_key]
        b1 = check_hyper(layer, "beta1", raw, "beta")
    wd = tuple(check_hyper(layer, "weight_decay", g.get("weight_decay", 0.0), "nonneg") for g in groups)
    if b1 > 0:
        clouds, steps = read_state(optimizer, model, layer, ("exp_avg",), require_step=False)
    else:  # signSGD: no state; a zero m makes the map sign(g)
        clouds = {"exp_avg": torch.zeros_like(neuron_cloud(model, layer), dtype=torch.float64)}
        steps = 0
    hyper = {"beta1": b1, "t": float(steps + 1)}
    return StepMap(type(optimizer).__name__, lr, 1.0, 0.0, tuple(0.0 for _ in wd),
                   f"sign rule (beta1={b1:g}; additive bound only)", bool(ref.get("maximize", False)), family="sign",
                   hyper=hyper,
                   decoupled_decay=wd, state=clouds)


def sign_rule() -> OptimizerRule:
    """The rule of a Lion-style sign optimizer (register it for your class with topoverify.register_rule)."""
    return OptimizerRule(read_sign, family_constants, "θ(1 − lr·λ) − lr·sign(β1 m + (1 − β1) g)", ("step",))


__all__ = ["sign_rule", "read_sign"]
