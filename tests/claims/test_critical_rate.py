"""T3 (spec/claims.toml): lr·K < 1 at every step is sufficient for keeping the cloud's topology.

The checker :func:`topoverify.checks.critical_rate.check_critical_rate` on real sweeps (the circle scenario)
and on hand-built sweep records whose outcome is known, so that each verdict is seen to be reachable.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from topoverify import topology

from topoverify.checks.critical_rate import (HOLDS, INCONCLUSIVE, VIOLATED, CriticalRateCheck,
                                             check_critical_rate)
from topoverify.experiments import RunRecord, SweepResult, TopologySnapshot, adam_factory, circle_scenario, \
    sgd_factory, sweep
from topoverify.experiments.snapshots import topology_snapshot

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
    assert check.checked_steps == {0.01: (4,), 0.03: (4,)} or set(check.checked_steps) >= {0.01, 0.03}
    assert all(o.checked_steps == (4,) for o in check.runs)


def test_an_optimizer_without_a_prediction_is_inconclusive():
    def rprop(model, lr):
        return torch.optim.Rprop(model.parameters(), lr=lr)

    r = sweep(circle_scenario(n=16), rprop, [1e-3], 3, every=3, sharpness=False)
    check = check_critical_rate(r)
    assert check.verdict == INCONCLUSIVE and check.certified_lrs == () and "Rprop" in check.reason
    assert check.eta_star is None and check.onset_ratio is None


def test_adam_with_no_run_below_its_certified_eta_star_is_inconclusive():
    """Adam's certified η* on the circle is ~1e-8 (its first step is sign-like): a run at 1e-3 is never below
    it, so T3 has nothing to test; the verdict says so instead of passing."""
    r = sweep(circle_scenario(n=16), adam_factory(), [1e-3], 2, every=2, sharpness=False)
    check = check_critical_rate(r)
    assert check.verdict == INCONCLUSIVE and check.certified_lrs == () and "no run stayed below" in check.reason


# ------------------------------------------------------------------------------------------ hand-built records
# lr·K_upper = 0.001 for 5 steps: accumulated ε ≈ 0.005, so a feature of log-persistence 5 cannot be lost
# (5 > log 2 + 2ε) and no pair can shrink by more than a factor 0.995 (T4)
SMALL = [0.001] * 5


def _snap(step, betti, low=None, high=None, merged=0, lp=5.0, diagrams=None, min_pair=1.0, error_bound=0.0):
    return TopologySnapshot(step=step, betti=betti, max_log_persistence=(lp,), distinct=8, distinct_tol=8,
                            betti_low=low or betti, betti_high=high or betti, merged=merged, diagrams=diagrams,
                            min_pair_distance=min_pair, max_norm=None if min_pair is None else 1.0,
                            collapse_rtol=None if min_pair is None else 64 * np.finfo(float).eps,
                            error_bound=error_bound)


def _run(lr, lr_K, lr_K_upper, end, *, available=True, diverged_at=None, start=None):
    steps = len(lr_K)
    snaps = [start or _snap(0, (1, 1), min_pair=1.0)] + (list(end) if isinstance(end, list) else [end])
    return RunRecord(lr=lr, steps=steps, steps_run=steps, loss=[0.1] * steps, final_loss=0.1, eta_K=list(lr_K),
                     eta_K_upper=list(lr_K_upper), prediction_available=available, prediction_reason="",
                     snapshots=snaps, diverged=diverged_at is not None, diverged_at=diverged_at)


def _result(*runs, eta_star=1.0, eta_star_certified=0.5, rule="log2"):
    return SweepResult(scenario="fake", optimizer="SGD", layer="0", steps=runs[0].steps, every=5, maxdim=1,
                       n_perm=None, merge_rtol=1e-6, eta_star=eta_star, eta_star_certified=eta_star_certified,
                       prediction_reason="", runs=list(runs), rule=rule)


KEPT = _snap(5, (1, 1))


@pytest.mark.parametrize("end", [_snap(5, (1, 0)), _snap(5, (1, 1), merged=2)], ids=["beta1 lost", "merge"])
def test_a_change_outside_the_accumulated_bounds_is_a_counterexample(end):
    # β1's feature has log-persistence 5 > log 2 + 2·0.005 (T5), the closest pair 1 · 0.995 >> round-off (T4)
    res = _result(_run(0.01, [0.0005] * 5, SMALL, KEPT), _run(0.02, [0.0005] * 5, SMALL, end))
    check = check_critical_rate(res)
    assert check.verdict == VIOLATED and not check.holds
    assert check.violations == (0.02,) and check.certified_lrs == (0.01, 0.02)
    assert check.estimate_violations == (0.02,)
    assert check.onset_lr == 0.02 and check.onset_ratio == pytest.approx(0.02)
    assert "COUNTEREXAMPLE" in str(check) and check.runs[1].violation_step == 5


@pytest.mark.parametrize("lp", [1.0, 2.2])
def test_a_loss_within_the_accumulated_epsilon_is_consistent(lp):
    """The old test's "beta1 lost" (log-persistence 1.0, accumulated ε 2.55) is allowed by T4/T5."""
    start = _snap(0, (1, 1), lp=lp, min_pair=1.0)
    run = _run(0.02, [0.2] * 5, [0.4] * 5, _snap(5, (1, 0), lp=0.1), start=start)
    assert run.cumulative_epsilon(certified=True) > (lp - np.log(2)) / 2
    check = check_critical_rate(_result(run))
    assert check.verdict == HOLDS and check.violations == () and check.runs[0].changed


