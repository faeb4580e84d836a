"""Tests of the public facade topoverify.topology: T5 (log-scale persistence stability), Betti numbers,
subsampling certificates, the log bottleneck distance (cross-checked against persim, a test-only dependency),
and merge counting (T6)."""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import warnings

import numpy as np
import persim
import pytest
import torch
from hypothesis import assume, given
from hypothesis import strategies as st
from scipy.spatial.distance import pdist, squareform

from topoverify import topology as T
from topoverify.errors import TopoverifyError
from topoverify.experiments import clouds as C
from topoverify.measure import persistence as P
from topoverify.measure.diagram_distance import bottleneck_finite
from topoverify.strategies import clouds as S
from topoverify.symbolic import epsilon_numeric

TOL = 1e-6  # ripser works in float32: ~6e-8 relative per value, so ~1e-7 on a log scale


# ------------------------------------------------------------------------------------------ T5


@given(
    cloud=st.one_of(S.point_clouds(4, 30, dim=3), S.circle_clouds(8, 30, ambient_dim=3, max_noise=0.1)),
    ab=st.tuples(st.floats(0.3, 1.0), st.floats(1.0, 3.0)),
    data=st.data(),
)
def test_T5_bilipschitz_map_moves_log_diagrams_within_epsilon(cloud, ab, data):
    a, b = ab
    f = data.draw(S.bilipschitz_maps(a, b, cloud.shape[1]))
    sv = f.singular_values
    assert sv.min() >= a * (1 - 1e-12) and sv.max() <= b * (1 + 1e-12)
    eps = T.stability_epsilon(a, b)  # predicted from the constants alone, before any diagram is computed
    before = T.persistence(cloud, maxdim=1)
    after = T.persistence(f(cloud), maxdim=1)
    for k in range(2):
        d = T.log_bottleneck(before.diagrams[k], after.diagrams[k])
        assert d <= eps + TOL, (k, d, eps)
    # T5's corollary: features with log-persistence > 2 eps survive (same count of them is >= that many)
    for k in range(2):
        strong = T.surviving_features(before.diagrams[k], eps)
        alive = after.diagrams[k][after.diagrams[k][:, 1] > after.diagrams[k][:, 0]]
        assert len(alive) >= len(strong)


def test_T5_check_catches_a_map_that_breaks_the_claimed_constants():
    # a circle stretched by 2 along one axis: true distance ratios in [1, 2]
    cloud = C.circle(60, seed=0)
    mapped = cloud * np.array([2.0, 1.0])
    claimed = T.stability_epsilon(1.0, 1.25)  # a narrower claim than the truth
    true_eps = T.stability_epsilon(1.0, 2.0)
    d = T.log_bottleneck(T.persistence(cloud).diagrams[1], T.persistence(mapped).diagrams[1])
    assert d > claimed + 1e-3  # the check fails, as it must
    assert d <= true_eps + TOL  # and the true constants still bound it
    # a uniform scaling by c moves every log coordinate by exactly log c
    d0 = T.log_bottleneck(T.persistence(cloud).diagrams[0], T.persistence(3.0 * cloud).diagrams[0])
    assert d0 == pytest.approx(math.log(3.0), abs=TOL)


def test_T5_merging_map_gives_infinite_distance():
    cloud = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 2.0]])
    merged = cloud.copy()
    merged[1] = merged[0]  # a = 0: two neurons merged
    assert T.stability_epsilon(0.0, 1.0) == math.inf
    assert T.log_bottleneck(T.persistence(cloud).diagrams[0], T.persistence(merged).diagrams[0]) == math.inf


def test_stability_epsilon_values_and_errors():
    assert T.stability_epsilon(1.0, 1.0) == 0.0
    assert T.stability_epsilon(0.5, 1.5) == pytest.approx(math.log(2.0))
    assert T.stability_epsilon(0.9, 3.0) == pytest.approx(math.log(3.0))
    with pytest.raises(TopoverifyError):
        T.stability_epsilon(2.0, 1.0)
    with pytest.raises(TopoverifyError):
        T.stability_epsilon(-1.0, 1.0)


def test_stability_epsilon_agrees_with_symbolic_epsilon_numeric():
    for K, lr in [(1.0, 0.1), (3.0, 0.2), (10.0, 0.099)]:
        assert T.stability_epsilon(1 - lr * K, 1 + lr * K) == pytest.approx(float(epsilon_numeric(K, lr)))


def test_surviving_features():
    dgm = np.array([[0.0, 1.0], [1.0, 1.5], [1.0, 5.0], [2.0, np.inf], [1.0, 1.0]])
    out = T.surviving_features(dgm, eps=0.25)  # needs log-persistence > 0.5
    assert out.tolist() == [[0.0, 1.0], [1.0, 5.0], [2.0, np.inf]]
    assert len(T.surviving_features(dgm, 0.0)) == 4


# ------------------------------------------------------------------------------------------ Betti numbers


def test_betti_circle():
    assert T.robust_betti(C.circle(150, noise=0.03, ambient_dim=5, seed=1)) == (1, 1)


