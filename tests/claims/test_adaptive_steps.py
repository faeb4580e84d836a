"""T2, T3, T7(b), T7(c): the adaptive rules' predictions held against real torch steps (spec/claims.toml,
proofs_notes/T7_adaptive_rules.md).

Random small nets, a random family with random hyper-parameters, a random number of real warm-up steps; then
``verify_step`` takes the real step on copies: the certified band and the additive bound always hold, the
estimate band holds below the predicted η*, a K ten times too small is caught, Adam's first step gets only a
finite additive bound, and foreach/fused implementations get the same prediction. Every K is predicted from
the pre-step state; the step it is held against is torch's own.
"""

import dataclasses
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from topoverify import predict_step, verify_step
from topoverify.checks.step_bounds import step_in_place
from topoverify.checks.step_prediction import BREAKDOWN_POSSIBLE, ratio_bounds
from topoverify.experiments.scenarios import mse_loss
from topoverify.experiments.small_nets import SMOOTH_ACTIVATIONS, ArchSpec, make_batch
from topoverify.neurons.copying import clone
from topoverify.rules import registered
from topoverify.rules.sign import sign_rule
from topoverify.strategies.models import mlp_specs

O = torch.optim
ARCHS = mlp_specs(max_depth=2, min_width=3, max_width=6, activation_names=SMOOTH_ACTIVATIONS, max_in=3,
                  max_out=2)
BETA1, BETA2 = st.sampled_from([0.0, 0.5, 0.9]), st.sampled_from([0.9, 0.99, 0.999])
EPS = st.sampled_from([1e-8, 1e-6, 1e-3, 0.1])
WD = st.sampled_from([0.0, 0.0, 1e-2, 0.3])


def _cfg(cls, **fixed):
    return lambda **kw: (cls, {**fixed, **kw})


#: (optimizer class, kwargs without lr): every family of issue 10 with random hyper-parameters
CONFIGS = st.one_of(
    st.builds(_cfg(O.Adam), betas=st.tuples(BETA1, BETA2), eps=EPS, weight_decay=WD, amsgrad=st.booleans(),
              maximize=st.booleans()),
    st.builds(_cfg(O.AdamW), betas=st.tuples(BETA1, BETA2), eps=EPS, weight_decay=WD, amsgrad=st.booleans()),
    st.builds(_cfg(O.NAdam), betas=st.tuples(BETA1, BETA2), eps=EPS, weight_decay=WD,
              decoupled_weight_decay=st.booleans()),
    st.builds(_cfg(O.RAdam), betas=st.tuples(BETA1, BETA2), eps=EPS, weight_decay=WD,
              decoupled_weight_decay=st.booleans()),
    st.builds(_cfg(O.Adamax), betas=st.tuples(BETA1, BETA2), eps=EPS, weight_decay=WD),
    st.builds(_cfg(O.RMSprop), alpha=BETA2, eps=EPS, weight_decay=WD, centered=st.booleans(),
              momentum=st.sampled_from([0.0, 0.5, 0.9])),
    st.builds(_cfg(O.Adagrad), lr_decay=st.sampled_from([0.0, 0.1]), eps=EPS, weight_decay=WD,
              initial_accumulator_value=st.sampled_from([0.0, 0.1])),
)


def warmed(arch, seed, config, warm, lr):
    """A model and its optimizer after ``warm`` real steps on fresh batches (the state has a history)."""
    cls, kw = config
    model = arch.build(seed=seed)
    opt = cls(model.parameters(), lr=lr, **kw)
    for k in range(warm):
        step_in_place(model, opt, mse_loss, make_batch(arch, 8, seed, k + 1))
    return model, opt


def with_lr(model, opt, lr):
    """Copies of ``model`` and ``opt`` (state kept) with the step size set to ``lr``."""
    m, o = clone(model, opt)
    for g in o.param_groups:
        g["lr"] = lr
    return m, o


def _verify(model, opt, arch, seed):
    return verify_step(model, opt, mse_loss, make_batch(arch, 8, seed, 0), hessian=False)


