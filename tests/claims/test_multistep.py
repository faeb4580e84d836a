"""T4's checker, :func:`topoverify.checks.multistep.verify_steps`: per-step K_t predicted from each pre-step
state, real torch.optim.SGD steps on private copies, the product bounds from topoverify.symbolic.

(The T4 property on the default scenario with a cosine schedule is
tests/claims/test_step_bounds.py::test_T4_multistep_product_bound_holds.)
"""

import dataclasses
import math

import pytest
import torch
from torch import nn

from topoverify import predict_step
from topoverify.checks.multistep import verify_steps
from topoverify.checks.step_bounds import stepped_copies
from topoverify.errors import TopoverifyError, UnsupportedError
from topoverify.experiments.scenarios import mse_loss
from topoverify.symbolic import multistep_bounds_numeric


def _small_net(seed=0, n=8, samples=16):
    """Linear(2, n) -> tanh -> Linear(n, 1) in float64 on a fixed batch (cheap to predict)."""
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(2, n), nn.Tanh(), nn.Linear(n, 1)).double()
    with torch.no_grad():
        model[0].weight.mul_(2.0)
        model[2].weight.mul_(3.0)
    batch = (torch.randn(samples, 2, generator=gen, dtype=torch.float64),
             torch.randn(samples, 1, generator=gen, dtype=torch.float64))
    return model, batch


def _rate(model, batch, fraction):
    probe = torch.optim.SGD(model.parameters(), lr=1.0)
    return fraction * predict_step(model, probe, mse_loss, batch, hessian=False).layers[0].eta_star


def _scaled_predictor(factor):
    """predict_step, with every layer's K_eff and K_eff_upper multiplied by ``factor`` (a wrong prediction)."""
    def predict(model, optimizer, loss_fn, batch, **options):
        pred = predict_step(model, optimizer, loss_fn, batch, **options)
        return dataclasses.replace(pred, layers=tuple(
            dataclasses.replace(lp, K_eff=lp.K_eff * factor, K_eff_upper=lp.K_eff_upper * factor)
            if lp.available else lp for lp in pred.layers))
    return predict


def test_T4_a_K_ten_times_too_small_is_caught_over_20_steps():
    """The check can fail: bounds from K_t/10 are violated by the same 20 real steps whose own predicted K_t
    (the same pre-step predictions, times 10) bound them."""
    model, batch = _small_net()
    lr = _rate(model, batch, 0.2)
    ver = verify_steps(model, torch.optim.SGD(model.parameters(), lr=lr), mse_loss, batch, steps=20,
                       predictor=_scaled_predictor(0.1), power_iters=20)
    lv = ver.layers[0]
    assert ver.holds is False and lv.violations > 0 and lv.margin < 0
    true_lower, true_upper = multistep_bounds_numeric([10 * k for k in lv.Ks], list(lv.lrs))
    assert true_lower <= lv.min_ratio and lv.max_ratio <= true_upper


def test_T4_checker_steps_private_copies_with_one_batch_or_one_per_step():
    """A list holds one batch per step and a tuple (x, y) is reused; the caller's model and optimizer are
    untouched, and model_after is the real run (equal to the same steps taken by hand on copies)."""
    model, batch = _small_net(seed=1, n=6)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    other = (batch[0].flip(0), batch[1])
    ver = verify_steps(model, opt, mse_loss, [batch, other, batch], steps=3, power_iters=10)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items()) and not opt.state
    m, o = model, opt
    for b in (batch, other, batch):
        m, o, _ = stepped_copies(m, o, mse_loss, b)
    stepped = dict(ver.model_after.named_parameters())
    assert all(torch.equal(stepped[n], p) for n, p in m.named_parameters())
    assert ver.holds is True and len(ver.losses) == 4 and "model_after" not in ver.to_dict()
    reused = verify_steps(model, opt, mse_loss, batch, steps=2, power_iters=10)
    assert len(reused.layers[0].lrs) == 2 and reused.holds is True
    with pytest.raises(TopoverifyError, match="one batch per step"):
        verify_steps(model, opt, mse_loss, [batch], steps=2)


