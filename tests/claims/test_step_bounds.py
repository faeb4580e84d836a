"""T2, T3, T4: predicted K and bounds held against real torch SGD steps.

K is always predicted from the pre-step state (derivatives of the update field), never from the step it
bounds; the step is then taken by torch.optim.SGD itself.
"""

import copy
import dataclasses
import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from topoverify import predict_step, verify_step
from topoverify.checks.multistep import verify_steps
from topoverify.checks.step_bounds import stepped_copies
from topoverify.checks.step_prediction import BREAKDOWN_POSSIBLE, PRESERVING
from topoverify.errors import LayoutError, NonFiniteError, TopoverifyError, UnsupportedError
from topoverify.experiments.scenarios import circle_mlp, default_scenario, mse_loss
from topoverify.experiments.small_nets import SMOOTH_ACTIVATIONS, make_batch
from topoverify.measure.field import block_samples
from topoverify.measure.hessian import top_hessian_eigenvalue
from topoverify.measure.pairs import ratio_stats
from topoverify.neurons.layouts import detect_layers, explicit_layer, neuron_cloud
from topoverify.strategies.models import mlp_specs
from topoverify.symbolic import bounds_numeric, eta_star_numeric

SMOOTH_ARCHS = mlp_specs(max_depth=2, max_width=10, activation_names=SMOOTH_ACTIVATIONS, max_in=3, max_out=2)


@given(arch=SMOOTH_ARCHS, seed=st.integers(0, 10_000), fraction=st.floats(0.05, 0.95),
       momentum=st.sampled_from([0.0, 0.0, 0.9]), weight_decay=st.sampled_from([0.0, 1e-2, 0.5]),
       maximize=st.booleans())
def test_T2_sgd_step_inside_certified_bounds(arch, seed, fraction, momentum, weight_decay, maximize):
    """For lr below the predicted η*, every pair's distance ratio after a real SGD step lies in
    [1 − lr·K, 1 + lr·K], for the certified K and for the sampled estimate."""
    model = arch.build(seed=seed)
    batch = make_batch(arch, 8, seed, 0)
    probe = torch.optim.SGD(model.parameters(), lr=1.0, momentum=momentum, weight_decay=weight_decay,
                            maximize=maximize)
    if momentum:  # give the buffer a history so that the conditional momentum bound is exercised
        model, probe, _ = stepped_copies(model, probe, mse_loss, batch)
    pred = predict_step(model, probe, mse_loss, batch, hessian=False)
    lr = fraction * min(lp.eta_star for lp in pred.layers)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay,
                          maximize=maximize)
    opt.load_state_dict({**probe.state_dict(), "param_groups": [
        {**g, "lr": lr} for g in probe.state_dict()["param_groups"]]})
    ver = verify_step(model, opt, mse_loss, batch, hessian=False)
    for lv in ver.layers:
        assert lv.prediction.phase == PRESERVING
        assert lv.holds_certified, str(lv)
        assert lv.holds, str(lv)
        assert lv.min_ratio > 0  # injective on the cloud (T3)


def test_T2_wrong_K_is_caught():
    """The check can fail: bounds from a deliberately small K are violated by the same real step."""
    s = default_scenario()
    model = s.model()
    opt = s.sgd(model, 0.04)
    pred = predict_step(model, opt, s.loss_fn, s.batch)
    lp = pred.layers[0]
    wrong_K = lp.K / 10
    lower, upper = bounds_numeric(wrong_K, 0.04)
    wrong = dataclasses.replace(lp, K=wrong_K, K_eff=wrong_K, lower=lower, upper=upper)
    bad = verify_step(model, opt, s.loss_fn, s.batch, prediction=dataclasses.replace(pred, layers=(wrong,)))
    good = verify_step(model, opt, s.loss_fn, s.batch, prediction=pred)
    assert good.holds and not bad.holds
    assert bad.layers[0].violations > 0 and bad.layers[0].margin < 0


