"""T3 (spec/claims.toml) on sweeps with several seeds (issue 13): each seed's runs are judged as their own sweep
with that seed's η*, and combined: violated if any seed is, holds only if every seed holds; a seed with a run
that failed or is missing is never "holds" for that seed.
"""

from __future__ import annotations

import inspect
import json

import numpy as np
import pytest

from topoverify.checks.critical_rate import HOLDS, INCONCLUSIVE, VIOLATED, check_critical_rate
from topoverify.experiments import RunRecord, SweepResult, TopologySnapshot, circle_scenario, sgd_factory, sweep
from topoverify.experiments.sweep_result import RunFailure

SMALL = [0.001] * 5   # lr·K_upper: accumulated ε ≈ 0.005, no feature of log-persistence 5 can go (T5)


def _snap(step, betti, merged=0):
    return TopologySnapshot(step=step, betti=betti, max_log_persistence=(5.0,), distinct=8, distinct_tol=8,
                            merged=merged, min_pair_distance=1.0, max_norm=1.0, collapse_rtol=64 * np.finfo(float).eps)


def _run(lr, seed, end_betti=(1, 1), upper=SMALL, eta_star=None):
    return RunRecord(lr=lr, steps=5, steps_run=5, loss=[0.1] * 5, final_loss=0.1, eta_K=[v / 2 for v in upper],
                     eta_K_upper=list(upper), prediction_available=True, prediction_reason="",
                     snapshots=[_snap(0, (1, 1)), _snap(5, end_betti)], seed=seed, eta_star=eta_star,
                     eta_star_certified=None if eta_star is None else eta_star / 2)


def _result(runs, failures=(), seeds=(0, 1)):
    return SweepResult(scenario="fake", optimizer="SGD", layer="0", steps=5, every=5, maxdim=1, n_perm=None,
                       merge_rtol=1e-6, eta_star=1.0, eta_star_certified=0.5, prediction_reason="",
                       runs=sorted(runs, key=lambda r: (r.lr, r.seed)), seeds=None if seeds is None else list(seeds),
                       failures=list(failures))


def test_every_seed_holds():
    check = check_critical_rate(_result([_run(lr, s, eta_star=1.0 + s) for lr in (0.01, 0.02) for s in (0, 1)]))
    assert check.verdict == HOLDS and set(check.seed_checks) == {0, 1}
    assert all(c.verdict == HOLDS for c in check.seed_checks.values())
    assert check.certified_lrs == (0.01, 0.02) and len(check.runs) == 4
    assert [(o.seed, o.lr) for o in check.runs] == [(0, 0.01), (0, 0.02), (1, 0.01), (1, 0.02)]
    assert check.seed_checks[1].eta_star == 2.0 and check.seed_checks[1].eta_star_certified == 1.0   # its own θ_0
    assert check.eta_star == 1.0                                                                    # the first seed's
    assert "over seeds [0, 1]: HOLDS (per seed: 0 holds, 1 holds)" in str(check) and "seed 1" in str(check)
    json.dumps(check.to_dict())


def test_one_seed_violating_fails_the_sweep_and_is_named():
    runs = [_run(0.01, 0), _run(0.02, 0), _run(0.01, 1), _run(0.02, 1, end_betti=(1, 0))]
    check = check_critical_rate(_result(runs))
    assert check.verdict == VIOLATED and check.violations == (0.02,)
    assert check.seed_checks[0].verdict == HOLDS and check.seed_checks[1].verdict == VIOLATED
    assert "violated in seed(s) 1" in check.reason and "COUNTEREXAMPLE" in str(check)
    bad = [o for o in check.runs if o.counterexample]
    assert [(o.seed, o.lr) for o in bad] == [(1, 0.02)]


def test_a_seed_with_a_failed_run_is_inconclusive_never_holds():
    runs = [_run(0.01, 0), _run(0.02, 0), _run(0.01, 1)]
    check = check_critical_rate(_result(runs, [RunFailure(lr=0.02, seed=1, error="worker died", kind="worker-died")]))
    assert check.seed_checks[0].verdict == HOLDS and check.seed_checks[1].verdict == INCONCLUSIVE
    assert check.verdict == INCONCLUSIVE and "seed 1" in check.reason and "lr = 0.02" in check.reason
    assert check.seed_checks[1].unchecked_lrs == (0.02,) and check.unchecked_lrs == (0.02,)
    # a missing run (no record, no failure) counts the same
    missing = check_critical_rate(_result(runs))
    assert missing.verdict == INCONCLUSIVE and missing.seed_checks[1].unchecked_lrs == (0.02,)
    # a violation found in the checked runs still counts
    runs_v = [_run(0.01, 0, end_betti=(1, 0)), _run(0.02, 0), _run(0.01, 1)]
    assert check_critical_rate(_result(runs_v, [RunFailure(lr=0.02, seed=1, error="x")])).verdict == VIOLATED


def test_a_sweep_without_seeds_and_a_failed_run_is_inconclusive():
    runs = [_run(0.01, None), _run(0.02, None)]
    assert check_critical_rate(_result(runs, seeds=None)).verdict == HOLDS
    check = check_critical_rate(_result(runs, [RunFailure(lr=0.05, seed=None, error="boom")], seeds=None))
    assert check.verdict == INCONCLUSIVE and check.seed_checks is None and check.unchecked_lrs == (0.05,)
    assert "no record (run failed or missing) at lr = 0.05" in check.reason


def test_a_seed_with_no_certified_run_keeps_the_sweep_inconclusive():
    above = [1.5] * 5
    runs = [_run(0.01, 0), _run(0.01, 1, upper=above)]
    check = check_critical_rate(_result(runs))
    assert check.verdict == INCONCLUSIVE and check.seed_checks[1].certified_lrs == ()
    assert "seed 1: no run stayed below eta*" in check.reason


@pytest.mark.skipif("seeds" not in inspect.signature(sweep).parameters,
                    reason="sweep(..., seeds=) is not in this tree yet (issue 13, the engine)")
def test_real_sweep_over_three_seeds_holds_seed_by_seed():
    """circle n=16: lr = 0.01 stays certified below η* in every seed (lr·K_upper ≈ 0.02) and keeps β1."""
    res = sweep(circle_scenario(n=16), sgd_factory(), [0.01, 0.3, 3.0], 6, every=3, sharpness=False,
                seeds=[0, 1, 2])
    check = check_critical_rate(res)
    assert set(check.seed_checks) == {0, 1, 2} and check.verdict == HOLDS
    for s, c in check.seed_checks.items():
        assert c.certified_lrs == (0.01,) and c.eta_star == pytest.approx(res.onset_distribution().eta_star[s])
        assert all(o.seed == s for o in c.runs)
    assert check.onset_lr == res.onset_lr_transient
