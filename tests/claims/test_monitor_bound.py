"""TopologyMonitor's per-step certified bound (T2, T7(a); proofs_notes/T7_monitor_bound.md) held against
predict_step at the same states, its momentum recursion against the exact ρ_b, and a short crossing of
lr·K = 1 that a sampling monitor would miss."""

from __future__ import annotations

import math
import warnings

import pytest
import torch

from topoverify import predict_step
from monitor_helpers import mse as _loss, small_regression
from topoverify.monitor import TopologyBreakdownWarning, TopologyMonitor
from topoverify.monitor import bound as monitor_bound


def _run(model, opt, batch, steps, *, lrs=None, predict=True, loss_fn=_loss, **mon_kwargs):
    """Train with the monitor; before each step, predict_step at the same state. Returns (records, predictions).
    ``batch``: one batch, or a function of the step (minibatches)."""
    mon = TopologyMonitor(model, opt, topology_every=None, **mon_kwargs)
    preds = []
    for t in range(steps):
        if lrs is not None:
            for g in opt.param_groups:
                g["lr"] = lrs[t]
        b = batch(t) if callable(batch) else batch
        opt.zero_grad()
        loss_fn(model, b).backward()
        if predict:
            preds.append(predict_step(model, opt, loss_fn, b, hessian=False, check_layout=False,
                                      neighbors=mon.neighbors, power_iters=mon.power_iters, seed=mon.seed).layers[0])
        opt.step()
    mon.close()
    _LAST[0] = mon
    return mon.history, preds


@pytest.mark.roundoff
@pytest.mark.parametrize("kwargs", [dict(), dict(weight_decay=0.3), dict(maximize=True)])
def test_plain_sgd_records_equal_predict_step(kwargs):
    model, batch = _setup()
    opt = torch.optim.SGD(model.parameters(), lr=0.4, **kwargs)
    recs, preds = _run(model, opt, batch, 5, threshold=1e-9, warn=False)  # every step evaluated
    assert len(recs) == len(preds) == 5
    for r, p in zip(recs, preds):
        assert r["covered"] and r["evaluated"] and r["reason"] == ""
        cert = p.lr * p.K_eff_upper
        assert math.isfinite(cert) and r["lrK_bound"] == pytest.approx(cert, rel=1e-12)
        assert r["lrK_certified"] == pytest.approx(cert, rel=1e-12)
        assert r["lrK_estimate"] == pytest.approx(p.lr * p.K_eff, rel=1e-12)
        assert r["phase"] == p.phase and r["lr"] == p.lr


def test_below_threshold_not_evaluated_and_preserving():
    model, batch = _setup()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    recs, preds = _run(model, opt, batch, 4, threshold=0.5)
    for r, p in zip(recs, preds):
        assert r["lrK_bound"] < 0.5 and not r["evaluated"] and r["lrK_estimate"] is None
        assert r["phase"] == "preserving" == p.phase  # the estimate is <= the certified bound < 1
        assert r["lrK_bound"] >= p.lr * p.K_eff_upper * (1 - 1e-12)  # tier 0: above the exact hull bound
    assert mon_tiers(recs) == {"0": 4, "1": 0, "2": 0}


def mon_tiers(recs):
    """The tier counts the last monitor of :func:`_run` recorded (its coverage)."""
    return _LAST[0].report_data()["coverage"]["bound_tiers"]


_LAST = [None]


RECURSION = monitor_bound.buffer_ratio_step


def _momentum_violations(kwargs, steps=12, lr=0.25, recursion=RECURSION, scenario=None, min_tier=1):
    """(min_tier=1: the exact hull bound every step, so the recursion is tested alone.) Steps where the monitor's bound is below predict_step's certified lr·K_eff_upper (exact ρ_b), and the
    number of steps whose ρ_b came from ``recursion``."""
    if scenario is None:
        (model, batch), loss_fn = _setup(seed=1), _loss
    else:
        model, batch, loss_fn = scenario.make_model(), scenario.batches, scenario.loss_fn
    opt = torch.optim.SGD(model.parameters(), lr=lr, **kwargs)
    calls = []

    def counted(*a):
        calls.append(a)
        return recursion(*a)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(monitor_bound, "buffer_ratio_step", counted)
        recs, preds = _run(model, opt, batch, steps, threshold=1.0, loss_fn=loss_fn, min_tier=min_tier)
    bad = [r["step"] for r, p in zip(recs, preds)
           if not r["lrK_bound"] >= p.lr * p.K_eff_upper * (1 - 1e-12)]
    return bad, len(calls), recs, preds