def _top_positive_eigenpair(model, s):
    layer = detect_layers(model)[0]
    samples, _ = block_samples(model, layer, s.loss_fn, s.batch)
    z = neuron_cloud(model, layer)[0]
    evals, evecs = torch.linalg.eigh(torch.func.hessian(samples.potential)(z))
    return float(evals[-1]), evecs[:, -1], z


def _fold_setup():
    """The circle cloud plus a twin of neuron 0 placed 1e-4 away along the top positive eigenvector of the
    field Jacobian at neuron 0, so the pair (0, N) folds where 1 − η λ_+ = 0. The twin is repositioned
    twice, because adding it changes δ and with it the field (all from the pre-step state)."""
    s = default_scenario(n=33)
    model = s.model()
    for _ in range(3):
        _, e, z = _top_positive_eigenpair(model, s)
        twin = z + 1e-4 * e
        with torch.no_grad():
            model[0].weight[32, 0], model[0].bias[32], model[2].weight[0, 32] = twin[0], twin[1], twin[2]
    lam_plus, _, _ = _top_positive_eigenpair(model, s)
    return s, model, lam_plus


def test_T3_predicted_eta_star_matches_sweep_onset():
    """Predicted: the step is injective for η < η* (certified ≤ estimated), and the pair aligned with the
    Jacobian's top positive eigenvector folds at η = 1/λ_+. Observed: an η sweep of real SGD steps."""
    s, model, lam_plus = _fold_setup()
    pred = predict_step(model, torch.optim.SGD(model.parameters(), lr=1.0), s.loss_fn, s.batch, hessian=False,
                        fold=True)
    lp = pred.layers[0]
    eta_fold_exact = eta_star_numeric(lam_plus)  # T3's one-sided form: the pair folds at η = 1/λ_+
    assert lp.eta_star_certified <= lp.eta_star <= eta_fold_exact * (1 + 1e-6)
    layer = detect_layers(model)[0]
    before = neuron_cloud(model, layer)
    etas = torch.linspace(0.02, 2.0, 100).tolist() + [eta_fold_exact]
    min_ratio = {}
    for eta in etas:
        after_model, _, _ = stepped_copies(model, torch.optim.SGD(model.parameters(), lr=eta), s.loss_fn, s.batch)
        st_ = ratio_stats(before, neuron_cloud(after_model, layer), -math.inf, math.inf)
        min_ratio[eta] = st_.min_ratio
        if eta < lp.eta_star_certified:
            assert st_.min_ratio >= bounds_numeric(lp.K_upper, eta)[0] - 1e-9  # T2 lower bound, hence injective
    onset = min(min_ratio, key=min_ratio.get)  # the η at which the closest approach happens
    assert min_ratio[onset] < 0.05  # a genuine near-fold...
    assert onset == pytest.approx(eta_fold_exact, rel=0.03)  # ...exactly where predicted
    assert onset >= lp.eta_star * (1 - 1e-6)  # and never below the predicted critical rate
    # the gradient-step refinement: only the top *positive* eigenvalue folds, so η* ≤ η_fold ≤ the onset
    assert lp.eta_star * (1 - 1e-6) <= lp.eta_fold <= onset * (1 + 1e-6)


def test_T4_multistep_product_bound_holds():
    """Over T real steps with per-step predicted K_t: ∏(1 − η K_t) ≤ ratio ≤ ∏(1 + η K_t) for every pair,
    with a cosine learning-rate schedule, for the estimated and the certified K_t."""
    s = default_scenario(n=24)
    model = s.model()
    T = 8
    lrs = [0.02 + 0.02 * (1 + math.cos(math.pi * t / T)) for t in range(T)]
    ver = verify_steps(model, s.sgd(model, lrs[0]), s.loss_fn, s.batch, steps=T, schedule=lrs.__getitem__)
    lv = ver.layers[0]
    assert ver.holds is True and ver.holds_certified is True, str(ver)
    assert list(lv.lrs) == lrs and len(set(lv.Ks)) > 1  # the schedule was followed; K_t was re-predicted
    assert lv.lower_certified <= lv.lower <= lv.min_ratio and lv.max_ratio <= lv.upper <= lv.upper_certified
    # not vacuous: the cloud really moved
    assert lv.max_ratio > 1 + 1e-3 or lv.min_ratio < 1 - 1e-3


