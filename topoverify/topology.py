"""Persistent homology of neuron clouds: diagrams, robust Betti numbers, log-scale bottleneck, merges.

Conventions (ripser's): Vietoris–Rips filtration by *edge length* (a simplex enters at its diameter),
diagrams are ``(k, 2)`` float arrays of (birth, death), H0's one essential class is kept as
``(0, inf)``. Ripser computes in float32, so diagram values carry a relative rounding of about 6e-8.

Claims used here (see ``spec/``):

* **T5** (persistence stability). If every pairwise distance is multiplied by a factor in ``[a, b]``,
  the Rips filtrations before and after are multiplicatively interleaved, so the diagrams in log
  coordinates ``(log birth, log death)`` are within bottleneck distance
  ``eps = max(log b, -log a)`` (:func:`stability_epsilon`, :func:`log_bottleneck`). Every feature with
  log-persistence ``> 2 eps`` survives (:func:`surviving_features`). H0 classes are born at 0, i.e. at
  ``-inf`` on the log scale: they have infinite log-persistence and are compared by their log deaths.
* **Rips stability** (Chazal, de Silva, Oudot 2009): ``d_B(Dgm(X), Dgm(Y)) <= 2 d_GH(X, Y)``, and for a
  subsample ``Y`` of ``X``, ``d_GH <= d_H(X, Y) = r_cover``. So a greedily subsampled diagram is within
  (linear) bottleneck distance ``2 r_cover`` of the full one: :attr:`PersistenceResult.error_bound`.
* **T6** (merged neurons stay merged) is checked with :func:`count_distinct` / :func:`merged_pairs`.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import connected_components, maximum_bipartite_matching
from scipy.spatial import cKDTree
from scipy.spatial.distance import pdist, squareform

from ._results import ResultMixin, fmt, jsonable
from .errors import TopoverifyError

__all__ = [
    "PersistenceResult",
    "persistence",
    "robust_betti",
    "betti_at_scale",
    "log_diagram",
    "log_bottleneck",
    "bottleneck",
    "stability_epsilon",
    "surviving_features",
    "count_distinct",
    "merged_pairs",
    "merge_clusters",
    "DEFAULT_LOG_THRESHOLD",
]

#: Default log-persistence threshold of :func:`robust_betti`: ``log 2``. Why: in R^d the Rips filtration
#: (by edge length) and the Čech filtration (union of balls, by diameter) are multiplicatively
#: interleaved with constant sqrt(2) (Jung's theorem: Čech(r) ⊆ Rips(r) ⊆ Čech(sqrt(2) r) with balls
#: of radius r/2), i.e. within ``eps = log(sqrt 2)`` on the log scale. By the same "survives if
#: log-persistence > 2 eps" argument as T5, a Rips feature with ``log(death/birth) > log 2`` is
#: certified to be a feature of the union of balls (the offsets of the sample), not a Rips artefact.
DEFAULT_LOG_THRESHOLD = math.log(2.0)

_DENSE_PDIST_LIMIT = 4e8  # N^2 d / 2 above which distances use BLAS (Gram trick) instead of pdist


# --------------------------------------------------------------------------------------------------
# input handling
# --------------------------------------------------------------------------------------------------


def _as_cloud(cloud: Any, name: str = "cloud") -> np.ndarray:
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


def _check_maxdim(maxdim: int) -> int:
    if not isinstance(maxdim, (int, np.integer)) or isinstance(maxdim, bool) or maxdim < 0:
        raise TopoverifyError(f"maxdim must be an integer >= 0 (0 for H0 only, 1 for H0+H1, ...); got {maxdim!r}.")
    return int(maxdim)


def _as_diagram(dgm: Any, name: str = "diagram") -> np.ndarray:
    """Return a (k, 2) float64 diagram; validate birth <= death, no NaN, births >= 0."""
    if hasattr(dgm, "detach"):
        dgm = dgm.detach().cpu().numpy()
    d = np.asarray(dgm, dtype=np.float64)
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


def _pairwise(x: np.ndarray) -> np.ndarray:
    """Full Euclidean distance matrix (float64). pdist (exact) for moderate sizes, BLAS Gram trick above."""
    n, d = x.shape
    if n * n * d / 2 <= _DENSE_PDIST_LIMIT:
        return squareform(pdist(x))
    sq = np.einsum("ij,ij->i", x, x)
    g = sq[:, None] + sq[None, :] - 2.0 * (x @ x.T)
    np.maximum(g, 0.0, out=g)
    np.fill_diagonal(g, 0.0)
    return np.sqrt(g, out=g)


def _greedy_landmarks(x: np.ndarray, n_perm: int) -> tuple[np.ndarray, float]:
    """Farthest-point (greedy) subsample of ``n_perm`` rows starting from row 0, and its covering radius.

    The covering radius ``max_i min_l ||x_i - x_l||`` (Hausdorff distance between cloud and landmarks)
    is computed exactly from the final landmark set (ripser's ``r_cover`` reports the insertion radius
    of the last landmark, an upper bound of it).
    """
    n = x.shape[0]
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
    from ripser import ripser

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = ripser(dm, maxdim=maxdim, distance_matrix=True, thresh=thresh)
    return [np.asarray(d, dtype=np.float64).reshape(-1, 2) for d in res["dgms"]]


# --------------------------------------------------------------------------------------------------
# persistence
# --------------------------------------------------------------------------------------------------


@dataclass
class PersistenceResult(ResultMixin):
    """Rips persistence diagrams of a cloud (ripser), with the certified subsampling error.

    ``diagrams[k]`` is the H_k diagram, a (m, 2) float array of (birth, death); H0 keeps its essential
    class as ``(0, inf)``. ``error_bound = 2 * r_cover`` bounds the (linear) bottleneck distance between
    these diagrams and those of the full cloud (Rips stability); it is 0 when no subsampling was done.
    ``scale`` is the diameter of the points the diagrams were computed on. ``points`` (the cloud or the
    landmark subsample actually used, excluded from ``to_dict``) lets :func:`robust_betti` build the H0
    merge tree.
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
    points: np.ndarray | None = field(default=None, repr=False)

    @property
    def subsampled(self) -> bool:
        return self.n_used < self.n_points

    def to_dict(self) -> dict[str, Any]:
        skip = {"points"}
        return {f.name: jsonable(getattr(self, f.name)) for f in dataclasses.fields(self) if f.name not in skip}

    def __str__(self) -> str:
        counts = ", ".join(f"H{k}: {len(d)}" for k, d in enumerate(self.diagrams))
        how = (
            f"greedy subsample {self.n_used}/{self.n_points}, r_cover {fmt(self.r_cover)}, "
            f"bottleneck to full diagrams <= {fmt(self.error_bound)} (2·r_cover, Rips stability)"
            if self.subsampled
            else f"all {self.n_points} points (exact, error 0)"
        )
        return f"Rips persistence up to H{self.maxdim} [{counts}] on {how}; diameter {fmt(self.scale)}, {fmt(self.seconds, 3)} s"


