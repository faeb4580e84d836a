"""The optimizer-rule registry (topoverify.rules): a user's rule for their own optimizer is held against its
real steps like SGD's (claims T2, T7), a wrong rule is caught, and an optimizer without a rule, or a subclass
that changes its parent's step, gets "no prediction" rather than another optimizer's formula."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import topoverify
import topoverify.rules.sgd as sgd_rule
from topoverify.errors import TopoverifyError, UnsupportedError
from topoverify.experiments.scenarios import default_scenario
from topoverify.rules import (OptimizerRule, RuleConstants, StepMap, jacobian_constants, register_rule, registered,
                              registered_rules, rule_for, unregister_rule)


class ScaledGD(torch.optim.Optimizer):
    """Plain gradient descent with a scale factor: θ ← θ − lr·c·g."""

    def __init__(self, params, lr: float, c: float):
        super().__init__(params, dict(lr=lr, c=c))

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    p.add_(p.grad, alpha=-group["lr"] * group["c"])


class QuietScaledGD(ScaledGD):
    """Keeps ScaledGD's step."""


class DoubledScaledGD(ScaledGD):
    """Its own step (twice the rate)."""

    @torch.no_grad()
    def step(self, closure=None):
        super().step(closure)
        super().step(closure)


def read_scaled(optimizer: ScaledGD, model, layer) -> StepMap:
    if len(optimizer.param_groups) != 1:
        raise UnsupportedError("ScaledGD with several param groups is not one field")
    g = optimizer.param_groups[0]
    return StepMap(type(optimizer).__name__, float(g["lr"]), float(g["c"]), 0.0, (0.0,) * len(layer.members),
                   f"gradient descent scaled by c={g['c']}")


def scaled_constants(factor: float):
    """K_eff = factor·c·K: factor 1 is the true rule (the step is lr·c·g), factor 1/20 a wrong one."""

    def constants(m: StepMap, ctx) -> RuleConstants:
        jac = jacobian_constants(m, ctx)
        return RuleConstants(K=jac.K, K_upper=jac.hull.norm, K_eff=factor * m.coef_grad * jac.K,
                             K_eff_upper=factor * m.coef_grad * jac.hull.norm, n_points=jac.n_points,
                             argmax_neuron=jac.argmax_neuron, reason=jac.hull.reason)

    return constants


TRUE_RULE = OptimizerRule(read=read_scaled, constants=scaled_constants(1.0), formula="θ − lr·c·g")
WRONG_RULE = OptimizerRule(read=read_scaled, constants=scaled_constants(1 / 20), formula="θ − lr·c·g")


@pytest.fixture
def scenario():
    return default_scenario(n=12)


FAST = dict(hessian=False, check_layout=False, power_iters=10, tol=1e-2)  # K is an estimate either way


@pytest.fixture(scope="module")
def k_upper() -> float:
    """The certified K of the default scenario's field (c = 1), to place the rates below."""
    s = default_scenario(n=12)
    model = s.model()
    with registered(ScaledGD, TRUE_RULE):
        lp = topoverify.predict_step(model, ScaledGD(model.parameters(), lr=1.0, c=1.0), s.loss_fn, s.batch,
                                     **FAST).layers[0]
    return lp.K_upper


@given(c=st.floats(0.5, 4.0), fraction=st.floats(0.2, 0.9))
def test_a_user_rule_predicts_and_its_real_step_holds(k_upper, c, fraction):
    """Below the user rule's certified η* = 1/(c·K_upper), a real ScaledGD step stays inside both T2 bands."""
    s = default_scenario(n=12)
    model = s.model()
    lr = fraction / (c * k_upper)
    with registered(ScaledGD, TRUE_RULE):
        ver = topoverify.verify_step(model, ScaledGD(model.parameters(), lr=lr, c=c), s.loss_fn, s.batch, **FAST)
    lp = ver.prediction.layers[0]
    assert lp.rule.coef_grad == c and lp.K_eff == pytest.approx(c * lp.K) and lr < lp.eta_star_certified
    assert ver.prediction.phase == "preserving" and lp.certified_preserving
    assert ver.holds is True and ver.holds_certified is True