def test_predict_and_verify_do_not_mutate_model_or_optimizer():
    s = default_scenario(n=16)
    model = s.model()
    opt = s.sgd(model, 0.04, momentum=0.9)
    model, opt, _ = stepped_copies(model, opt, s.loss_fn, s.batch)
    model_before = {k: v.clone() for k, v in model.state_dict().items()}
    opt_before = opt.state_dict()
    buf_before = {k: {n: t.clone() for n, t in v.items()} for k, v in opt_before["state"].items()}
    grads_before = [p.grad.clone() for p in model.parameters()]
    verify_step(model, opt, s.loss_fn, s.batch)
    for k, v in model.state_dict().items():
        assert torch.equal(v, model_before[k])
    after = opt.state_dict()
    assert after["param_groups"] == opt_before["param_groups"]
    for k, v in after["state"].items():
        for n, t in v.items():
            assert torch.equal(t, buf_before[k][n])
    assert all(torch.equal(p.grad, g) for p, g in zip(model.parameters(), grads_before))


def test_verify_step_returns_the_stepped_copies_and_leaves_the_callers_objects_alone():
    """model_after/optimizer_after are the real step (equal to a manual step on a copy, momentum buffer
    included), so a run continues from them; the caller's model is unchanged and they stay out of to_dict."""
    s = default_scenario(n=12)
    model = s.model()
    opt = s.sgd(model, 0.04, momentum=0.9)
    model, opt, _ = stepped_copies(model, opt, s.loss_fn, s.batch)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ver = verify_step(model, opt, s.loss_fn, s.batch, hessian=False)
    manual, manual_opt, _ = stepped_copies(model, opt, s.loss_fn, s.batch)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    stepped = dict(ver.model_after.named_parameters())
    for name, p in manual.named_parameters():
        assert torch.equal(stepped[name], p) and not torch.equal(p, before[name])
        assert torch.equal(ver.optimizer_after.state[stepped[name]]["momentum_buffer"],
                           manual_opt.state[p]["momentum_buffer"])
    assert ver.optimizer_after.param_groups[0]["params"][0] is next(ver.model_after.parameters())
    assert "model_after" not in ver.to_dict() and "optimizer_after" not in ver.to_dict()
    assert "model_after" not in repr(ver)
    # continuing from the stepped copies is the next real step
    nxt = verify_step(ver.model_after, ver.optimizer_after, s.loss_fn, s.batch, hessian=False)
    assert nxt.loss_before == pytest.approx(ver.loss_after)


def test_loss_fn_side_effects_do_not_reach_the_callers_model():
    s = default_scenario(n=6)
    model = s.model()

    def loss_fn(m, batch):
        m.eval()
        m.touched = True
        return s.loss_fn(m, batch)

    verify_step(model, s.sgd(model, 0.04), loss_fn, s.batch)
    assert model.training and not hasattr(model, "touched")