def persistence(cloud: Any, maxdim: int = 1, n_perm: int | None = None) -> PersistenceResult:
    """Vietoris–Rips persistence diagrams H0..H_maxdim of an (N, d) cloud (numpy or torch).

    With ``n_perm`` (< N) the diagrams are those of a farthest-point subsample of ``n_perm`` points and
    ``error_bound = 2 * r_cover`` certifies them: the bottleneck distance to the full cloud's diagrams is
    at most twice the covering radius (Rips stability; used by T5 checks on large clouds). ``n_perm >= N``
    uses all points.
    """
    import time

    t0 = time.perf_counter()
    x = _as_cloud(cloud)
    maxdim = _check_maxdim(maxdim)
    n = x.shape[0]
    if n_perm is not None:
        if not isinstance(n_perm, (int, np.integer)) or isinstance(n_perm, bool) or n_perm < 1:
            raise TopoverifyError(f"n_perm must be a positive integer (number of landmarks) or None; got {n_perm!r}.")
        n_perm = int(n_perm)
    if n_perm is not None and n_perm < n:
        idx, r_cover = _greedy_landmarks(x, n_perm)
        pts = x[idx]
    else:
        idx, r_cover, pts = None, 0.0, x
    dm = _pairwise(pts)
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
    )


def _result_of(cloud_or_result: Any, maxdim: int, n_perm: int | None = None) -> PersistenceResult:
    if isinstance(cloud_or_result, PersistenceResult):
        if cloud_or_result.maxdim < maxdim:
            raise TopoverifyError(
                f"the PersistenceResult has diagrams up to H{cloud_or_result.maxdim}, but H{maxdim} was asked for; "
                f"recompute with persistence(cloud, maxdim={maxdim})."
            )
        return cloud_or_result
    return persistence(cloud_or_result, maxdim=maxdim, n_perm=n_perm)