def test_betti_two_circles():
    assert T.robust_betti(C.two_circles(300, noise=0.03, seed=2)) == (2, 2)


def test_betti_figure_eight():
    assert T.robust_betti(C.figure_eight(300, noise=0.02, seed=3)) == (1, 2)


def test_betti_sphere_in_R74_subsampled():
    cloud = C.sphere(400, ambient_dim=74, noise=0.01, seed=4)
    res = T.persistence(cloud, maxdim=2, n_perm=120)
    assert res.n_used == 120 and res.error_bound == pytest.approx(2 * res.r_cover) and res.error_bound > 0
    assert T.robust_betti(res, maxdim=2) == (1, 0, 1)


@pytest.mark.slow
def test_betti_torus_flat_R4():
    res = T.persistence(C.torus(1000, major=1.0, seed=5), maxdim=2, n_perm=200)
    assert T.robust_betti(res, maxdim=2) == (1, 2, 1)


def test_betti_torus_small_form():
    # small form that always runs: H0 and H1 of the torus (H2 needs the slow test's sample size)
    assert T.robust_betti(C.torus(400, major=1.0, seed=5), maxdim=1, n_perm=150) == (1, 2)


@given(S.circle_clouds(40, 80, ambient_dim=st.sampled_from([2, 3, 10])))
def test_betti_of_sampled_circles_property(cloud):
    assert T.robust_betti(cloud) == (1, 1)


def test_betti_at_scale():
    cloud = C.circle(100, seed=0)
    res = T.persistence(cloud)
    assert T.betti_at_scale(res, 0.5) == (1, 1)
    assert T.betti_at_scale(res, 1.9) == (1, 0)  # H1 of a unit circle dies at sqrt(3) in Rips
    assert T.betti_at_scale(res, 0.0) == (100, 0)
    assert T.betti_at_scale(cloud, 0.5, maxdim=0) == (1,)
    with pytest.raises(TopoverifyError):
        T.betti_at_scale(res, -1.0)


def test_robust_betti_threshold_and_errors():
    res = T.persistence(C.circle(100, seed=0))
    assert T.robust_betti(res, threshold=50.0) == (1, 0)
    with pytest.raises(TopoverifyError):
        T.robust_betti(res, maxdim=2)  # result only has H0, H1
    with pytest.raises(TopoverifyError):
        T.robust_betti(res, threshold=-1.0)


# ------------------------------------------------------------------------------------------ persistence()


def test_persistence_result_fields_and_str():
    cloud = C.circle(50, seed=0)
    res = T.persistence(torch.tensor(cloud), maxdim=1)
    assert res.n_points == res.n_used == 50 and res.error_bound == 0.0 and res.r_cover == 0.0
    assert len(res.diagrams) == 2 and res.diagrams[0].shape == (50, 2)
    assert np.isinf(res.diagrams[0][:, 1]).sum() == 1  # H0 essential class kept as (0, inf)
    assert res.scale == pytest.approx(np.max(np.linalg.norm(cloud[:, None] - cloud[None], axis=-1)))
    d = res.to_dict()
    json.dumps(d)
    assert "points" not in d and d["n_points"] == 50
    assert "exact" in str(res)
    sub = T.persistence(cloud, n_perm=20)
    assert "2·r_cover" in str(sub) and sub.subsampled
    assert T.persistence(cloud, n_perm=500).n_used == 50


@pytest.mark.parametrize(
    "bad",
    [np.zeros(5), np.zeros((2, 2, 2)), np.zeros((0, 3)), np.array([[0.0, np.nan]]), np.array([[np.inf, 0.0]]), "abc"],
)
def test_persistence_bad_input(bad):
    with pytest.raises(TopoverifyError):
        T.persistence(bad)


def test_persistence_bad_params():
    with pytest.raises(TopoverifyError):
        T.persistence(np.zeros((3, 2)), maxdim=-1)
    with pytest.raises(TopoverifyError):
        T.persistence(np.zeros((3, 2)), n_perm=0)


def test_single_point_and_duplicates():
    res = T.persistence(np.ones((1, 3)))
    assert res.diagrams[0].tolist() == [[0.0, np.inf]]
    assert T.robust_betti(res) == (1, 0)
    res = T.persistence(np.ones((5, 3)))
    assert T.betti_at_scale(res, 0.0) == (1, 0)


@given(
    cloud=st.one_of(S.point_clouds(20, 80, dim=st.sampled_from([2, 5])), S.circle_clouds(30, 80, max_noise=0.1)),
    frac=st.floats(0.2, 0.8),
)
def test_subsampled_diagrams_within_certified_error(cloud, frac):
    n_perm = max(2, int(frac * len(cloud)))
    full = T.persistence(cloud, maxdim=1)
    sub = T.persistence(cloud, maxdim=1, n_perm=n_perm)
    # the certificate is independent of the diagrams: the covering radius, checked by brute force
    dists = np.linalg.norm(cloud[:, None] - cloud[sub.landmarks][None], axis=-1).min(axis=1)
    assert sub.r_cover == pytest.approx(dists.max(), rel=1e-9, abs=1e-12)
    for k in range(2):
        d = T.bottleneck(full.diagrams[k], sub.diagrams[k])
        assert d <= sub.error_bound * (1 + 1e-6) + 1e-6, (k, d, sub.error_bound)


