"""The breakdown experiment on the circle scenario (examples/breakdown_sweep.py), measured behaviour:

* lr = 0.03 (initial η* = 1.90, certified 0.55): lr·K stays < 1 at every step, β1 = 1 kept, loss → 1e-3;
* lr = 0.06: lr·K crosses 1 for 3 steps (edge of stability, T8); H1 log-persistence 2.89 → 0.78, β1 kept;
* lr ≥ 0.065: β1 is lost (step ~60) and then training diverges (NaN at step 99; 0.1: NaN at step 54);
* lr = 2.0 > η*: lr·K ≥ 1 from step 0, β1 lost by step 10, divergence at step 20.
The small forms below always run; the full sweep is marked slow.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from topoverify import topology as T
from topoverify.checks.critical_rate import check_critical_rate
from topoverify.experiments.rate_sweep import (
    RunRecord,
    SweepResult,
    sgd_factory,
    sweep,
    topology_snapshot,
)
from topoverify.errors import TopoverifyError
from topoverify.experiments.scenarios import (Scenario, _sin_data, circle_scenario, figure_eight_scenario, mse_loss,
                                              two_layer_mlp)


def test_below_eta_star_keeps_beta1():
    r = sweep(circle_scenario(), sgd_factory(), [0.03], 300, every=50, predict=False)
    run = r.runs[0]
    assert not run.diverged and run.steps_run == 300 and run.final_loss < 5e-3
    assert all(s.betti == (1, 1) for s in run.snapshots) and run.final.distinct == 64
    assert [s.step for s in run.snapshots] == [0, 50, 100, 150, 200, 250, 300]
    assert not run.topology_changed and r.onset_lr is None


def test_prediction_along_a_run_below_eta_star():
    r = sweep(circle_scenario(), sgd_factory(), [0.03], 12, every=6)
    assert r.eta_star == pytest.approx(1.896, rel=1e-2) and r.eta_star_certified < r.eta_star
    run = r.runs[0]
    assert len(run.eta_K) == 12 and all(v is not None and v < 1 for v in run.eta_K)
    assert all(u >= v for u, v in zip(run.eta_K_upper, run.eta_K))
    assert run.cumulative_epsilon() < run.cumulative_epsilon(certified=True) < math.inf


def test_well_above_eta_star_loses_beta1_then_diverges():
    r = sweep(circle_scenario(), sgd_factory(), [2.0], 40, every=5)
    run = r.runs[0]
    assert 2.0 > r.eta_star and run.eta_K[0] >= 1
    assert run.diverged and run.divergence and math.isnan(run.final_loss)
    assert run.final.betti[1] == 0 and run.topology_changed
    change = run.first_change_step
    assert change is not None and change <= run.diverged_at      # topology goes first, NaN after
    assert run.cumulative_epsilon(change) == math.inf             # consistent with T3/T5: ηK >= 1 before
    assert r.onset_lr == r.divergence_lr == r.phase2_lr == 2.0
    d = r.to_dict()
    json.dumps(d)  # strict-JSON ready, NaN spelled out
    assert d["runs"][0]["diverged_at"] == run.diverged_at and d["onset_lr"] == 2.0
    text = str(r)
    assert "circle" in text and "predicted eta*" in text


def test_optimizer_without_rule_has_no_prediction_but_topology_runs():
    def rprop(model, lr):  # no rule registered for Rprop (topoverify.rules)
        return torch.optim.Rprop(model.parameters(), lr=lr)
    r = sweep(circle_scenario(n=32), rprop, [1e-3], 10, every=5)
    assert r.eta_star is None and "Rprop" in r.prediction_reason
    run = r.runs[0]
    assert not run.prediction_available and run.max_eta_K is None and run.cumulative_epsilon() is None
    assert run.final.betti == (1, 1) and len(run.snapshots) == 3
    assert "No prediction" in " ".join(str(r).split())  # the summary wraps at 160 columns


def test_bad_arguments_and_snapshot():
    s = circle_scenario(n=16)
    for kw in (dict(lrs=[], steps=3), dict(lrs=[-1.0], steps=3), dict(lrs=[0.1], steps=-1),
               dict(lrs=[0.1], steps=3, every=0), dict(lrs=[0.1], steps=3, layer=5)):
        with pytest.raises(TopoverifyError):
            sweep(s, sgd_factory(), **kw)
    snap = topology_snapshot(torch.randn(30, 3, dtype=torch.float64), 7, keep_diagrams=False)
    assert snap.step == 7 and snap.diagrams is None and len(snap.max_log_persistence) == 1
    assert "step 7" in str(snap)


def test_other_scenario_short_run():
    r = sweep(figure_eight_scenario(n=64), sgd_factory(momentum=0.9), [0.01], 5, every=5, predict=True)
    assert isinstance(r, SweepResult) and r.runs[0].initial.betti == (1, 2)
    assert r.runs[0].prediction_available and r.optimizer.startswith("SGD")


@pytest.mark.slow
def test_full_circle_sweep_measured_onset():
    """The full experiment: per-step lr·K for 300 steps at each rate (a few minutes on 2 cores)."""
    lrs = [0.03, 0.06, 0.065, 0.08, 0.1]
    r = sweep(circle_scenario(), sgd_factory(), lrs, 300, every=10)
    keep = {lr: r.run(lr) for lr in lrs}
    t3 = check_critical_rate(r)  # T3: below eta* at every step, the topology is kept
    assert t3.verdict != "violated" and 0.03 in t3.estimate_lrs and t3.estimate_violations == ()
    assert not keep[0.03].diverged
    assert not keep[0.06].diverged and keep[0.06].final.betti == (1, 1) and keep[0.06].max_eta_K >= 1
    for lr in (0.065, 0.08, 0.1):
        run = keep[lr]
        assert run.diverged and run.final.betti[1] == 0
    assert r.onset_lr == 0.065 and r.divergence_lr == 0.065 and r.phase2_lr <= r.onset_lr
    p0 = r.runs[0].initial.max_log_persistence[0]
    for run in r.runs:  # T4 + T5: losing β1 needs a log-bottleneck budget of at least (p0 - log 2)/2
        if run.first_change_step is not None and run.final.betti[1] == 0:
            first_lost = next(s.step for s in run.snapshots if s.betti[1] == 0)
            assert run.cumulative_epsilon(first_lost) >= (p0 - T.DEFAULT_LOG_THRESHOLD) / 2


# ------------------------------------------------------------------------------------------ verdicts a sweep can trust


def _planar_scenario(points, name):
    """A tanh MLP whose neurons (w, b, a) are ``points`` (N × 3), sin(2x) data: a scenario for a chosen cloud."""
    points = np.asarray(points, dtype=np.float64)
    return Scenario(name=name, make_model=lambda: two_layer_mlp(points, 1, 1, "tanh", True),
                    batch=_sin_data(200, torch.float64), loss_fn=mse_loss)


def test_a_growing_distinct_count_is_not_breakdown():
    """Issue 7/8: neurons 0 and 1 start with equal θ but different momentum (T6 needs equal (θ, s), so they
    are not merged); they separate, the count on θ grows 63 -> 64, and the old sweep called that a change."""
    t = 2 * np.pi * np.arange(64) / 64
    cloud = np.stack([np.cos(t), np.sin(t), np.full(64, 0.5)], axis=1)
    cloud[1] = cloud[0]

    def make(model, lr):
        opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
        for p in model.parameters():
            buf = torch.zeros_like(p)
            if p is model[0].weight:
                buf[1] = 0.05  # neuron 1 carries a different momentum
            opt.state[p]["momentum_buffer"] = buf
        return opt

    make.__name__ = "SGD-momentum(prefilled)"
    r = sweep(_planar_scenario(cloud, "twins"), make, [0.01], 20, every=10, predict=False)
    run = r.runs[0]
    s0, s1 = run.initial, run.final
    assert s0.state_known and s0.distinct == 64                       # distinct as (θ, s)
    assert T.count_distinct(cloud) == 63                                # on θ alone: 63
    assert s0.distinct_tol == 63 and s1.distinct_tol == 64             # the old tolerance count grew
    assert s1.merged == 0 and not run.distinct_changed and run.betti_changed is False
    assert not run.topology_changed and run.verdict == "kept" and r.onset_lr is None


def test_pairs_close_at_the_start_are_not_merges():
    """Issue 7: a float32 curve sample has pairs 7.5e-7 apart; at 1e-6 relative tolerance they count as one,
    and when the cloud spreads by 1 % the tolerance count grows: not a topology change."""
    t = np.sort(np.random.default_rng(0).uniform(0, 2 * np.pi, 200))
    c0 = np.stack([np.cos(t), np.sin(t), 0.3 * np.cos(3 * t)], axis=1).astype(np.float32)
    c0[1] = c0[0] + np.float32(6e-7)  # a pair 1e-6 apart
    c1 = (c0 * np.float32(1.01)) + np.float32(0.0)
    c1[1] = c1[0] + np.float32(2e-6)
    tracker = T.MergeTracker(c0)
    s0 = topology_snapshot(c0, 0, tracker=tracker)
    s1 = topology_snapshot(c1, 1, tracker=tracker)
    assert s0.distinct_tol < s1.distinct_tol                            # "1023 distinct" -> "1024"
    run = RunRecord(lr=0.1, steps=1, steps_run=1, loss=[0.0], final_loss=0.0, eta_K=[None], eta_K_upper=[None],
                    prediction_available=False, prediction_reason="", snapshots=[s0, s1])
    assert s1.merged == 0 and not run.topology_changed and run.verdict == "kept"


def test_an_uncertain_start_is_reported_not_a_change():
    """Issue 7: eight neurons on an ellipse whose H1 log-persistence is 0.698, just above log 2: the starting
    β1 is uncertain, so its loss is reported as uncertain, not as a topology change; a merge still counts."""
    t = 2 * np.pi * np.arange(8) / 8
    cloud = np.stack([np.cos(t), np.sin(t) / 1.3, np.full(8, 0.5)], axis=1)
    r = sweep(_planar_scenario(cloud, "octagon"), sgd_factory(), [0.01, 0.5], 30, every=10, predict=False)
    assert r.start_uncertain and r.start_range == ((1, 0), (1, 1))
    for run in r.runs:
        assert run.start_uncertain and run.initial.betti == (1, 1) and run.final.betti[1] == 0
        assert not run.betti_changed and run.verdict == "uncertain" and run.first_change_step is None
    assert r.onset_lr is None and r.uncertain_lrs == [0.01, 0.5]
    assert "UNCERTAIN" in r.summary() and "uncertain" in str(r)
    d = r.to_dict()
    json.dumps(d)
    assert d["start_uncertain"] is True and d["runs"][0]["verdict"] == "uncertain"
    # a certain start: the circle scenario's loss of β1 well above eta* is a change
    r2 = sweep(circle_scenario(), sgd_factory(), [2.0], 10, every=5, predict=False)
    assert not r2.start_uncertain and r2.runs[0].betti_changed


def test_sweep_rule_and_margin_are_validated_and_recorded():
    s = circle_scenario(n=16)
    with pytest.raises(TopoverifyError, match="rule"):
        sweep(s, sgd_factory(), [0.1], 2, rule="median")
    with pytest.raises(TopoverifyError, match="margin"):
        sweep(s, sgd_factory(), [0.1], 2, margin=-1.0)
    with pytest.raises(TopoverifyError, match="roundoff_ulps"):
        sweep(s, sgd_factory(), [0.1], 2, roundoff_ulps=0.0)
    r = sweep(figure_eight_scenario(n=64), sgd_factory(), [0.01], 2, every=2, predict=False, rule="gap", margin=0.05)
    assert r.rule == "gap" and r.margin == 0.05 and r.runs[0].initial.betti == (1, 2)


@pytest.mark.roundoff
def test_breakdown_merges_are_counted_by_collapse():
    """At 0.065 (past the edge of stability) the circle's neurons merge: pairs fall to the round-off level
    of float64 from far apart; the exact count need not change (they are equal to round-off, not bitwise)."""
    r = sweep(circle_scenario(), sgd_factory(), [0.065], 99, every=33, predict=False)
    run = r.runs[0]
    assert run.final.merged > 0 and run.final.collapsed_pairs > 0 and run.final.close_at_start_pairs == 0
    assert run.topology_changed and run.verdict == "changed"


# ------------------------------------------------------------------------------------ ratio envelope and schedules


def test_ratio_envelope_inside_the_certified_band_and_matches_cdist():
    from topoverify.experiments.schedules import step_decay
    sc = circle_scenario(n=24)
    r = sweep(sc, sgd_factory(), [0.03], 4, every=4, sharpness=False, ratios=True)
    run = r.runs[0]
    assert run.lrs == [0.03] * 4 and len(run.ratio_min) == len(run.ratio_max) == 4
    for lo, hi, eku in zip(run.ratio_min, run.ratio_max, run.eta_K_upper):
        assert eku < 1 and 1 - eku - 1e-12 <= lo <= hi <= 1 + eku + 1e-12   # T2's certified band, every step
    # the envelope of step 0, independently: all pairs of distinct neurons with torch.cdist
    from topoverify.neurons.layouts import neuron_cloud, resolve_layers
    m = sc.model()
    layer = resolve_layers(m, None)[0]
    before = neuron_cloud(m, layer).detach().clone()
    opt = torch.optim.SGD(m.parameters(), lr=0.03)
    opt.zero_grad()
    sc.loss_fn(m, sc.batch_at(0)).backward()
    opt.step()
    after = neuron_cloud(m, layer).detach()
    d0, d1 = torch.cdist(before, before), torch.cdist(after, after)
    iu = torch.triu_indices(24, 24, 1)
    ratio = d1[iu[0], iu[1]] / d0[iu[0], iu[1]]
    assert run.ratio_min[0] == pytest.approx(float(ratio.min()), rel=1e-9)
    assert run.ratio_max[0] == pytest.approx(float(ratio.max()), rel=1e-9)
    # without ratios=True nothing is recorded; with a schedule the rates follow it and snapshots mark the phases
    r2 = sweep(circle_scenario(n=16), sgd_factory(), [0.4], 8, every=100, sharpness=False,
               schedule=step_decay(5, 0.3))
    run2 = r2.runs[0]
    assert run2.ratio_min == [] and run2.lrs == pytest.approx([0.4] * 5 + [0.12] * 3)
    from topoverify.experiments.schedule_analysis import analyse_schedule
    an = analyse_schedule(run2)
    assert an.boundaries and {s.step for s in run2.snapshots} >= {0, 8, *an.boundaries}
    assert all(b["exact"] for b in an.topology_at_boundaries)
    assert "step_decay" in str(r2) and r2.to_dict()["schedule"] == "step_decay(step_size=5, gamma=0.3)"
    with pytest.raises(TopoverifyError, match="ScheduleSpec"):
        sweep(sc, sgd_factory(), [0.03], 2, schedule="cosine")