@pytest.mark.parametrize("kwargs", [dict(momentum=0.9), dict(momentum=0.8, nesterov=True),
                                    dict(momentum=0.7, dampening=0.3, weight_decay=0.1)])
def test_momentum_bound_at_least_exact(kwargs):
    bad, recursed, recs, preds = _momentum_violations(kwargs)
    assert all(r["covered"] for r in recs)
    assert recursed >= 5, "the recursion was hardly used; the test would not test it"
    assert bad == []
    # at the first step (no buffer) and at restarts the bound is predict_step's exactly
    assert recs[0]["lrK_bound"] == pytest.approx(preds[0].lr * preds[0].K_eff_upper, rel=1e-12)
    assert recs[1]["lrK_bound"] == pytest.approx(preds[1].lr * preds[1].K_eff_upper, rel=1e-12)


@pytest.mark.parametrize("kwargs", [dict(momentum=0.9), dict(momentum=0.7, dampening=0.3, weight_decay=0.1)])
def test_momentum_bound_with_tier0_at_least_exact(kwargs):
    """The default (tier 0 per step, its K_G feeding the recursion) never falls below the exact value."""
    bad, recursed, recs, _ = _momentum_violations(kwargs, lr=0.05, min_tier=0)
    assert all(r["covered"] for r in recs) and recursed >= 5 and bad == []
    assert mon_tiers(recs)["0"] >= 6


def test_momentum_bound_on_the_digits_scenario():
    """A real momentum run (digits, sigmoid MLP 64-64-10, minibatches): the recursion stays above the exact ρ_b."""
    pytest.importorskip("sklearn", reason="the digits scenario needs scikit-learn")
    from topoverify.experiments.scenarios import digits_scenario
    bad, recursed, recs, _ = _momentum_violations(dict(momentum=0.9), steps=10, lr=0.5,
                                                  scenario=digits_scenario(n=64))
    assert all(r["covered"] for r in recs) and recursed >= 5 and bad == []


def test_broken_recursion_is_caught():
    """A recursion that forgets the new gradient's term (ρ_b(t) ≤ μ ρ_b(t−1)) falls below the exact value."""
    bad, recursed, _, _ = _momentum_violations(dict(momentum=0.9), recursion=lambda rho, K, lrK, mu, tau: mu * rho)
    assert recursed >= 5 and bad, "the check did not notice a wrong recursion"


