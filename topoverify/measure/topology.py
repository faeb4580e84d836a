"""Persistent homology of neuron clouds: diagrams, robust Betti numbers, log-scale bottleneck, merges.

Conventions (ripser's): Vietoris–Rips filtration by *edge length* (a simplex enters at its diameter),
diagrams are ``(k, 2)`` float arrays of (birth, death), H0's one essential class is kept as
``(0, inf)``. Ripser computes in float32, so diagram values carry a relative rounding of about 6e-8.

Claims used here (see ``spec/``):

* **T5** (persistence stability). If every pairwise distance is multiplied by a factor in ``[a, b]``,
  the Rips filtrations before and after are multiplicatively interleaved, so the diagrams in log
  coordinates ``(log birth, log death)`` are within bottleneck distance
  ``eps = max(log b, -log a)`` (:func:`stability_epsilon`, :func:`log_bottleneck`). Every feature with
  log-persistence ``> 2 eps`` survives (:func:`surviving_features`), and a robust Betti count can only
  move within the range :func:`betti_bounds_after` gives. H0 classes are born at 0, i.e. at ``-inf`` on
  the log scale: they have infinite log-persistence and are compared by their log deaths.
* **Rips stability** (Chazal, de Silva, Oudot 2009): ``d_B(Dgm(X), Dgm(Y)) <= 2 d_GH(X, Y)``, and for a
  subsample ``Y`` of ``X``, ``d_GH <= d_H(X, Y) = r_cover``. So a greedily subsampled diagram is within
  (linear) bottleneck distance ``2 r_cover`` of the full one: :attr:`PersistenceResult.error_bound`.
  :func:`persistence` subsamples by itself above :data:`EXACT_LIMITS` points (``n_perm="auto"``) and says so.
* **T6** (merged neurons stay merged) is about equal parameters *and* equal optimizer state: count with
  :func:`count_distinct` (``state=``), and detect merges along a run with :class:`MergeTracker` (a pair
  merges when its distance *collapses* to the round-off level of the dtype, not when it is merely small).
"""

from __future__ import annotations

import dataclasses
import math
import time
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import connected_components, maximum_bipartite_matching
from scipy.spatial import cKDTree
from scipy.spatial.distance import pdist, squareform

from topoverify.formatting import ResultMixin, fmt, jsonable
from topoverify.errors import TopoverifyError

__all__ = [
    "PersistenceResult",
    "persistence",
    "robust_betti",
    "betti_report",
    "BettiReport",
    "FeatureEvidence",
    "betti_at_scale",
    "betti_bounds_after",
    "exact_limit",
    "auto_landmarks",
    "log_diagram",
    "log_bottleneck",
    "bottleneck",
    "stability_epsilon",
    "surviving_features",
    "count_distinct",
    "merged_pairs",
    "merge_clusters",
    "MergeTracker",
    "MergeReport",
    "merge_events",
    "CostWarning",
    "DEFAULT_LOG_THRESHOLD",
    "DEFAULT_MIN_GAP",
    "MIN_LOOP_LOG_PERSISTENCE",
    "GAP_MIN_BULK",
    "DEFAULT_MARGIN",
    "EXACT_LIMITS",
    "AUTO_LANDMARKS",
    "RULES",
]

#: Default log-persistence threshold of :func:`robust_betti`: ``log 2``. Why: in R^d the Rips filtration
#: (by edge length) and the Čech filtration (union of balls, by diameter) are multiplicatively
#: interleaved with constant sqrt(2) (Jung's theorem: Čech(r) ⊆ Rips(r) ⊆ Čech(sqrt(2) r) with balls
#: of radius r/2), i.e. within ``eps = log(sqrt 2)`` on the log scale. By the same "survives if
#: log-persistence > 2 eps" argument as T5, a Rips feature with ``log(death/birth) > log 2`` is
#: certified to be a feature of the union of balls (the offsets of the sample), not a Rips artefact.
DEFAULT_LOG_THRESHOLD = math.log(2.0)

#: Gap rule (``rule="gap"``): the weakest accepted feature must be at least this many times more
#: log-persistent than the strongest rejected one. Measured on pure noise (uniform and Gaussian clouds in
#: R^2, R^3, R^10, 40 seeds each): with 3, the floor and :data:`GAP_MIN_BULK`, 5 of 1800 clouds of 6–150
#: points get a spurious loop (log 2: 30) and none of 48 clouds of 100–1000 points (log 2: 8); with 2.5, 12
#: of the 1800; with 2, 32. The loops of thin ellipses and figure-eights (aspect 10–20, 256–1024 points)
#: stand 3.2–10 times above their noise (benchmarks/bench_topology.py).
DEFAULT_MIN_GAP = 3.0

#: Gap rule floor: ``log sqrt 2 = ½ log 2``. A Rips H1 class carried by 4 points is born at the longest
#: side of the quadrilateral and dies by its shorter diagonal, which is at most sqrt(2) times that side
#: (Euler's quadrilateral identity: the squared sides sum to the squared diagonals plus a non-negative
#: term, in any inner-product space). So log-persistence up to ½ log 2 is what the smallest loop, four
#: points of noise, can reach; the gap rule accepts nothing below it, whatever the gap.
MIN_LOOP_LOG_PERSISTENCE = 0.5 * math.log(2.0)

#: Gap rule: a gap below fewer than this many weaker features is no evidence (nothing to call noise); such
#: a cut needs the feature above it to pass log 2 as well, and otherwise only makes the count uncertain
#: (0 counted, range up to it). Measured on pure noise: it removes the false loops of clouds of 6–20 points
#: (13 of 1000 clouds without it, 0 with it); a sparse sample of a circle with one gap and no noise
#: features is then "0, uncertain up to 1" rather than 1.
GAP_MIN_BULK = 5

#: Default uncertainty margin of :func:`betti_report` and the sweep, relative: a feature whose decision
#: would flip if its log-persistence changed by a factor e^±0.1 (about 10 %) makes the count *uncertain*.
#: A convention, not a theorem; for one optimizer step T5 gives an absolute bound, 2 eps
#: (see :func:`betti_bounds_after`).
DEFAULT_MARGIN = 0.1

#: The rules of :func:`robust_betti` for H_k, k >= 1.
RULES = ("log2", "gap")

#: Largest cloud that :func:`persistence` computes exactly with ``n_perm="auto"`` (the default), per
#: ``maxdim`` (3 and above use the value of 2); above it, a greedy subsample of :data:`AUTO_LANDMARKS`
#: landmarks with the certified error ``2 r_cover``. Measured on 2 cores (noisy circle in R^3, exact H0+H1):
#: 3 s at 500 points, 14 s at 1000, 63 s at 1500, 174 s at 2000, minutes and gigabytes at 10 000; so layers
#: of up to 1024 neurons stay exact, and larger clouds take seconds (10 000 points in R^3: 512 landmarks,
#: 0.5–4.5 s).
EXACT_LIMITS = {0: 4000, 1: 1024, 2: 200}
AUTO_LANDMARKS = {0: 2000, 1: 512, 2: 150}

