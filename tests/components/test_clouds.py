"""Tests of the point-cloud generators (topoverify.experiments.clouds) and their Hypothesis strategies."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from topoverify.experiments import clouds as C
from topoverify.errors import TopoverifyError
from topoverify.strategies import clouds as S


def _pairwise(x):
    return np.linalg.norm(x[:, None] - x[None], axis=-1)


@pytest.mark.parametrize(
    "gen,dim",
    [(C.circle, 2), (C.two_circles, 2), (C.figure_eight, 2), (C.sphere, 3), (C.torus, 4)],
)
def test_shapes_dtype_and_seed(gen, dim):
    x = gen(50, seed=3)
    assert x.shape == (50, dim) and x.dtype == np.float64 and x.flags.c_contiguous
    assert np.array_equal(x, gen(50, seed=3))
    assert np.array_equal(x, gen(50, seed=np.random.default_rng(3)))
    assert not np.array_equal(x, gen(50, seed=4))
    assert gen(50, ambient_dim=74, seed=0).shape == (50, 74)


def test_geometry_without_noise():
    assert np.allclose(np.linalg.norm(C.circle(40, radius=2.5, seed=0), axis=1), 2.5)
    assert np.allclose(np.linalg.norm(C.sphere(40, radius=0.5, ambient_dim=74, seed=0), axis=1), 0.5)
    t = C.torus(40, radius=0.5, major=2.0, seed=0)
    assert np.allclose(np.linalg.norm(t[:, :2], axis=1), 2.0) and np.allclose(np.linalg.norm(t[:, 2:], axis=1), 0.5)
    r = C.torus(200, radius=1.0, major=3.0, kind="ring", seed=0)
    assert np.allclose((np.linalg.norm(r[:, :2], axis=1) - 3.0) ** 2 + r[:, 2] ** 2, 1.0)
    e = C.figure_eight(40, seed=0)
    left, right = e[:20], e[20:]
    assert np.allclose(np.linalg.norm(left - [-1, 0], axis=1), 1) and np.allclose(np.linalg.norm(right - [1, 0], axis=1), 1)
    tc = C.two_circles(40, separation=4.0, seed=0)
    assert np.allclose(np.linalg.norm(tc[:20] - [-2, 0], axis=1), 1)


def test_embedding_is_isometric():
    x = C.sphere(30, seed=1)
    e = C.random_isometric_embedding(3, 74, seed=2)
    assert np.allclose(e @ e.T, np.eye(3))
    assert np.allclose(_pairwise(x @ e), _pairwise(x))
    y = C.sphere(30, seed=1, ambient_dim=74)  # same intrinsic sample, randomly embedded
    assert np.allclose(_pairwise(y), _pairwise(x))


def test_noise_level():
    x = C.circle(4000, noise=0.1, ambient_dim=20, seed=0)
    resid = x - C.circle(4000, ambient_dim=20, seed=0)
    assert resid.std() == pytest.approx(0.1, rel=0.05)


@pytest.mark.parametrize(
    "call",
    [
        lambda: C.circle(0),
        lambda: C.circle(10, radius=-1),
        lambda: C.circle(10, noise=float("nan")),
        lambda: C.sphere(10, ambient_dim=2),
        lambda: C.torus(10, ambient_dim=3),
        lambda: C.torus(10, kind="ring", major=0.5),
        lambda: C.torus(10, kind="donut"),
        lambda: C.two_circles(10, separation=1.5),
        lambda: C.circle(10, seed="x"),
    ],
)
def test_bad_arguments(call):
    with pytest.raises(TopoverifyError):
        call()


def test_betti_table():
    assert C.BETTI["torus"] == (1, 2, 1) and C.BETTI["figure_eight"] == (1, 2, 0)


@given(S.sphere_clouds(5, 30, ambient_dim=st.sampled_from([3, 10]), radius=st.floats(0.5, 2.0)))
def test_sphere_strategy(x):
    assert x.ndim == 2 and 5 <= len(x) <= 30 and x.shape[1] in (3, 10)
    r = np.linalg.norm(x, axis=1)
    assert np.allclose(r, r[0]) and 0.5 - 1e-9 <= r[0] <= 2.0 + 1e-9


@given(S.circle_clouds(8, 20, max_noise=0.1), S.torus_clouds(5, 10), S.two_circle_clouds(16, 20), S.figure_eight_clouds(16, 20))
def test_other_strategies(c, t, tc, f8):
    assert c.shape[1] == 2 and 8 <= len(c) <= 20 and np.isfinite(c).all()
    assert t.shape[1] == 4 and tc.shape[1] == 2 and f8.shape[1] == 2


@given(S.bilipschitz_maps(0.5, 2.0, 4), S.point_clouds(2, 20, dim=4))
def test_bilipschitz_map_ratios_within_bounds(f, x):
    d0, d1 = _pairwise(x), _pairwise(f(x))
    mask = d0 > 1e-9
    ratio = d1[mask] / d0[mask]
    assert ratio.min() >= f.a * (1 - 1e-9) and ratio.max() <= f.b * (1 + 1e-9)
    assert f.epsilon == pytest.approx(np.log(2.0))


def test_thin_shapes():
    e = C.circle(200, radius=2.0, aspect=10, seed=0)
    assert np.allclose((e[:, 0] / 2.0) ** 2 + (e[:, 1] / 0.2) ** 2, 1.0)
    f = C.figure_eight(200, aspect=20, seed=0)
    assert np.ptp(f[:100, 0]) <= 2.0 + 1e-12 and np.ptp(f[:, 1]) <= 0.1 + 1e-12
    assert np.array_equal(C.circle(50, seed=3, aspect=1.0), C.circle(50, seed=3))
    with pytest.raises(TopoverifyError, match="aspect"):
        C.circle(10, aspect=0.0)
    with pytest.raises(TopoverifyError, match="aspect"):
        C.figure_eight(10, aspect=float("inf"))


@given(S.thin_loop_clouds(64, 128, max_aspect=5.0))
def test_thin_loop_strategy(x):
    assert x.ndim == 2 and 64 <= len(x) <= 128 and np.isfinite(x).all()