# --------------------------------------------------------------------------------------------------
# Betti numbers
# --------------------------------------------------------------------------------------------------


def _h0_robust_components(points: np.ndarray, threshold: float, min_cluster_size: int) -> tuple[int, float]:
    """Robust β0 from the single-linkage merge tree (the H0 persistence of the Rips filtration).

    H0 classes are all born at 0, so ``log(death/birth)`` is infinite for every one of them; the rule is
    relative to the cloud's own sampling spacing instead. Walk the single-linkage merges (the H0 deaths,
    i.e. the minimum-spanning-tree edges) in increasing order, keeping ``floor`` = the largest merge height
    seen so far that was not counted. A merge of clusters A and B at height d counts as a separate
    component iff both contain at least ``min_cluster_size`` points and ``log(d / floor) > threshold``:
    the gap that separates them is more than ``exp(threshold)`` times every noise-level gap of the cloud.
    Small clumps and single outliers (sampling noise) never count; a counted merge does not raise the
    floor, so k equally spaced clusters give k. β0 = 1 + number of counted merges. (Checked empirically:
    no spurious components on uniform samples of a circle, a sphere or a Gaussian blob for N >= 30.)
    Returns (β0, floor): the floor is the cloud's sampling spacing, also used for k >= 1.
    """
    n = points.shape[0]
    if n <= 1:
        return n, 0.0
    from scipy.cluster.hierarchy import linkage

    if n * n * points.shape[1] / 2 <= _DENSE_PDIST_LIMIT:
        z = linkage(points, method="single")
    else:
        dm = _pairwise(points)
        z = linkage(dm[np.triu_indices(n, 1)], method="single")
    size = np.ones(2 * n - 1, dtype=np.int64)
    floor = 0.0  # largest merge height so far that was not counted: the cloud's sampling spacing
    count = 0
    for k, (a, b, d, sz) in enumerate(z):
        a, b = int(a), int(b)
        counted = (
            min(size[a], size[b]) >= min_cluster_size
            and d > 0
            and (floor == 0 or math.log(d / floor) > threshold)
        )
        count += int(counted)
        size[n + k] = int(sz)
        if not counted:
            floor = max(floor, float(d))
    return 1 + count, floor


DUPLICATE_RTOL = 1e-9  # neurons closer than this (relative to the cloud's radius) are one point of the support


def _default_min_cluster_size(n: int) -> int:
    return max(3, int(math.ceil(0.02 * n)))