_ROUNDOFF_LOG_PERSISTENCE = 1e-5  # ripser's float32 values: log-persistence below this is round-off
_DENSE_PDIST_LIMIT = 4e8  # N^2 d / 2 above which distances use BLAS (Gram trick) instead of pdist


class CostWarning(UserWarning):
    """A computation was made cheaper than asked (automatic subsampling), or will be expensive."""


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
    points: np.ndarray | None = field(default=None, repr=False)
    auto_subsampled: bool = False
    note: str = ""

    @property
    def subsampled(self) -> bool:
        return self.n_used < self.n_points

    def to_dict(self) -> dict[str, Any]:
        skip = {"points"}
        return {f.name: jsonable(getattr(self, f.name)) for f in dataclasses.fields(self) if f.name not in skip}

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
    x = _as_cloud(cloud)
    maxdim = _check_maxdim(maxdim)
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
        auto_subsampled=auto,
        note=note,
    )


def _result_of(cloud_or_result: Any, maxdim: int, n_perm: int | str | None = "auto") -> PersistenceResult:
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


def _h0_robust_components(points: np.ndarray, threshold: float, min_cluster_size: int
                          ) -> tuple[int, float, list[tuple[float, float, bool]]]:
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
    Returns (β0, floor, candidates): the floor is the cloud's sampling spacing, also used for k >= 1;
    candidates are (height, log(height / floor at that merge), counted) for every merge of two clusters
    of at least ``min_cluster_size`` points (the evidence).
    """
    n = points.shape[0]
    if n <= 1:
        return n, 0.0, []
    from scipy.cluster.hierarchy import linkage

    if n * n * points.shape[1] / 2 <= _DENSE_PDIST_LIMIT:
        z = linkage(points, method="single")
    else:
        dm = _pairwise(points)
        z = linkage(dm[np.triu_indices(n, 1)], method="single")
    size = np.ones(2 * n - 1, dtype=np.int64)
    floor = 0.0  # largest merge height so far that was not counted: the cloud's sampling spacing
    count = 0
    candidates: list[tuple[float, float, bool]] = []
    for k, (a, b, d, sz) in enumerate(z):
        a, b = int(a), int(b)
        big = min(size[a], size[b]) >= min_cluster_size and d > 0
        ratio = math.inf if floor == 0 else math.log(d / floor) if d > 0 else -math.inf
        counted = big and ratio > threshold
        if big:
            candidates.append((float(d), ratio, bool(counted)))
        count += int(counted)
        size[n + k] = int(sz)
        if not counted:
            floor = max(floor, float(d))
    return 1 + count, floor, candidates


DUPLICATE_RTOL = 1e-9  # neurons closer than this (relative to the cloud's radius) are one point of the support


def _default_min_cluster_size(n: int) -> int:
    return max(3, int(math.ceil(0.02 * n)))


@dataclass
class FeatureEvidence(ResultMixin):
    """Why one feature was or was not counted by :func:`betti_report`.

    ``dim`` k, ``birth``/``death`` (for H0 candidates: 0 and the merge height), ``log_persistence``
    (H_k: log(death/birth); H0: log(height / sampling spacing)), ``rank`` (1 = most persistent in its
    dimension), ``ratio_to_next``: log-persistence over that of the next weaker feature (the gap rule's
    evidence; inf when it is the weakest above round-off), ``accepted`` and ``by`` (the rule that accepted
    it: ``"log2"``, ``"gap"``, ``"h0-spacing"`` or ``"essential"``; for a rejected feature the reason:
    ``"below threshold"``, ``"no gap"``, ``"below floor"``, ``"spacing"``). ``margin``: how far the decision
    is from flipping, as the log of the factor by which log-persistences would have to change (positive:
    accepted with that room, negative: rejected by that much). ``uncertain``: the decision flips within the
    report's margin.
    """

    dim: int
    rank: int
    birth: float
    death: float
    log_persistence: float
    ratio_to_next: float
    accepted: bool
    by: str
    margin: float
    uncertain: bool = False

    def __str__(self) -> str:
        verdict = f"counted ({self.by})" if self.accepted else f"not counted ({self.by})"
        unc = ", UNCERTAIN" if self.uncertain else ""
        return (f"H{self.dim} #{self.rank}: ({fmt(self.birth)}, {fmt(self.death)}) log-persistence "
                f"{fmt(self.log_persistence, 3)}, x{fmt(self.ratio_to_next, 3)} the next; {verdict}, margin "
                f"{fmt(self.margin, 3)}{unc}")


@dataclass
class BettiReport(ResultMixin):
    """Robust Betti numbers with their evidence (see :func:`betti_report`).

    ``betti`` (β0, ..., β_maxdim) under ``rule``; ``low``/``high``: the range the counts could take if every
    log-persistence changed by a factor up to e^±``margin`` (``low == high``: certain at that margin);
    ``features``: per-feature evidence (H0: merges of large clusters; H_k: every feature above round-off,
    most persistent first); ``spacing`` the sampling spacing (H0 floor). Subsampled results give the counts
    of the landmark cloud (its diagrams are within ``error_bound`` of the full ones in linear bottleneck,
    which does not bound log-persistence).
    """

    betti: tuple[int, ...]
    low: tuple[int, ...]
    high: tuple[int, ...]
    rule: str
    threshold: float
    min_gap: float
    min_log_persistence: float
    margin: float
    spacing: float
    n_points: int
    n_used: int
    error_bound: float
    features: list[FeatureEvidence] = field(default_factory=list)

    @property
    def uncertain(self) -> bool:
        """Some Betti number could change if a log-persistence moved by ``margin``."""
        return self.low != self.high

    @property
    def uncertain_dims(self) -> tuple[int, ...]:
        return tuple(k for k, (a, b) in enumerate(zip(self.low, self.high)) if a != b)

    def to_dict(self) -> dict[str, Any]:
        d = super().to_dict()
        d["uncertain"] = self.uncertain
        d["uncertain_dims"] = list(self.uncertain_dims)
        return d

    def __str__(self) -> str:
        rng = ("" if not self.uncertain else
               f", UNCERTAIN: range {self.low}..{self.high} within a factor e^±{fmt(self.margin, 3)}")
        rule = (f"rule log2 (log-persistence > {fmt(self.threshold, 3)})" if self.rule == "log2" else
                f"rule gap (>= {fmt(self.min_gap, 3)}x the strongest rejected feature, floor "
                f"{fmt(self.min_log_persistence, 3)})")
        lines = [f"Betti {self.betti} by {rule}{rng}"]
        shown = [f for f in self.features if f.accepted or f.uncertain or f.rank <= 1]
        lines += [f"  {f}" for f in shown[:40]]
        if len(shown) > 40:
            lines.append(f"  ... {len(shown) - 40} more")
        return "\n".join(lines)


def _check_rule_params(rule: str, threshold: float, min_gap: float, min_lp: float, margin: float) -> None:
    if rule not in RULES:
        raise TopoverifyError(f"rule must be one of {RULES} ('log2': log-persistence > threshold; 'gap': "
                              f"features above the largest gap of the spectrum); got {rule!r}.")
    if not (isinstance(threshold, (int, float)) and threshold >= 0 and math.isfinite(threshold)):
        raise TopoverifyError(f"threshold is a log-ratio and must be a finite number >= 0; got {threshold!r}.")
    if not (isinstance(min_gap, (int, float)) and min_gap > 1 and math.isfinite(min_gap)):
        raise TopoverifyError(f"min_gap is a ratio of log-persistences and must be finite and > 1; got {min_gap!r}.")
    if not (isinstance(min_lp, (int, float)) and min_lp >= 0 and math.isfinite(min_lp)):
        raise TopoverifyError(f"min_log_persistence must be finite and >= 0; got {min_lp!r}.")
    if not (isinstance(margin, (int, float)) and margin >= 0 and math.isfinite(margin)):
        raise TopoverifyError(f"margin is a log-persistence tolerance and must be finite and >= 0; got {margin!r}.")


def _hk_decision(d: np.ndarray, k: int, rule: str, threshold: float, min_gap: float, min_lp: float,
                 margin: float, spacing: float, spacing_factor: float | None
                 ) -> tuple[int, int, int, list[FeatureEvidence]]:
    """Count, range (low, high) and per-feature evidence for one H_k diagram (k >= 1)."""
    d = d[d[:, 1] > d[:, 0]]
    with np.errstate(divide="ignore"):
        lp = np.log(d[:, 1]) - np.log(d[:, 0])
    keep = lp > _ROUNDOFF_LOG_PERSISTENCE
    d, lp = d[keep], lp[keep]
    order = np.argsort(-lp, kind="stable")
    d, lp = d[order], lp[order]
    m = len(lp)
    nxt = np.append(lp[1:], 0.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(nxt > 0, lp / np.where(nxt > 0, nxt, 1.0), np.inf)
    ratio[np.isinf(lp) & np.isinf(nxt)] = 1.0
    spaced = np.ones(m, dtype=bool) if spacing_factor is None else d[:, 1] > spacing_factor * spacing
    accepted = np.zeros(m, dtype=bool)
    fmargin = np.zeros(m)
    by = [""] * m
    if rule == "log2":
        accepted = (lp > threshold) & spaced
        with np.errstate(divide="ignore"):
            fmargin = np.log(lp) - math.log(threshold) if threshold > 0 else np.full(m, np.inf)
        low = int(np.sum((lp > threshold * math.exp(margin)) & spaced))
        high = int(np.sum((lp > threshold * math.exp(-margin)) & spaced))
        count = int(np.sum(accepted))
        for i in range(m):
            by[i] = "log2" if accepted[i] else ("spacing" if not spaced[i] else "below threshold")
        unc_low, unc_high = low, high
    else:
        ess = np.isinf(lp) & spaced
        idx = np.nonzero(spaced & ~np.isinf(lp))[0]  # the finite spectrum the gap is looked for in
        p = lp[idx]
        q = np.append(p[1:], 0.0)
        with np.errstate(divide="ignore", invalid="ignore"):
            r = np.where(q > 0, p / np.where(q > 0, q, 1.0), np.inf)
        bulk_ok = (len(p) - 1 - np.arange(len(p))) >= GAP_MIN_BULK  # enough weaker features to call noise
        valid = (p >= min_lp) & (p >= min_gap * q) & (bulk_ok | (p > threshold))
        up, down = math.exp(margin), math.exp(-margin)
        robust = (p * down >= min_lp) & (p * down >= min_gap * q * up) & (bulk_ok | (p * down > threshold))
        possible = (p * up >= min_lp) & (p * up >= min_gap * q * down)  # a lone loop without noise: possible
        n_ess = int(np.sum(ess))
        cut = 0
        if valid.any():
            cand = np.nonzero(valid)[0]
            best = cand[np.argmax(r[cand] + 1e-12 * cand)]  # the largest gap (the deeper one on a tie)
            cut = int(best) + 1
        pos = np.nonzero(possible)[0]
        high = n_ess + (int(pos.max()) + 1 if pos.size else 0)
        low = n_ess + (int(pos.min()) + 1 if pos.size and robust.any() else 0)
        count = n_ess + cut
        # margins: accepted features share the chosen cut's margin; a rejected one needs a cut at or below it
        with np.errstate(divide="ignore"):  # relative (log-factor) change that makes cut j valid / invalid
            to_gap = 0.5 * (np.log(p) - np.log(min_gap * q))  # +inf when q = 0
            to_floor = np.log(p) - math.log(min_lp) if min_lp > 0 else np.full(len(p), np.inf)
            to_thr = np.where(bulk_ok, np.inf, np.log(p) - math.log(threshold) if threshold > 0 else np.inf)
        need = np.maximum(np.maximum(np.maximum(-to_gap, -to_floor), -to_thr), 0.0)
        suffix = np.minimum.accumulate(need[::-1])[::-1] if need.size else need
        cut_margin = 0.0
        if cut:
            j = cut - 1
            cut_margin = float(min(to_gap[j], to_floor[j], to_thr[j]))
        accepted[ess] = True
        for i in np.nonzero(ess)[0]:
            by[i], fmargin[i] = "essential", math.inf
        for rank0, i in enumerate(idx):
            ratio[i] = r[rank0]  # the gap within the spectrum the rule read (spacing-rejected features left out)
            if rank0 < cut:
                accepted[i], by[i], fmargin[i] = True, "gap", cut_margin
            else:
                accepted[i] = False
                by[i] = "below floor" if p[rank0] < min_lp else "no gap"
                fmargin[i] = -float(suffix[rank0])
        for i in np.nonzero(~spaced)[0]:
            by[i], fmargin[i] = "spacing", -math.inf
        unc_low, unc_high = low - n_ess, high - n_ess
    feats: list[FeatureEvidence] = []
    spaced_rank = 0
    for i in range(m):
        if spaced[i] and (rule == "log2" or not np.isinf(lp[i])):
            spaced_rank += 1
            unc = unc_low < spaced_rank <= unc_high
        else:
            unc = False
        feats.append(FeatureEvidence(dim=k, rank=i + 1, birth=float(d[i, 0]), death=float(d[i, 1]),
                                     log_persistence=float(lp[i]), ratio_to_next=float(ratio[i]),
                                     accepted=bool(accepted[i]), by=by[i], margin=float(fmargin[i]),
                                     uncertain=bool(unc)))
    return count, low, high, feats


def betti_report(
    cloud_or_result: Any,
    maxdim: int | None = None,
    threshold: float = DEFAULT_LOG_THRESHOLD,
    *,
    rule: str = "log2",
    min_gap: float = DEFAULT_MIN_GAP,
    min_log_persistence: float = MIN_LOOP_LOG_PERSISTENCE,
    margin: float = DEFAULT_MARGIN,
    min_cluster_size: int | None = None,
    n_perm: int | str | None = "auto",
    spacing_factor: float | None = None,
) -> BettiReport:
    """Robust Betti numbers (β0, ..., β_maxdim) with per-feature evidence and an uncertainty range.

    ``maxdim`` defaults to the result's own (1 for a cloud). Rules for H_k, k >= 1 (``rule=``):

    * ``"log2"`` (default): features with ``log(death / birth) > threshold`` (``log 2``,
      :data:`DEFAULT_LOG_THRESHOLD`: certified features of the union of balls around the sample).
    * ``"gap"``: sort the log-persistences p_1 >= p_2 >= ... (round-off removed, p_{m+1} = 0) and count the
      features above the largest gap: the cut j maximising p_j / p_{j+1} among those with
      p_j >= ``min_gap`` × p_{j+1} (default 3, :data:`DEFAULT_MIN_GAP`) and p_j >= ``min_log_persistence``
      (default ½ log 2, the most a 4-point loop can reach: :data:`MIN_LOOP_LOG_PERSISTENCE`); a cut with
      fewer than :data:`GAP_MIN_BULK` (5) weaker features below it also needs p_j > ``threshold`` (no noise to
      compare with: such a loop is not counted but makes the count uncertain); none: 0.
      It finds thin loops sampled with gaps, whose log-persistence is far above the noise but below log 2
      (a figure-eight of aspect 20, 1024 points: 0.61 and 0.39 against <= 0.12 gives β1 = 2, log 2 gives 0),
      and ignores the many noise holes of dense planar samples that log 2 counts.
    * Why log 2 stays the default (measured in benchmarks/bench_topology.py): on sampled *surfaces* the
      sampling holes form a high continuum (torus: loops at 1.2–2.1 over holes up to 0.8, ratio ~1.5), so the
      gap rule finds no gap and answers 0 where log 2 answers the right (1, 2) in most samples; and log 2
      carries the Čech certificate. Use ``rule="gap"`` for curves and thin loops, and compare both.

    ``spacing_factor`` (both rules): a feature must also die beyond that multiple of the sampling spacing
    (drops holes between samples of a surface; see :func:`robust_betti`). H0 uses the merge-tree rule of
    :func:`_h0_robust_components` with ``threshold`` whatever the rule, on the support (duplicates once).

    ``margin`` (default 0.1, :data:`DEFAULT_MARGIN`): ``low``/``high`` are the counts if every
    log-persistence p were anywhere in ``[p e^-margin, p e^margin]`` (a relative tolerance, so that it means
    the same for the threshold of log 2 and for the ratios of the gap rule; sorted values stay within the same
    factors); features whose decision flips within it are marked ``uncertain``. For one optimizer step T5
    gives an absolute bound instead: :func:`betti_bounds_after`.
    """
    _check_rule_params(rule, threshold, min_gap, min_log_persistence, margin)
    if maxdim is None:
        maxdim = cloud_or_result.maxdim if isinstance(cloud_or_result, PersistenceResult) else 1
    maxdim = _check_maxdim(maxdim)
    res = _result_of(cloud_or_result, maxdim, n_perm)
    pts = res.points
    if pts is None:
        raise TopoverifyError("this PersistenceResult carries no points (e.g. rebuilt from to_dict()); pass the cloud.")
    if spacing_factor is not None and not (isinstance(spacing_factor, (int, float)) and spacing_factor > 0):
        raise TopoverifyError(f"spacing_factor must be a positive number or None; got {spacing_factor!r}.")
    # β0 is a property of the support: merged neurons (T6: exact or round-off-level duplicates) count once,
    # so the answer cannot depend on how many copies of a point there are.
    labels = _labels(pts, _tolerance(pts, DUPLICATE_RTOL, 0.0))
    _, first = np.unique(labels, return_index=True)
    support = pts[np.sort(first)]
    mcs = _default_min_cluster_size(support.shape[0]) if min_cluster_size is None else int(min_cluster_size)
    if mcs < 1:
        raise TopoverifyError(f"min_cluster_size must be >= 1; got {min_cluster_size!r}.")
    beta0, spacing, cands = _h0_robust_components(support, threshold, mcs)
    feats: list[FeatureEvidence] = [FeatureEvidence(dim=0, rank=1, birth=0.0, death=math.inf,
                                                    log_persistence=math.inf, ratio_to_next=math.inf,
                                                    accepted=True, by="essential", margin=math.inf)]
    lo0 = hi0 = beta0
    for rank, (h, lr, counted) in enumerate(sorted(cands, key=lambda c: -c[1]), start=2):
        mg = (math.inf if lr == math.inf else -math.inf if lr <= 0 or threshold == 0
              else math.log(lr) - math.log(threshold))
        unc = abs(mg) <= margin
        if unc and counted:
            lo0 -= 1
        elif unc:
            hi0 += 1
        feats.append(FeatureEvidence(dim=0, rank=rank, birth=0.0, death=h, log_persistence=lr,
                                     ratio_to_next=math.nan, accepted=counted,
                                     by="h0-spacing" if counted else "below threshold", margin=mg, uncertain=unc))
    betti, low, high = [beta0], [lo0], [hi0]
    for k in range(1, maxdim + 1):
        c, lo, hi, fk = _hk_decision(res.diagrams[k], k, rule, threshold, min_gap, min_log_persistence, margin,
                                     spacing, spacing_factor)
        betti.append(c)
        low.append(lo)
        high.append(hi)
        feats.extend(fk)
    return BettiReport(betti=tuple(betti), low=tuple(low), high=tuple(high), rule=rule, threshold=float(threshold),
                       min_gap=float(min_gap), min_log_persistence=float(min_log_persistence), margin=float(margin),
                       spacing=float(spacing), n_points=res.n_points, n_used=res.n_used,
                       error_bound=float(res.error_bound), features=feats)


def robust_betti(
    cloud_or_result: Any,
    maxdim: int | None = None,
    threshold: float = DEFAULT_LOG_THRESHOLD,
    *,
    rule: str = "log2",
    min_gap: float = DEFAULT_MIN_GAP,
    min_log_persistence: float = MIN_LOOP_LOG_PERSISTENCE,
    min_cluster_size: int | None = None,
    n_perm: int | str | None = "auto",
    spacing_factor: float | None = None,
) -> tuple[int, ...]:
    """Betti numbers (β0, ..., β_maxdim) counting only features that persist on a log scale.

    ``maxdim`` defaults to the result's own (a result computed with ``maxdim=2`` gives (β0, β1, β2)), and to
    1 for a cloud. The counts are :func:`betti_report`'s (which also gives the evidence per feature and
    whether the counts are uncertain):

    * k >= 1, ``rule="log2"`` (default): the number of H_k points with ``log(death / birth) > threshold``
      (essential classes count). Default ``threshold = log 2`` (:data:`DEFAULT_LOG_THRESHOLD`: a Rips
      feature that lives longer than a factor 2 is certified to be a feature of the union of balls around the
      sample). The union of balls has holes of its own between neighbouring samples of a *surface*: on
      200–300 uniform points of S² they reach log-persistence 0.9 > log 2. With ``spacing_factor`` (e.g. 3)
      a feature must also die beyond that multiple of the sampling spacing (the H0 floor below): those holes
      die by 2.1× the spacing, while the features of dense samples of circles, spheres, tori, two circles and
      figure-eights die beyond 3.4× (measured). It is off by default because sparse samples (a circle of
      8–10 points, a torus of a few hundred) have true features dying within 3× their spacing.
    * k >= 1, ``rule="gap"``: the features above the largest gap of the log-persistence spectrum (at least
      ``min_gap`` = 3 times the strongest rejected feature, and above ``min_log_persistence`` = ½ log 2):
      finds thin loops sampled with gaps that log 2 misses. See :func:`betti_report` for why log 2 stays
      the default (sampled surfaces).
    * k = 0: computed on the support (neurons within ``DUPLICATE_RTOL`` of the cloud's radius count once, so
      multiplicities from merged neurons do not matter); births are 0, so the rule is scale-relative: a merge
      of two single-linkage clusters at height d counts iff both have at least ``min_cluster_size`` points
      (default ``max(3, ceil(0.02 N))``) and d exceeds ``exp(threshold)`` times every non-counted merge
      height below it (the sampling spacing; see :func:`_h0_robust_components`); the infinite bar counts as 1.

    With a subsampled :class:`PersistenceResult` (``n_perm``) the count is that of the landmark cloud,
    whose diagrams are within ``error_bound`` of the full ones.
    """
    return betti_report(cloud_or_result, maxdim, threshold, rule=rule, min_gap=min_gap,
                        min_log_persistence=min_log_persistence, margin=0.0, min_cluster_size=min_cluster_size,
                        n_perm=n_perm, spacing_factor=spacing_factor).betti


def betti_bounds_after(diagram: Any, eps: float, *, threshold: float = DEFAULT_LOG_THRESHOLD
                       ) -> tuple[int, int | float]:
    """T5 for the log-2 count of one H_k diagram (k >= 1): bounds on the count after any map with
    log-bottleneck distortion ``<= eps`` (a step below η* with ``eps = -log(1 - ηK)``).

    A feature with log-persistence p is matched to one with p' >= p - 2 eps, or (if p <= 2 eps) possibly to
    the diagonal; a feature of the image not matched to one of the diagram has p' <= 2 eps. Hence, with
    c(t) = #{p > t}:

    * the count after is at least ``c(threshold + 2 eps)`` (strong features survive above the threshold);
    * if ``2 eps < threshold`` no new feature can reach the threshold, and the count after is at most
      ``c(threshold - 2 eps)``; otherwise it is unbounded (``inf``): new features of log-persistence up to
      2 eps can appear.

    Returns (lower, upper). The count is unchanged for sure only when ``2 eps < threshold`` and no feature
    lies within 2 eps of the threshold (then lower = upper = the count now).
    """
    d = _as_diagram(diagram)
    if not (isinstance(eps, (int, float)) and eps >= 0):
        raise TopoverifyError(f"eps must be >= 0 (see stability_epsilon); got {eps!r}.")
    d = d[d[:, 1] > d[:, 0]]
    with np.errstate(divide="ignore"):
        lp = np.log(d[:, 1]) - np.log(d[:, 0])
    lower = int(np.sum(lp > threshold + 2 * eps))
    upper: int | float = int(np.sum(lp > threshold - 2 * eps)) if 2 * eps < threshold else math.inf
    return lower, upper


def betti_at_scale(cloud_or_result: Any, scale: float, maxdim: int | None = None, *,
                   n_perm: int | str | None = "auto") -> tuple[int, ...]:
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


def _diagram_pairs(a: Any, b: Any, dim: int | None) -> list[tuple[np.ndarray, np.ndarray]]:
    """The diagram pairs to compare: two diagrams, or the matching dimensions of PersistenceResults."""
    ra, rb = isinstance(a, PersistenceResult), isinstance(b, PersistenceResult)
    if not (ra or rb):
        if dim is not None:
            raise TopoverifyError("dim= selects a dimension of PersistenceResults; these are two diagrams already "
                                  "(drop dim=, or pass the results).")
        return [(a, b)]
    if dim is not None and (not isinstance(dim, (int, np.integer)) or isinstance(dim, bool) or dim < 0):
        raise TopoverifyError(f"dim must be a homology dimension >= 0; got {dim!r}.")
    if ra and rb:
        if dim is None:
            if a.maxdim != b.maxdim:
                raise TopoverifyError(f"the results have diagrams up to H{a.maxdim} and H{b.maxdim}; pass dim=k to "
                                      "compare one dimension, or compute both with the same maxdim.")
            return [(a.diagrams[k], b.diagrams[k]) for k in range(a.maxdim + 1)]
        if dim > min(a.maxdim, b.maxdim):
            raise TopoverifyError(f"dim={dim} but the results have diagrams up to H{a.maxdim} and H{b.maxdim}.")
        return [(a.diagrams[dim], b.diagrams[dim])]
    res = a if ra else b
    if dim is None:
        raise TopoverifyError("one argument is a PersistenceResult and the other a single diagram; pass dim=k "
                              f"(the dimension of that diagram, 0..{res.maxdim}) or two results.")
    if dim > res.maxdim:
        raise TopoverifyError(f"dim={dim} but the result has diagrams up to H{res.maxdim}.")
    return [(a.diagrams[dim], b) if ra else (a, b.diagrams[dim])]


def bottleneck(dgm_a: Any, dgm_b: Any, dim: int | None = None) -> float:
    """Bottleneck distance between two diagrams in linear coordinates, with essential classes.

    Points with infinite death can only be matched to each other (by birth): if the two diagrams have
    different numbers of them the distance is ``inf``. The finite parts use :func:`_bottleneck_finite`.
    (``persim.bottleneck`` drops infinite points with a warning, which can report a finite distance
    where the true one is infinite.) Two :class:`PersistenceResult` s are compared dimension by dimension
    and the largest distance is returned (``dim=k``: dimension k only).
    """
    pairs = _diagram_pairs(dgm_a, dgm_b, dim)
    if len(pairs) > 1:
        return max(bottleneck(p, q) for p, q in pairs)
    dgm_a, dgm_b = pairs[0]
    a, b = _as_diagram(dgm_a, "dgm_a"), _as_diagram(dgm_b, "dgm_b")
    ia, ib = np.isinf(a[:, 1]), np.isinf(b[:, 1])
    ess = _sorted_match(a[ia, 0], b[ib, 0])
    if math.isinf(ess):
        return math.inf
    fa, fb = a[~ia], b[~ib]
    fa, fb = fa[fa[:, 1] > fa[:, 0]], fb[fb[:, 1] > fb[:, 0]]
    return max(ess, _bottleneck_finite(fa, fb))


def log_bottleneck(dgm_a: Any, dgm_b: Any, dim: int | None = None) -> float:
    """Bottleneck distance between two diagrams in log coordinates (T5).

    ``dgm_a``, ``dgm_b``: two (k, 2) diagrams of the same dimension, or two :class:`PersistenceResult` s (then
    the largest distance over H0..H_maxdim, the quantity T5 bounds by eps in every dimension; ``dim=k`` for
    dimension k only), or a result and a diagram with ``dim=k``.

    Points are split by which log coordinate is infinite; a matching can only pair points of the same
    kind (any other pair, or a pair with the diagonal, costs ``inf``), so the distance is the largest of:

    * ``(0, inf)`` classes: the counts must agree (then cost 0), else ``inf``;
    * birth 0, finite death (H0): the counts must agree, matched by sorted log deaths (optimal in 1-D);
    * positive birth, infinite death: the counts must agree, matched by sorted log births;
    * finite points: the usual bottleneck distance of ``(log b, log d)`` with the diagonal.

    Zero-persistence points (including H0's (0, 0) from duplicate points) lie on the diagonal and are
    ignored. Returns ``inf`` when essential classes differ.
    """
    pairs = _diagram_pairs(dgm_a, dgm_b, dim)
    if len(pairs) > 1:
        return max(log_bottleneck(p, q) for p, q in pairs)
    dgm_a, dgm_b = pairs[0]
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


def _labels(x: np.ndarray, tol: float, s: np.ndarray | None = None, tol_s: float = 0.0) -> np.ndarray:
    """Single-linkage classes of rows at distance <= tol (and, with a state ``s``, state distance <= tol_s)."""
    if s is not None and s.shape[1] == 0:
        s = None
    if tol == 0 and (s is None or tol_s == 0):
        return _exact_groups(x if s is None else np.concatenate([x, s], axis=1))
    n = x.shape[0]
    pairs = cKDTree(x).query_pairs(r=tol, output_type="ndarray") if tol > 0 else _exact_pairs(x)
    if s is not None and len(pairs):
        ds = np.sqrt(((s[pairs[:, 0]] - s[pairs[:, 1]]) ** 2).sum(axis=1))
        pairs = pairs[ds <= tol_s]
    g = csr_matrix((np.ones(len(pairs), dtype=np.int8), (pairs[:, 0], pairs[:, 1])), shape=(n, n))
    return connected_components(g, directed=False)[1]


def _exact_pairs(x: np.ndarray) -> np.ndarray:
    """All pairs (i, j), i < j, of exactly equal rows."""
    lab = _exact_groups(x)
    order = np.argsort(lab, kind="stable")
    groups = np.split(order, np.nonzero(np.diff(lab[order]))[0] + 1)
    out = [(int(a), int(b)) for g in groups if len(g) > 1 for ia, a in enumerate(g) for b in g[ia + 1:]]
    return np.array(sorted((min(a, b), max(a, b)) for a, b in out), dtype=np.int64).reshape(-1, 2)


def _as_state(state: Any, n: int, name: str = "state") -> np.ndarray | None:
    """Per-neuron optimizer state as an (N, m) float64 array (m may be 0), or None."""
    if state is None:
        return None
    if hasattr(state, "detach") and hasattr(state, "cpu"):
        state = state.detach().cpu().double().numpy()
    try:
        s = np.asarray(state, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise TopoverifyError(f"{name} must be a numeric (N, m) array, one row of optimizer state per neuron; "
                              f"got {type(state).__name__} ({exc}).") from None
    if s.ndim == 1:
        s = s.reshape(-1, 1)
    if s.ndim != 2 or s.shape[0] != n:
        raise TopoverifyError(f"{name} has shape {s.shape}; it needs one row per neuron ({n} rows): the "
                              "neurons' optimizer state (momentum, Adam's m and v, ...) flattened per neuron.")
    if not np.all(np.isfinite(s)):
        raise TopoverifyError(f"{name} contains NaN or Inf; a diverged optimizer state has no merge structure.")
    return s


def count_distinct(cloud: Any, rtol: float = 0.0, atol: float = 0.0, *, state: Any = None) -> int:
    """Number of distinct neurons.

    ``rtol = atol = 0`` (default): exact equality of rows (T6 is a statement of exact equality). Otherwise
    two neurons are merged when ``||θ_i - θ_j|| <= atol + rtol * R``, R = max distance of a neuron to the
    centroid, and merges are closed transitively (single-linkage clusters at that distance). A tolerance
    merges neurons that are merely *close* (a random sample of 1024 float32 points on a curve already has
    pairs 7.5e-7 apart); to detect merges along a run use :class:`MergeTracker`, which counts a pair only
    when its distance collapses to round-off.

    ``state`` (optional, (N, m): each neuron's optimizer state, e.g. momentum or Adam's m and v, flattened
    in the neuron's row order): neurons are the same only if θ *and* state agree (state within ``rtol``
    times the state's own radius; exact when ``rtol = 0``). T6 says the number of distinct (θ, s) never
    grows under a permutation-equivariant rule. Counted on θ alone it *can* grow: two neurons with equal θ
    but different state separate at the next step.
    """
    x = _as_cloud(cloud)
    s = _as_state(state, x.shape[0])
    tol_s = 0.0 if s is None or s.shape[1] == 0 else _tolerance(s, rtol, 0.0)
    return int(np.unique(_labels(x, _tolerance(x, rtol, atol), s, tol_s)).size)


def merge_clusters(cloud: Any, rtol: float = 0.0, atol: float = 0.0, *, state: Any = None) -> list[list[int]]:
    """Groups (sorted index lists, size >= 2) of neurons merged under the :func:`count_distinct` rule."""
    x = _as_cloud(cloud)
    s = _as_state(state, x.shape[0])
    tol_s = 0.0 if s is None or s.shape[1] == 0 else _tolerance(s, rtol, 0.0)
    lab = _labels(x, _tolerance(x, rtol, atol), s, tol_s)
    order = np.argsort(lab, kind="stable")
    groups = np.split(order, np.nonzero(np.diff(lab[order]))[0] + 1)
    return sorted([sorted(g.tolist()) for g in groups if len(g) > 1])


def merged_pairs(cloud: Any, rtol: float = 0.0, atol: float = 0.0, *, state: Any = None) -> list[tuple[int, int]]:
    """Pairs (i, j), i < j, of neurons in the same merge cluster (see :func:`merge_clusters`), sorted."""
    out: list[tuple[int, int]] = []
    for g in merge_clusters(cloud, rtol, atol, state=state):
        out.extend((g[i], g[j]) for i in range(len(g)) for j in range(i + 1, len(g)))
    return sorted(out)


# --------------------------------------------------------------------------------------------------
# merges along a run (T6): collapse, not closeness
# --------------------------------------------------------------------------------------------------

#: Round-off level of a merged pair, in units of eps(dtype) × the cloud's largest row norm. Twins that T6
#: keeps equal drift apart by at most ~12 eps relative over 300 float64 steps when BLAS rounds equal rows
#: differently (tests/claims/test_merges.py); 64 leaves room for that.
DEFAULT_ROUNDOFF_ULPS = 64.0

#: A pair *collapses* when it ends at the round-off level having started at least 10**this times above it.
DEFAULT_COLLAPSE_ORDERS = 2.0


def _dtype_eps(x: Any, dtype: Any) -> tuple[str, float]:
    """(name, machine epsilon) of ``dtype``, else of ``x``'s floating dtype (torch or numpy), else float64."""
    explicit = dtype is not None
    if not explicit:
        dtype = getattr(x, "dtype", None)
        if dtype is None:
            return "float64", float(np.finfo(np.float64).eps)
    if hasattr(dtype, "is_floating_point"):  # a torch dtype
        import torch

        if dtype.is_floating_point:
            return str(dtype).replace("torch.", ""), float(torch.finfo(dtype).eps)
    else:
        try:
            dt = np.dtype(dtype)
        except TypeError:
            dt = None
        if dt is not None and dt.kind == "f":
            return str(dt), float(np.finfo(dt).eps)
    if explicit:
        raise TopoverifyError(f"dtype must be a floating dtype (numpy or torch float16/32/64); got {dtype!r}.")
    return "float64", float(np.finfo(np.float64).eps)  # integer data: exact values, float64 arithmetic


@dataclass
class MergeReport(ResultMixin):
    """Merges of a neuron cloud between a start and now (see :class:`MergeTracker`).

    A pair (i < j) is *at round-off* when ``||θ_i - θ_j|| <= c eps max(||θ_i||, ||θ_j||)`` with
    c = ``roundoff_ulps`` and eps the machine epsilon of ``dtype`` (the same test for the state rows);
    ``tolerance`` and ``collapse_from`` give that level and 10**``collapse_orders`` times it for the largest
    row norm (for display). Pairs now at round-off:

    * ``collapsed``: started at least 10**``collapse_orders`` times above their own round-off level (and,
      where the state is known, their states are now at round-off too): a merge in the sense of T6;
    * ``state_differs``: θ collapsed but the optimizer states differ: not a T6 merge (they can separate);
    * ``close_at_start``: already within ``collapse_from`` at the start but not equal: closeness, not a merge.

    ``separated``: pairs equal in (θ, s) at the start and no longer within ``tolerance`` (T6 says this cannot
    happen under an equivariant rule with shared randomness; a finding, never counted as breakdown).
    ``classes_start``: distinct (θ, s) at the start (exact); ``merged``: neurons absorbed since (classes the
    collapsed pairs join, on top of the start's partition; never negative: a growing count of distinct
    neurons is not a merge); ``classes = classes_start - merged``.
    """

    n: int
    dtype: str
    tolerance: float
    collapse_from: float
    state_known: bool
    classes_start: int
    merged: int
    collapsed: list[tuple[int, int]] = field(default_factory=list)
    state_differs: list[tuple[int, int]] = field(default_factory=list)
    close_at_start: list[tuple[int, int]] = field(default_factory=list)
    separated: list[tuple[int, int]] = field(default_factory=list)

    @property
    def classes(self) -> int:
        return self.classes_start - self.merged

    def to_dict(self) -> dict[str, Any]:
        d = super().to_dict()
        d["classes"] = self.classes
        return d

    def __str__(self) -> str:
        state = "" if self.state_known else " (optimizer state unknown: compared on θ only)"
        extra = []
        if self.state_differs:
            extra.append(f"{len(self.state_differs)} pair(s) coincide in θ with different state (not merged)")
        if self.close_at_start:
            extra.append(f"{len(self.close_at_start)} pair(s) were already within round-off reach at the start "
                         "(not counted)")
        if self.separated:
            extra.append(f"{len(self.separated)} pair(s) equal at the start have separated (T6 finding)")
        tail = "; " + "; ".join(extra) if extra else ""
        return (f"{self.merged} neuron(s) merged by collapse ({len(self.collapsed)} pair(s) fell from >= "
                f"{fmt(self.collapse_from, 3)} to <= {fmt(self.tolerance, 3)}, {self.dtype}): "
                f"{self.classes_start} -> {self.classes} classes{state}{tail}")


class _UnionFind:
    def __init__(self, n: int) -> None:
        self.parent = np.arange(n)

    def find(self, i: int) -> int:
        p = self.parent
        root = i
        while p[root] != root:
            root = p[root]
        while p[i] != root:
            p[i], i = root, p[i]
        return int(root)

    def union(self, i: int, j: int) -> bool:
        a, b = self.find(i), self.find(j)
        if a == b:
            return False
        self.parent[max(a, b)] = min(a, b)
        return True


class MergeTracker:
    """Detect T6 merges along a run: pairs whose distance *collapses* to the round-off level of the dtype.

    ``MergeTracker(cloud0, state0)`` remembers the starting cloud (N × d) and, optionally, each neuron's
    optimizer state (N × m; ``None``: unknown; N × 0: none yet, as before an optimizer's first step).
    ``update(cloud, state)`` returns a :class:`MergeReport`: a pair counts as merged when its distance now is
    at most ``roundoff_ulps`` × eps(dtype) × the larger of the two row norms (they coincide to round-off),
    having started at least ``10**collapse_orders`` times above that level for their starting norms, and,
    where the state is known, the two states coincide to round-off too (T6 needs equal θ *and* equal state).
    Relative to each pair's own norms, so neurons shrinking together towards 0 (weight decay) do not merge
    and a cloud that blows up is judged at its own resolution. Pairs merely close at the start never count,
    and neither does a growing number of distinct neurons. ``dtype`` defaults to the cloud's (torch or
    numpy; float64 otherwise).
    """

    def __init__(self, cloud: Any, state: Any = None, *, dtype: Any = None,
                 roundoff_ulps: float = DEFAULT_ROUNDOFF_ULPS, collapse_orders: float = DEFAULT_COLLAPSE_ORDERS
                 ) -> None:
        if not (isinstance(roundoff_ulps, (int, float)) and roundoff_ulps > 0 and math.isfinite(roundoff_ulps)):
            raise TopoverifyError(f"roundoff_ulps must be a finite number > 0; got {roundoff_ulps!r}.")
        if not (isinstance(collapse_orders, (int, float)) and collapse_orders > 0 and math.isfinite(collapse_orders)):
            raise TopoverifyError(f"collapse_orders must be a finite number > 0 (orders of magnitude); got "
                                  f"{collapse_orders!r}.")
        self.dtype, self.eps = _dtype_eps(cloud, dtype)
        self.x0 = _as_cloud(cloud, "initial cloud")
        self.n = self.x0.shape[0]
        self.s0 = _as_state(state, self.n, "initial state")
        self.roundoff_ulps = float(roundoff_ulps)
        self.collapse_orders = float(collapse_orders)
        self.start_labels = _labels(self.x0, 0.0, self.s0, 0.0)
        self.classes_start = int(np.unique(self.start_labels).size)
        order = np.argsort(self.start_labels, kind="stable")
        groups = np.split(order, np.nonzero(np.diff(self.start_labels[order]))[0] + 1)
        self._start_groups = [g for g in groups if len(g) > 1]  # neurons equal in (θ, s) at the start

    def _pairs_within_roundoff(self, x: np.ndarray) -> np.ndarray:
        """Pairs (i < j) with ||x_i - x_j|| <= c eps max(||x_i||, ||x_j||): coincident to round-off."""
        norms = np.sqrt((x * x).sum(axis=1))
        radius = self.roundoff_ulps * self.eps * norms
        if not np.any(radius > 0):
            return _exact_pairs(x)
        tree = cKDTree(x)
        idx = np.nonzero(radius > 0)[0]
        balls = tree.query_ball_point(x[idx], r=radius[idx])
        out = [(min(i, j), max(i, j)) for i, ball in zip(idx.tolist(), balls) for j in ball
               if j != i and (norms[j] < norms[i] or (norms[j] == norms[i] and j > i))]
        ex = _exact_pairs(x)  # exact duplicates at the origin have radius 0
        pairs = set(out) | {tuple(p) for p in ex.tolist()}
        return np.array(sorted(pairs), dtype=np.int64).reshape(-1, 2)

    def update(self, cloud: Any, state: Any = None) -> MergeReport:
        x = _as_cloud(cloud)
        if x.shape != self.x0.shape:
            raise TopoverifyError(f"cloud has shape {x.shape} but the tracked cloud had {self.x0.shape}; track "
                                  "the same neurons (same rows, same coordinates) along the run.")
        s = _as_state(state, self.n)
        if s is not None and self.s0 is not None and 0 < self.s0.shape[1] != s.shape[1]:
            raise TopoverifyError(f"state has {s.shape[1]} columns but the initial state had {self.s0.shape[1]}; "
                                  "pass the same per-neuron state along the run.")
        # an optimizer creates its state at the first step: an empty initial state means "all equal"
        s_known = s is not None
        c_eps = self.roundoff_ulps * self.eps
        factor = 10.0 ** self.collapse_orders
        n0 = np.sqrt((self.x0 * self.x0).sum(axis=1))
        pairs = self._pairs_within_roundoff(x)
        uf = _UnionFind(self.n)
        lab = self.start_labels
        for members in self._start_groups:  # the start's partition
            for j in members[1:]:
                uf.union(int(members[0]), int(j))
        collapsed, differs, close = [], [], []
        if len(pairs):
            i, j = pairs[:, 0], pairs[:, 1]
            d0 = np.sqrt(((self.x0[i] - self.x0[j]) ** 2).sum(axis=1))
            start_tol = c_eps * np.maximum(n0[i], n0[j])
            same_start = lab[i] == lab[j]
            if s_known and s.shape[1]:
                ns = np.sqrt((s * s).sum(axis=1))
                ds = np.sqrt(((s[i] - s[j]) ** 2).sum(axis=1))
                state_ok = ds <= c_eps * np.maximum(ns[i], ns[j])
            else:
                state_ok = np.ones(len(i), dtype=bool)
            far = d0 >= factor * start_tol
            for a, b, fa, same, ok in zip(i.tolist(), j.tolist(), far.tolist(), same_start.tolist(), state_ok.tolist()):
                if same:
                    continue
                if fa:
                    (collapsed if ok else differs).append((a, b))
                else:
                    close.append((a, b))
        merged = sum(1 for a, b in collapsed if uf.union(a, b))
        # pairs equal at the start (θ and state) that are no longer within round-off of each other
        norms = np.sqrt((x * x).sum(axis=1))
        separated = []
        for members in self._start_groups:
            ref = members[0]
            dist = np.sqrt(((x[members] - x[ref]) ** 2).sum(axis=1))
            apart = members[dist > c_eps * np.maximum(norms[members], norms[ref])]
            separated.extend((int(ref), int(f)) for f in apart)
        scale = float(max(n0.max(initial=0.0), norms.max(initial=0.0)))
        return MergeReport(n=self.n, dtype=self.dtype, tolerance=c_eps * scale, collapse_from=factor * c_eps * scale,
                           state_known=s_known, classes_start=self.classes_start, merged=merged,
                           collapsed=sorted(collapsed), state_differs=sorted(differs), close_at_start=sorted(close),
                           separated=sorted(separated))


def merge_events(before: Any, after: Any, *, state_before: Any = None, state_after: Any = None, dtype: Any = None,
                 roundoff_ulps: float = DEFAULT_ROUNDOFF_ULPS, collapse_orders: float = DEFAULT_COLLAPSE_ORDERS
                 ) -> MergeReport:
    """The merges between two clouds of the same neurons: ``MergeTracker(before, state_before).update(after,
    state_after)`` (see :class:`MergeTracker`)."""
    return MergeTracker(before, state_before, dtype=dtype, roundoff_ulps=roundoff_ulps,
                        collapse_orders=collapse_orders).update(after, state_after)