def test_t3_repro_a_homeomorphism_flattening_a_circle_is_not_a_counterexample():
    """Regression: 32-point circle under the exact gradient step of Φ = z₂²/2 (K = 1), lr = 0.1, 30 steps:
    each step is diag(1, 0.9), a homeomorphism, yet β1 is lost by step 20 (accumulated ε 3.16)."""
    th = np.linspace(0, 2 * np.pi, 32, endpoint=False)
    y = np.stack([np.cos(th), np.sin(th)], 1)
    tracker = topology.MergeTracker(y, None)
    snaps = [topology_snapshot(y, 0, tracker=tracker, n_perm=None)]
    for t in range(30):
        y = y - 0.1 * (y @ np.diag([0.0, 1.0]))
        if (t + 1) % 10 == 0:
            snaps.append(topology_snapshot(y, t + 1, tracker=tracker, n_perm=None))
    run = RunRecord(lr=0.1, steps=30, steps_run=30, loss=[0.0] * 30, final_loss=0.0, eta_K=[0.1] * 30,
                    eta_K_upper=[0.1] * 30, prediction_available=True, prediction_reason="", snapshots=snaps)
    assert run.first_change_step is not None  # β1 was lost: the old checker called this "violated"
    check = check_critical_rate(_result(run, eta_star=10.0, eta_star_certified=10.0))
    assert check.verdict == HOLDS and check.violations == ()
    assert check.checked_steps == {0.1: (10, 20, 30)}


def test_the_t5_band_uses_the_whole_stored_diagram():
    h1 = np.array([[1.0, np.exp(5.0)], [1.0, np.exp(0.7)], [1.0, 1.1]])
    dgms = [np.array([[0.0, np.inf]]), h1]
    start = _snap(0, (1, 2), diagrams=dgms, min_pair=1.0)
    one = _run(0.01, [0.0005] * 5, SMALL, _snap(5, (1, 1)), start=start)       # the 0.7 feature is weak: may go
    none = _run(0.02, [0.0005] * 5, SMALL, _snap(5, (1, 0)), start=start)      # the 5.0 feature cannot
    many = _run(0.03, [0.0005] * 5, SMALL, _snap(5, (1, 3)), start=start)      # at most 2 can reach log 2
    check = check_critical_rate(_result(one, none, many))
    assert check.violations == (0.02, 0.03)
    assert check.runs[0].violation_step is None


def test_merges_the_product_bound_allows_are_not_counterexamples_and_untested_ones_are_inconclusive():
    close = _snap(0, (1, 1), min_pair=1e-16)   # T4's bound 1e-16 · 0.995 is below the collapse level
    allowed = _run(0.01, [0.0005] * 5, SMALL, _snap(5, (1, 1), merged=2), start=close)
    assert check_critical_rate(_result(allowed)).verdict == HOLDS
    blind = _run(0.01, [0.0005] * 5, SMALL, _snap(5, (1, 1), merged=2), start=_snap(0, (1, 1), min_pair=None))
    check = check_critical_rate(_result(blind))
    assert check.verdict == INCONCLUSIVE and "merge at step 5" in check.reason and check.violations == ()


