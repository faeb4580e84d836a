"""Optimizer rules for :func:`topoverify.predict_step`: one module per optimizer family behind one registry
(claim T7 in ``spec/claims.toml``: K is optimizer-specific).

A rule is an :class:`OptimizerRule` of two pure functions, ``read`` (the step map and pre-step state of one
layer) and ``constants`` (K, K_upper, K_eff, ... of that step); :func:`register_rule` adds one for any
optimizer class. Built in: ``torch.optim.SGD`` (:mod:`topoverify.rules.sgd`). Every optimizer without a rule gets an
explicit "no prediction" (:func:`rule_for`).

Built in since T7(c): Adam, AdamW, amsgrad, NAdam, RAdam, Adamax (:mod:`topoverify.rules.adam`), RMSprop and
Adagrad (:mod:`topoverify.rules.rmsprop`), all through :mod:`topoverify.rules.coordinatewise`;
:func:`sign_rule` for Lion-style sign optimizers (register it for your class).
"""

from topoverify.rules.base import LayerContext, OptimizerRule, RuleConstants, StepMap
from topoverify.rules.jacobian import JacobianConstants, decay_diagonal, jacobian_constants
from topoverify.rules.registry import (class_name, register_rule, registered, registered_rules, rule_for,
                                       unregister_rule)
from topoverify.rules.sgd import SGD_RULE, buffer_ratio  # registers torch.optim.SGD
from topoverify.rules.adam import ADAM_RULE, ADAMAX_RULE, NADAM_RULE, RADAM_RULE  # registers the Adam family
from topoverify.rules.rmsprop import ADAGRAD_RULE, RMSPROP_RULE  # registers RMSprop, Adagrad
from topoverify.rules.sign import sign_rule
from topoverify.rules.coordinatewise import CoordinateFamily, coordinate_constants
from topoverify.rules.maps import FAMILIES, family_constants, family_for

__all__ = [
    "register_rule", "unregister_rule", "registered", "registered_rules", "rule_for", "class_name",
    "OptimizerRule", "StepMap", "RuleConstants", "LayerContext",
    "JacobianConstants", "jacobian_constants", "decay_diagonal", "SGD_RULE", "buffer_ratio",
    "ADAM_RULE", "NADAM_RULE", "RADAM_RULE", "ADAMAX_RULE", "CoordinateFamily", "coordinate_constants",
    "RMSPROP_RULE", "ADAGRAD_RULE", "sign_rule", "FAMILIES", "family_for", "family_constants",
]

from topoverify.lazy import lazy_names as _lazy_names

# submodules on attribute access (topoverify.lazy), as after the eager imports of earlier versions
__getattr__, __dir__ = _lazy_names(__name__, {})