def robust_betti(
    cloud_or_result: Any,
    maxdim: int = 1,
    threshold: float = DEFAULT_LOG_THRESHOLD,
    *,
    min_cluster_size: int | None = None,
    n_perm: int | None = None,
    spacing_factor: float | None = None,
) -> tuple[int, ...]:
    """Betti numbers (β0, ..., β_maxdim) counting only features that persist on a log scale.

    * k >= 1: the number of H_k points with ``log(death / birth) > threshold`` (essential classes count).
      Default ``threshold = log 2`` (:data:`DEFAULT_LOG_THRESHOLD`: a Rips feature that lives longer than a
      factor 2 is certified to be a feature of the union of balls around the sample). The union of balls
      has holes of its own between neighbouring samples of a *surface*: on 200–300 uniform points of S² they
      reach log-persistence 0.9 > log 2. With ``spacing_factor`` (e.g. 3) a feature must also die beyond
      that multiple of the sampling spacing (the H0 floor below): those holes die by 2.1× the spacing, while
      the features of dense samples of circles, spheres, tori, two circles and figure-eights die beyond
      3.4× (measured). It is off by default because sparse samples (a circle of 8–10 points, a torus of a
      few hundred) have true features dying within 3× their spacing.
    * k = 0: computed on the support (neurons within ``DUPLICATE_RTOL`` of the cloud's radius count once, so
      multiplicities from merged neurons do not matter); births are 0, so the rule is scale-relative: a merge of two single-linkage clusters at height
      d counts iff both have at least ``min_cluster_size`` points (default ``max(3, ceil(0.02 N))``) and d
      exceeds ``exp(threshold)`` times every non-counted merge height below it (the sampling spacing; see
      :func:`_h0_robust_components`); the infinite bar counts as 1.

    With a subsampled :class:`PersistenceResult` (``n_perm``) the count is that of the landmark cloud,
    whose diagrams are within ``error_bound`` of the full ones.
    """
    maxdim = _check_maxdim(maxdim)
    if not (isinstance(threshold, (int, float)) and threshold >= 0 and math.isfinite(threshold)):
        raise TopoverifyError(f"threshold is a log-ratio and must be a finite number >= 0; got {threshold!r}.")
    res = _result_of(cloud_or_result, maxdim, n_perm)
    pts = res.points
    if pts is None:
        raise TopoverifyError("this PersistenceResult carries no points (e.g. rebuilt from to_dict()); pass the cloud.")
    # β0 is a property of the support: merged neurons (T6: exact or round-off-level duplicates) count once,
    # so the answer cannot depend on how many copies of a point there are.
    labels = _labels(pts, _tolerance(pts, DUPLICATE_RTOL, 0.0))
    _, first = np.unique(labels, return_index=True)
    support = pts[np.sort(first)]
    m = _default_min_cluster_size(support.shape[0]) if min_cluster_size is None else int(min_cluster_size)
    if m < 1:
        raise TopoverifyError(f"min_cluster_size must be >= 1; got {min_cluster_size!r}.")
    beta0, spacing = _h0_robust_components(support, threshold, m)
    out = [beta0]
    for k in range(1, maxdim + 1):
        d = res.diagrams[k]
        with np.errstate(divide="ignore"):
            lp = np.log(d[:, 1]) - np.log(d[:, 0])
        keep = lp > threshold
        if spacing_factor is not None:
            keep &= d[:, 1] > spacing_factor * spacing
        out.append(int(np.sum(keep)))
    return tuple(out)


def betti_at_scale(cloud_or_result: Any, scale: float, maxdim: int | None = None, *, n_perm: int | None = None) -> tuple[int, ...]:
    """Betti numbers of the Rips complex at filtration value ``scale`` (edge length): the number of
    features with ``birth <= scale < death`` in each dimension 0..maxdim (default: the result's maxdim,
    or 1 for a cloud).

    This is the fixed-scale method (build the Rips complex at one scale, count homology); its answer
    depends on the choice of scale, which :func:`robust_betti` avoids.
    """
    if not (isinstance(scale, (int, float, np.floating)) and math.isfinite(scale) and scale >= 0):
        raise TopoverifyError(f"scale must be a finite filtration value >= 0 (an edge length); got {scale!r}.")
    if maxdim is None:
        maxdim = cloud_or_result.maxdim if isinstance(cloud_or_result, PersistenceResult) else 1
    res = _result_of(cloud_or_result, _check_maxdim(maxdim), n_perm)
    return tuple(
        int(np.sum((d[:, 0] <= scale) & (d[:, 1] > scale))) for d in res.diagrams[: maxdim + 1]
    )


# --------------------------------------------------------------------------------------------------
# bottleneck distances
# --------------------------------------------------------------------------------------------------


def log_diagram(dgm: Any) -> np.ndarray:
    """Diagram in log coordinates ``(log birth, log death)`` (T5). Births 0 become ``-inf`` (H0),
    deaths ``inf`` stay ``inf``; zero-persistence points (birth == death, on the diagonal) are dropped."""
    d = _as_diagram(dgm)
    d = d[d[:, 1] > d[:, 0]]
    with np.errstate(divide="ignore"):
        return np.log(d)