def _always_holds(arch, seed, config, warm):
    ver = _verify(*warmed(arch, seed, config, warm, 1e-2), arch, seed)
    for lv in ver.layers:
        assert lv.holds_certified is not False, f"{config}: {lv}"
        assert lv.holds_additive is not False, f"{config}: {lv}"
        assert lv.prediction.additive_delta is not None and math.isfinite(lv.prediction.additive_delta) \
            or config[0] is O.RAdam, f"{config}: no finite additive bound"  # unrectified RAdam: φ unbounded


def _holds_below_eta_star(arch, seed, config, warm):
    model, opt = warmed(arch, seed, config, warm, 1e-2)
    pred = predict_step(model, opt, mse_loss, make_batch(arch, 8, seed, 0), hessian=False)
    eta = min(lp.eta_star for lp in pred.layers)
    if not 0 < eta < math.inf:
        return
    ver = _verify(*with_lr(model, opt, 0.5 * eta), arch, seed)
    for lv in ver.layers:
        assert lv.holds is not False, f"{config} at lr = eta*/2 = {0.5 * eta:.3g}: {lv}"
        assert lv.holds_certified is not False and lv.holds_additive is not False, f"{config}: {lv}"


@given(arch=ARCHS, seed=st.integers(0, 10_000), config=CONFIGS, warm=st.integers(0, 8))
@settings(max_examples=2, deadline=None)  # the slow test below runs 60
def test_T7_certified_and_additive_bounds_hold_on_real_adaptive_steps(arch, seed, config, warm):
    _always_holds(arch, seed, config, warm)


@given(arch=ARCHS, seed=st.integers(0, 10_000), config=CONFIGS, warm=st.integers(0, 8))
@settings(max_examples=3, deadline=None)
def test_T3_T7_estimate_band_holds_below_the_predicted_eta_star(arch, seed, config, warm):
    _holds_below_eta_star(arch, seed, config, warm)


@pytest.mark.slow
@given(arch=ARCHS, seed=st.integers(0, 10_000), config=CONFIGS, warm=st.integers(0, 8))
@settings(max_examples=60, deadline=None)
def test_T7_bounds_hold_on_real_adaptive_steps_many(arch, seed, config, warm):
    _always_holds(arch, seed, config, warm)
    _holds_below_eta_star(arch, seed, config, warm)


#: cases where the gradient term dominates K_eff (large ε: close to SGD with rate lr/ε), at a large rate
WRONG_K_CASES = [
    (O.AdamW, {"eps": 0.1, "weight_decay": 0.1}, 3), (O.RMSprop, {"eps": 0.1}, 5), (O.NAdam, {"eps": 0.1}, 4),
    (O.Adamax, {"eps": 0.3}, 3), (O.Adam, {"eps": 1e-8}, 6),
]


def test_T2_T7_a_K_ten_times_too_small_is_caught():
    """Bounds from K_eff/10 (T2's band through ratio_bounds) fail on at least one real step of the set, while the
    predicted bounds hold on every one: the check can fail."""
    arch = ArchSpec(in_features=2, widths=(8,), out_features=1)
    caught = []
    for cls, kw, warm in WRONG_K_CASES:
        model, opt = warmed(arch, 7, (cls, kw), warm, 0.05)
        batch = make_batch(arch, 8, 7, 0)
        pred = predict_step(model, opt, mse_loss, batch, hessian=False)
        good = verify_step(model, opt, mse_loss, batch, prediction=pred)
        assert good.holds_certified is not False and good.holds is not False, f"{cls.__name__}: {good}"
        wrong = []
        for lp in pred.layers:
            lo, up = ratio_bounds(lp.K_eff / 10, lp.lr)
            wrong.append(dataclasses.replace(lp, K_eff=lp.K_eff / 10, lower=lo, upper=up))
        bad = verify_step(model, opt, mse_loss, batch, prediction=dataclasses.replace(pred, layers=tuple(wrong)))
        caught.append(bad.holds is False)
    assert any(caught), f"K/10 was never caught in {len(caught)} cases"