def test_shared_module_is_not_a_layer_and_the_error_says_why():
    class Shared(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.o = nn.Linear(4, 4), nn.Linear(4, 1)

        def forward(self, x):
            return self.o(torch.tanh(self.a(torch.tanh(self.a(x)))))

    with pytest.raises(LayoutError, match="shared weights"):
        detect_layers(Shared())


def test_momentum_prediction_is_conditional_on_the_buffer():
    s = default_scenario(n=16)
    model = s.model()
    opt = s.sgd(model, 0.03, momentum=0.9)
    first = predict_step(model, opt, s.loss_fn, s.batch, hessian=False).layers[0]
    assert first.rule.coef_buffer == 0 and "first step" in first.rule.description
    model, opt, _ = stepped_copies(model, opt, s.loss_fn, s.batch)
    ver = verify_step(model, opt, s.loss_fn, s.batch, hessian=False)
    lp = ver.layers[0].prediction
    assert lp.rule.coef_buffer == pytest.approx(0.9) and lp.momentum_rho > 0
    assert lp.K_eff == pytest.approx(lp.K + 0.9 * lp.momentum_rho)
    assert ver.holds and ver.holds_certified


def test_phase_flips_at_eta_star():
    s = default_scenario()
    model = s.model()
    eta_star = predict_step(model, s.sgd(model, 1.0), s.loss_fn, s.batch, hessian=False).layers[0].eta_star
    below = predict_step(model, s.sgd(model, 0.9 * eta_star), s.loss_fn, s.batch, hessian=False)
    above = predict_step(model, s.sgd(model, 1.1 * eta_star), s.loss_fn, s.batch, hessian=False)
    assert below.phase == PRESERVING and above.phase == BREAKDOWN_POSSIBLE


def test_hessian_constants_are_reported_and_ordered():
    s = default_scenario()
    model = s.model()
    pred = predict_step(model, s.sgd(model, 0.04), s.loss_fn, s.batch)
    lp = pred.layers[0]
    assert lp.lambda_layer <= pred.lambda_max * (1 + 1e-6)  # principal submatrix (a theorem)
    assert lp.K < lp.lambda_layer  # observed here: the field constant is far below the Hessian's


def test_optimizer_without_a_rule_gets_no_prediction_but_a_reason():
    s = default_scenario(n=8)
    model = s.model()
    pred = predict_step(model, torch.optim.Rprop(model.parameters()), s.loss_fn, s.batch, hessian=False)
    assert pred.phase == "unavailable" and "no prediction for Rprop" in pred.layers[0].reason
    assert "never another optimizer's formula" not in pred.layers[0].reason  # the reason names the fix
    assert "register_rule" in pred.layers[0].reason
    with pytest.raises(UnsupportedError, match="nothing to verify"):
        verify_step(model, torch.optim.Rprop(model.parameters()), s.loss_fn, s.batch)


def test_nan_parameters_raise_naming_the_layer():
    s = default_scenario(n=8)
    model = s.model()
    with torch.no_grad():
        model[0].weight[3, 0] = float("nan")
    with pytest.raises(NonFiniteError, match="layer '0' at step 7"):
        predict_step(model, s.sgd(model, 0.1), s.loss_fn, s.batch, step=7, check_layout=False)


def test_divergence_raises_a_clear_error_not_a_library_traceback():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(1, 8), nn.Identity(), nn.Linear(8, 1)).double()  # linear: blows up fast
    batch = (torch.linspace(-2, 2, 20, dtype=torch.float64)[:, None],) * 2
    opt = torch.optim.SGD(model.parameters(), lr=10.0)
    with pytest.raises(NonFiniteError, match=r"(loss is (nan|inf)|NaN/Inf).* (at step \d+|step \d+)"):
        for t in range(200):
            verify_step(model, opt, mse_loss, batch, step=t, hessian=False, check_layout=False)
            model, opt, _ = stepped_copies(model, opt, mse_loss, batch)


def test_coincident_neurons_are_reported_and_excluded():
    s = default_scenario(n=8)
    model = s.model()
    with torch.no_grad():
        model[0].weight[1] = model[0].weight[0]
        model[0].bias[1] = model[0].bias[0]
    ver = verify_step(model, s.sgd(model, 0.04), s.loss_fn, s.batch, hessian=False)
    lv = ver.layers[0]
    assert lv.prediction.merged_pairs == 1 and lv.merged_before == 1 and lv.merged_after == 1
    assert lv.n_pairs == 8 * 7 // 2 - 1 and lv.holds


