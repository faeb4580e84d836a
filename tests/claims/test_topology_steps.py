"""T5 through its checker, :func:`topoverify.checks.persistence.check_persistence_stability`: K predicted from the
pre-step state, then ripser's diagrams before and after a real SGD step are within the log-scale bottleneck
ε = epsilon_numeric(K, lr) and features with log-persistence > 2ε survive. K is never measured from the step it
bounds: a constant read off the step itself would make the check hold by construction (spec/claims.toml, T5)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import assume, given, note
from hypothesis import strategies as st

from topoverify.checks.persistence import (LOG_TOLERANCE, RESOLVED_FACTOR, PersistenceStabilityCheck,
                                           check_persistence_stability, stability_epsilon)
from topoverify.checks.step_bounds import stepped_copies
from topoverify.checks.step_prediction import predict_step
from topoverify.errors import TopoverifyError
from topoverify.experiments import clouds as C
from topoverify.experiments.scenarios import circle_scenario, mse_loss
from topoverify.experiments.small_nets import SMOOTH_ACTIVATIONS, make_batch
from topoverify.measure import persistence as P
from topoverify.measure.persistence import EXACT_LIMITS
from topoverify.neurons.layouts import detect_layers, neuron_cloud
from topoverify.strategies import clouds as S
from topoverify.strategies.models import mlp_specs
from topoverify.symbolic import epsilon_numeric, interleaving_epsilon_numeric


def smooth_mlps():
    return mlp_specs(max_depth=2, min_width=3, max_width=12, activation_names=SMOOTH_ACTIVATIONS)


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
    assume(math.isfinite(pred.K_upper) and pred.K_upper > 0)  # inf: no certified constant (nothing to check)
    lr = frac / pred.K_upper  # below the certified η* = 1/K_upper: the certified check is not vacuous
    before = neuron_cloud(model, layer).detach()
    stepped, _, _ = stepped_copies(model, torch.optim.SGD(model.parameters(), lr=lr), mse_loss, data)
    after = neuron_cloud(stepped, layer).detach()
    certified = check_persistence_stability(before, after, K=pred.K_upper, lr=lr)    # licensed by T5
    estimate = check_persistence_stability(before, after, K=pred.K, lr=lr)           # power-iteration K: a note
    note(f"{arch}, layer {layer.name}, lr={lr:.4g}, K={pred.K:.4g}, K_upper={pred.K_upper:.4g}\n{certified}\n"
         f"estimate K: {estimate.verdict}")
    # distances within ε in H0 and H1, the features above 2ε survive, and the robust (log 2) count of H1 after
    # lies in T5's range (unchanged for sure only when 2ε < log 2 with no feature within 2ε of it)
    assert certified.holds, str(certified)
    assert certified.epsilon == epsilon_numeric(pred.K_upper, lr) > RESOLVED_FACTOR * LOG_TOLERANCE


def _circle_step_at(fraction):
    """The circle scenario's prediction, and its cloud before and after one real GD step at fraction·η*."""
    s = circle_scenario()
    model = s.model()
    layer = detect_layers(model)[0]
    pred = predict_step(model, s.sgd(model, 1.0), s.loss_fn, s.batch, layers=layer, hessian=False).layers[0]
    lr = fraction * pred.eta_star
    stepped, _, _ = stepped_copies(model, s.sgd(model, lr), s.loss_fn, s.batch)
    return pred, lr, neuron_cloud(model, layer).detach(), neuron_cloud(stepped, layer).detach()


@pytest.fixture(scope="module")
def circle_step_08():
    return _circle_step_at(0.8)


def test_T5_real_step_on_the_circle_scenario_keeps_beta1(circle_step_08):
    pred, lr, before, after = circle_step_08
    check = check_persistence_stability(before, after, K=pred.K, lr=lr)
    assert check.holds and 0 < check.distance <= check.epsilon + LOG_TOLERANCE
    assert check.betti_before == check.betti_after == (1, 1)
    assert check.epsilon == epsilon_numeric(pred.K, lr)


def test_T5_check_catches_a_wrong_K(circle_step_08):
    """The check can fail: a step with visible movement, held against ε from a K 20 times too small, is caught."""
    pred, lr, before, after = circle_step_08
    assert check_persistence_stability(before, after, K=pred.K, lr=lr).holds
    wrong = check_persistence_stability(before, after, K=pred.K / 20, lr=lr)
    assert wrong.verdict == "violated" and not all(wrong.within), str(wrong)