@pytest.mark.parametrize("n", [8, 12, 16])
def test_a_rule_with_a_K_twenty_times_too_small_is_caught(n):
    """At half the true certified η*, where the true rule's bands hold (the real step uses 35-55% of the
    estimated band here), the real step leaves the band of a rule that claims K_eff = c·K/20."""
    s = default_scenario(n=n)
    model = s.model()
    c = 2.0
    with registered(ScaledGD, TRUE_RULE):
        lp = topoverify.predict_step(model, ScaledGD(model.parameters(), lr=1.0, c=c), s.loss_fn, s.batch,
                                     **FAST).layers[0]
        lr = 0.5 * lp.eta_star_certified
        true = topoverify.verify_step(model, ScaledGD(model.parameters(), lr=lr, c=c), s.loss_fn, s.batch, **FAST)
    with registered(ScaledGD, WRONG_RULE):
        wrong = topoverify.verify_step(model, ScaledGD(model.parameters(), lr=lr, c=c), s.loss_fn, s.batch, **FAST)
    assert true.holds is True and true.holds_certified is True
    assert wrong.holds is False and wrong.layers[0].violations > 0
    assert wrong.prediction.layers[0].K_eff == pytest.approx(true.prediction.layers[0].K_eff / 20)


def test_an_optimizer_without_a_rule_gets_no_prediction(scenario):
    model = scenario.model()
    opt = ScaledGD(model.parameters(), lr=0.1, c=1.0)
    with pytest.raises(UnsupportedError, match="no prediction for ScaledGD yet") as err:
        rule_for(opt)
    assert "torch.optim.SGD" in str(err.value) and "topoverify.register_rule" in str(err.value)
    pred = topoverify.predict_step(model, opt, scenario.loss_fn, scenario.batch, hessian=False)
    assert pred.phase == "unavailable" and "no prediction for ScaledGD" in pred.layers[0].reason
    with pytest.raises(UnsupportedError, match="nothing to verify"):
        topoverify.verify_step(model, opt, scenario.loss_fn, scenario.batch, hessian=False)


def test_a_subclass_gets_the_rule_only_if_it_keeps_step(scenario):
    model = scenario.model()
    with registered(ScaledGD, TRUE_RULE):
        assert rule_for(QuietScaledGD(model.parameters(), lr=0.1, c=1.0)) is TRUE_RULE
        with pytest.raises(UnsupportedError, match=r"subclasses .*ScaledGD but overrides step\(\), so its step "
                                                   r"need not be ScaledGD's formula θ − lr·c·g"):
            rule_for(DoubledScaledGD(model.parameters(), lr=0.1, c=1.0))
        pred = topoverify.predict_step(model, DoubledScaledGD(model.parameters(), lr=0.1, c=1.0),
                                       scenario.loss_fn, scenario.batch, hessian=False)
        assert pred.phase == "unavailable" and "overrides step()" in pred.layers[0].reason
    with registered(ScaledGD, TRUE_RULE, subclasses="any"):  # the rule's author opts in
        assert rule_for(DoubledScaledGD(model.parameters(), lr=0.1, c=1.0)) is TRUE_RULE


def test_the_exact_class_wins_over_its_parent(scenario):
    model = scenario.model()
    with registered(ScaledGD, TRUE_RULE), registered(DoubledScaledGD, WRONG_RULE):
        assert rule_for(DoubledScaledGD(model.parameters(), lr=0.1, c=1.0)) is WRONG_RULE
        assert rule_for(ScaledGD(model.parameters(), lr=0.1, c=1.0)) is TRUE_RULE


@pytest.mark.parametrize("cls, rule, kwargs, match", [
    (ScaledGD(torch.nn.Linear(1, 1).parameters(), lr=0.1, c=1.0), TRUE_RULE, {}, "not an instance"),
    (int, TRUE_RULE, {}, "torch.optim.Optimizer subclass"),
    (ScaledGD, read_scaled, {}, "needs an OptimizerRule"),
    (ScaledGD, TRUE_RULE, {"subclasses": "all"}, "subclasses must be one of"),
])
def test_bad_register_rule_input_is_refused(cls, rule, kwargs, match):
    with pytest.raises(TopoverifyError, match=match):
        register_rule(cls, rule, **kwargs)
    assert ScaledGD not in registered_rules()


def test_a_rule_needs_both_functions_returning_the_right_types(scenario):
    with pytest.raises(TopoverifyError, match="OptimizerRule.constants must be a function"):
        OptimizerRule(read=read_scaled, constants=None)
    with pytest.raises(TopoverifyError, match="NaN"):
        RuleConstants(K=float("nan"), K_upper=1.0, K_eff=1.0, K_eff_upper=1.0)
    model = scenario.model()
    bad = OptimizerRule(read=lambda opt, m, layer: (1.0, None), constants=scaled_constants(1.0))
    with registered(ScaledGD, bad), pytest.raises(TopoverifyError, match="returned tuple, not a StepMap"):
        topoverify.predict_step(model, ScaledGD(model.parameters(), lr=0.1, c=1.0), scenario.loss_fn,
                                scenario.batch, hessian=False)


