"""Which :class:`OptimizerRule` predicts the step of which optimizer class.

Lookup (:func:`rule_for`): the optimizer's exact class first, then its MRO. A subclass of a registered class
gets the parent's rule only if it keeps the rule's ``step_methods`` (by default ``step``), since a subclass
that overrides ``step`` need not take the parent's step; a rule registered with ``subclasses="any"`` applies
to every subclass. An optimizer with no rule gets an explicit "no prediction" :class:`UnsupportedError`,
never another optimizer's formula (T7 in ``spec/claims.toml``: K is optimizer-specific).
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from topoverify.errors import TopoverifyError, UnsupportedError
from topoverify.rules.base import OptimizerRule

SUBCLASS_POLICIES = ("keep-step", "any")


@dataclass(frozen=True)
class _Entry:
    rule: OptimizerRule
    subclasses: str


_REGISTRY: dict[type, _Entry] = {}


def register_rule(optimizer_class: type, rule: OptimizerRule, *, subclasses: str = "keep-step") -> None:
    """Predict steps of ``optimizer_class`` (a ``torch.optim.Optimizer`` subclass) with ``rule``.

    ``subclasses="keep-step"``: a subclass inherits the rule only if it keeps ``rule.step_methods``;
    ``"any"``: every subclass inherits it. Re-registering a class replaces its rule; undo with
    :func:`unregister_rule`, or register temporarily with :func:`registered`.
    """
    if not (isinstance(optimizer_class, type) and issubclass(optimizer_class, torch.optim.Optimizer)):
        raise TopoverifyError(f"register_rule needs an optimizer class (a torch.optim.Optimizer subclass), got "
                              f"{optimizer_class!r}; pass the class itself, e.g. register_rule(MyOptimizer, rule), "
                              f"not an instance.")
    if not isinstance(rule, OptimizerRule):
        raise TopoverifyError(f"register_rule needs an OptimizerRule, got {type(rule).__name__}; build one with "
                              f"OptimizerRule(read=..., constants=...) from topoverify.rules.")
    if subclasses not in SUBCLASS_POLICIES:
        raise TopoverifyError(f"subclasses must be one of {SUBCLASS_POLICIES}, got {subclasses!r}.")
    _REGISTRY[optimizer_class] = _Entry(rule, subclasses)


def unregister_rule(optimizer_class: type) -> OptimizerRule:
    """Remove the rule registered for exactly ``optimizer_class`` and return it."""
    entry = _REGISTRY.pop(optimizer_class, None)
    if entry is None:
        raise TopoverifyError(f"no rule is registered for {optimizer_class!r}; registered: {_names()}.")
    return entry.rule


@contextmanager
def registered(optimizer_class: type, rule: OptimizerRule, *, subclasses: str = "keep-step") -> Iterator[None]:
    """Register ``rule`` for the duration of a ``with`` block, then restore what was there before."""
    before = _REGISTRY.get(optimizer_class)
    register_rule(optimizer_class, rule, subclasses=subclasses)
    try:
        yield
    finally:
        if before is None:
            _REGISTRY.pop(optimizer_class, None)
        else:
            _REGISTRY[optimizer_class] = before


def registered_rules() -> dict[type, OptimizerRule]:
    """A copy of the registry: optimizer class → rule."""
    return {cls: entry.rule for cls, entry in _REGISTRY.items()}


def rule_for(optimizer: torch.optim.Optimizer) -> OptimizerRule:
    """The rule that predicts ``optimizer``'s step, or :class:`UnsupportedError` saying why there is none."""
    cls = type(optimizer)
    name = cls.__name__
    for base in cls.__mro__:
        entry = _REGISTRY.get(base)
        if entry is None:
            continue
        if base is cls or entry.subclasses == "any":
            return entry.rule
        overridden = _overridden_methods(cls, base, entry.rule.step_methods)
        if not overridden:
            return entry.rule
        formula = f" {entry.rule.formula}" if entry.rule.formula else ""
        raise UnsupportedError(
            f"no prediction for {name}: it subclasses {class_name(base)} but overrides "
            f"{', '.join(m + '()' for m in overridden)}, so its step need not be {base.__name__}'s formula"
            f"{formula}. Predict with {class_name(base)} itself (or a subclass that keeps {base.__name__}'s "
            f"step), register a rule for {name} with topoverify.register_rule, or check the rule's equivariance "
            f"with topoverify.equivariance_error.")
    raise UnsupportedError(
        f"no prediction for {name} yet: no rule is registered for it, and K is optimizer-specific (claim T7), "
        f"so no other optimizer's formula is used. Supported: {_names()}. A rule for another optimizer can be added with topoverify.register_rule({name}, "
        f"OptimizerRule(read=..., constants=...)).")


def class_name(cls: type) -> str:
    """``torch.optim.SGD`` for torch's public optimizers, ``module.QualName`` otherwise."""
    if getattr(torch.optim, cls.__name__, None) is cls:
        return f"torch.optim.{cls.__name__}"
    return f"{cls.__module__}.{cls.__qualname__}"


def _names() -> str:
    return ", ".join(class_name(c) for c in _REGISTRY) or "none"


def _overridden_methods(cls: type, base: type, methods: tuple[str, ...]) -> list[str]:
    """Methods of ``base`` that ``cls`` replaces (compared through torch's profiling wrappers)."""
    out = []
    for meth in methods:
        mine, theirs = getattr(cls, meth, None), getattr(base, meth, None)
        if theirs is not None and (mine is None or inspect.unwrap(mine) is not inspect.unwrap(theirs)):
            out.append(meth)
    return out


__all__ = ["register_rule", "unregister_rule", "registered", "registered_rules", "rule_for", "class_name",
           "SUBCLASS_POLICIES"]
