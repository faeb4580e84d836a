"""Statistics over seeds (issue 13, :mod:`topoverify.experiments.seed_stats`).

The intervals are checked against independent computations: Clopper–Pearson against a brute-force search of
the binomial tails on a fine grid of p; the order-statistics interval's coverage against exact enumeration of
the 2^n sign patterns and against simulation. The per-rate and per-seed statistics on hand-built sweeps with a
known outcome, and once on a real sweep with seeds.
"""

from __future__ import annotations

import dataclasses
import inspect
import itertools
import json
import math

import numpy as np
import pytest
from scipy import stats

from topoverify.errors import TopoverifyError
from topoverify.experiments import RunRecord, SweepResult, TopologySnapshot, circle_scenario, sgd_factory, sweep
from topoverify.experiments.seed_stats import (OnsetDistribution, RateStats, clopper_pearson,
                                               median_interval, median_interval_coverage, onset_distribution,
                                               rate_stats)
from topoverify.experiments.sweep_result import RunFailure
from topoverify.tables import render

# -------------------------------------------------------------------------------------------- Clopper–Pearson
GRID = np.linspace(0.0, 1.0, 200_001)
STEP = GRID[1]


def _brute_cp(k: int, n: int, confidence: float) -> tuple[float, float]:
    """low = the smallest p with P(X >= k; p) >= α/2, high = the largest p with P(X <= k; p) >= α/2."""
    a = (1 - confidence) / 2
    low = 0.0 if k == 0 else GRID[np.argmax(stats.binom.sf(k - 1, n, GRID) >= a)]
    high = 1.0 if k == n else GRID[len(GRID) - 1 - np.argmax(stats.binom.cdf(k, n, GRID)[::-1] >= a)]
    return float(low), float(high)


@pytest.mark.parametrize("k,n", [(0, 3), (1, 3), (3, 3), (0, 10), (4, 10), (10, 10), (7, 25), (1, 40)])
def test_clopper_pearson_matches_a_brute_force_search(k, n):
    iv = clopper_pearson(k, n)
    low, high = _brute_cp(k, n, 0.95)
    assert iv.low == pytest.approx(low, abs=2 * STEP) and iv.high == pytest.approx(high, abs=2 * STEP)
    assert iv.level == 0.95 and "Clopper-Pearson 95%" in iv.method
    assert iv.low <= k / n <= iv.high


def test_a_90_percent_interval_is_caught_by_the_brute_force_check():
    """The check above can fail: a mutated implementation at 90% misses the 95% search by far more than the grid."""
    for k, n in [(1, 3), (4, 10), (7, 25)]:
        low, high = _brute_cp(k, n, 0.95)
        wrong = clopper_pearson(k, n, 0.90)
        assert wrong.low - low > 100 * STEP and high - wrong.high > 100 * STEP


def test_clopper_pearson_edges_and_bad_input():
    assert clopper_pearson(0, 5).low == 0.0 and clopper_pearson(5, 5).high == 1.0
    empty = clopper_pearson(0, 0)
    assert empty.low is None and empty.high is None and "no runs" in str(empty)
    for k, n in [(3, 2), (-1, 4), (1.5, 3)]:
        with pytest.raises(TopoverifyError, match="0 <= k <= n"):
            clopper_pearson(k, n)
    with pytest.raises(TopoverifyError, match="confidence"):
        clopper_pearson(1, 2, confidence=95)


# ------------------------------------------------------------------------------------ median from order stats