def test_T5_allows_new_features_up_to_2eps_above_the_threshold():
    """What T5 says about robust counts, on a map where the old test's assumption fails: 7 collinear points
    (no H1 at any scale, so no feature near the threshold) mapped onto a regular heptagon. Every distance ratio
    lies in [a, b] with 2 eps = 2 max(log b, -log a) > log 2, and a loop of log-persistence log 2.25 ≈ 0.81 in
    (log 2, 2 eps] appears: allowed by T5, which keeps only the lower bound (nothing above log 2 + 2 eps to
    survive) and no upper bound once 2 eps >= log 2. (The band is the map's exact one, read off the two clouds:
    this tests what the checker allows, not the map.)"""
    before = np.stack([np.arange(7.0), np.zeros(7)], axis=1)
    t = 2 * np.pi * np.arange(7) / 7
    after = np.stack([np.cos(t), np.sin(t)], axis=1)
    d0 = np.linalg.norm(before[:, None] - before[None], axis=-1)
    d1 = np.linalg.norm(after[:, None] - after[None], axis=-1)
    ratios = d1[d0 > 0] / d0[d0 > 0]
    check = check_persistence_stability(before, after, a=ratios.min(), b=ratios.max())
    assert check.holds and check.epsilon == stability_epsilon(ratios.min(), ratios.max())
    assert len(check.persistence_before.diagrams[1]) == 0            # no feature anywhere near the threshold...
    assert check.betti_before[1] == 0 and check.betti_after[1] == 1  # ...and yet the count changes
    assert check.betti_bounds == ((0, math.inf),)
    h1 = check.persistence_after.diagrams[1]
    new = float(np.max(np.log(h1[:, 1] / h1[:, 0])))
    assert math.log(2) < new <= 2 * check.epsilon + LOG_TOLERANCE  # a new feature of log-persistence <= 2 eps


def test_T5_small_step_pins_the_robust_count():
    """With a small ε (2ε < log 2, every feature more than 2ε from it) the count is pinned: the circle scenario's
    real step at 0.1 η*."""
    pred, lr, before, after = _circle_step_at(0.1)
    check = check_persistence_stability(before, after, K=pred.K, lr=lr)
    assert check.holds and check.betti_bounds == ((1, 1),)
    assert check.betti_before[1] == check.betti_after[1] == 1


# ------------------------------------------------------------------------------------------ the checker itself


@given(cloud=st.one_of(S.point_clouds(4, 30, dim=3), S.circle_clouds(8, 30, ambient_dim=3, max_noise=0.1)),
       ab=st.tuples(st.floats(0.3, 1.0), st.floats(1.0, 3.0)), data=st.data())
def test_checker_holds_for_a_bilipschitz_map_within_epsilon(cloud, ab, data):
    a, b = ab
    f = data.draw(S.bilipschitz_maps(a, b, cloud.shape[1]))
    check = check_persistence_stability(cloud, f(cloud), a=a, b=b)
    assert isinstance(check, PersistenceStabilityCheck)
    # near-isometries (ε not clearly above the float32 rounding) may be "inconclusive", never "violated"
    assert check.holds or (check.verdict == "inconclusive" and check.epsilon <= RESOLVED_FACTOR * LOG_TOLERANCE), \
        str(check)
    assert check.epsilon == interleaving_epsilon_numeric(a, b)  # fixed by the band, before any diagram
    assert all(n1 >= n0 for n0, n1 in zip(check.surviving, check.alive_after))


@given(cloud=S.circle_clouds(20, 40, ambient_dim=3, max_noise=0.05), x=st.floats(0.01, 0.9), data=st.data())
def test_checker_holds_for_a_step_band_from_K_and_lr(cloud, x, data):
    """A map with singular values in [1 - lr K, 1 + lr K] holds against the band built from (K, lr)."""
    K, lr = 4.0, x / 4.0
    f = data.draw(S.bilipschitz_maps(1 - x, 1 + x, cloud.shape[1]))
    check = check_persistence_stability(cloud, f(cloud), K=K, lr=lr)
    assert check.holds, str(check)
    assert check.epsilon == epsilon_numeric(K, lr) and (check.a, check.b) == pytest.approx((1 - x, 1 + x))


def test_checker_catches_a_band_narrower_than_the_map():
    cloud = C.circle(60, seed=0)
    stretched = cloud * np.array([2.0, 1.0])  # true distance ratios in [1, 2]
    check = check_persistence_stability(cloud, stretched, a=1.0, b=1.25)
    assert check.verdict == "violated" and not check.holds
    assert "VIOLATED" in str(check) and check.to_dict()["verdict"] == "violated"
    assert check_persistence_stability(cloud, stretched, a=1.0, b=2.0).holds