def test_registration_is_undone():
    """registered() restores what was there (also a replaced rule); unregister_rule removes and returns."""
    sgd_rule = registered_rules()[torch.optim.SGD]
    with registered(torch.optim.SGD, TRUE_RULE):
        assert registered_rules()[torch.optim.SGD] is TRUE_RULE
    assert registered_rules()[torch.optim.SGD] is sgd_rule
    register_rule(ScaledGD, TRUE_RULE)
    register_rule(ScaledGD, WRONG_RULE)  # re-registering replaces
    assert unregister_rule(ScaledGD) is WRONG_RULE
    assert ScaledGD not in registered_rules()
    with pytest.raises(TopoverifyError, match="no rule is registered"):
        unregister_rule(ScaledGD)
    with pytest.raises(RuntimeError), registered(ScaledGD, TRUE_RULE):  # undone also when the block raises
        raise RuntimeError
    assert ScaledGD not in registered_rules()


@pytest.fixture(autouse=True)
def _registry_unchanged():
    """Every test leaves the registry as it found it (no rule leaks into another test)."""
    before = registered_rules()
    yield
    assert registered_rules() == before


# --------------------------------------------------------------------------------------------- SGD (T7(a))


def _sgd_after_steps(model, s, steps: int = 3, **hyper) -> torch.optim.SGD:
    """An SGD optimizer that has taken ``steps`` real steps (so it carries a momentum buffer)."""
    opt = torch.optim.SGD(model.parameters(), **hyper)
    for _ in range(steps):
        opt.zero_grad()
        s.loss_fn(model, s.batch).backward()
        opt.step()
    return opt


@pytest.mark.parametrize("dampening", [2.0, 3.5])
def test_sgd_with_dampening_above_one_uses_abs_coefficients_and_its_step_holds(dampening):
    """torch accepts dampening τ > 1: c_g = 1 − τ < 0. T7(a)'s K_eff = |c_g| K + |c_b| ρ_b (the triangle
    inequality for either sign), and a real step stays inside the predicted bands."""
    s = default_scenario(n=12)
    model = s.model()
    opt = _sgd_after_steps(model, s, lr=0.01, momentum=0.9, dampening=dampening)
    ver = topoverify.verify_step(model, opt, s.loss_fn, s.batch, **FAST)
    lp = ver.prediction.layers[0]
    assert lp.rule.coef_grad == pytest.approx(1 - dampening) and lp.rule.coef_buffer == pytest.approx(0.9)
    assert lp.momentum_rho > 0 and lp.K_eff >= 0
    assert lp.K_eff == pytest.approx((dampening - 1) * lp.K + 0.9 * lp.momentum_rho)
    assert ver.holds is True
    assert ver.holds_certified is (True if lp.certified else None)


def test_sgd_zero_gradient_coefficient_drops_an_infinite_K_upper(monkeypatch):
    """Heavy ball with dampening 1 has c_g = 0: the step is lr·μ·b, so an infinite K_upper must not enter
    K_eff_upper as 0·inf = NaN; the term is absent and K_eff_upper = μ ρ_b, whose band the real step obeys."""
    real = sgd_rule.jacobian_constants

    def no_certificate(step_map, ctx, **kw):
        jac = real(step_map, ctx, **kw)
        return dataclasses.replace(jac, hull=dataclasses.replace(jac.hull, norm=math.inf, reason="test: no bound"))

    monkeypatch.setattr(sgd_rule, "jacobian_constants", no_certificate)
    s = default_scenario(n=12)
    model = s.model()
    opt = _sgd_after_steps(model, s, lr=0.01, momentum=0.9, dampening=1.0)
    ver = topoverify.verify_step(model, opt, s.loss_fn, s.batch, **FAST)
    lp = ver.prediction.layers[0]
    assert lp.rule.coef_grad == 0 and lp.K_upper == math.inf
    assert lp.K_eff_upper == pytest.approx(0.9 * lp.momentum_rho) and math.isfinite(lp.K_eff_upper)
    assert ver.holds is True and ver.holds_certified is True