def _bottleneck_finite(p: np.ndarray, q: np.ndarray) -> float:
    """Bottleneck distance (L∞ ground metric, diagonal allowed) between two finite diagrams.

    Binary search over the candidate values with a maximum bipartite matching (Hopcroft–Karp, scipy) on
    the standard (m+n)×(n+m) graph: rows = points of p, then diagonal copies of q's points; columns =
    points of q, then diagonal copies of p's points.
    """
    m, n = len(p), len(q)
    if m == 0 and n == 0:
        return 0.0
    hp = 0.5 * (p[:, 1] - p[:, 0])
    hq = 0.5 * (q[:, 1] - q[:, 0])
    if m == 0:
        return float(hq.max())
    if n == 0:
        return float(hp.max())
    cross = np.maximum(np.abs(p[:, None, 0] - q[None, :, 0]), np.abs(p[:, None, 1] - q[None, :, 1]))
    cand = np.unique(np.concatenate([cross.ravel(), hp, hq]))
    upper = max(hp.max(), hq.max())  # matching everything to the diagonal always works
    cand = cand[cand <= upper]
    size = m + n

    def feasible(t: float) -> bool:
        g = np.zeros((size, size), dtype=bool)
        g[:m, :n] = cross <= t
        g[:m, n:] = np.diag(hp <= t)
        g[m:, :n] = np.diag(hq <= t)
        g[m:, n:] = True
        match = maximum_bipartite_matching(csr_matrix(g), perm_type="column")
        return bool(np.all(match >= 0))

    lo, hi = 0, len(cand) - 1  # cand[hi] == upper is feasible
    while lo < hi:
        mid = (lo + hi) // 2
        if feasible(cand[mid]):
            hi = mid
        else:
            lo = mid + 1
    return float(cand[lo])


def _sorted_match(x: np.ndarray, y: np.ndarray) -> float:
    """Bottleneck of two equal-size 1-D multisets that must be matched to each other (no diagonal)."""
    if len(x) != len(y):
        return math.inf
    if len(x) == 0:
        return 0.0
    diff = np.abs(np.sort(x) - np.sort(y))
    return float(diff.max())


def bottleneck(dgm_a: Any, dgm_b: Any) -> float:
    """Bottleneck distance between two diagrams in linear coordinates, with essential classes.

    Points with infinite death can only be matched to each other (by birth): if the two diagrams have
    different numbers of them the distance is ``inf``. The finite parts use :func:`_bottleneck_finite`.
    (``persim.bottleneck`` drops infinite points with a warning, which can report a finite distance
    where the true one is infinite.)
    """
    a, b = _as_diagram(dgm_a, "dgm_a"), _as_diagram(dgm_b, "dgm_b")
    ia, ib = np.isinf(a[:, 1]), np.isinf(b[:, 1])
    ess = _sorted_match(a[ia, 0], b[ib, 0])
    if math.isinf(ess):
        return math.inf
    fa, fb = a[~ia], b[~ib]
    fa, fb = fa[fa[:, 1] > fa[:, 0]], fb[fb[:, 1] > fb[:, 0]]
    return max(ess, _bottleneck_finite(fa, fb))


def log_bottleneck(dgm_a: Any, dgm_b: Any) -> float:
    """Bottleneck distance between two diagrams in log coordinates (T5).

    Points are split by which log coordinate is infinite; a matching can only pair points of the same
    kind (any other pair, or a pair with the diagonal, costs ``inf``), so the distance is the largest of:

    * ``(0, inf)`` classes: the counts must agree (then cost 0), else ``inf``;
    * birth 0, finite death (H0): the counts must agree, matched by sorted log deaths (optimal in 1-D);
    * positive birth, infinite death: the counts must agree, matched by sorted log births;
    * finite points: the usual bottleneck distance of ``(log b, log d)`` with the diagonal.

    Zero-persistence points (including H0's (0, 0) from duplicate points) lie on the diagonal and are
    ignored. Returns ``inf`` when essential classes differ.
    """
    a, b = _as_diagram(dgm_a, "dgm_a"), _as_diagram(dgm_b, "dgm_b")
    a, b = a[a[:, 1] > a[:, 0]], b[b[:, 1] > b[:, 0]]

    def split(d: np.ndarray) -> tuple[int, np.ndarray, np.ndarray, np.ndarray]:
        z, inf = d[:, 0] == 0, np.isinf(d[:, 1])
        return int(np.sum(z & inf)), d[z & ~inf, 1], d[~z & inf, 0], d[~z & ~inf]

    ea, za, ia, fa = split(a)
    eb, zb, ib, fb = split(b)
    if ea != eb or len(za) != len(zb) or len(ia) != len(ib):
        return math.inf
    out = max(_sorted_match(np.log(za), np.log(zb)), _sorted_match(np.log(ia), np.log(ib)))
    return max(out, _bottleneck_finite(np.log(fa), np.log(fb)))


# --------------------------------------------------------------------------------------------------
# T5 helpers
# --------------------------------------------------------------------------------------------------