@pytest.mark.parametrize("n", [1, 2, 5, 6, 9, 12])
def test_order_statistics_coverage_matches_exact_enumeration(n):
    """x_(k) <= m <= x_(n−k+1) iff between k and n−k of the n draws fall below the median m: count the 2^n
    equally likely below/above patterns."""
    for k in range(1, (n + 1) // 2 + 1):
        hits = sum(k <= sum(p) <= n - k for p in itertools.product((0, 1), repeat=n))
        assert median_interval_coverage(k, n) == pytest.approx(hits / 2 ** n, abs=1e-12)


@pytest.mark.parametrize("n", [6, 10, 30, 60])
def test_the_median_interval_is_the_narrowest_at_95_percent_and_covers_in_simulation(n):
    rng = np.random.default_rng(n)
    x = rng.exponential(size=n)
    iv = median_interval(x)
    xs = np.sort(x)
    k = int(np.searchsorted(xs, iv.low)) + 1        # the order statistic used
    assert iv.low == xs[k - 1] and iv.high == xs[n - k]
    assert iv.level >= 0.95 and iv.level == pytest.approx(median_interval_coverage(k, n))
    assert k == (n + 1) // 2 or median_interval_coverage(k + 1, n) < 0.95     # the largest such k
    assert f"(n={n})" in iv.method and "order statistics" in iv.method
    # simulation: exponential draws (median log 2), empirical coverage >= stated level − 3 standard errors
    reps = 4000
    draws = np.sort(rng.exponential(size=(reps, n)), axis=1)
    covered = np.mean((draws[:, k - 1] <= math.log(2)) & (math.log(2) <= draws[:, n - k]))
    assert covered >= iv.level - 3 * math.sqrt(iv.level * (1 - iv.level) / reps)


def test_a_90_percent_median_interval_is_caught_by_simulation():
    """n = 30: at 90% the interval uses x_(11)..x_(20) with coverage 0.90, which the 95% check rejects."""
    rng = np.random.default_rng(0)
    wrong = median_interval(rng.exponential(size=30), confidence=0.90)
    draws = np.sort(rng.exponential(size=(4000, 30)), axis=1)
    xs_k = 11
    assert wrong.level < 0.95 and median_interval_coverage(xs_k, 30) == pytest.approx(wrong.level)
    covered = np.mean((draws[:, xs_k - 1] <= math.log(2)) & (math.log(2) <= draws[:, 30 - xs_k]))
    assert covered < 0.95 - 3 * math.sqrt(0.95 * 0.05 / 4000)


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5])
def test_few_values_give_min_max_with_their_actual_coverage(n):
    iv = median_interval(list(range(n, 0, -1)))
    assert (iv.low, iv.high) == (1.0, float(n)) and iv.level == pytest.approx(1 - 2 * 0.5 ** n) and iv.level < 0.95
    assert f"coverage {100 * iv.level:.3g}%" in iv.method and f"(n={n})" in iv.method
    none = median_interval([])
    assert none.low is None and none.level == 0.0


# ------------------------------------------------------------------------------------------------ hand-built
def _snap(step, betti, merged=0):
    return TopologySnapshot(step=step, betti=betti, max_log_persistence=(2.0,), distinct=8, distinct_tol=8,
                            merged=merged)


def _run(lr, seed, outcome="kept", lr_K=0.1, eta_star=None):
    """outcome: kept, changed (β1 lost at the end), transient (lost at step 5, back at 10), diverged (changed)."""
    mid = _snap(5, (1, 0) if outcome == "transient" else (1, 1))
    end = _snap(10, (1, 0) if outcome in ("changed", "diverged") else (1, 1))
    ks = [None] * 10 if lr_K is None else [lr_K] * 10
    div = outcome == "diverged"
    return RunRecord(lr=lr, steps=10, steps_run=10, loss=[0.1] * 10, final_loss=math.nan if div else 0.1 * lr,
                     eta_K=ks, eta_K_upper=[None if v is None else 2 * v for v in ks],
                     prediction_available=lr_K is not None, prediction_reason="",
                     snapshots=[_snap(0, (1, 1)), mid, end], diverged=div, diverged_at=9 if div else None, seed=seed,
                     eta_star=eta_star, eta_star_certified=None if eta_star is None else eta_star / 2)


def _result(runs, failures=(), seeds=(0, 1, 2)):
    return SweepResult(scenario="fake", optimizer="SGD", layer="0", steps=10, every=5, maxdim=1, n_perm=None,
                       merge_rtol=1e-6, eta_star=1.0, eta_star_certified=0.5, prediction_reason="",
                       runs=sorted(runs, key=lambda r: (r.lr, r.seed)), seeds=None if seeds is None else list(seeds),
                       failures=list(failures))


def _three_seeds():
    """Seed 0 changes from 0.2, seed 1 from 0.4, seed 2 never (censored); seed 2's run at 0.4 failed."""
    runs = [_run(0.1, 0, lr_K=0.1, eta_star=1.0), _run(0.1, 1, lr_K=0.2, eta_star=0.8),
            _run(0.1, 2, lr_K=None),
            _run(0.2, 0, "changed", 0.3, 1.0), _run(0.2, 1, "transient", 0.4, 0.8), _run(0.2, 2, "kept", 0.5),
            _run(0.4, 0, "diverged", 5.0, 1.0), _run(0.4, 1, "changed", 3.0, 0.8)]
    return _result(runs, [RunFailure(lr=0.4, seed=2, error="boom")])