def test_model_without_layers_and_bad_layout_errors():
    model = nn.Sequential(nn.Linear(2, 1)).double()
    batch = (torch.zeros(3, 2, dtype=torch.float64), torch.zeros(3, 1, dtype=torch.float64))
    with pytest.raises(LayoutError, match="Automatic detection supports"):
        predict_step(model, torch.optim.SGD(model.parameters(), lr=0.1), mse_loss, batch)
    m2 = circle_mlp(n=6)
    bad = explicit_layer("h", {"0.weight": 0, "0.bias": 0}, m2)
    x = torch.linspace(-1, 1, 5, dtype=torch.float64)[:, None]
    with pytest.raises(LayoutError, match="'2.weight'"):
        predict_step(m2, torch.optim.SGD(m2.parameters(), lr=0.1), mse_loss, (x, x), layers=bad)


def test_loss_fn_must_return_a_scalar():
    s = default_scenario(n=4)
    model = s.model()
    opt = s.sgd(model, 0.1)
    for bad_fn, match in [(lambda m, b: m(b[0]), "scalar tensor"), (lambda m, b: 1.0, "scalar tensor"),
                          (lambda m, b: (mse_loss(m, b), 0), "scalar tensor"),
                          (lambda m, b: mse_loss(m, b).detach(), "does not depend")]:
        for check_layout in (True, False):
            with pytest.raises(TopoverifyError, match=match):
                predict_step(model, opt, bad_fn, s.batch, check_layout=check_layout, hessian=False)


def test_nan_or_empty_batch_is_a_non_finite_error_not_a_layout_error():
    s = default_scenario(n=4)
    model = s.model()
    x, y = s.batch
    for batch in [(x * float("nan"), y), (x[:0], y[:0])]:
        with pytest.raises(NonFiniteError, match="NaN/Inf or is empty"):
            predict_step(model, s.sgd(model, 0.1), s.loss_fn, batch)


def test_top_hessian_eigenvalue_matches_the_exact_spectrum_and_tolerates_side_effects():
    """Power iteration on double-backward Hessian-vector products: never above the exact spectral norm,
    within 1% of it after enough iterations, for the whole model and one layer; a forward pass that mutates
    a buffer (a call counter) runs on a private copy and does not break the products."""
    class Counting(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1, self.fc2 = nn.Linear(2, 4), nn.Linear(4, 1)
            self.register_buffer("calls", torch.zeros(()))

        def forward(self, x):
            self.calls += 1
            return self.fc2(torch.tanh(self.fc1(x)))

    torch.manual_seed(0)
    model = Counting().double()
    batch = (torch.randn(12, 2, dtype=torch.float64), torch.randn(12, 1, dtype=torch.float64))
    names = [n for n, _ in model.named_parameters()]
    reference = copy.deepcopy(model)  # the exact Hessian runs the counter on its own copy
    for chosen in (None, ["fc1.weight", "fc1.bias"]):
        sel = names if chosen is None else chosen
        shapes = [dict(model.named_parameters())[n].shape for n in sel]
        flat0 = torch.cat([dict(model.named_parameters())[n].detach().reshape(-1) for n in sel])

        def loss_of(flat):
            params, k = {}, 0
            for n, shp in zip(sel, shapes):
                params[n] = flat[k: k + shp.numel()].reshape(shp)
                k += shp.numel()
            return mse_loss(lambda x: torch.func.functional_call(reference, params, (x,)), batch)

        exact = float(torch.linalg.matrix_norm(torch.autograd.functional.hessian(loss_of, flat0), 2))
        est = top_hessian_eigenvalue(model, mse_loss, batch, params=chosen, iters=2000, tol=1e-12)
        assert est.norm <= exact * (1 + 1e-9) and est.norm >= exact * 0.99
    assert float(model.calls) == 0.0  # never the caller's module
