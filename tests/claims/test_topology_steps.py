"""T5 on real optimizer steps: K predicted from the pre-step state, then ripser's diagrams before and after a
real SGD step are within the log-scale bottleneck ε = −log(1 − ηK) and features with log-persistence > 2ε
survive. K is never measured from the step it bounds (THEORY "What counts as a check")."""

from __future__ import annotations

import math

import numpy as np
import torch
from hypothesis import given, note
from hypothesis import strategies as st

from topoverify import topology as T
from topoverify.neurons.layouts import detect_layers, neuron_cloud
from topoverify.checks.step_prediction import predict_step
from topoverify.experiments.scenarios import circle_scenario, mse_loss
from topoverify.strategies.models import SMOOTH_ACTIVATIONS, make_batch, mlp_specs
from topoverify.checks.step_bounds import take_step

# ripser computes in float32: diagram values carry a relative rounding of ~6e-8, i.e. ~1e-7 in log scale
LOG_TOL = 1e-5


def smooth_mlps():
    return mlp_specs(max_depth=2, min_width=3, max_width=12, activation_names=SMOOTH_ACTIVATIONS)


def _diagrams(cloud):
    return T.persistence(cloud, maxdim=1).diagrams


def _log_persistence(dgm):
    d = dgm[dgm[:, 1] > dgm[:, 0]]
    with np.errstate(divide="ignore"):
        return np.log(d[:, 1]) - np.log(d[:, 0])


def _check_T5(before, after, eps):
    """Return the largest log-bottleneck over H0, H1; assert survival of the features above 2 eps."""
    dist = max(T.log_bottleneck(before[k], after[k]) for k in range(2))
    if math.isfinite(eps):
        for k in (0, 1):
            survivors = T.surviving_features(before[k], eps)
            # a matching within eps pairs every survivor with a point of positive log-persistence
            assert np.sum(_log_persistence(after[k]) > 0) >= len(survivors)
    return dist


@given(arch=smooth_mlps(), layer_pick=st.integers(0, 1), init_seed=st.integers(0, 2**16),
       data_seed=st.integers(0, 2**16), batch=st.integers(2, 16), frac=st.floats(0.02, 0.95))
def test_T5_real_step_below_eta_star_keeps_diagrams_within_epsilon(arch, layer_pick, init_seed, data_seed, batch,
                                                                    frac):
    model = arch.build(seed=init_seed)
    layer = detect_layers(model)[layer_pick % len(arch.widths)]
    data = make_batch(arch, batch, data_seed, 0)
    probe = torch.optim.SGD(model.parameters(), lr=1.0)  # K does not depend on lr; η* = 1/K
    pred = predict_step(model, probe, mse_loss, data, layers=layer, hessian=False, check_layout=False).layers[0]
    assert pred.available
    lr = frac * pred.eta_star  # below the predicted η*
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    eps = -math.log1p(-lr * pred.K)
    eps_cert = -math.log1p(-lr * pred.K_upper) if lr * pred.K_upper < 1 else math.inf
    before = neuron_cloud(model, layer).detach()
    stepped, _, _ = take_step(model, opt, mse_loss, data)
    after = neuron_cloud(stepped, layer).detach()
    db, da = _diagrams(before), _diagrams(after)
    dist = _check_T5(db, da, eps)
    note(f"{arch}, layer {layer.name}, lr={lr:.4g}, K={pred.K:.4g}, K_upper={pred.K_upper:.4g}, "
         f"eps={eps:.4g}, eps_cert={eps_cert:.4g}, log-bottleneck={dist:.4g}")
    assert dist <= eps + LOG_TOL            # with the estimate K
    assert dist <= eps_cert + LOG_TOL       # with the certified K_upper (eps_cert >= eps)
    # T5 on the robust (log 2) count of H1: features above log 2 + 2 eps survive above log 2; when 2 eps < log 2
    # no new feature can reach log 2, so the count after is at most that of the features above log 2 - 2 eps.
    # (Unchanged for sure only when both hold with no feature within 2 eps of log 2.)
    lower, upper = T.betti_bounds_after(db[1], eps + LOG_TOL)
    count_after = T.robust_betti(after, maxdim=1)[1]
    note(f"H1 log-persistences before {np.sort(_log_persistence(db[1]))[::-1][:5]}, after "
         f"{np.sort(_log_persistence(da[1]))[::-1][:5]}; count after {count_after} in [{lower}, {upper}]")
    assert lower <= count_after <= upper