# ------------------------------------------------------------------------------------------ bottleneck


def _brute_bottleneck(p: np.ndarray, q: np.ndarray) -> float:
    """Reference: try every matching of the finite diagrams padded with diagonal slots."""
    m, n = len(p), len(q)
    pts_a = [tuple(x) for x in p] + [None] * n
    pts_b = [tuple(x) for x in q] + [None] * m
    best = math.inf
    for perm in itertools.permutations(range(m + n)):
        worst = 0.0
        for i, j in enumerate(perm):
            x, y = pts_a[i], pts_b[j]
            if x is None and y is None:
                c = 0.0
            elif x is None:
                c = (y[1] - y[0]) / 2
            elif y is None:
                c = (x[1] - x[0]) / 2
            else:
                c = max(abs(x[0] - y[0]), abs(x[1] - y[1]))
            worst = max(worst, c)
        best = min(best, worst)
    return best


def finite_diagrams(max_size: int = 6, repeats: bool = True):
    pt = st.tuples(st.integers(1, 20), st.integers(1, 20)).map(lambda t: (float(min(t)), float(max(t)) + 0.5))

    @st.composite
    def build(draw):
        pts = draw(st.lists(pt, max_size=max_size))
        if repeats and pts:
            pts = pts + draw(st.lists(st.sampled_from(pts), max_size=2))
        return np.array(pts, dtype=float).reshape(-1, 2)

    return build()


@given(finite_diagrams(3, repeats=False), finite_diagrams(3, repeats=False))
def test_bottleneck_matches_brute_force(p, q):
    assume(len(p) + len(q) <= 6)
    assert bottleneck_finite(p, q) == pytest.approx(_brute_bottleneck(p, q))


@given(finite_diagrams(), finite_diagrams())
def test_bottleneck_agrees_with_persim_on_finite_diagrams(p, q):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = persim.bottleneck(p, q)
        ref_log = persim.bottleneck(np.log(p), np.log(q)) if len(p) and len(q) else None
    assert T.bottleneck(p, q) == pytest.approx(ref)
    if ref_log is not None:
        assert T.log_bottleneck(p, q) == pytest.approx(ref_log)


@given(finite_diagrams(), finite_diagrams(), finite_diagrams())
def test_log_bottleneck_metric_properties(p, q, r):
    assert T.log_bottleneck(p, p) == 0.0
    assert T.log_bottleneck(p, q) == T.log_bottleneck(q, p)
    assert T.log_bottleneck(p, r) <= T.log_bottleneck(p, q) + T.log_bottleneck(q, r) + 1e-12


def test_log_bottleneck_essential_and_h0_classes():
    a = np.array([[0.0, 1.0], [0.0, 2.0], [0.0, np.inf]])
    assert T.log_bottleneck(a, a) == 0.0
    b = np.array([[0.0, 2.0], [0.0, 4.0], [0.0, np.inf]])  # H0 deaths doubled
    assert T.log_bottleneck(a, b) == pytest.approx(math.log(2))
    assert T.log_bottleneck(a, a[:2]) == math.inf  # essential class missing
    assert T.log_bottleneck(a, a[1:]) == math.inf  # one H0 class fewer: infinite log-persistence
    assert T.log_bottleneck(a, np.vstack([a, [[0.0, 0.0]]])) == 0.0  # zero-length bars are on the diagonal
    e1 = np.array([[1.0, np.inf], [2.0, 3.0]])
    e2 = np.array([[2.0, np.inf]])
    assert T.log_bottleneck(e1, e2) == pytest.approx(math.log(2))
    assert T.log_bottleneck(e1, np.array([[2.0, 3.0]])) == math.inf
    assert T.bottleneck(e1, e2) == pytest.approx(1.0)
    assert T.bottleneck(e1, np.array([[2.0, 3.0]])) == math.inf
    # repeated points: two copies must both be matched
    r1 = np.array([[1.0, 8.0], [1.0, 8.0]])
    r2 = np.array([[1.0, 8.0]])
    assert T.log_bottleneck(r1, r2) == pytest.approx(math.log(8) / 2)


def test_persim_drops_infinite_points():
    """Documented finding: persim.bottleneck ignores infinite-death points (with a warning), so it reports a
    finite distance where the true one is infinite; topoverify.bottleneck does not."""
    a = np.array([[0.0, 1.0], [0.0, np.inf]])
    b = np.array([[0.0, 1.0]])
    with pytest.warns(UserWarning):
        assert persim.bottleneck(a, b) == 0.0
    assert T.bottleneck(a, b) == math.inf


def test_empty_diagrams():
    empty = np.zeros((0, 2))
    assert T.log_bottleneck(empty, empty) == 0.0
    assert T.bottleneck(empty, empty) == 0.0
    assert T.log_bottleneck(empty, np.array([[1.0, 4.0]])) == pytest.approx(math.log(4) / 2)
    assert T.bottleneck([], [[1.0, 4.0]]) == pytest.approx(1.5)
    assert T.log_diagram(empty).shape == (0, 2)


