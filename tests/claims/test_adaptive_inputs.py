"""Bad input to the adaptive rules (issue 10; T7 in spec/claims.toml): each refusal names the problem.

β outside [0, 1), ε ≤ 0, lr ≤ 0 → TopoverifyError naming the hyper-parameter; hyper-parameters that differ
within one neuron (weight vs bias) → an unavailable prediction saying "not one field"; NaN in a state tensor →
NonFiniteError naming it; a subclass overriding ``step`` → "no prediction"; and the user's model and optimizer
are never modified by predict_step or verify_step.
"""

import copy

import pytest
import torch

from topoverify import predict_step, verify_step
from topoverify.checks.step_bounds import step_in_place
from topoverify.checks.step_prediction import UNAVAILABLE
from topoverify.errors import NonFiniteError, TopoverifyError, UnsupportedError
from topoverify.experiments.scenarios import mse_loss
from topoverify.experiments.small_nets import ArchSpec, make_batch, param_groups

O = torch.optim
ARCH = ArchSpec(in_features=3, widths=(5,), out_features=2)
BATCH = make_batch(ARCH, 8, 0, 0)


def _warm(opt_factory, steps=2, model=None):
    model = ARCH.build(seed=0) if model is None else model
    opt = opt_factory(model)
    for k in range(steps):
        step_in_place(model, opt, mse_loss, make_batch(ARCH, 8, 0, k + 1))
    return model, opt


def _predict(model, opt):
    return predict_step(model, opt, mse_loss, BATCH, hessian=False)


def _set(opt, key, value):
    for g in opt.param_groups:  # torch validates at construction only; a later edit reaches the rule
        g[key] = value
    return opt


BAD_HYPER = [
    ("Adam beta1 = 1", lambda m: _set(O.Adam(m.parameters()), "betas", (1.0, 0.999)), "beta1"),
    ("AdamW beta2 = 1", lambda m: _set(O.AdamW(m.parameters()), "betas", (0.9, 1.0)), "beta2"),
    ("Adam beta1 < 0", lambda m: _set(O.Adam(m.parameters()), "betas", (-0.1, 0.999)), "beta1"),
    ("NAdam beta2 > 1", lambda m: _set(O.NAdam(m.parameters()), "betas", (0.9, 1.5)), "beta2"),
    ("RAdam beta NaN", lambda m: _set(O.RAdam(m.parameters()), "betas", (float("nan"), 0.999)), "beta1"),
    ("Adamax beta2 = 1", lambda m: _set(O.Adamax(m.parameters()), "betas", (0.9, 1.0)), "beta2"),
    ("Adam eps = 0", lambda m: O.Adam(m.parameters(), eps=0.0), "eps"),
    ("AdamW eps < 0", lambda m: _set(O.AdamW(m.parameters()), "eps", -1e-8), "eps"),
    ("RMSprop eps = 0", lambda m: O.RMSprop(m.parameters(), eps=0.0), "eps"),
    ("RMSprop alpha = 1", lambda m: _set(O.RMSprop(m.parameters()), "alpha", 1.0), "alpha"),
    ("Adagrad eps = 0", lambda m: O.Adagrad(m.parameters(), eps=0.0), "eps"),
    ("Adam lr = 0", lambda m: O.Adam(m.parameters(), lr=0.0), "lr"),
    ("Adagrad lr = 0", lambda m: O.Adagrad(m.parameters(), lr=0.0), "lr"),
    ("RMSprop lr < 0", lambda m: _set(O.RMSprop(m.parameters()), "lr", -1e-3), "lr"),
    ("NAdam lr inf", lambda m: _set(O.NAdam(m.parameters()), "lr", float("inf")), "lr"),
]


@pytest.mark.parametrize("case, factory, word", BAD_HYPER, ids=[c[0] for c in BAD_HYPER])
def test_bad_hyper_parameter_is_a_named_error(case, factory, word):
    model = ARCH.build(seed=0)
    opt = factory(model)
    with pytest.raises(TopoverifyError, match=word) as info:
        _predict(model, opt)
    assert not isinstance(info.value, UnsupportedError)  # bad input, not "no prediction"
    with pytest.raises(TopoverifyError, match=word):
        verify_step(model, opt, mse_loss, BATCH, hessian=False)


SPLIT = [
    ("Adam lr", lambda gs: O.Adam([{**gs[0], "lr": 1e-3}, {**gs[1], "lr": 2e-3}]), "lr"),
    ("AdamW betas", lambda gs: O.AdamW([gs[0], {**gs[1], "betas": (0.8, 0.99)}]), "betas"),
    ("NAdam eps", lambda gs: O.NAdam([gs[0], {**gs[1], "eps": 1e-6}]), "eps"),
    ("RMSprop alpha", lambda gs: O.RMSprop([gs[0], {**gs[1], "alpha": 0.9}]), "alpha"),
    ("RMSprop momentum", lambda gs: O.RMSprop([gs[0], {**gs[1], "momentum": 0.9}]), "momentum"),
    ("Adagrad lr", lambda gs: O.Adagrad([gs[0], {**gs[1], "lr": 0.1}]), "lr"),
]