def test_T4_a_step_without_a_prediction_is_not_a_pass():
    """A step the predictor cannot cover leaves the layer unchecked (holds None, with the reason); an
    optimizer with no prediction at all is refused."""
    model, batch = _small_net(seed=2, n=5)

    def second_step_unavailable(m, optimizer, loss_fn, b, *, step, **options):
        pred = predict_step(m, optimizer, loss_fn, b, step=step, **options)
        if step != 1:
            return pred
        return dataclasses.replace(pred, layers=tuple(
            dataclasses.replace(lp, available=False, reason="no rule for this step") for lp in pred.layers))

    ver = verify_steps(model, torch.optim.SGD(model.parameters(), lr=0.05), mse_loss, batch, steps=3,
                       predictor=second_step_unavailable, power_iters=10)
    lv = ver.layers[0]
    assert ver.holds is None and ver.holds_certified is None
    assert lv.holds is None and "step 1" in lv.reason and "no rule" in lv.reason
    with pytest.raises(UnsupportedError, match="nothing to verify"):
        verify_steps(model, torch.optim.Rprop(model.parameters()), mse_loss, batch, steps=2)


def _edit_step(step_to_edit, edit):
    """predict_step, with ``edit(layers)`` applied to the layer predictions of step ``step_to_edit`` only."""
    def predict(m, optimizer, loss_fn, b, *, step, **options):
        pred = predict_step(m, optimizer, loss_fn, b, step=step, **options)
        return pred if step != step_to_edit else dataclasses.replace(pred, layers=edit(pred.layers))
    return predict


@pytest.mark.parametrize("edit, reason", [
    (lambda layers: (), "step 1: the predictor left this layer out"),
    (lambda layers: layers + layers, "4 predictions for 3 steps"),
])
def test_T4_a_product_without_one_factor_per_step_is_not_a_pass(edit, reason):
    """A predictor that leaves a layer out at some step (or predicts it twice) does not give T4's product
    over the steps taken: the layer is not checked (holds None), never judged with a shorter product."""
    model, batch = _small_net(seed=3, n=5)
    ver = verify_steps(model, torch.optim.SGD(model.parameters(), lr=0.05), mse_loss, batch, steps=3,
                       predictor=_edit_step(1, edit), power_iters=10)
    lv = ver.layers[0]
    assert lv.holds is None and lv.holds_certified is None and ver.holds is None, str(ver)
    assert reason in lv.reason and "NOT CHECKED" in str(ver) and "VERIFIED (" not in str(ver)


def test_T4_a_layer_the_predictor_invents_is_a_clear_error():
    model, batch = _small_net(seed=3, n=5)
    rename = _edit_step(1, lambda layers: tuple(dataclasses.replace(lp, layer="nope") for lp in layers))
    with pytest.raises(TopoverifyError, match="'nope'.*not among the verified layers"):
        verify_steps(model, torch.optim.SGD(model.parameters(), lr=0.05), mse_loss, batch, steps=3,
                     predictor=rename, power_iters=10)


def test_T4_text_never_presents_an_estimate_only_pass_as_verified():
    """``holds`` is the check with the estimate K, ``holds_certified`` with the certified K_upper (as in
    verify_step); without a finite certificate a pass is reported as estimate-only, not as verified."""
    model, batch = _small_net(seed=4, n=5)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    certified = verify_steps(model, opt, mse_loss, batch, steps=2, power_iters=10)
    assert certified.holds is True and certified.holds_certified is True, str(certified)
    assert "VERIFIED (certified K_upper)" in str(certified) and "HOLDS (verified)" in str(certified)

    def uncertified(m, optimizer, loss_fn, b, **options):
        pred = predict_step(m, optimizer, loss_fn, b, **options)
        return dataclasses.replace(pred, layers=tuple(dataclasses.replace(lp, K_eff_upper=math.inf)
                                                      for lp in pred.layers))

    estimate = verify_steps(model, opt, mse_loss, batch, steps=2, predictor=uncertified, power_iters=10)
    assert estimate.holds is True and estimate.holds_certified is None, str(estimate)
    text = str(estimate)
    assert "NOT VERIFIED: holds with the estimate K only" in text and "VERIFIED (" not in text
    assert "holds (estimate only)" in text and "HOLDS" not in text