def test_log_diagram():
    ld = T.log_diagram(np.array([[0.0, 1.0], [1.0, np.inf], [2.0, 2.0], [1.0, np.e]]))
    assert ld.tolist() == [[-np.inf, 0.0], [0.0, np.inf], [0.0, 1.0]]
    with pytest.raises(TopoverifyError):
        T.log_diagram(np.array([[2.0, 1.0]]))
    with pytest.raises(TopoverifyError):
        T.log_diagram(np.array([[np.nan, 1.0]]))


# ------------------------------------------------------------------------------------------ merges (T6)


def test_count_distinct_exact_duplicates():
    x = np.array([[0.0, 1.0], [0.0, 1.0], [1.0, 0.0], [-0.0, 1.0], [1.0, 1e-12]])
    assert T.count_distinct(x) == 3
    assert T.merged_pairs(x) == [(0, 1), (0, 3), (1, 3)]
    assert T.merge_clusters(x) == [[0, 1, 3]]
    assert T.count_distinct(torch.tensor(x)) == 3


def test_count_distinct_tolerance():
    x = np.array([[0.0, 0.0], [1e-7, 0.0], [10.0, 0.0], [10.0, 1e-3]])
    assert T.count_distinct(x) == 4
    assert T.count_distinct(x, rtol=1e-6) == 3  # radius about centroid is 5: tolerance 5e-6
    assert T.count_distinct(x, rtol=1e-3) == 2
    assert T.count_distinct(x, atol=1e-3) == 2
    assert T.merged_pairs(x, rtol=1e-3) == [(0, 1), (2, 3)]


def test_count_distinct_all_equal_and_bad_input():
    assert T.count_distinct(np.full((7, 3), 2.5)) == 1
    assert T.count_distinct(np.full((7, 3), 2.5), rtol=0.1) == 1
    with pytest.raises(TopoverifyError):
        T.count_distinct(np.array([[np.nan, 1.0]]))
    with pytest.raises(TopoverifyError):
        T.count_distinct(np.zeros(3))
    with pytest.raises(TopoverifyError):
        T.count_distinct(np.zeros((3, 2)), rtol=-1.0)


@given(S.point_clouds(1, 40, dim=st.sampled_from([1, 3]), duplicates=True))
def test_count_distinct_matches_set_of_rows(cloud):
    assert T.count_distinct(cloud) == len({tuple(r) for r in cloud})
    groups = T.merge_clusters(cloud)
    assert T.count_distinct(cloud) == len(cloud) - sum(len(g) - 1 for g in groups)


def test_robust_beta0_does_not_depend_on_multiplicities():
    """Merged neurons (T6) are one point of the support: k copies of a circle sample give the same β."""
    t = np.linspace(0, 2 * np.pi, 16, endpoint=False)
    base = np.stack([np.cos(t), np.sin(t)], axis=1)
    answers = {k: T.robust_betti(np.repeat(base, k, axis=0)) for k in (1, 2, 3, 4)}
    assert set(answers.values()) == {answers[1]}, answers
    jitter = np.repeat(base, 4, axis=0) + 1e-12 * np.random.default_rng(0).standard_normal((64, 2))
    assert T.robust_betti(jitter) == answers[1]


def test_robust_betti_ignores_the_gaps_of_a_sparse_sphere_sample():
    """Uniform samples of S² leave holes between neighbouring points whose Rips H1 classes exceed log 2 in
    log-persistence; they die within 3× the sampling spacing, so spacing_factor=3 does not count them."""
    diagrams = [T.persistence(C.sphere(200, seed=seed), maxdim=2) for seed in range(4)]
    plain = [T.robust_betti(r, maxdim=2) for r in diagrams]
    spaced = [T.robust_betti(r, maxdim=2, spacing_factor=3) for r in diagrams]
    assert any(b[1] > 0 for b in plain)  # the log-2 rule alone is fooled by the sampling holes
    assert spaced == [(1, 0, 1)] * 4
    assert T.robust_betti(C.circle(100, seed=0), spacing_factor=3) == (1, 1)


# ------------------------------------------------------------------------------------------ defaults a user can trust


