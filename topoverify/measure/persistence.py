"""Rips persistence diagrams of neuron clouds (ripser), with certified subsampling; cloud and diagram input.

Conventions (ripser's): Vietoris–Rips filtration by *edge length* (a simplex enters at its diameter),
diagrams are ``(k, 2)`` float arrays of (birth, death), H0's one essential class is kept as ``(0, inf)``.
Ripser computes in float32, so diagram values carry a relative rounding of about 6e-8.

Rips stability (Chazal, de Silva, Oudot 2009): ``d_B(Dgm(X), Dgm(Y)) <= 2 d_GH(X, Y)``, and for a subsample
``Y`` of ``X``, ``d_GH <= d_H(X, Y) = r_cover``. So a greedily subsampled diagram is within (linear)
bottleneck distance ``2 r_cover`` of the full one: :attr:`PersistenceResult.error_bound`.
:func:`persistence` subsamples by itself above :data:`EXACT_LIMITS` points (``n_perm="auto"``) and says so.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy.spatial.distance import pdist, squareform

from topoverify.errors import TopoverifyError
from topoverify.formatting import NOT_SERIALIZED, ResultMixin, fmt

__all__ = ["PersistenceResult", "persistence", "exact_limit", "auto_landmarks", "CostWarning", "EXACT_LIMITS",
           "AUTO_LANDMARKS", "DENSE_PDIST_LIMIT", "GRAM_REFINE_FRACTION", "pairwise_distances"]

#: Largest cloud that :func:`persistence` computes exactly with ``n_perm="auto"`` (the default), per
#: ``maxdim`` (3 and above use the value of 2); above it, a greedy subsample of :data:`AUTO_LANDMARKS`
#: landmarks with the certified error ``2 r_cover``. Measured on 2 cores (noisy circle in R^3, exact H0+H1):
#: 3 s at 500 points, 14 s at 1000, 63 s at 1500, 174 s at 2000, minutes and gigabytes at 10 000; so layers
#: of up to 1024 neurons stay exact, and larger clouds take seconds (10 000 points in R^3: 512 landmarks,
#: 0.5–4.5 s).
EXACT_LIMITS = {0: 4000, 1: 1024, 2: 200}
AUTO_LANDMARKS = {0: 2000, 1: 512, 2: 150}

#: N^2 d / 2 above which distances use BLAS (Gram trick) instead of pdist
DENSE_PDIST_LIMIT = 4e8

#: Gram-trick squared distances below this fraction of |x_i|^2 + |x_j|^2 (of the centred cloud) are
#: recomputed from differences: the trick's absolute error is ~ d u64 (|x_i|^2 + |x_j|^2), so above the
#: fraction the relative error of a distance stays below ~1e-10, far under ripser's float32 rounding (6e-8).
GRAM_REFINE_FRACTION = 1e-3


class CostWarning(UserWarning):
    """A computation was made cheaper than asked (automatic subsampling), or will be expensive."""


# --------------------------------------------------------------------------------------------------
# input handling
# --------------------------------------------------------------------------------------------------


def as_cloud(cloud: Any, name: str = "cloud") -> np.ndarray:
    """Return ``cloud`` as a float64 (N, d) numpy array, or raise TopoverifyError naming the fix."""
    if hasattr(cloud, "detach") and hasattr(cloud, "cpu"):  # torch tensor
        cloud = cloud.detach().cpu().double().numpy()
    try:
        x = np.asarray(cloud, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise TopoverifyError(
            f"{name} must be a numeric (N, d) array or tensor; got {type(cloud).__name__} ({exc}). "
            "Pass the neuron cloud as an N×d matrix (one row per neuron)."
        ) from None
    if x.ndim == 1:
        raise TopoverifyError(
            f"{name} is 1-D with shape {x.shape}; expected an (N, d) matrix, one row per neuron. "
            "For N scalar neurons pass x.reshape(-1, 1); for one neuron pass x.reshape(1, -1)."
        )
    if x.ndim != 2:
        raise TopoverifyError(
            f"{name} has shape {x.shape}; expected a 2-D (N, d) matrix, one row per neuron. "
            "Flatten each neuron's parameters into one row first (e.g. x.reshape(N, -1))."
        )
    if x.shape[0] < 1 or x.shape[1] < 1:
        raise TopoverifyError(f"{name} has shape {x.shape}; it needs at least one point with at least one coordinate.")
    if not np.all(np.isfinite(x)):
        bad = np.unique(np.nonzero(~np.isfinite(x))[0])
        raise TopoverifyError(
            f"{name} contains NaN or Inf in {bad.size} row(s) (first: {bad[:5].tolist()}). "
            "A diverged run has no topology; report the NaN as a finding, or drop those rows explicitly."
        )
    return x


def check_maxdim(maxdim: int) -> int:
    if not isinstance(maxdim, (int, np.integer)) or isinstance(maxdim, bool) or maxdim < 0:
        raise TopoverifyError(f"maxdim must be an integer >= 0 (0 for H0 only, 1 for H0+H1, ...); got {maxdim!r}.")
    return int(maxdim)


def as_diagram(dgm: Any, name: str = "diagram") -> np.ndarray:
    """Return a (k, 2) float64 diagram; validate birth <= death, no NaN, births >= 0."""
    if isinstance(dgm, PersistenceResult):
        raise TopoverifyError(
            f"{name} is a PersistenceResult (diagrams H0..H{dgm.maxdim}), not one diagram; pass "
            f"result.diagrams[k] for dimension k, or give log_bottleneck/bottleneck two results (and dim=k "
            "for one dimension).")
    if hasattr(dgm, "detach"):
        dgm = dgm.detach().cpu().numpy()
    if isinstance(dgm, (list, tuple)) and dgm and all(
            isinstance(e, np.ndarray) and e.ndim == 2 for e in dgm):
        raise TopoverifyError(
            f"{name} is a list of {len(dgm)} diagrams (one per homology dimension, like result.diagrams); "
            "pass one of them, e.g. result.diagrams[1] for H1.")
    try:
        d = np.asarray(dgm, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise TopoverifyError(
            f"{name} must be a (k, 2) array of (birth, death) rows; got {type(dgm).__name__} ({exc}).") from None
    if d.size == 0:
        return np.zeros((0, 2))
    if d.ndim == 1 and d.shape[0] == 2:
        d = d.reshape(1, 2)
    if d.ndim != 2 or d.shape[1] < 2:
        raise TopoverifyError(f"{name} must be a (k, 2) array of (birth, death) rows; got shape {d.shape}.")
    d = d[:, :2]
    if np.isnan(d).any():
        raise TopoverifyError(f"{name} contains NaN; a persistence diagram needs real (birth, death) pairs.")
    if (d[:, 0] < 0).any() or np.isinf(d[:, 0]).any():
        raise TopoverifyError(f"{name} has a negative or infinite birth; Rips diagrams have 0 <= birth < inf.")
    if (d[:, 1] < d[:, 0]).any():
        raise TopoverifyError(f"{name} has a point with death < birth; pass (birth, death) rows in that order.")
    return d


def pairwise_distances(x: np.ndarray) -> np.ndarray:
    """Full Euclidean distance matrix (float64). pdist (exact) for moderate sizes; above
    :data:`DENSE_PDIST_LIMIT` the BLAS Gram trick |x|^2 + |y|^2 - 2 x·y on the centred cloud (distances are
    translation-invariant; centring removes a common offset), with the pairs it cannot resolve (squared
    distance below :data:`GRAM_REFINE_FRACTION` of |x|^2 + |y|^2: cancellation) recomputed from differences."""
    n, d = x.shape
    if n * n * d / 2 <= DENSE_PDIST_LIMIT:
        return squareform(pdist(x))
    x = x - x.mean(axis=0)
    sq = np.einsum("ij,ij->i", x, x)
    g = sq[:, None] + sq[None, :] - 2.0 * (x @ x.T)
    np.fill_diagonal(g, np.inf)
    rows, cols = np.nonzero(np.triu(g < GRAM_REFINE_FRACTION * (sq[:, None] + sq[None, :]), 1))
    np.maximum(g, 0.0, out=g)
    np.fill_diagonal(g, 0.0)
    np.sqrt(g, out=g)
    chunk = max(1, int(2e7 // d))  # pairs per block of differences: about 160 MB of float64 at a time
    for s in range(0, rows.size, chunk):
        r, c = rows[s:s + chunk], cols[s:s + chunk]
        exact = np.sqrt(np.einsum("ij,ij->i", x[r] - x[c], x[r] - x[c]))
        g[r, c] = exact
        g[c, r] = exact
    return g


def _greedy_landmarks(x: np.ndarray, n_perm: int) -> tuple[np.ndarray, float]:
    """Farthest-point (greedy) subsample of ``n_perm`` rows starting from row 0, and its covering radius.

    The covering radius ``max_i min_l ||x_i - x_l||`` (Hausdorff distance between cloud and landmarks)
    is computed exactly from the final landmark set (ripser's ``r_cover`` reports the insertion radius
    of the last landmark, an upper bound of it).
    """
    n = x.shape[0]
    x = x - x.mean(axis=0)  # distances are translation-invariant; centring limits the Gram trick's cancellation
    sq = np.einsum("ij,ij->i", x, x)
    idx = np.empty(n_perm, dtype=np.int64)
    idx[0] = 0
    mind = np.full(n, np.inf)
    for k in range(n_perm):
        if k > 0:
            idx[k] = int(np.argmax(mind))
        p = x[idx[k]]
        dist2 = sq + sq[idx[k]] - 2.0 * (x @ p)
        np.minimum(mind, dist2, out=mind)
        mind[idx[k]] = 0.0
    # exact covering radius: recompute landmark distances directly (no cancellation) for the farthest points
    lm = x[idx]
    cand = np.argsort(mind)[-min(n, 64):]  # points with the largest approximate distance
    exact = np.sqrt(((x[cand, None, :] - lm[None, :, :]) ** 2).sum(-1)).min(axis=1)
    approx_max = float(np.sqrt(max(mind.max(), 0.0)))
    r_cover = max(float(exact.max()), approx_max)  # never below either estimate
    return idx, r_cover


def _ripser_dm(dm: np.ndarray, maxdim: int, thresh: float = np.inf) -> list[np.ndarray]:
    # lazy: ripser imports scikit-learn (about 1 s), which `import topoverify` should not pay for
    from ripser import ripser

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = ripser(dm, maxdim=maxdim, distance_matrix=True, thresh=thresh)
    return [np.asarray(d, dtype=np.float64).reshape(-1, 2) for d in res["dgms"]]


# --------------------------------------------------------------------------------------------------
# persistence
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PersistenceResult(ResultMixin):
    """Rips persistence diagrams of a cloud (ripser), with the certified subsampling error.

    ``diagrams[k]`` is the H_k diagram, a (m, 2) float array of (birth, death); H0 keeps its essential
    class as ``(0, inf)``. ``error_bound = 2 * r_cover`` bounds the (linear) bottleneck distance between
    these diagrams and those of the full cloud (Rips stability); it is 0 when no subsampling was done.
    ``auto_subsampled`` says the subsample was chosen by :func:`persistence` itself (``n_perm="auto"`` on a
    cloud above :data:`EXACT_LIMITS`), ``note`` says why and how to change it. ``scale`` is the diameter of
    the points the diagrams were computed on. ``points`` (the cloud or the landmark subsample actually
    used, excluded from ``to_dict``) lets :func:`robust_betti` build the H0 merge tree.
    """

    diagrams: list[np.ndarray]
    maxdim: int
    n_points: int
    n_used: int
    error_bound: float
    r_cover: float
    scale: float
    seconds: float = 0.0
    landmarks: np.ndarray | None = field(default=None, repr=False)
    points: np.ndarray | None = field(default=None, repr=False, metadata=NOT_SERIALIZED)
    auto_subsampled: bool = False
    note: str = ""

    @property
    def subsampled(self) -> bool:
        return self.n_used < self.n_points

    def __str__(self) -> str:
        counts = ", ".join(f"H{k}: {len(d)}" for k, d in enumerate(self.diagrams))
        how = (
            f"{'automatic ' if self.auto_subsampled else ''}greedy subsample {self.n_used}/{self.n_points}, "
            f"r_cover {fmt(self.r_cover)}, bottleneck to full diagrams <= {fmt(self.error_bound)} "
            "(2·r_cover, Rips stability)"
            if self.subsampled
            else f"all {self.n_points} points (exact, error 0)"
        )
        note = f". {self.note}" if self.note else ""
        return (f"Rips persistence up to H{self.maxdim} [{counts}] on {how}; diameter {fmt(self.scale)}, "
                f"{fmt(self.seconds, 3)} s{note}")


def exact_limit(maxdim: int) -> int:
    """The largest cloud :func:`persistence` computes exactly by default at this ``maxdim``."""
    return EXACT_LIMITS[min(int(maxdim), 2)]


def auto_landmarks(maxdim: int) -> int:
    """The number of landmarks :func:`persistence` uses by default above :func:`exact_limit`."""
    return min(AUTO_LANDMARKS[min(int(maxdim), 2)], exact_limit(maxdim))


def _exact_cost_text(n: int, maxdim: int) -> str:
    gb = 24.0 * n * n / 1e9  # float64 distance matrix + ripser.py's two int64 index grids, before any homology
    return (f"exact persistence of {n} points up to H{maxdim} takes time growing faster than N^2 (2 cores, noisy "
            f"circle in R^3, H0+H1: 14 s at 1000 points, 3 min at 2000, 4 min and 8 GB at 10 000) and "
            f"{gb:.2g} GB for the distance matrices alone")


def _check_n_perm(n_perm: Any) -> int | str | None:
    if n_perm is None or (isinstance(n_perm, str) and n_perm == "auto"):
        return n_perm
    if not isinstance(n_perm, (int, np.integer)) or isinstance(n_perm, bool) or n_perm < 1:
        raise TopoverifyError(
            f"n_perm must be 'auto' (exact up to EXACT_LIMITS points, else a greedy subsample), None (all "
            f"points, whatever the cost) or a positive integer (number of landmarks); got {n_perm!r}.")
    return int(n_perm)


def persistence(cloud: Any, maxdim: int = 1, n_perm: int | str | None = "auto") -> PersistenceResult:
    """Vietoris–Rips persistence diagrams H0..H_maxdim of an (N, d) cloud (numpy or torch).

    ``n_perm``:

    * ``"auto"`` (default): all points when N <= :data:`EXACT_LIMITS` [maxdim] (1024 up to H1, 200 up to H2);
      above that a greedy subsample of :data:`AUTO_LANDMARKS` [maxdim] landmarks (512 up to H1, 150 up to
      H2), with ``auto_subsampled=True``, a ``note`` in the result and a :class:`CostWarning` naming the
      error bound and the way out (an explicit ``n_perm``, or ``None``). Exact persistence of 10 000 points
      in R^3 up to H1 takes minutes and gigabytes; the automatic subsample takes seconds, error stated.
    * an integer k < N: the diagrams of a farthest-point subsample of k points; ``error_bound = 2 *
      r_cover`` certifies them: the bottleneck distance to the full cloud's diagrams is at most twice the
      covering radius (Rips stability; used by T5 checks on large clouds). k >= N uses all points.
    * ``None``: all points whatever the cost (a :class:`CostWarning` states the cost above the limit).
    """
    t0 = time.perf_counter()
    x = as_cloud(cloud)
    maxdim = check_maxdim(maxdim)
    n_perm = _check_n_perm(n_perm)
    n = x.shape[0]
    limit = exact_limit(maxdim)
    auto, note = False, ""
    if n_perm == "auto":
        if n > limit:
            n_perm, auto = auto_landmarks(maxdim), True
        else:
            n_perm = None
    elif n_perm is None and n > limit:
        warnings.warn(f"persistence(n_perm=None): {_exact_cost_text(n, maxdim)}. Pass n_perm='auto' or "
                      f"n_perm=k (e.g. {limit}) for a greedy subsample with a certified error.", CostWarning,
                      stacklevel=2)
    if n_perm is not None and n_perm < n:
        idx, r_cover = _greedy_landmarks(x, n_perm)
        pts = x[idx]
    else:
        idx, r_cover, pts = None, 0.0, x
    if auto:
        note = (f"{n} points > {limit} (EXACT_LIMITS for maxdim={maxdim}): computed on a greedy subsample of "
                f"{n_perm} landmarks; bottleneck distance to the exact diagrams <= 2·r_cover = {2 * r_cover:.3g}. "
                f"Pass n_perm=k to choose the landmarks, or n_perm=None for all points ({_exact_cost_text(n, maxdim)})")
        warnings.warn(f"persistence: {note}.", CostWarning, stacklevel=2)
    dm = pairwise_distances(pts)
    diam = float(dm.max()) if dm.size else 0.0
    dgms = _ripser_dm(dm, maxdim)
    return PersistenceResult(
        diagrams=dgms,
        maxdim=maxdim,
        n_points=n,
        n_used=pts.shape[0],
        error_bound=2.0 * r_cover,
        r_cover=r_cover,
        scale=diam,
        seconds=time.perf_counter() - t0,
        landmarks=idx,
        points=pts,
        auto_subsampled=auto,
        note=note,
    )


def result_of(cloud_or_result: Any, maxdim: int, n_perm: int | str | None = "auto") -> PersistenceResult:
    if isinstance(cloud_or_result, PersistenceResult):
        if cloud_or_result.maxdim < maxdim:
            raise TopoverifyError(
                f"the PersistenceResult has diagrams up to H{cloud_or_result.maxdim}, but H{maxdim} was asked for; "
                f"recompute with persistence(cloud, maxdim={maxdim})."
            )
        return cloud_or_result
    return persistence(cloud_or_result, maxdim=maxdim, n_perm=n_perm)