def test_checker_is_vacuous_above_eta_star():
    cloud = C.circle(30, seed=1)
    assert check_persistence_stability(cloud, 0.5 * cloud, K=2.0, lr=0.5).verdict == "vacuous"  # lr K = 1
    assert check_persistence_stability(cloud, 0.5 * cloud, K=2.0, lr=0.9).verdict == "vacuous"
    assert check_persistence_stability(cloud, cloud, a=0.0, b=1.0).verdict == "vacuous"
    assert check_persistence_stability(cloud, cloud, a=-0.5, b=1.5).epsilon == math.inf


def test_checker_restricts_large_clouds_to_the_same_landmarks(monkeypatch):
    monkeypatch.setitem(EXACT_LIMITS, 1, 40)
    cloud = C.circle(120, noise=0.02, ambient_dim=3, seed=0)
    with pytest.warns(UserWarning, match="n_perm"):
        check = check_persistence_stability(cloud, 1.1 * cloud, a=1.1, b=1.1)
    assert check.n_points == 120 and check.n_used < 120 and check.holds
    assert check.distances[0] == pytest.approx(math.log(1.1), abs=LOG_TOLERANCE)  # the same rows on both sides


@pytest.mark.parametrize("kwargs, match", [
    (dict(), "neither"),
    (dict(a=0.9, b=1.1, K=1.0, lr=0.1), "both"),
    (dict(a=0.9), "both a= and b="),
    (dict(K=1.0), "both K= and lr="),
    (dict(a=1.2, b=1.1), "a <= b"),
    (dict(a=float("nan"), b=1.1), "real number"),
    (dict(K=-1.0, lr=0.1), "K must be >= 0"),
])
def test_checker_bad_band(kwargs, match):
    cloud = C.circle(10, seed=0)
    with pytest.raises(TopoverifyError, match=match):
        check_persistence_stability(cloud, cloud, **kwargs)


def test_checker_bad_clouds():
    cloud = C.circle(10, seed=0)
    with pytest.raises(TopoverifyError, match="same neurons"):
        check_persistence_stability(cloud, cloud[:9], a=0.9, b=1.1)
    with pytest.raises(TopoverifyError, match="NaN"):
        check_persistence_stability(cloud, np.full_like(cloud, np.nan), a=0.9, b=1.1)
    with pytest.raises(TopoverifyError, match="maxdim"):
        check_persistence_stability(cloud, cloud, a=0.9, b=1.1, maxdim=-1)


def test_checker_tolerance_is_ripsers_rounding_not_more():
    """A uniform scaling by 1 + 8e-6 (≈ 30 × float32 resolution) against ε = 0 (K = 0): violated, not hidden
    by the tolerance; the identity holds; a distortion within the rounding of ε = 0 is inconclusive."""
    cloud = C.circle(40, seed=0)
    assert LOG_TOLERANCE < 1e-6
    check = check_persistence_stability(cloud, cloud * (1 + 8e-6), K=0.0, lr=0.1)
    assert check.verdict == "violated" and check.distance > check.epsilon + check.tolerance, str(check)
    assert check_persistence_stability(cloud, cloud.copy(), K=0.0, lr=0.1).verdict == "holds"
    tiny = check_persistence_stability(cloud, cloud * (1 + 1e-7), K=0.0, lr=0.1)
    assert tiny.verdict == "inconclusive" and 0 < tiny.distance <= tiny.tolerance, str(tiny)
    # the same distortion against a band that covers it, with ε well above the rounding: holds
    assert check_persistence_stability(cloud, cloud * (1 + 1e-3), a=1.0, b=1 + 1e-3).holds


def test_checker_isometry_of_close_neurons_far_from_the_origin(monkeypatch):
    """Neurons spread 1e-4 around a common offset 100, translated by 50 (an isometry): the Gram-trick distances
    (used above DENSE_PDIST_LIMIT, lowered here) must not cancel into a false violation."""
    monkeypatch.setattr(P, "DENSE_PDIST_LIMIT", 0)
    rng = np.random.default_rng(0)
    x = 100.0 + 1e-4 * rng.standard_normal((80, 40))
    check = check_persistence_stability(x, x + 50.0, a=1.0, b=1.0, maxdim=0)
    assert check.verdict in ("holds", "inconclusive") and check.distance <= check.tolerance, str(check)