def test_persistence_subsamples_a_large_cloud_by_default_and_says_so(monkeypatch):
    """Issue 7: a cloud above the exact limit is not silently computed for minutes: the default subsamples,
    states the certified error, warns, and names the way out (n_perm)."""
    monkeypatch.setitem(T.EXACT_LIMITS, 1, 200)
    monkeypatch.setitem(T.AUTO_LANDMARKS, 1, 120)
    cloud = C.circle(600, noise=0.02, ambient_dim=3, seed=0)
    with pytest.warns(T.CostWarning, match="n_perm"):
        res = T.persistence(cloud, maxdim=1)
    assert res.auto_subsampled and res.subsampled and res.n_used == 120 and res.n_points == 600
    assert res.error_bound == pytest.approx(2 * res.r_cover) and res.error_bound > 0
    assert "n_perm=None" in res.note and "automatic greedy subsample 120/600" in str(res)
    assert res.to_dict()["auto_subsampled"] is True
    with pytest.warns(T.CostWarning, match="GB"):  # all points on request, with the cost named
        full = T.persistence(cloud, maxdim=1, n_perm=None)
    assert not full.subsampled
    for k in range(2):  # the stated certificate holds
        assert T.bottleneck(full.diagrams[k], res.diagrams[k]) <= res.error_bound * (1 + 1e-6) + 1e-6
    with warnings.catch_warnings():
        warnings.simplefilter("error", T.CostWarning)
        small = T.persistence(cloud[:200], maxdim=1)  # at the limit: exact, silent
        explicit = T.persistence(cloud, maxdim=1, n_perm=50)  # an explicit choice: silent
    assert not small.subsampled and not small.auto_subsampled and small.note == ""
    assert explicit.n_used == 50 and not explicit.auto_subsampled
    with pytest.warns(T.CostWarning):
        assert T.robust_betti(cloud, n_perm="auto") == (1, 1)
    with pytest.raises(TopoverifyError, match="n_perm"):
        T.persistence(cloud, n_perm="all")


def test_persistence_defaults_keep_a_1024_neuron_layer_exact_and_bound_10000_points():
    assert T.exact_limit(1) == 1024 and T.exact_limit(2) == 200 and T.exact_limit(5) == 200
    assert T.auto_landmarks(1) <= T.exact_limit(1) and T.auto_landmarks(2) <= T.exact_limit(2)
    cloud = np.random.default_rng(0).standard_normal((10_000, 3))
    with pytest.warns(T.CostWarning, match="10000 points > 1024"):
        res = T.persistence(cloud)
    assert res.n_used == T.auto_landmarks(1) and res.auto_subsampled and res.error_bound > 0


def test_log_bottleneck_and_bottleneck_take_persistence_results():
    """Issue 7: log_bottleneck(result, result) used to fail with a numpy error."""
    x = C.circle(60, seed=0)
    a, b = T.persistence(x), T.persistence(x * np.array([1.5, 1.0]))
    per_dim = [T.log_bottleneck(a.diagrams[k], b.diagrams[k]) for k in range(2)]
    assert T.log_bottleneck(a, b) == max(per_dim) and T.log_bottleneck(a, b) <= math.log(1.5) + TOL
    assert T.log_bottleneck(a, b, dim=1) == per_dim[1]
    assert T.log_bottleneck(a, b.diagrams[0], dim=0) == per_dim[0]
    assert T.bottleneck(a, b) == max(T.bottleneck(a.diagrams[k], b.diagrams[k]) for k in range(2))
    with pytest.raises(TopoverifyError, match="dim=k"):
        T.log_bottleneck(a, b.diagrams[1])
    with pytest.raises(TopoverifyError, match="list of 2 diagrams"):
        T.log_bottleneck(a.diagrams, b.diagrams)
    with pytest.raises(TopoverifyError, match="same maxdim"):
        T.log_bottleneck(a, T.persistence(x, maxdim=0))
    with pytest.raises(TopoverifyError, match="up to H1"):
        T.log_bottleneck(a, b, dim=2)
    with pytest.raises(TopoverifyError, match="PersistenceResult"):
        T.surviving_features(a, 0.1)
    with pytest.raises(TopoverifyError, match="drop dim"):
        T.log_bottleneck(a.diagrams[1], b.diagrams[1], dim=1)
    with pytest.raises(TopoverifyError, match="birth, death"):
        T.log_bottleneck([[1.0, 2.0], [3.0]], b.diagrams[1])


def test_robust_betti_answers_up_to_the_results_own_maxdim():
    """Issue 7: a result computed with maxdim=2 used to give (β0, β1) unless maxdim=2 was passed again."""
    res = T.persistence(C.sphere(100, seed=1), maxdim=2)
    b = T.robust_betti(res)
    assert len(b) == 3 and b == T.robust_betti(res, maxdim=2)
    assert T.robust_betti(res, maxdim=1) == b[:2]
    assert len(T.betti_report(res).betti) == 3
    assert T.betti_at_scale(res, 0.5) == T.betti_at_scale(res, 0.5, maxdim=2)
    assert len(T.robust_betti(C.circle(40, seed=0))) == 2  # a cloud: H0, H1 as before


# ------------------------------------------------------------------------------------------ the gap rule


def _result_with_h1(lps, birth=0.1):
    """A PersistenceResult of a small circle sample whose H1 diagram is replaced by features of the given
    log-persistences (births ``birth``): the spectrum a rule is asked to read."""
    base = T.persistence(C.circle(40, seed=0))
    h1 = np.array([[birth, birth * math.exp(p)] for p in lps]).reshape(-1, 2)
    return dataclasses.replace(base, diagrams=[base.diagrams[0], h1])