@pytest.mark.parametrize("case", ["beta0", "gap rule", "subsampled"])
def test_changes_without_a_t5_band_are_inconclusive_not_holds(case):
    end = {"beta0": _snap(5, (2, 1)), "gap rule": _snap(5, (1, 0)),
           "subsampled": _snap(5, (1, 0), error_bound=0.1)}[case]
    res = _result(_run(0.01, [0.0005] * 5, SMALL, end), rule="gap" if case == "gap rule" else "log2")
    check = check_critical_rate(res)
    assert check.verdict == INCONCLUSIVE and check.violations == () and "cannot test" in check.reason


def test_a_nan_lr_K_leaves_the_run_uncertified():
    """Regression: max([0.2, nan, 0.2]) is 0.2, so a NaN used to slip through as certified."""
    nan = float("nan")
    for upper in ([0.001, nan, 0.001, 0.001, 0.001], [nan] * 5, [0.001, float("inf"), 0.001, 0.001, 0.001]):
        check = check_critical_rate(_result(_run(0.01, [0.0005] * 5, upper, _snap(5, (1, 0)))))
        assert check.verdict == INCONCLUSIVE and check.certified_lrs == () and check.violations == ()
        assert check.runs[0].max_lr_K_upper is None and not check.runs[0].below_certified


def test_the_verdict_names_the_recorded_steps_it_checked():
    run = _run(0.01, [0.0005] * 10, [0.001] * 10, [_snap(5, (1, 1)), _snap(10, (1, 1))])
    check = check_critical_rate(_result(run))
    assert check.verdict == HOLDS and check.runs[0].checked_steps == (5, 10)
    assert check.checked_steps == {0.01: (5, 10)} and "recorded steps" in str(check).splitlines()[0]
    json.dumps(check.to_dict())


def test_a_change_within_the_uncertainty_is_not_a_counterexample():
    unsure = _snap(5, (1, 0), low=(1, 0), high=(1, 1))
    check = check_critical_rate(_result(_run(0.01, [0.1] * 5, [0.2] * 5, unsure)))
    assert check.verdict == HOLDS and check.onset_lr is None and check.onset_ratio is None


def test_no_certified_run_is_inconclusive():
    # lr·K_upper reaches 1 at one step: T3 certifies nothing, so a change there is no counterexample; the
    # estimate stays below 1 and is reported as refuted by the change (log-persistence 10, ε ≈ 3.5 < (10 - log 2)/2)
    crossed = _run(0.05, [0.5] * 5, [0.5, 0.5, 1.0, 0.5, 0.5], _snap(5, (1, 0)), start=_snap(0, (1, 1), lp=10.0))
    unpredicted = _run(0.01, [None] * 5, [None] * 5, KEPT, available=False)
    check = check_critical_rate(_result(crossed, unpredicted))
    assert check.verdict == INCONCLUSIVE and check.certified_lrs == () and check.violations == ()
    assert check.estimate_lrs == (0.05,) and check.estimate_violations == (0.05,)
    assert "no run stayed below eta*" in check.reason
    assert check_critical_rate(_result(_run(0.01, [], [], []))).verdict == INCONCLUSIVE  # 0 steps


def test_a_step_that_raised_has_no_prediction_so_the_run_is_not_certified():
    # the update of step 3 raised: steps_run = 3 records, the raising step has none
    raised = RunRecord(lr=0.01, steps=5, steps_run=3, loss=[0.1] * 3, final_loss=float("nan"), eta_K=[0.1] * 3,
                       eta_K_upper=[0.2] * 3, prediction_available=True, prediction_reason="",
                       snapshots=[_snap(0, (1, 1)), _snap(3, (1, 0))], diverged=True, diverged_at=3)
    assert not raised.predicted_every_step
    assert check_critical_rate(_result(raised)).verdict == INCONCLUSIVE


def test_snapshots_record_the_closest_pair_and_the_collapse_level():
    x = np.array([[0.0, 0.0], [3.0, 0.0], [3.0, 4.0], [3.0, 4.0]])   # the duplicate pair is within round-off
    s = topology_snapshot(x, 0, n_perm=None)
    assert s.min_pair_distance == pytest.approx(3.0) and s.max_norm == pytest.approx(5.0)
    assert 0 < s.collapse_rtol < 1e-10
