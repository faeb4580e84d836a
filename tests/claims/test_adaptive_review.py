"""Regression tests from the review of the adaptive rules (T7(b), (c)): each failed before its fix."""

from __future__ import annotations

import math

import torch
from torch import nn

from topoverify import predict_step, verify_step
from topoverify.errors import NonFiniteError, TopoverifyError
from topoverify.rules.adam import read_adam
from topoverify.neurons.layouts import detect_layers

F64 = torch.float64


def _net(h=4, seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(2, h), nn.Tanh(), nn.Linear(h, 1)).double()


def _batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(32, 2, generator=g, dtype=F64)
    return x, torch.sin(x.sum(1, keepdim=True))


def _mse(m, b):
    return ((m(b[0]) - b[1]) ** 2).mean()


def _warm(m, o, k, b):
    for _ in range(k):
        o.zero_grad()
        _mse(m, b).backward()
        o.step()


def test_rmsprop_with_momentum_predicts_and_its_bounds_hold():
    m, b = _net(), _batch()
    o = torch.optim.RMSprop(m.parameters(), lr=1e-3, momentum=0.9)
    _warm(m, o, 3, b)
    lv = verify_step(m, o, _mse, b, hessian=False).layers[0]
    assert lv.holds_certified is not False and lv.holds_additive is True
    assert "rho_momentum_buffer" in lv.prediction.details


def test_decoupled_decay_differing_between_weight_and_bias_keeps_the_additive_bound():
    """AdamW with no decay on the bias: the step scales coordinates by different factors 1 − lr·λ_k; the
    additive check compares with ‖DΔθ‖, not with one scale (15 false violations before)."""
    m, b = _net(h=6), _batch()
    with torch.no_grad():
        m[0].bias.mul_(20)
    o = torch.optim.AdamW([{"params": [m[0].weight, m[2].weight, m[2].bias], "weight_decay": 60.0},
                           {"params": [m[0].bias], "weight_decay": 0.0}], lr=1e-2)
    _warm(m, o, 5, b)
    lv = verify_step(m, o, _mse, b, hessian=False).layers[0]
    assert lv.prediction.decoupled_decay == (60.0, 0.0, 60.0)
    assert lv.holds_additive is True and lv.holds_certified is not False


def test_decoupled_decay_above_one_over_lr_uses_the_absolute_scale():
    m, b = _net(), _batch()
    o = torch.optim.AdamW(m.parameters(), lr=0.5, weight_decay=3.0)  # 1 − lr·λ = −0.5
    _warm(m, o, 2, b)
    lv = verify_step(m, o, _mse, b, hessian=False).layers[0]
    assert lv.holds_additive is True


def test_amsgrad_is_read_from_the_layers_own_param_group():
    m, b = _net(), _batch()
    other = nn.Linear(3, 3).double()
    o = torch.optim.Adam([{"params": other.parameters(), "amsgrad": False},
                          {"params": m.parameters(), "amsgrad": True}], lr=1e-3)
    _warm(m, o, 2, b)
    sm = read_adam(o, m, detect_layers(m)[0])
    assert sm.family == "adam_amsgrad" and "max_exp_avg_sq" in sm.state


def test_decoupled_flag_differing_within_a_neuron_is_not_one_field():
    m, b = _net(), _batch()
    o = torch.optim.Adam([{"params": [m[0].weight, m[2].weight], "decoupled_weight_decay": True},
                          {"params": [m[0].bias, m[2].bias], "decoupled_weight_decay": False}],
                         lr=1e-3, weight_decay=0.5)
    lp = predict_step(m, o, _mse, b, hessian=False).layers[0]
    assert not lp.available and "not one field" in lp.reason and "decoupled_weight_decay" in lp.reason


def test_centered_rmsprop_is_certified_after_warm_up():
    """B_lo = α·min over neurons of (v − ḡ²) (concave along segments), not α·(min v − max ḡ²), which is 0 as
    soon as ḡ differs between neurons."""
    m, b = _net(), _batch()
    o = torch.optim.RMSprop(m.parameters(), lr=1e-3, centered=True)
    _warm(m, o, 20, b)
    lv = verify_step(m, o, _mse, b, hessian=False).layers[0]
    assert math.isfinite(lv.prediction.K_eff_upper) and lv.holds_certified is True