def test_gap_rule_counts_the_issues_thin_loops_that_log2_misses():
    """Issue 7: the two loops at log-persistence 0.61 and 0.39, far above the rest (<= 0.12)."""
    rest = list(np.linspace(0.12, 0.01, 40))
    res = _result_with_h1([0.61, 0.39] + rest)
    assert T.robust_betti(res) == (1, 0)  # log 2 misses both
    assert T.robust_betti(res, rule="gap") == (1, 2)
    rep = T.betti_report(res, rule="gap")
    h1 = [f for f in rep.features if f.dim == 1]
    assert [f.accepted for f in h1[:3]] == [True, True, False] and {f.by for f in h1[:2]} == {"gap"}
    assert h1[1].ratio_to_next == pytest.approx(0.39 / 0.12, rel=1e-6)  # the evidence: the gap
    assert h1[2].by == "below floor" and h1[2].margin < 0 < h1[0].margin
    # 3.25 is within e^±0.1 of the minimum gap 3 (ratios move by up to e^0.2): said, not hidden
    assert rep.uncertain and rep.low[1] == 0 and rep.high[1] == 2 and h1[1].uncertain
    tight = T.betti_report(res, rule="gap", margin=0.02)
    assert tight.betti == (1, 2) and not tight.uncertain
    assert "rule gap" in str(rep) and "UNCERTAIN" in str(rep)
    json.dumps(rep.to_dict())


def test_gap_rule_minimum_gap_and_floor():
    rest = list(np.linspace(0.2, 0.01, 30))
    assert T.robust_betti(_result_with_h1([0.5] + rest), rule="gap")[1] == 0  # 2.5x the rest: no gap
    assert T.robust_betti(_result_with_h1([0.5] + rest), rule="gap", min_gap=2.0)[1] == 1
    noise = list(np.linspace(0.03, 0.01, 6))
    assert T.robust_betti(_result_with_h1([0.3] + noise), rule="gap")[1] == 0  # below ½ log 2
    assert T.robust_betti(_result_with_h1([0.36] + noise), rule="gap")[1] == 1
    # fewer than GAP_MIN_BULK weaker features: no noise to compare with, so log 2 is needed as well
    assert T.GAP_MIN_BULK == 5
    lone = T.betti_report(_result_with_h1([0.36, 0.02, 0.01]), rule="gap")
    assert lone.betti[1] == 0 and lone.high[1] == 1  # not counted, but the count is uncertain up to it
    assert T.robust_betti(_result_with_h1([0.8, 0.02, 0.01]), rule="gap")[1] == 1
    # the largest gap wins: a strong loop over a weak one over the noise
    assert T.robust_betti(_result_with_h1([3.0, 1.5] + noise), rule="gap")[1] == 2
    assert T.robust_betti(_result_with_h1([3.0, 0.5, 0.4] + noise), rule="gap")[1] == 3
    assert T.robust_betti(_result_with_h1([]), rule="gap")[1] == 0
    with pytest.raises(TopoverifyError, match="rule"):
        T.robust_betti(_result_with_h1([1.0]), rule="largest")
    with pytest.raises(TopoverifyError, match="min_gap"):
        T.robust_betti(_result_with_h1([1.0]), rule="gap", min_gap=1.0)
    with pytest.raises(TopoverifyError, match="margin"):
        T.betti_report(_result_with_h1([1.0]), margin=-0.1)


def test_gap_rule_finds_both_loops_of_a_thin_figure_eight():
    """A figure-eight whose lobes are 20 times longer than wide, 1024 random points: the two loops stand at
    0.60 and 0.40 over noise <= 0.07; log 2 sees nothing."""
    cloud = C.figure_eight(1024, aspect=20, seed=6)
    res = T.persistence(cloud)
    assert not res.subsampled
    assert T.robust_betti(res) == (1, 0)
    rep = T.betti_report(res, rule="gap")
    assert rep.betti == (1, 2) and not rep.uncertain
    h1 = [f for f in rep.features if f.dim == 1]
    assert h1[0].log_persistence < math.log(2) and h1[1].ratio_to_next > 3


@pytest.mark.parametrize("make, truth", [
    (lambda s: C.circle(1024, aspect=20, seed=s), 1),          # thin ellipse, length 20 x width
    (lambda s: C.circle(256, aspect=10, seed=s), 1),
    (lambda s: C.figure_eight(256, aspect=5, seed=s), 2),
    (lambda s: C.circle(300, aspect=4, noise=0.01, ambient_dim=5, seed=s), 1),  # anisotropic, noisy, in R^5
])
def test_gap_rule_on_thin_and_anisotropic_shapes(make, truth):
    results = [T.persistence(make(s)) for s in range(3)]
    gap = [T.robust_betti(r, rule="gap")[1] for r in results]
    log2 = [T.robust_betti(r)[1] for r in results]
    assert sum(g == truth for g in gap) >= sum(b == truth for b in log2)  # never worse than log 2 here
    assert sum(g == truth for g in gap) >= 2, (gap, log2)


def test_gap_rule_keeps_the_answers_on_circles_and_spheres():
    assert T.robust_betti(C.circle(150, noise=0.03, ambient_dim=5, seed=1), rule="gap") == (1, 1)
    assert T.robust_betti(C.two_circles(300, noise=0.03, seed=2), rule="gap") == (2, 2)
    assert T.robust_betti(C.figure_eight(300, noise=0.02, seed=3), rule="gap") == (1, 2)
    res = T.persistence(C.sphere(400, ambient_dim=74, noise=0.01, seed=4), maxdim=2, n_perm=120)
    assert T.robust_betti(res, rule="gap") == (1, 0, 1)