def test_rate_stats_count_each_rate_over_the_seeds():
    st = rate_stats(_three_seeds())
    assert [s.lr for s in st] == [0.1, 0.2, 0.4] and all(isinstance(s, RateStats) for s in st)
    a, b, c = st
    assert a.seeds == [0, 1, 2] and a.n_runs == 3 and a.n_changed == 0 and a.fraction_changed == 0.0
    assert a.max_lrK == [0.1, 0.2, None] and a.n_lrK == 2             # the unpredicted run is left out, counted
    assert a.max_lrK_median == pytest.approx(0.15) and a.max_lrK_range == (0.1, 0.2)
    assert a.max_lrK_interval.level == pytest.approx(0.5) and a.fraction_interval.low == 0.0
    assert b.n_changed == 1 and b.n_transient == 1 and b.fraction_changed == pytest.approx(1 / 3)
    assert b.fraction_interval == clopper_pearson(1, 3)
    assert b.max_lrK_quartiles == pytest.approx((0.35, 0.45))           # numpy "linear" on 0.3, 0.4, 0.5
    assert c.seeds == [0, 1] and c.n_failed == 1 and c.failed_seeds == [2] and c.n_runs == 2
    assert c.n_diverged == 1 and c.n_changed == 2 and c.fraction_interval.high == 1.0
    assert c.final_loss_median == pytest.approx(0.04)                   # the diverged run's nan left out
    assert c.max_lrK_upper == [10.0, 6.0] and c.max_lrK_upper_median == pytest.approx(8.0)
    assert "lr=0.4: 2 runs (1 failed)" in str(c)


def test_onset_distribution_per_seed_censored_and_incomplete():
    d = onset_distribution(_three_seeds())
    assert isinstance(d, OnsetDistribution) and d.seeds == [0, 1, 2]
    assert d.onset == {0: 0.2, 1: 0.4, 2: None}                        # the transient run at 0.2 is no onset
    assert d.incomplete == [2]                                          # censored, with a failed run
    assert d.n_complete == 2 and d.n_observed == 2 and d.onset_median == pytest.approx(0.3)
    assert d.eta_star == {0: 1.0, 1: 0.8, 2: 0.4}                      # seed 2: lr/(lr·K) at 0.2, its first predicted run
    assert d.eta_star_certified[1] == pytest.approx(0.4)
    assert d.ratio[1] == pytest.approx(0.5) and d.ratio[2] is None and d.ratio_median == pytest.approx(0.35)
    assert d.eta_star_median == pytest.approx(0.8) and d.eta_star_range == (0.4, 1.0)
    assert d.onset_text(2) == "> 0.4?" and "incomplete" in str(d)


def test_the_onset_median_is_censored_unless_more_than_half_are_observed():
    kept = [_run(lr, s) for lr in (0.1, 0.2) for s in (1, 2)]
    two_of_four = _result([_run(0.1, 0), _run(0.2, 0, "changed"), _run(0.1, 3, "changed"), _run(0.2, 3, "changed")]
                          + kept, seeds=[0, 1, 2, 3])
    d = onset_distribution(two_of_four)
    assert d.n_observed == 2 and d.n_complete == 4 and d.onset_median is None and d.onset_range == (0.1, 0.2)
    assert "censored" in str(d) and "at least half" in str(d)
    three_of_four = dataclasses.replace(two_of_four, runs=two_of_four.runs[:-1] + [_run(0.2, 2, "changed")])
    assert onset_distribution(three_of_four).onset_median == pytest.approx(0.2)   # (0.1, 0.2, 0.2, inf)
    # a failure above an observed onset leaves the seed complete; below it, incomplete
    above = _result([_run(0.1, 0, "changed")], [RunFailure(lr=0.2, seed=0, error="x")], seeds=[0])
    below = _result([_run(0.2, 0, "changed")], [RunFailure(lr=0.1, seed=0, error="x")], seeds=[0])
    assert onset_distribution(above).incomplete == [] and onset_distribution(below).incomplete == [0]
    missing = _result([_run(0.1, 0), _run(0.2, 0), _run(0.1, 1)], seeds=[0, 1])  # seed 1 has no run at 0.2
    assert onset_distribution(missing).incomplete == [1]


