"""Point clouds with known topology: circle, two circles, figure-eight, sphere S², torus.

Every generator returns a float64 ``(n, ambient_dim)`` numpy array. Shapes are sampled in their
intrinsic coordinates, scaled by ``radius`` (or ``scale``), placed into R^ambient_dim by an isometric
embedding (a matrix with orthonormal rows; a *random* one when ``rotate=True`` — the default for
``ambient_dim`` larger than the intrinsic dimension — otherwise the first coordinates), and finally
perturbed by i.i.d. Gaussian noise of standard deviation ``noise`` in every ambient coordinate.
``seed`` is an int, a ``numpy.random.Generator`` or None.

Known Betti numbers (β0, β1, β2): circle (1, 1, 0), two circles (2, 2, 0), figure-eight (1, 2, 0),
sphere (1, 0, 1), torus (1, 2, 1).

Thin and anisotropic shapes: ``circle(..., aspect=a)`` is an ellipse whose length is ``a`` times its width,
``figure_eight(..., aspect=a)`` a wedge of two such lobes (sampled uniformly in the angle, so more densely
near the ends of a thin lobe); ``torus(..., radius=r)`` with ``r`` much smaller than ``major`` a thin torus.
Their loops are real but, sampled sparsely, short-lived on a log scale (see
:func:`topoverify.topology.robust_betti`, ``rule="gap"``).
"""

from __future__ import annotations

import math
from typing import Union

import numpy as np

from topoverify.errors import TopoverifyError

__all__ = [
    "SeedLike",
    "as_generator",
    "random_isometric_embedding",
    "embed",
    "circle",
    "two_circles",
    "figure_eight",
    "sphere",
    "torus",
    "BETTI",
]

SeedLike = Union[int, np.integer, np.random.Generator, None]

#: Betti numbers (β0, β1, β2) of the shapes generated here.
BETTI = {
    "circle": (1, 1, 0),
    "two_circles": (2, 2, 0),
    "figure_eight": (1, 2, 0),
    "sphere": (1, 0, 1),
    "torus": (1, 2, 1),
}


def as_generator(seed: SeedLike) -> np.random.Generator:
    """A numpy Generator from an int seed, a Generator (returned as is) or None (fresh entropy)."""
    if isinstance(seed, np.random.Generator):
        return seed
    if seed is None or isinstance(seed, (int, np.integer)) and not isinstance(seed, bool):
        return np.random.default_rng(seed)
    raise TopoverifyError(f"seed must be an int, a numpy.random.Generator or None; got {type(seed).__name__}.")


def _check(n: int, ambient_dim: int, intrinsic: int, noise: float, **positive: float) -> None:
    """Validate the common arguments; every keyword in ``positive`` must be finite and > 0."""
    if not isinstance(n, (int, np.integer)) or isinstance(n, bool) or n < 1:
        raise TopoverifyError(f"n (number of points) must be a positive integer; got {n!r}.")
    if not isinstance(ambient_dim, (int, np.integer)) or ambient_dim < intrinsic:
        raise TopoverifyError(
            f"ambient_dim must be an integer >= {intrinsic} (the dimension the shape lives in); got {ambient_dim!r}."
        )
    if not (noise >= 0 and math.isfinite(noise)):
        raise TopoverifyError(f"noise is a standard deviation and must be finite and >= 0; got {noise!r}.")
    for k, v in positive.items():
        if not (v > 0 and math.isfinite(v)):
            raise TopoverifyError(f"{k} must be finite and > 0; got {v!r}.")


def random_isometric_embedding(k: int, ambient_dim: int, seed: SeedLike = None) -> np.ndarray:
    """A (k, ambient_dim) matrix with orthonormal rows (Haar-random): ``x @ E`` embeds R^k isometrically."""
    if ambient_dim < k:
        raise TopoverifyError(f"cannot embed R^{k} isometrically in R^{ambient_dim}; need ambient_dim >= {k}.")
    rng = as_generator(seed)
    q, r = np.linalg.qr(rng.standard_normal((ambient_dim, k)))
    q = q * np.sign(np.diag(r))[None, :]  # Haar measure
    return q.T.copy()


def embed(x: np.ndarray, ambient_dim: int, rotate: bool | None = None, seed: SeedLike = None) -> np.ndarray:
    """Place the (n, k) cloud ``x`` in R^ambient_dim isometrically: a random orthonormal embedding when
    ``rotate`` (default: ``ambient_dim > k``), else zero-padding."""
    n, k = x.shape
    if rotate is None:
        rotate = ambient_dim > k
    if rotate:
        return x @ random_isometric_embedding(k, ambient_dim, seed)
    out = np.zeros((n, ambient_dim))
    out[:, :k] = x
    return out


def _finish(x: np.ndarray, ambient_dim: int, noise: float, rotate: bool | None, rng: np.random.Generator) -> np.ndarray:
    y = embed(x, ambient_dim, rotate, rng)
    if noise > 0:
        y = y + noise * rng.standard_normal(y.shape)
    return np.ascontiguousarray(y, dtype=np.float64)