@given(S.circle_clouds(40, 80, ambient_dim=st.sampled_from([2, 3, 10]), max_noise=0.05))
def test_gap_rule_on_sampled_circles_property(cloud):
    """Never a spurious loop; when the one loop is missed (a sparse sample: one loop of log-persistence below
    log 2 and no noise features to compare it with) the report says the count is uncertain up to 1."""
    rep = T.betti_report(cloud, rule="gap")
    assert rep.betti[0] == 1 and rep.betti[1] <= 1 and rep.low[1] <= 1 <= rep.high[1]
    if rep.betti[1] == 0:
        assert rep.uncertain and [f.by for f in rep.features if f.dim == 1][0] == "no gap"


def test_gap_rule_is_not_the_default_because_of_sampled_surfaces():
    """The evidence for keeping log 2 as the default: on a sampled torus the holes between samples form a
    continuum up to ~0.8 and the two loops (~1.2) stand only ~1.5 times above it, so there is no gap."""
    res = T.persistence(C.torus(400, major=1.0, seed=5), maxdim=1, n_perm=150)
    assert T.robust_betti(res) == (1, 2)
    rep = T.betti_report(res, rule="gap")
    h1 = [f for f in rep.features if f.dim == 1]
    assert h1[1].log_persistence > math.log(2) and h1[1].ratio_to_next < T.DEFAULT_MIN_GAP
    assert rep.betti[1] < 2


@pytest.mark.parametrize("kind", ["uniform2", "gauss3", "gauss10", "uniform3"])
def test_gap_rule_gives_no_feature_on_pure_noise(kind):
    for seed in range(3):
        rng = np.random.default_rng(100 + seed)
        for n in (100, 300):
            x = {"uniform2": lambda: rng.uniform(size=(n, 2)), "gauss3": lambda: rng.standard_normal((n, 3)),
                 "gauss10": lambda: rng.standard_normal((n, 10)), "uniform3": lambda: rng.uniform(size=(n, 3))}[kind]()
            assert T.robust_betti(x, rule="gap")[1] == 0, (kind, seed, n)


def test_dense_planar_noise_fools_log2_but_not_the_gap_rule():
    x = np.random.default_rng(3).uniform(size=(1000, 2))
    res = T.persistence(x)
    assert T.robust_betti(res)[1] >= 1  # holes of the union of balls: log 2 counts them
    assert T.robust_betti(res, rule="gap")[1] == 0


def test_betti_report_log2_evidence_and_uncertainty():
    res = _result_with_h1([2.0, 0.72, 0.3])
    rep = T.betti_report(res)
    assert rep.betti == (1, 2) and rep.low == (1, 1) and rep.high == (1, 2) and rep.uncertain_dims == (1,)
    h1 = [f for f in rep.features if f.dim == 1]
    assert h1[0].accepted and not h1[0].uncertain and h1[1].accepted and h1[1].uncertain
    assert h1[1].margin == pytest.approx(math.log(0.72 / math.log(2)), rel=1e-6)
    assert not h1[2].accepted and h1[2].by == "below threshold"
    assert T.betti_report(res, margin=0.0).low == T.betti_report(res, margin=0.0).high


# ------------------------------------------------------------------------------------------ T5: robust counts after a map


def test_betti_bounds_after_follow_T5():
    dgm = np.array([[1.0, 1.0 * math.exp(2.0)], [1.0, math.exp(0.75)], [1.0, math.exp(0.2)]])
    assert T.betti_bounds_after(dgm, 0.0) == (2, 2)
    assert T.betti_bounds_after(dgm, 0.05) == (1, 2)          # 0.75 is within 2 eps = 0.1 of log 2
    assert T.betti_bounds_after(dgm, 0.3) == (1, 3)           # 0.2 > log 2 - 0.6
    assert T.betti_bounds_after(dgm, 0.4) == (1, math.inf)    # 2 eps > log 2: new features may appear
    with pytest.raises(TopoverifyError):
        T.betti_bounds_after(dgm, -1.0)


# ------------------------------------------------------------------------------------------ merges by collapse (T6)


def test_count_distinct_with_a_tolerance_merges_merely_close_points():
    """Issue 7: 1024 random float32 points on a curve already have pairs 7.5e-7 apart; a tolerance count
    calls them merged. The collapse tracker does not, whatever happens next."""
    t = np.sort(np.random.default_rng(0).uniform(0, 2 * np.pi, 1024))
    x32 = np.stack([np.cos(t), np.sin(t), 0.3 * np.cos(3 * t)], axis=1).astype(np.float32)
    gaps = np.linalg.norm(np.diff(x32.astype(np.float64), axis=0), axis=1)
    assert gaps.min() < 2e-6
    assert T.count_distinct(x32, rtol=1e-6) < 1024 == T.count_distinct(x32)
    tracker = T.MergeTracker(x32)
    assert tracker.dtype == "float32"
    spread = (1.05 * x32).astype(np.float32)  # every distance grows by 5 %
    rep = tracker.update(spread)
    assert rep.merged == 0 and rep.classes == 1024 and not rep.collapsed
    # the closest pair merged exactly: it was within round-off reach already, so not counted either
    i = int(np.argmin(gaps))
    glued = x32.copy()
    glued[i + 1] = glued[i]
    rep = tracker.update(glued)
    assert rep.merged == 0 and (i, i + 1) in rep.close_at_start
    # a pair that collapses from far apart is counted
    far = x32.copy()
    far[500] = far[10]
    rep = tracker.update(far)
    assert rep.merged == 1 and rep.collapsed == [(10, 500)] and rep.classes == 1023
    assert "1 neuron(s) merged by collapse" in str(rep)
    json.dumps(rep.to_dict())