class _LionNoStep(torch.optim.Optimizer):
    """A Lion that keeps only exp_avg in its state, as lion-pytorch does."""

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.99), weight_decay=0.0):
        super().__init__(params, dict(lr=lr, betas=betas, weight_decay=weight_decay))

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            b1, b2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                st = self.state[p]
                if not st:
                    st["exp_avg"] = torch.zeros_like(p)
                m = st["exp_avg"]
                p.mul_(1 - group["lr"] * group["weight_decay"])
                p.add_(torch.sign(b1 * m + (1 - b1) * p.grad), alpha=-group["lr"])
                m.mul_(b2).add_(p.grad, alpha=1 - b2)


def test_sign_rule_reads_an_optimizer_without_a_step_count_and_its_vacuous_band_is_not_a_pass():
    from topoverify import registered, sign_rule
    m, b = _net(), _batch()
    o = _LionNoStep(m.parameters(), lr=1e-3)
    _warm(m, o, 2, b)
    with registered(_LionNoStep, sign_rule()):
        lv = verify_step(m, o, _mse, b, hessian=False).layers[0]
    assert lv.holds is None and "cannot fail" in str(lv)
    assert lv.holds_additive is True and math.isinf(lv.prediction.K_eff_upper)


def test_corrupted_state_is_a_clear_error():
    m, b = _net(), _batch()
    o = torch.optim.Adam(m.parameters(), lr=1e-3)
    _warm(m, o, 1, b)
    p = m[0].weight
    o.state[p]["exp_avg_sq"][0, 0] = -1e-30
    try:
        predict_step(m, o, _mse, b, hessian=False)
        raise AssertionError("a negative second moment was accepted")
    except TopoverifyError as exc:
        assert "exp_avg_sq" in str(exc) and "negative" in str(exc)
    o.state[p]["exp_avg_sq"][0, 0] = 0.0
    o.state[p]["step"] = torch.tensor(float("nan"))
    try:
        predict_step(m, o, _mse, b, hessian=False)
        raise AssertionError("a NaN step count was accepted")
    except NonFiniteError as exc:
        assert "'step'" in str(exc)


def test_tensor_hyper_parameters_widen_the_rounding_margin():
    m, b = _net(), _batch()
    o = torch.optim.Adam(m.parameters(), lr=torch.tensor(0.02), betas=(torch.tensor(0.9), torch.tensor(0.999)))
    _warm(m, o, 3, b)
    sm = read_adam(o, m, detect_layers(m)[0])
    assert sm.hyper["float32_coefficients"] == 1.0
    lv = verify_step(m, o, _mse, b, hessian=False).layers[0]
    assert lv.holds_additive is True and lv.holds_certified is not False


def test_max_pair_ratios_shares_one_pass_and_agrees_with_each_single_ratio():
    from topoverify.measure.pairs import max_pair_ratio, max_pair_ratios
    g = torch.Generator().manual_seed(3)
    X = torch.randn(40, 5, generator=g, dtype=F64)
    X[7] = X[3]  # a coincident pair
    Y1 = torch.randn(40, 7, generator=g, dtype=F64)
    Y1[7] = Y1[3]  # same state on the coincident pair: finite
    Y2 = Y1.clone()
    Y2[7, 0] += 1.0  # a different state on it: inf
    Y3 = torch.ones(40, 2, dtype=F64)  # constant: 0
    got = max_pair_ratios(X, [Y1, Y2, Y3])
    assert got == [max_pair_ratio(X, Y1), math.inf, 0.0] and 0 < got[0] < math.inf


def test_centered_b_lo_is_a_lower_bound_along_every_segment_of_states():
    """v − ḡ² is concave along a segment of states (v linear, ḡ² convex): its minimum over the segment is at an
    end, so the column minimum over the neurons bounds it (independent check by sampling the segments)."""
    g = torch.Generator().manual_seed(5)
    gbar = torch.randn(500, 2, generator=g, dtype=F64)
    v = gbar**2 + torch.rand(500, 2, generator=g, dtype=F64) * 1e-3  # Jensen: v ≥ ḡ²
    t = torch.rand(500, 1, 1, generator=g, dtype=F64).expand(-1, 50, 1) * torch.linspace(0, 1, 50,
                                                                                          dtype=F64)[None, :, None]
    vs = v[:, None, :] + t * (v[:, None, :].roll(1, 0) - v[:, None, :])
    gs = gbar[:, None, :] + t * (gbar[:, None, :].roll(1, 0) - gbar[:, None, :])
    along = (vs - gs**2).amin(dim=1)
    ends = torch.minimum(v - gbar**2, (v - gbar**2).roll(1, 0))
    assert bool((along >= ends - 1e-15).all())