def circle(
    n: int,
    radius: float = 1.0,
    noise: float = 0.0,
    ambient_dim: int = 2,
    seed: SeedLike = None,
    *,
    rotate: bool | None = None,
    center: float | np.ndarray = 0.0,
    aspect: float = 1.0,
) -> np.ndarray:
    """``n`` points uniform on a circle of ``radius`` (Betti (1, 1)), embedded in R^ambient_dim.

    ``aspect`` > 1 squeezes it into an ellipse with semi-axes ``radius`` and ``radius / aspect`` (length
    ``aspect`` times the width; points uniform in the angle parameter)."""
    _check(n, ambient_dim, 2, noise, radius=radius, aspect=aspect)
    rng = as_generator(seed)
    t = rng.uniform(0.0, 2 * math.pi, n)
    x = radius * np.stack([np.cos(t), np.sin(t) / aspect], axis=1)
    return _finish(x, ambient_dim, noise, rotate, rng) + center


def two_circles(
    n: int,
    radius: float = 1.0,
    noise: float = 0.0,
    ambient_dim: int = 2,
    seed: SeedLike = None,
    *,
    separation: float = 3.0,
    rotate: bool | None = None,
) -> np.ndarray:
    """Two disjoint circles of ``radius`` whose centres are ``separation * radius`` apart (> 2 for
    disjointness; Betti (2, 2)); n // 2 and n - n // 2 points."""
    _check(n, ambient_dim, 2, noise, radius=radius, separation=separation)
    if separation <= 2:
        raise TopoverifyError(f"separation (centre distance / radius) must exceed 2 for disjoint circles; got {separation}.")
    rng = as_generator(seed)
    t = rng.uniform(0.0, 2 * math.pi, n)
    side = np.arange(n) < n // 2
    cx = np.where(side, -0.5 * separation, 0.5 * separation)
    x = radius * np.stack([np.cos(t) + cx, np.sin(t)], axis=1)
    return _finish(x, ambient_dim, noise, rotate, rng)


def figure_eight(
    n: int,
    radius: float = 1.0,
    noise: float = 0.0,
    ambient_dim: int = 2,
    seed: SeedLike = None,
    *,
    rotate: bool | None = None,
    aspect: float = 1.0,
) -> np.ndarray:
    """Wedge of two circles of ``radius`` touching at the origin (Betti (1, 2)); n // 2 points on each.

    ``aspect`` > 1 makes each lobe an ellipse of length ``2 radius`` and width ``2 radius / aspect`` (a thin
    figure-eight; points uniform in the angle parameter)."""
    _check(n, ambient_dim, 2, noise, radius=radius, aspect=aspect)
    rng = as_generator(seed)
    t = rng.uniform(0.0, 2 * math.pi, n)
    s = np.where(np.arange(n) < n // 2, -1.0, 1.0)
    x = radius * np.stack([s * (1.0 + np.cos(t)), np.sin(t) / aspect], axis=1)
    return _finish(x, ambient_dim, noise, rotate, rng)


def sphere(
    n: int,
    radius: float = 1.0,
    noise: float = 0.0,
    ambient_dim: int = 3,
    seed: SeedLike = None,
    *,
    rotate: bool | None = None,
) -> np.ndarray:
    """``n`` points uniform on the 2-sphere of ``radius`` (Betti (1, 0, 1)), isometrically embedded (random
    orthonormal embedding) in R^ambient_dim."""
    _check(n, ambient_dim, 3, noise, radius=radius)
    rng = as_generator(seed)
    g = rng.standard_normal((n, 3))
    norms = np.linalg.norm(g, axis=1, keepdims=True)
    norms[norms == 0] = 1.0
    x = radius * g / norms
    return _finish(x, ambient_dim, noise, rotate, rng)


def torus(
    n: int,
    radius: float = 1.0,
    noise: float = 0.0,
    ambient_dim: int | None = None,
    seed: SeedLike = None,
    *,
    major: float = 2.0,
    kind: str = "flat",
    rotate: bool | None = None,
) -> np.ndarray:
    """``n`` points uniform on a torus (Betti (1, 2, 1)).

    ``kind="flat"``: the Clifford-type flat torus ``(major cos u, major sin u, radius cos v, radius sin v)``
    in R^4 (area-uniform = angle-uniform). ``kind="ring"``: the ring torus in R^3 with tube ``radius`` and
    centre-line radius ``major`` (> radius), area-uniform by rejection sampling. ``ambient_dim`` defaults
    to 4 (flat) or 3 (ring).
    """
    if kind not in ("flat", "ring"):
        raise TopoverifyError(f"kind must be 'flat' (R^4) or 'ring' (R^3); got {kind!r}.")
    k = 4 if kind == "flat" else 3
    ambient_dim = k if ambient_dim is None else ambient_dim
    _check(n, ambient_dim, k, noise, radius=radius, major=major)
    rng = as_generator(seed)
    u = rng.uniform(0.0, 2 * math.pi, n)
    if kind == "flat":
        v = rng.uniform(0.0, 2 * math.pi, n)
        x = np.stack([major * np.cos(u), major * np.sin(u), radius * np.cos(v), radius * np.sin(v)], axis=1)
    else:
        if major <= radius:
            raise TopoverifyError(f"a ring torus needs major > radius; got major={major}, radius={radius}.")
        v = np.empty(0)
        while v.size < n:  # density of v proportional to major + radius cos v
            cand = rng.uniform(0.0, 2 * math.pi, 2 * n)
            keep = rng.uniform(0.0, major + radius, 2 * n) < major + radius * np.cos(cand)
            v = np.concatenate([v, cand[keep]])
        v = v[:n]
        w = major + radius * np.cos(v)
        x = np.stack([w * np.cos(u), w * np.sin(u), radius * np.sin(v)], axis=1)
    return _finish(x, ambient_dim, noise, rotate, rng)