def test_merge_tracker_counts_collapse_to_roundoff_not_exact_equality_only():
    rng = np.random.default_rng(1)
    x0 = rng.standard_normal((20, 4))
    x1 = x0.copy()
    x1[3] = x1[7] * (1 + 3e-16)  # a collapse that ends a few ulps apart, not bitwise
    x1[5] = x1[6] * (1 + 1e-9)   # close, but far above round-off: not merged
    rep = T.merge_events(x0, x1)
    assert rep.merged == 1 and rep.collapsed == [(3, 7)]
    # neurons shrinking together towards 0 (weight decay) do not merge: round-off is relative to their norm
    tiny = x0.copy()
    tiny[:2] *= 1e-20
    assert T.merge_events(x0, tiny).merged == 0
    # equal at the start and apart now: reported, never counted as a merge or as breakdown
    y0 = x0.copy()
    y0[1] = y0[0]
    rep = T.merge_events(y0, x0)
    assert rep.classes_start == 19 and rep.merged == 0 and rep.separated == [(0, 1)]
    with pytest.raises(TopoverifyError, match="same neurons"):
        T.merge_events(x0, x0[:5])
    with pytest.raises(TopoverifyError, match="roundoff_ulps"):
        T.MergeTracker(x0, roundoff_ulps=0)
    with pytest.raises(TopoverifyError, match="floating dtype"):
        T.MergeTracker(x0, dtype="int32")


def test_merge_tracker_needs_equal_state_for_a_merge():
    x0 = np.random.default_rng(2).standard_normal((6, 3))
    x1 = x0.copy()
    x1[4] = x1[2]
    s0 = np.zeros((6, 3))
    s1 = np.random.default_rng(3).standard_normal((6, 3))
    rep = T.merge_events(x0, x1, state_before=s0, state_after=s1)
    assert rep.merged == 0 and rep.state_differs == [(2, 4)] and rep.state_known
    s1[4] = s1[2]
    rep = T.merge_events(x0, x1, state_before=s0, state_after=s1)
    assert rep.merged == 1 and rep.collapsed == [(2, 4)]
    # optimizer state created at the first step (an empty state before): allowed
    assert T.merge_events(x0, x1, state_before=np.zeros((6, 0)), state_after=s1).merged == 1
    with pytest.raises(TopoverifyError, match="one row per neuron"):
        T.merge_events(x0, x1, state_before=s0, state_after=s1[:3])


def test_count_distinct_on_theta_and_state():
    """Issue 8: T6 needs equal (θ, s); two neurons with equal θ but different state are distinct."""
    x = np.array([[0.0, 1.0], [0.0, 1.0], [1.0, 0.0]])
    s = np.array([[0.0], [0.5], [0.0]])
    assert T.count_distinct(x) == 2
    assert T.count_distinct(x, state=s) == 3
    assert T.count_distinct(x, state=np.zeros((3, 1))) == 2
    assert T.merged_pairs(x, state=s) == [] and T.merge_clusters(x, state=np.zeros((3, 2))) == [[0, 1]]
    assert T.count_distinct(x + np.array([[0, 0], [1e-9, 0], [0, 0]]), rtol=1e-6, state=s) == 3
    assert T.count_distinct(x, rtol=1e-6, state=np.array([[0.0], [1e-9], [1.0]])) == 2
    with pytest.raises(TopoverifyError, match="one row per neuron"):
        T.count_distinct(x, state=np.zeros((2, 1)))


def test_gram_distances_match_pdist_for_close_points_far_from_the_centre(monkeypatch):
    """The Gram trick (above DENSE_PDIST_LIMIT, lowered here) on two tight clusters at ±100: centring cannot
    remove the offset of either cluster, the refinement from differences must; relative error far below
    ripser's float32 rounding."""
    rng = np.random.default_rng(1)
    x = np.concatenate([100.0 + 1e-4 * rng.standard_normal((30, 20)), -100.0 + 1e-4 * rng.standard_normal((30, 20))])
    exact = squareform(pdist(x))
    monkeypatch.setattr(P, "DENSE_PDIST_LIMIT", 0)
    dm = P.pairwise_distances(x)
    off = ~np.eye(len(x), dtype=bool)
    assert np.all(np.diag(dm) == 0) and np.array_equal(dm, dm.T)
    assert np.max(np.abs(dm[off] - exact[off]) / exact[off]) < 1e-9
