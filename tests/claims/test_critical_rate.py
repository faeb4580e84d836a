"""T3 (spec/claims.toml): lr·K < 1 at every step is sufficient for keeping the cloud's topology.

The checker :func:`topoverify.checks.critical_rate.check_critical_rate` on real sweeps (the circle scenario)
and on hand-built sweep records whose outcome is known, so that each verdict is seen to be reachable.
"""

from __future__ import annotations

import json

import pytest

from topoverify.checks.critical_rate import (HOLDS, INCONCLUSIVE, VIOLATED, CriticalRateCheck,
                                             check_critical_rate)
from topoverify.experiments import RunRecord, SweepResult, TopologySnapshot, adam_factory, circle_scenario, \
    sgd_factory, sweep

# ------------------------------------------------------------------------------------------------ real sweeps


def test_holds_on_the_circle_scenario_below_and_above_eta_star():
    """Two rates far below η* keep β1 with lr·K_upper < 1 at every step; one far above loses it (allowed)."""
    r = sweep(circle_scenario(n=32), sgd_factory(), [0.01, 0.03, 2.0], 4, every=4)
    check = check_critical_rate(r)
    assert isinstance(check, CriticalRateCheck) and check.verdict == HOLDS and check.holds
    assert set(check.certified_lrs) >= {0.01, 0.03} and 2.0 not in check.estimate_lrs
    assert set(check.certified_lrs) <= set(check.estimate_lrs)          # K <= K_upper
    assert check.violations == () and check.estimate_violations == ()
    for o in check.runs:
        if o.below_certified:
            assert o.max_lr_K <= o.max_lr_K_upper < 1 and not o.changed
    # the predicted η* is the first step's, the onset the smallest rate with a recorded change
    assert check.eta_star == r.eta_star and check.eta_star_certified == r.eta_star_certified
    assert check.onset_lr == 2.0 == r.onset_lr_transient and check.onset_lr not in check.certified_lrs
    assert check.onset_ratio == pytest.approx(2.0 / r.eta_star)
    assert check.onset_ratio_certified == pytest.approx(2.0 / r.eta_star_certified)
    json.dumps(check.to_dict())
    assert "HOLDS" in str(check) and "lr=2" in str(check)


def test_an_optimizer_without_a_prediction_is_inconclusive():
    r = sweep(circle_scenario(n=16), adam_factory(), [1e-3], 3, every=3)
    check = check_critical_rate(r)
    assert check.verdict == INCONCLUSIVE and check.certified_lrs == () and "Adam" in check.reason
    assert check.eta_star is None and check.onset_ratio is None


# ------------------------------------------------------------------------------------------ hand-built records


def _snap(step, betti, low=None, high=None, merged=0):
    return TopologySnapshot(step=step, betti=betti, max_log_persistence=(1.0,), distinct=8, distinct_tol=8,
                            betti_low=low or betti, betti_high=high or betti, merged=merged)


def _run(lr, lr_K, lr_K_upper, end, *, available=True, diverged_at=None):
    steps = len(lr_K)
    return RunRecord(lr=lr, steps=steps, steps_run=steps, loss=[0.1] * steps, final_loss=0.1, eta_K=list(lr_K),
                     eta_K_upper=list(lr_K_upper), prediction_available=available, prediction_reason="",
                     snapshots=[_snap(0, (1, 1)), end], diverged=diverged_at is not None, diverged_at=diverged_at)


def _result(*runs, eta_star=1.0, eta_star_certified=0.5):
    return SweepResult(scenario="fake", optimizer="SGD", layer="0", steps=runs[0].steps, every=5, maxdim=1,
                       n_perm=None, merge_rtol=1e-6, eta_star=eta_star, eta_star_certified=eta_star_certified,
                       prediction_reason="", runs=list(runs))


KEPT = _snap(5, (1, 1))


@pytest.mark.parametrize("end", [_snap(5, (1, 0)), _snap(5, (1, 1), merged=2)], ids=["beta1 lost", "merge"])
def test_a_change_below_eta_star_is_a_counterexample(end):
    res = _result(_run(0.01, [0.1] * 5, [0.2] * 5, KEPT), _run(0.02, [0.2] * 5, [0.4] * 5, end))
    check = check_critical_rate(res)
    assert check.verdict == VIOLATED and not check.holds
    assert check.violations == (0.02,) and check.certified_lrs == (0.01, 0.02)
    assert check.onset_lr == 0.02 and check.onset_ratio == pytest.approx(0.02)
    assert "COUNTEREXAMPLE" in str(check)


def test_a_change_within_the_uncertainty_is_not_a_counterexample():
    unsure = _snap(5, (1, 0), low=(1, 0), high=(1, 1))
    check = check_critical_rate(_result(_run(0.01, [0.1] * 5, [0.2] * 5, unsure)))
    assert check.verdict == HOLDS and check.onset_lr is None and check.onset_ratio is None


def test_no_certified_run_is_inconclusive():
    # lr·K_upper reaches 1 at one step: T3 certifies nothing, so a change there is no counterexample; the
    # estimate stays below 1 and is reported as refuted by the change
    crossed = _run(0.05, [0.5] * 5, [0.5, 0.5, 1.0, 0.5, 0.5], _snap(5, (1, 0)))
    unpredicted = _run(0.01, [None] * 5, [None] * 5, KEPT, available=False)
    check = check_critical_rate(_result(crossed, unpredicted))
    assert check.verdict == INCONCLUSIVE and check.certified_lrs == () and check.violations == ()
    assert check.estimate_lrs == (0.05,) and check.estimate_violations == (0.05,)
    assert "no run stayed below eta*" in check.reason
    assert check_critical_rate(_result(_run(0.01, [], [], _snap(0, (1, 1))))).verdict == INCONCLUSIVE  # 0 steps


def test_a_step_that_raised_has_no_prediction_so_the_run_is_not_certified():
    # the update of step 3 raised: steps_run = 3 records, the raising step has none
    raised = RunRecord(lr=0.01, steps=5, steps_run=3, loss=[0.1] * 3, final_loss=float("nan"), eta_K=[0.1] * 3,
                       eta_K_upper=[0.2] * 3, prediction_available=True, prediction_reason="",
                       snapshots=[_snap(0, (1, 1)), _snap(3, (1, 0))], diverged=True, diverged_at=3)
    assert not raised.predicted_every_step
    assert check_critical_rate(_result(raised)).verdict == INCONCLUSIVE
