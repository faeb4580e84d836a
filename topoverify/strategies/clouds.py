"""Hypothesis strategies for point clouds with known topology and for bi-Lipschitz maps.

Every strategy draws only small integers and floats (a point count, a seed, a noise level, singular
values) and builds the array deterministically from them with :mod:`topoverify.experiments.clouds`, so failures
shrink to the fewest points, seed 0 and zero noise. Arguments that are themselves strategies are drawn
(e.g. ``ambient_dim=st.sampled_from([2, 3, 74])``).

``bilipschitz_maps(a, b, dim)`` draws a linear map whose pairwise distance ratios
``||f(x) - f(y)|| / ||x - y||`` all lie in ``[a, b]`` (its singular values do): the hypothesis of T5.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from hypothesis import strategies as st

from topoverify.experiments import clouds as _c
from topoverify.symbolic import interleaving_epsilon_numeric

__all__ = [
    "BiLipschitzMap",
    "point_clouds",
    "circle_clouds",
    "two_circle_clouds",
    "figure_eight_clouds",
    "sphere_clouds",
    "torus_clouds",
    "thin_loop_clouds",
    "bilipschitz_maps",
]

_SEEDS = st.integers(min_value=0, max_value=2**16)


def _as_strategy(v: Any) -> st.SearchStrategy:
    return v if isinstance(v, st.SearchStrategy) else st.just(v)


def _noise(max_noise: float) -> st.SearchStrategy[float]:
    if max_noise <= 0:
        return st.just(0.0)
    return st.one_of(st.just(0.0), st.floats(0.0, max_noise, allow_nan=False, allow_infinity=False))


def _shape(gen, intrinsic: int, min_points: int, max_points: int, ambient_dim: Any, max_noise: float, **kw: Any):
    radius_s = _as_strategy(kw.pop("radius", 1.0))

    @st.composite
    def build(draw: st.DrawFn) -> np.ndarray:
        n = draw(st.integers(min_points, max_points))
        dim = draw(_as_strategy(ambient_dim))
        noise = draw(_noise(max_noise))
        radius = draw(radius_s)
        seed = draw(_SEEDS)
        return gen(n, radius=radius, noise=noise, ambient_dim=max(int(dim), intrinsic), seed=seed, **kw)

    return build()


def point_clouds(
    min_points: int = 1, max_points: int = 40, dim: Any = 3, *, duplicates: bool = False
) -> st.SearchStrategy[np.ndarray]:
    """Gaussian clouds (n, dim) from a drawn seed; with ``duplicates=True`` some rows are repeated."""

    @st.composite
    def build(draw: st.DrawFn) -> np.ndarray:
        n = draw(st.integers(min_points, max_points))
        d = int(draw(_as_strategy(dim)))
        rng = np.random.default_rng(draw(_SEEDS))
        x = rng.standard_normal((n, d))
        if duplicates and n > 1:
            k = draw(st.integers(0, n - 1))
            x[rng.integers(0, n, k)] = x[rng.integers(0, n, k)]
        return x

    return build()


def circle_clouds(
    min_points: int = 8, max_points: int = 60, ambient_dim: Any = 2, max_noise: float = 0.0, radius: Any = 1.0
) -> st.SearchStrategy[np.ndarray]:
    """Points on a circle (Betti (1, 1)) in R^ambient_dim, optional Gaussian noise up to ``max_noise``."""
    return _shape(_c.circle, 2, min_points, max_points, ambient_dim, max_noise, radius=radius)


def two_circle_clouds(
    min_points: int = 16, max_points: int = 80, ambient_dim: Any = 2, max_noise: float = 0.0
) -> st.SearchStrategy[np.ndarray]:
    """Two disjoint unit circles, centres 3 apart (Betti (2, 2))."""
    return _shape(_c.two_circles, 2, min_points, max_points, ambient_dim, max_noise)


def figure_eight_clouds(
    min_points: int = 16, max_points: int = 80, ambient_dim: Any = 2, max_noise: float = 0.0
) -> st.SearchStrategy[np.ndarray]:
    """Wedge of two unit circles (Betti (1, 2))."""
    return _shape(_c.figure_eight, 2, min_points, max_points, ambient_dim, max_noise)


def sphere_clouds(
    min_points: int = 10, max_points: int = 60, ambient_dim: Any = 3, max_noise: float = 0.0, radius: Any = 1.0
) -> st.SearchStrategy[np.ndarray]:
    """Points on S² (Betti (1, 0, 1)), randomly isometrically embedded in R^ambient_dim."""
    return _shape(_c.sphere, 3, min_points, max_points, ambient_dim, max_noise, radius=radius)


def torus_clouds(
    min_points: int = 10, max_points: int = 60, ambient_dim: Any = 4, max_noise: float = 0.0
) -> st.SearchStrategy[np.ndarray]:
    """Points on the flat torus in R^4 (Betti (1, 2, 1)), embedded in R^ambient_dim."""
    return _shape(_c.torus, 4, min_points, max_points, ambient_dim, max_noise)


def thin_loop_clouds(
    min_points: int = 64, max_points: int = 256, max_aspect: float = 20.0, ambient_dim: Any = 2
) -> st.SearchStrategy[np.ndarray]:
    """Thin ellipses (β1 = 1) and thin figure-eights (β1 = 2), length up to ``max_aspect`` times the width
    (shrinks to a round circle); Betti numbers under ``robust_betti(rule="gap")`` when sampled densely."""

    @st.composite
    def build(draw: st.DrawFn) -> np.ndarray:
        n = draw(st.integers(min_points, max_points))
        aspect = draw(st.floats(1.0, max_aspect, allow_nan=False, allow_infinity=False))
        gen = draw(st.sampled_from([_c.circle, _c.figure_eight]))
        dim = max(int(draw(_as_strategy(ambient_dim))), 2)
        return gen(n, ambient_dim=dim, seed=draw(_SEEDS), aspect=aspect)

    return build()


@dataclass(frozen=True)
class BiLipschitzMap:
    """The linear map ``x -> x @ matrix.T + shift`` with singular values in ``[a, b]``, so every pairwise
    distance ratio lies in ``[a, b]`` (T5's hypothesis with exactly known constants)."""

    matrix: np.ndarray
    shift: np.ndarray
    a: float
    b: float

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(x, dtype=np.float64) @ self.matrix.T + self.shift

    @property
    def singular_values(self) -> np.ndarray:
        return np.linalg.svd(self.matrix, compute_uv=False)

    @property
    def epsilon(self) -> float:
        """T5's log-bottleneck bound ``max(log b, -log a)`` (from :mod:`topoverify.symbolic`)."""
        return interleaving_epsilon_numeric(self.a, self.b)


def bilipschitz_maps(a: float, b: float, dim: int) -> st.SearchStrategy[BiLipschitzMap]:
    """Linear maps R^dim -> R^dim ``U diag(s) V^T + shift`` with Haar-random U, V and each singular value
    s_i drawn in [a, b] (shrinks to ``a``); the reported ``a``, ``b`` are the drawn extremes' hull
    ``[a, b]``, which contains every distance ratio."""
    if not (0 < a <= b):
        raise ValueError(f"need 0 < a <= b; got a={a}, b={b}")

    @st.composite
    def build(draw: st.DrawFn) -> BiLipschitzMap:
        s = np.array(draw(st.lists(st.floats(a, b, allow_nan=False), min_size=dim, max_size=dim)))
        rng = np.random.default_rng(draw(_SEEDS))
        u = _c.random_isometric_embedding(dim, dim, rng)
        v = _c.random_isometric_embedding(dim, dim, rng)
        shift = rng.standard_normal(dim) * draw(st.sampled_from([0.0, 1.0]))
        return BiLipschitzMap(matrix=(u * s[None, :]) @ v, shift=shift, a=float(a), b=float(b))

    return build()