def stability_epsilon(a: float, b: float) -> float:
    """T5: log-scale bottleneck bound ``eps = max(log b, -log a)`` when every pairwise distance is scaled by
    a factor in [a, b] (0 <= a <= b). ``a = 0`` (points may merge) gives ``inf``."""
    if not (a >= 0 and b >= a and math.isfinite(b)):
        raise TopoverifyError(f"need 0 <= a <= b < inf for distance-ratio bounds [a, b]; got a={a!r}, b={b!r}.")
    return math.inf if a == 0 else max(math.log(b), -math.log(a))


def surviving_features(dgm: Any, eps: float) -> np.ndarray:
    """T5: the points of ``dgm`` whose log-persistence ``log(death/birth)`` exceeds ``2 eps``; these are
    guaranteed to survive any map with log-bottleneck distortion ``eps``. H0 points (birth 0) have
    infinite log-persistence and always survive (distinct points stay distinct under a bi-Lipschitz map);
    zero-persistence points never do."""
    d = _as_diagram(dgm)
    if not (eps >= 0):
        raise TopoverifyError(f"eps must be >= 0 (see stability_epsilon); got {eps!r}.")
    d = d[d[:, 1] > d[:, 0]]
    with np.errstate(divide="ignore"):
        lp = np.log(d[:, 1]) - np.log(d[:, 0])
    return d[lp > 2 * eps]


# --------------------------------------------------------------------------------------------------
# merges (T6)
# --------------------------------------------------------------------------------------------------


def _tolerance(x: np.ndarray, rtol: float, atol: float) -> float:
    """``atol + rtol * R`` with R = max_i ||x_i - mean|| (the cloud's radius about its centroid, within a
    factor 2 of its diameter, O(N d) to compute)."""
    if not (rtol >= 0 and atol >= 0 and math.isfinite(rtol) and math.isfinite(atol)):
        raise TopoverifyError(f"rtol and atol must be finite and >= 0; got rtol={rtol!r}, atol={atol!r}.")
    if rtol == 0:
        return float(atol)
    radius = float(np.sqrt(((x - x.mean(axis=0)) ** 2).sum(axis=1)).max())
    return float(atol + rtol * radius)


def _exact_groups(x: np.ndarray) -> np.ndarray:
    x = x + 0.0  # -0.0 -> 0.0, so that byte-wise row comparison equals numeric equality
    _, inv = np.unique(x, axis=0, return_inverse=True)
    return inv.reshape(-1)


def _labels(x: np.ndarray, tol: float) -> np.ndarray:
    if tol == 0:
        return _exact_groups(x)
    pairs = cKDTree(x).query_pairs(r=tol, output_type="ndarray")
    n = x.shape[0]
    g = csr_matrix((np.ones(len(pairs), dtype=np.int8), (pairs[:, 0], pairs[:, 1])), shape=(n, n))
    return connected_components(g, directed=False)[1]


def count_distinct(cloud: Any, rtol: float = 0.0, atol: float = 0.0) -> int:
    """Number of distinct neurons (T6: never grows under an equivariant rule).

    ``rtol = atol = 0`` (default): exact equality of rows (T6 is a statement of exact equality). Otherwise
    two neurons are merged when ``||θ_i - θ_j|| <= atol + rtol * R``, R = max distance of a neuron to the
    centroid, and merges are closed transitively (single-linkage clusters at that distance).
    """
    x = _as_cloud(cloud)
    return int(np.unique(_labels(x, _tolerance(x, rtol, atol))).size)


def merge_clusters(cloud: Any, rtol: float = 0.0, atol: float = 0.0) -> list[list[int]]:
    """Groups (sorted index lists, size >= 2) of neurons merged under the :func:`count_distinct` rule."""
    x = _as_cloud(cloud)
    lab = _labels(x, _tolerance(x, rtol, atol))
    order = np.argsort(lab, kind="stable")
    groups = np.split(order, np.nonzero(np.diff(lab[order]))[0] + 1)
    return sorted([sorted(g.tolist()) for g in groups if len(g) > 1])


def merged_pairs(cloud: Any, rtol: float = 0.0, atol: float = 0.0) -> list[tuple[int, int]]:
    """Pairs (i, j), i < j, of neurons in the same merge cluster (see :func:`merge_clusters`), sorted."""
    out: list[tuple[int, int]] = []
    for g in merge_clusters(cloud, rtol, atol):
        out.extend((g[i], g[j]) for i in range(len(g)) for j in range(i + 1, len(g)))
    return sorted(out)