@pytest.mark.parametrize("cls, kw", [(O.Adam, {}), (O.AdamW, {"weight_decay": 0.1}), (O.Adam, {"amsgrad": True})])
def test_T7b_adams_first_step_has_only_a_finite_additive_bound(cls, kw):
    """m = v = 0: |u_k| = |g|/(|g| + ε) ≤ 1 per coordinate, so δ ≤ 2·lr·√D; the map's slope is ~1/ε.
    (NAdam's first step is not within 1: its u adds μ_2(1 − β1)/(1 − μ_1μ_2)·g/(|g| + ε), about 1.06.)"""
    arch = ArchSpec(in_features=3, widths=(5,), out_features=2)
    model = arch.build(seed=1)
    lr = 1e-3
    opt = cls(model.parameters(), lr=lr, **kw)
    ver = _verify(model, opt, arch, 1)
    lv = ver.layers[0]
    lp = lv.prediction
    D = lp.dim
    assert math.isfinite(lp.additive_delta) and lp.additive_delta <= 2 * lr * math.sqrt(D) * (1 + 1e-9)
    assert lp.phase == BREAKDOWN_POSSIBLE and lp.K_eff * lr > 1e3
    assert lp.sharper_bound == "additive"
    assert lv.holds_additive is True and lv.max_abs_change <= lp.additive_delta


@pytest.mark.parametrize("cls, kw, impls", [
    (O.Adam, {"amsgrad": True}, ({"foreach": False}, {"foreach": True}, {"fused": True})),
    (O.AdamW, {"weight_decay": 0.1}, ({"foreach": False}, {"foreach": True}, {"fused": True})),
    (O.NAdam, {"decoupled_weight_decay": True, "weight_decay": 0.1}, ({"foreach": False}, {"foreach": True})),
    (O.RMSprop, {"centered": True, "momentum": 0.9}, ({"foreach": False}, {"foreach": True})),
    (O.Adagrad, {"lr_decay": 0.1}, ({"foreach": False}, {"foreach": True}, {"fused": True})),
])
def test_foreach_and_fused_give_the_same_prediction(cls, kw, impls):
    arch = ArchSpec(in_features=3, widths=(5,), out_features=2)
    preds = []
    for impl in impls:
        model, opt = warmed(arch, 2, (cls, {**kw, **impl}), 3, 1e-2)
        lp = predict_step(model, opt, mse_loss, make_batch(arch, 8, 2, 0), hessian=False).layers[0]
        preds.append((lp.K_eff, lp.K_eff_upper, lp.additive_delta, lp.eta_star))
    for other in preds[1:]:
        assert other == pytest.approx(preds[0], rel=1e-9), f"{impls}: {preds}"


class Lion(O.Optimizer):
    """A reference Lion (Chen et al. 2023): θ ← θ(1 − lr·λ) − lr·sign(β1 m + (1 − β1) g);
    m ← β2 m + (1 − β2) g."""

    def __init__(self, params, lr=1e-4, betas=(0.9, 0.99), weight_decay=0.0):
        super().__init__(params, {"lr": lr, "betas": betas, "weight_decay": weight_decay})

    @torch.no_grad()
    def step(self, closure=None):
        for g in self.param_groups:
            b1, b2 = g["betas"]
            for p in g["params"]:
                if p.grad is None:
                    continue
                s = self.state[p]
                if not s:
                    s["step"], s["exp_avg"] = torch.tensor(0.0), torch.zeros_like(p)
                s["step"] += 1
                p.mul_(1 - g["lr"] * g["weight_decay"])
                p.add_(torch.sign(b1 * s["exp_avg"] + (1 - b1) * p.grad), alpha=-g["lr"])
                s["exp_avg"].mul_(b2).add_(p.grad, alpha=1 - b2)


@pytest.mark.parametrize("warm, beta1, wd", [(0, 0.9, 0.0), (3, 0.9, 0.1), (2, 0.0, 0.0)])
def test_T7b_sign_rule_additive_bound_holds_and_no_finite_eta_star(warm, beta1, wd):
    arch = ArchSpec(in_features=3, widths=(6,), out_features=2)
    with registered(Lion, sign_rule()):
        model, opt = warmed(arch, 4, (Lion, {"betas": (beta1, 0.99), "weight_decay": wd}), warm, 1e-2)
        lv = _verify(model, opt, arch, 4).layers[0]
    lp = lv.prediction
    assert math.isinf(lp.K_eff_upper) and lp.phase == BREAKDOWN_POSSIBLE
    assert lp.additive_delta <= 2 * 1e-2 * math.sqrt(lp.dim) * (1 + 1e-9)
    assert lv.holds_additive is True