def test_recursion_restarts_when_parameters_change_outside_the_step():
    model, batch = _setup(seed=2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    mon = TopologyMonitor(model, opt, topology_every=None)
    seen = []
    real = monitor_bound.buffer_ratio_step
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(monitor_bound, "buffer_ratio_step", lambda *a: seen.append(mon.steps) or real(*a))
        for t in range(6):
            if t == 4:
                with torch.no_grad():
                    model[0].weight.mul_(1.01)  # an outside change: the recursion must not be used at 4
            opt.zero_grad()
            _loss(model, batch).backward()
            opt.step()
    mon.close()
    assert all(r["covered"] for r in mon.history)
    assert 4 not in seen and {2, 3, 5} <= set(seen)


def test_short_crossing_is_reported_where_sampling_misses_it():
    """lr·K crosses 1 for 2 steps, fewer than full_every: the per-step bound still triggers the evaluation."""
    model, batch = _setup(seed=3)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    p0 = predict_step(model, opt, _loss, batch, hessian=False, check_layout=False).layers[0]
    spike = 3.0 / p0.K_eff  # lr·K ≈ 3 by the estimate
    steps, every = 25, 10
    lrs = [spike if t in (13, 14) else 0.05 for t in range(steps)]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        recs, _ = _run(model, opt, batch, steps, lrs=lrs, predict=False, full_every=every)
    crossing = [r for r in recs if r["step"] in (13, 14)]
    assert all(r["lrK_bound"] >= 1 and r["evaluated"] for r in crossing)
    assert any(r["lrK_estimate"] >= 1 and r["phase"] == "breakdown-possible" for r in crossing)
    hits = [w for w in caught if issubclass(w.category, TopologyBreakdownWarning)]
    assert len(hits) == 1 and "step 13" in str(hits[0].message)
    sampled = [r for r in recs if r["step"] % every == 0]
    assert sampled and all(r["evaluated"] for r in sampled)
    assert max(r["lrK_estimate"] for r in sampled) < 1  # sampling every full_every steps reads no crossing
    # off the schedule, only the bound triggers an evaluation
    assert all(r["evaluated"] == (r["lrK_bound"] >= 0.5) for r in recs if r["step"] % every)


# ---------------------------------------------------------------------------------------------------------
# Tier 0 (topoverify.measure.cheap_bounds): never below the exact hull bound
# ---------------------------------------------------------------------------------------------------------

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from topoverify.measure import cheap_bounds  # noqa: E402
from topoverify.measure.field import BlockSamples  # noqa: E402
from topoverify.neurons.activations import get_activation  # noqa: E402

TIER0_ACTIVATIONS = ("tanh", "sigmoid", "gelu", "softplus", "silu", "relu")


def _random_field(seed, act, R, d_w, d_a, N, h_scale, d_scale, w_scale, zero_rows):
    gen = torch.Generator().manual_seed(seed)
    H = torch.randn(R, d_w, generator=gen, dtype=torch.float64) * h_scale
    D = torch.randn(R, d_a, generator=gen, dtype=torch.float64) * d_scale
    D[:zero_rows] = 0.0  # samples without signal
    cloud = torch.randn(N, d_w + d_a, generator=gen, dtype=torch.float64) * w_scale
    return BlockSamples(H, D, get_activation(act), False), cloud


def _tier0_and_hull(samples, cloud, decay):
    W, A = cheap_bounds.cloud_norms(cloud, samples.d_w)
    return cheap_bounds.tier0_bound(samples, W, A, decay).norm, samples.hull_bounds(cloud, decay, signs=()).norm


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), act=st.sampled_from(TIER0_ACTIVATIONS), R=st.integers(1, 40),
       d_w=st.integers(1, 6), d_a=st.integers(1, 4), N=st.integers(1, 30),
       h_scale=st.floats(1e-3, 10.0), d_scale=st.floats(1e-3, 10.0), w_scale=st.floats(1e-3, 5.0),
       zero_rows=st.integers(0, 3), decay=st.sampled_from([0.0, 0.01, 1.0]))
def test_tier0_is_never_below_the_hull_bound(seed, act, R, d_w, d_a, N, h_scale, d_scale, w_scale, zero_rows,
                                             decay):
    samples, cloud = _random_field(seed, act, R, d_w, d_a, N, h_scale, d_scale, w_scale, min(zero_rows, R))
    k0, k1 = _tier0_and_hull(samples, cloud, decay)
    assert k0 >= k1  # inf >= anything: an interval holding a kink of σ' (ReLU at 0, softplus at βx = 20)
    if samples.activation.smooth:
        assert math.isfinite(k0)


def _violations(mutation):
    """Random fields on which a mutated tier 0 falls below the exact hull bound (the test above would fail)."""
    bad = 0
    with pytest.MonkeyPatch.context() as mp:
        mutation(mp)
        for seed in range(40):
            samples, cloud = _random_field(seed, ("tanh", "sigmoid", "gelu", "softplus")[seed % 4], 30, 3, 2, 20,
                                           1.0, 3.0, 1.5, 0)
            k0, k1 = _tier0_and_hull(samples, cloud, 0.0)
            bad += k0 < k1
    return bad


def test_mutated_tier0_is_caught():
    """Without the σ'' factor (S2 := 0: the curvature block forgotten), or with the trace Σ_r x_r‖X_r‖² replaced
    by its largest term, tier 0 falls below the hull bound on some of 40 random fields; unmutated, on none."""
    real = cheap_bounds.radius_sups

    def no_s2(mp):
        mp.setattr(cheap_bounds, "radius_sups", lambda act, r: (lambda s: (s[0], s[1] * 0, s[2]))(real(act, r)))

    class _MaxNotSum:  # torch, except that dot(x, y) is max_r x_r y_r instead of the sum
        def __getattr__(self, name):
            return getattr(torch, name)

        @staticmethod
        def dot(x, y):
            return (x * y).max()

    assert _violations(lambda mp: None) == 0
    assert _violations(no_s2) > 0
    assert _violations(lambda mp: mp.setattr(cheap_bounds, "torch", _MaxNotSum())) > 0


def _setup(seed=0, n=24, batch=32):
    return small_regression(seed, n, batch)