def _circle_step_at(fraction):
    """The circle scenario's prediction, and its cloud before and after one real GD step at fraction·η*."""
    s = circle_scenario()
    model = s.model()
    layer = detect_layers(model)[0]
    pred = predict_step(model, s.sgd(model, 1.0), s.loss_fn, s.batch, layers=layer, hessian=False).layers[0]
    lr = fraction * pred.eta_star
    stepped, _, _ = take_step(model, s.sgd(model, lr), s.loss_fn, s.batch)
    return pred, lr, neuron_cloud(model, layer).detach(), neuron_cloud(stepped, layer).detach()


def test_T5_real_step_on_the_circle_scenario_keeps_beta1():
    pred, lr, before, after = _circle_step_at(0.8)
    eps = -math.log1p(-lr * pred.K)
    dist = _check_T5(_diagrams(before), _diagrams(after), eps)
    assert 0 < dist <= eps + LOG_TOL
    assert T.robust_betti(before) == T.robust_betti(after) == (1, 1)


def test_T5_check_catches_a_wrong_K():
    """The check can fail: a step with visible movement, held against ε from K/20, is caught."""
    pred, lr, before, after = _circle_step_at(0.8)
    dist = max(T.log_bottleneck(a, b) for a, b in zip(_diagrams(before), _diagrams(after)))
    eps_right = -math.log1p(-lr * pred.K)
    eps_wrong = -math.log1p(-lr * pred.K / 20)
    assert dist <= eps_right + LOG_TOL
    assert dist > eps_wrong + LOG_TOL  # the wrong constant is caught


def test_T5_allows_new_features_up_to_2eps_above_the_threshold():
    """What T5 says about robust counts, on a map where the old test's assumption fails: 7 collinear points
    (no H1 at any scale, so no feature near the threshold) mapped onto a regular heptagon. Every distance ratio
    lies in [a, b] with 2 eps = 2 max(log b, -log a) > log 2, and a loop of log-persistence log 2.25 ≈ 0.81 in
    (log 2, 2 eps] appears: allowed by T5, which keeps only the lower bound (nothing above log 2 + 2 eps to
    survive) and no upper bound once 2 eps >= log 2."""
    before = np.stack([np.arange(7.0), np.zeros(7)], axis=1)
    t = 2 * np.pi * np.arange(7) / 7
    after = np.stack([np.cos(t), np.sin(t)], axis=1)
    d0 = np.linalg.norm(before[:, None] - before[None], axis=-1)
    d1 = np.linalg.norm(after[:, None] - after[None], axis=-1)
    ratios = d1[d0 > 0] / d0[d0 > 0]
    eps = T.stability_epsilon(ratios.min(), ratios.max())
    db, da = _diagrams(before), _diagrams(after)
    assert len(db[1]) == 0                                      # no feature anywhere near the threshold...
    assert T.robust_betti(before)[1] == 0 and T.robust_betti(after)[1] == 1  # ...and yet the count changes
    new = _log_persistence(da[1]).max()
    assert T.DEFAULT_LOG_THRESHOLD < new <= 2 * eps + LOG_TOL   # a new feature of log-persistence <= 2 eps
    assert max(T.log_bottleneck(a, b) for a, b in zip(db, da)) <= eps + LOG_TOL
    assert T.betti_bounds_after(db[1], eps) == (0, math.inf)
    # with a small eps (2 eps < log 2, every feature more than 2 eps from it) the count is pinned: the circle
    # scenario's real step at 0.1 eta*
    pred, lr, b_cloud, a_cloud = _circle_step_at(0.1)
    eps_step = -math.log1p(-lr * pred.K)
    lo, hi = T.betti_bounds_after(_diagrams(b_cloud)[1], eps_step + LOG_TOL)
    assert lo == hi == T.robust_betti(b_cloud)[1] == T.robust_betti(a_cloud)[1] == 1
