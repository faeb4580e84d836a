"""The simplification scenario shows both phases of the paper on real SGD runs (T3, T8; issue 11).

At ``SIMPLIFICATION_RATES["preserve"]`` the run keeps its Betti numbers and distinct count with lr·K < 1 (even
the certified lr·K_upper) at every step; at ``SIMPLIFICATION_RATES["simplify"]`` the loss spikes (a catapult),
the certified lr·K_upper reaches 1 before the first recorded certain topology change (the estimate lr·K need
not: the change accumulates over the catapult's steps, within T4/T5's bounds, so T3's checker never reports a
violation), the loop of the initial circle dies (β1 1 → 0) and the loss still converges: no divergence,
final loss <= 1/4 of the initial loss. Properties over seeds, not one trajectory: seed 0 with the per-step prediction, seeds 1 and 2 without
it always, seeds 0..9 with it in the ``slow`` run.
"""

from __future__ import annotations

import math

import pytest

from topoverify.checks.critical_rate import VIOLATED, check_critical_rate
from topoverify.errors import TopoverifyError
from topoverify.experiments import get_scenario, sgd_factory, sweep
from topoverify.experiments.simplification import (SIMPLIFICATION_RATES, SIMPLIFICATION_STEPS,
                                                   simplification_cloud, simplification_scenario)
from topoverify.experiments.snapshots import topology_snapshot

PRESERVE, SIMPLIFY = SIMPLIFICATION_RATES["preserve"], SIMPLIFICATION_RATES["simplify"]
CONVERGED = 0.25   # final loss <= CONVERGED × initial loss


def _run(seed: int, predict: bool):
    res = sweep(simplification_scenario(seed), sgd_factory(), [PRESERVE, SIMPLIFY], SIMPLIFICATION_STEPS,
                every=10, sharpness=False, keep_diagrams=False, progress=False, predict=predict)
    if predict:   # T3 itself: no recorded change contradicts the accumulated T4/T5 bounds with K_upper
        assert check_critical_rate(res).verdict != VIOLATED
    return res.run(PRESERVE), res.run(SIMPLIFY)


def _check_preserved(r, predict: bool) -> None:
    assert not r.diverged and math.isfinite(r.final_loss) and r.final_loss <= CONVERGED * r.loss[0]
    assert r.verdict == "kept", r                       # no certain change, not even an uncertain one
    assert not r.initial.uncertain and r.final.betti == r.initial.betti == (1, 1)
    assert r.final.distinct == r.initial.distinct and r.merged == 0
    if predict:
        assert r.predicted_every_step
        assert r.max_eta_K_upper < 1 and r.max_eta_K < 1 and r.steps_above_one == 0   # T3's phase 1, certified


def _check_simplified(r, predict: bool) -> None:
    assert not r.diverged, r
    assert all(math.isfinite(v) for v in r.loss) and math.isfinite(r.final_loss)
    assert max(r.loss) > 10 * r.loss[0]                 # the catapult: the loss spikes ...
    assert r.final_loss <= CONVERGED * r.loss[0], r      # ... and training still converges
    assert r.topology_changed and r.betti_changed, r     # a certain change, not an uncertain one
    assert r.initial.betti == (1, 1) and not r.initial.uncertain
    assert r.final.high[1] == 0                          # the circle's loop died, certainly
    if predict:
        # the run left T3's certified phase 1 (lr·K_upper >= 1) before the first recorded change
        assert r.predicted_every_step
        first_up = next(t for t, v in enumerate(r.eta_K_upper) if v >= 1)
        assert first_up < r.first_change_step


def test_initial_circles_are_certain_for_every_seed():
    for seed in range(10):
        snap = topology_snapshot(simplification_cloud(seed=seed), maxdim=1)
        assert snap.betti == (1, 1) and not snap.uncertain and snap.distinct == 32
    assert (simplification_cloud(seed=0) != simplification_cloud(seed=1)).any()
    assert (simplification_cloud(seed=1) == simplification_cloud(seed=1)).all()


def test_registered_and_bad_input_named():
    s = get_scenario("simplification", seed=2)
    assert s.name == "simplification" and s.expected_betti == (1, 1)
    assert PRESERVE < SIMPLIFY and SIMPLIFICATION_STEPS > 0
    for bad in (dict(seed=-1), dict(seed=1.5), dict(n=4), dict(jitter=0.7)):
        with pytest.raises(TopoverifyError):
            simplification_scenario(**bad)


def test_both_phases_on_seed_0_with_lr_K_at_every_step():
    preserved, simplified = _run(0, predict=True)
    _check_preserved(preserved, predict=True)
    _check_simplified(simplified, predict=True)


@pytest.mark.parametrize("seed", [1, 2])
def test_both_phases_on_other_seeds(seed):
    preserved, simplified = _run(seed, predict=False)
    _check_preserved(preserved, predict=False)
    _check_simplified(simplified, predict=False)


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(10))
def test_both_phases_on_ten_seeds_with_lr_K(seed):
    preserved, simplified = _run(seed, predict=True)
    _check_preserved(preserved, predict=True)
    _check_simplified(simplified, predict=True)
