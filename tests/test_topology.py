"""Tests of topoverify.topology: T5 (log-scale persistence stability), Betti numbers, subsampling
certificates, the log bottleneck distance, and merge counting (T6)."""

from __future__ import annotations

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

from topoverify import clouds as C
from topoverify import topology as T
from topoverify.errors import TopoverifyError
from topoverify.strategies import clouds as S

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
    bounds = pytest.importorskip("topoverify.symbolic.bounds")
    for K, lr in [(1.0, 0.1), (3.0, 0.2), (10.0, 0.099)]:
        assert T.stability_epsilon(1 - lr * K, 1 + lr * K) == pytest.approx(float(bounds.epsilon_numeric(K, lr)))


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
    assert T._bottleneck_finite(p, q) == pytest.approx(_brute_bottleneck(p, q))


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
    import numpy as np

    from topoverify import topology as T_

    t = np.linspace(0, 2 * np.pi, 16, endpoint=False)
    base = np.stack([np.cos(t), np.sin(t)], axis=1)
    answers = {k: T_.robust_betti(np.repeat(base, k, axis=0)) for k in (1, 2, 3, 4)}
    assert set(answers.values()) == {answers[1]}, answers
    jitter = np.repeat(base, 4, axis=0) + 1e-12 * np.random.default_rng(0).standard_normal((64, 2))
    assert T_.robust_betti(jitter) == answers[1]


def test_robust_betti_ignores_the_gaps_of_a_sparse_sphere_sample():
    """Uniform samples of S² leave holes between neighbouring points whose Rips H1 classes exceed log 2 in
    log-persistence; they die within 3× the sampling spacing, so spacing_factor=3 does not count them."""
    from topoverify import clouds as C
    from topoverify import topology as T_

    diagrams = [T_.persistence(C.sphere(200, seed=seed), maxdim=2) for seed in range(4)]
    plain = [T_.robust_betti(r, maxdim=2) for r in diagrams]
    spaced = [T_.robust_betti(r, maxdim=2, spacing_factor=3) for r in diagrams]
    assert any(b[1] > 0 for b in plain)  # the log-2 rule alone is fooled by the sampling holes
    assert spaced == [(1, 0, 1)] * 4
    assert T_.robust_betti(C.circle(100, seed=0), spacing_factor=3) == (1, 1)
