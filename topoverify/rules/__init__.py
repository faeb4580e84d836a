"""Optimizer rules for :func:`topoverify.predict_step`: one module per optimizer family behind one registry
(claim T7 in ``spec/claims.toml``: K is optimizer-specific).

A rule is an :class:`OptimizerRule` of two pure functions, ``read`` (the step map and pre-step state of one
layer) and ``constants`` (K, K_upper, K_eff, ... of that step); :func:`register_rule` adds one for any
optimizer class. Built in: ``torch.optim.SGD`` (:mod:`topoverify.rules.sgd`). Every other optimizer gets an
explicit "no prediction" (:func:`rule_for`).
"""

from topoverify.rules.base import LayerContext, OptimizerRule, RuleConstants, StepMap
from topoverify.rules.jacobian import JacobianConstants, decay_diagonal, jacobian_constants
from topoverify.rules.registry import (class_name, register_rule, registered, registered_rules, rule_for,
                                       unregister_rule)
from topoverify.rules.sgd import SGD_RULE, buffer_ratio  # registers torch.optim.SGD

__all__ = [
    "register_rule", "unregister_rule", "registered", "registered_rules", "rule_for", "class_name",
    "OptimizerRule", "StepMap", "RuleConstants", "LayerContext",
    "JacobianConstants", "jacobian_constants", "decay_diagonal", "SGD_RULE", "buffer_ratio",
]
