"""The breakdown experiment on the circle scenario (THEORY "A small case"), measured behaviour:

* lr = 0.03 (initial η* = 1.90, certified 0.55): lr·K stays < 1 at every step, β1 = 1 kept, loss → 1e-3;
* lr = 0.06: lr·K crosses 1 for 3 steps (edge of stability, T8); H1 log-persistence 2.89 → 0.78, β1 kept;
* lr ≥ 0.065: β1 is lost (step ~60) and then training diverges (NaN at step 99; 0.1: NaN at step 54);
* lr = 2.0 > η*: lr·K ≥ 1 from step 0, β1 lost by step 10, divergence at step 20.
The small forms below always run; the full sweep is marked slow.
"""

from __future__ import annotations

import json
import math

import pytest
import torch

from topoverify import topology as T
from topoverify.breakdown import (
    SweepResult,
    adam_factory,
    sgd_factory,
    sweep,
    topology_snapshot,
)
from topoverify.errors import TopoverifyError
from topoverify.scenarios import circle_scenario, figure_eight_scenario


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


def test_adam_has_no_prediction_but_topology_runs():
    r = sweep(circle_scenario(n=32), adam_factory(), [1e-2], 10, every=5)
    assert r.eta_star is None and "Adam" in r.prediction_reason
    run = r.runs[0]
    assert not run.prediction_available and run.max_eta_K is None and run.cumulative_epsilon() is None
    assert run.final.betti == (1, 1) and len(run.snapshots) == 3
    assert "No prediction" in str(r)


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
    assert not keep[0.03].diverged and keep[0.03].max_eta_K < 1 and not keep[0.03].topology_changed
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