# -------------------------------------------------------------------------------------------- SweepResult text
def test_the_sweep_text_shows_distributions_with_seeds_and_stays_unchanged_with_one():
    res = _three_seeds()
    text = " ".join(str(res).split())          # the summary wraps at 160 columns
    wide = render(res.table(), width=400)
    assert "seeds [0, 1, 2]" in wide and "1/3 [0.0084, 0.91]" in wide and "Clopper-Pearson" in wide
    assert "[0.1, 0.2] (50%)" in wide and "2 (1)" in wide and "[3, 5] (50%)" in wide
    assert "observed in 2 of 2 complete seeds" in text and "per seed 0: 0.2, 1: 0.4, 2: > 0.4?" in text
    assert text.index("1 failed run(s)") < text.index("predicted eta* over seeds")   # listed after the table
    assert "lr=0.4, seed 2: FAILED (error): boom" in text and "any seed" in text
    rows = [line for line in res.table().rows]
    assert len(rows) == 3                                               # one row per rate
    d = res.to_dict()
    assert [s["lr"] for s in d["rate_stats"]] == [0.1, 0.2, 0.4] and d["onset_distribution"]["incomplete"] == [2]
    json.dumps(d)
    assert res.rate_stats() == rate_stats(res) and res.onset_distribution() == onset_distribution(res)
    assert res.onset_lr == 0.2 and res.uncertain_lrs == []             # "any seed"
    # one seed: the single-seed table and summary, with or without the seed recorded
    plain = _result([_run(0.1, None), _run(0.2, None, "changed")], seeds=None)
    seeded = _result([_run(0.1, 0), _run(0.2, 0, "changed")], seeds=[0])
    assert str(plain) == str(seeded) and "over seeds" not in str(plain)
    assert [c.header for c in seeded.table().columns][:3] == ["lr", "lr/eta*", "max lr*K (step)"]
    assert "rate_stats" not in plain.to_dict() and "rate_stats" in seeded.to_dict()


# ---------------------------------------------------------------------------------------- a real sweep, seeds
SEEDS_READY = "seeds" in inspect.signature(sweep).parameters


@pytest.mark.skipif(not SEEDS_READY, reason="sweep(..., seeds=) is not in this tree yet (issue 13, the engine)")
def test_a_real_sweep_over_three_seeds():
    """circle n=16, 6 steps: 0.01 keeps β1 in every seed (lr·K ≈ 0.005), 0.3 and 3.0 lose it in every seed."""
    res = sweep(circle_scenario(n=16), sgd_factory(), [0.01, 0.3, 3.0], 6, every=3, sharpness=False,
                seeds=[0, 1, 2])
    st = res.rate_stats()
    assert [s.lr for s in st] == [0.01, 0.3, 3.0] and all(s.n_runs + s.n_failed == 3 for s in st)
    for s in st:
        runs = [res.run(s.lr, seed) for seed in s.seeds]
        assert s.n_changed == sum(r.topology_changed for r in runs)
        assert s.max_lrK == [r.max_eta_K for r in runs]
        iv = s.max_lrK_interval
        assert iv.low == min(v for v in s.max_lrK if v is not None) and iv.level == pytest.approx(0.75)
    assert st[0].fraction_changed == 0.0 and st[0].max_lrK_range[1] < 0.1
    assert st[-1].fraction_changed == 1.0 and st[-1].max_lrK_median > 1
    d = res.onset_distribution()
    assert d.seeds == [0, 1, 2] and d.incomplete == []
    assert all(d.onset[s] == 0.3 for s in d.seeds) and d.onset_median == 0.3
    etas = [d.eta_star[s] for s in d.seeds]
    assert len(set(etas)) == 3 and etas[0] == pytest.approx(res.eta_star)   # each seed its own θ_0
    assert all(0.01 < e < 3.0 for e in etas)
    assert "observed in 3 of 3" in str(res)
    json.dumps(res.to_dict())


def test_the_median_onset_says_why_it_is_missing():
    from topoverify.experiments.seed_stats import onset_median_text
    assert onset_median_text(0.25, 3) == "0.25"
    assert "no complete seed" in onset_median_text(None, 0)
    assert "at least half" in onset_median_text(None, 4)