@pytest.mark.parametrize("case, factory, key", SPLIT, ids=[c[0] for c in SPLIT])
def test_hyper_parameters_differing_within_a_neuron_are_not_one_field(case, factory, key):
    """Weight and bias of one neuron in groups with different ``key``: the step is not one vector field (T1)."""
    model = ARCH.build(seed=0)
    opt = factory(param_groups(model, "weights_biases"))
    pred = _predict(model, opt)
    hidden = pred.layers[0]
    assert not hidden.available and hidden.phase == UNAVAILABLE
    assert "not one field" in hidden.reason and key in hidden.reason
    with pytest.raises(UnsupportedError, match="not one field"):
        verify_step(model, opt, mse_loss, BATCH, hessian=False)


def test_weight_decay_differing_within_a_neuron_is_treated_per_member():
    """Coupled weight decay may differ between weight and bias: it is part of the field (Λ), not refused."""
    model = ARCH.build(seed=0)
    gs = param_groups(model, "weights_biases")
    opt = O.Adam([{**gs[0], "weight_decay": 0.1}, {**gs[1], "weight_decay": 0.0}], lr=1e-3)
    lp = _predict(model, opt).layers[0]
    assert lp.available, lp.reason
    assert set(lp.rule.weight_decay) == {0.0, 0.1}


NAN_STATE = [
    ("Adam", lambda m: O.Adam(m.parameters()), "exp_avg_sq"),
    ("Adam", lambda m: O.Adam(m.parameters()), "exp_avg"),
    ("Adam amsgrad", lambda m: O.Adam(m.parameters(), amsgrad=True), "max_exp_avg_sq"),
    ("Adamax", lambda m: O.Adamax(m.parameters()), "exp_inf"),
    ("RMSprop centered", lambda m: O.RMSprop(m.parameters(), centered=True), "grad_avg"),
    ("RMSprop momentum", lambda m: O.RMSprop(m.parameters(), momentum=0.9), "momentum_buffer"),
    ("Adagrad", lambda m: O.Adagrad(m.parameters()), "sum"),
]


@pytest.mark.parametrize("case, factory, name", NAN_STATE, ids=[f"{c[0]}-{c[2]}" for c in NAN_STATE])
def test_nan_in_the_state_is_a_non_finite_error_naming_the_tensor(case, factory, name):
    model, opt = _warm(factory)
    bias = dict(model.named_parameters())["0.bias"]
    opt.state[bias][name][1] = float("nan")
    with pytest.raises(NonFiniteError, match=name) as info:
        _predict(model, opt)
    assert "0.bias" in str(info.value)


class StepOverridingAdam(O.Adam):
    """Adam whose ``step`` is replaced: its step need not be Adam's formula."""

    @torch.no_grad()
    def step(self, closure=None):
        for g in self.param_groups:
            for p in g["params"]:
                if p.grad is not None:
                    p.add_(p.grad.sign(), alpha=-g["lr"])


class KeepsStepAdamW(O.AdamW):
    """AdamW with an extra method only: it keeps AdamW's step, so it keeps AdamW's rule."""

    def describe(self):
        return "mine"


def test_subclass_overriding_step_gets_no_prediction():
    model = ARCH.build(seed=0)
    lp = _predict(model, StepOverridingAdam(model.parameters(), lr=1e-3)).layers[0]
    assert not lp.available and "no prediction" in lp.reason and "step" in lp.reason
    assert _predict(model, KeepsStepAdamW(model.parameters(), lr=1e-3)).layers[0].available


def _snapshot(model, opt):
    return copy.deepcopy(model.state_dict()), copy.deepcopy(opt.state_dict())


def _assert_equal(a, b, path="state"):
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), path
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), path
        for k in a:
            _assert_equal(a[k], b[k], f"{path}[{k!r}]")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_equal(x, y, f"{path}[{i}]")
    else:
        assert a == b or (a != a and b != b), path


UNCHANGED = [
    lambda m: O.Adam(m.parameters(), lr=1e-3, amsgrad=True),
    lambda m: O.AdamW(m.parameters(), lr=1e-3, weight_decay=0.1, fused=True),
    lambda m: O.NAdam(m.parameters(), lr=1e-3, decoupled_weight_decay=True, weight_decay=0.1),
    lambda m: O.RAdam(m.parameters(), lr=1e-3),
    lambda m: O.Adamax(m.parameters(), lr=1e-3),
    lambda m: O.RMSprop(m.parameters(), lr=1e-3, centered=True, momentum=0.9),
    lambda m: O.Adagrad(m.parameters(), lr=1e-3, lr_decay=0.1, initial_accumulator_value=0.1),
]


@pytest.mark.parametrize("warm", [0, 3])
@pytest.mark.parametrize("factory", UNCHANGED, ids=["Adam", "AdamW", "NAdam", "RAdam", "Adamax", "RMSprop",
                                                    "Adagrad"])
def test_predict_and_verify_leave_the_users_model_and_optimizer_unchanged(factory, warm):
    model, opt = _warm(factory, warm)
    before = _snapshot(model, opt)
    grads = [None if p.grad is None else p.grad.clone() for p in model.parameters()]
    _predict(model, opt)
    ver = verify_step(model, opt, mse_loss, BATCH, hessian=False)
    _assert_equal(before, _snapshot(model, opt))
    for g, p in zip(grads, model.parameters()):
        assert (g is None and p.grad is None) or torch.equal(g, p.grad)
    # the stepped copies did move: the check above compares something
    assert not torch.equal(next(ver.model_after.parameters()), next(model.parameters()))
