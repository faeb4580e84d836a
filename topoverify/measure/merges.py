"""Merged neurons (T6): exact and tolerance counts of distinct neurons, on θ or on (θ, optimizer state).

T6 (merged neurons stay merged, ``spec/claims.toml``) is a statement about equal parameters *and* equal
optimizer state: :func:`count_distinct` takes the state with ``state=``. This module is the one merge
counter of the kit: :func:`exact_groups` groups equal rows, and :func:`count_coincident_pairs` (the
``merged_pairs`` of a step prediction) and the merge tracker (:mod:`topoverify.measure.merge_tracking`)
count with it. Detecting merges *along a run* (collapse to round-off, not closeness) is
:class:`topoverify.measure.merge_tracking.MergeTracker`.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import connected_components
from scipy.spatial import cKDTree

from topoverify.errors import TopoverifyError
from topoverify.measure.persistence import as_cloud

__all__ = ["count_distinct", "merge_clusters", "merged_pairs", "count_coincident_pairs", "exact_groups",
           "exact_pairs"]


def merge_tolerance(x: np.ndarray, rtol: float, atol: float) -> float:
    """``atol + rtol * R`` with R = max_i ||x_i - mean|| (the cloud's radius about its centroid, within a
    factor 2 of its diameter, O(N d) to compute)."""
    if not (rtol >= 0 and atol >= 0 and math.isfinite(rtol) and math.isfinite(atol)):
        raise TopoverifyError(f"rtol and atol must be finite and >= 0; got rtol={rtol!r}, atol={atol!r}.")
    if rtol == 0:
        return float(atol)
    radius = float(np.sqrt(((x - x.mean(axis=0)) ** 2).sum(axis=1)).max())
    return float(atol + rtol * radius)


def exact_groups(x: np.ndarray) -> np.ndarray:
    """Label per row of an (N, d) array, numbered by first occurrence: equal labels exactly for numerically
    equal rows (-0.0 equals 0.0). Rows are bucketed by a hash of their bytes (O(N d)), and only rows whose
    hash collides are compared exactly (no arithmetic on the rows, so no round-off can split equal rows)."""
    n = x.shape[0]
    x = np.ascontiguousarray(x.reshape(n, -1) + 0.0)  # -0.0 -> 0.0: byte equality is numeric equality
    keys = np.fromiter((hash(row.tobytes()) for row in x), dtype=np.int64, count=n)
    _, labels, counts = np.unique(keys, return_inverse=True, return_counts=True)
    labels = labels.reshape(-1)
    shared = counts[labels] > 1
    if shared.any():  # confirm equal hashes by exact comparison (a collision of unequal rows splits them)
        _, sub = np.unique(x[shared], axis=0, return_inverse=True)
        labels = labels.copy()
        labels[shared] = counts.size + sub.reshape(-1)
    _, first, inv = np.unique(labels, return_index=True, return_inverse=True)
    rank = np.empty(first.size, dtype=np.int64)
    rank[np.argsort(first, kind="stable")] = np.arange(first.size)
    return rank[inv.reshape(-1)]


def merge_labels(x: np.ndarray, tol: float, s: np.ndarray | None = None, tol_s: float = 0.0) -> np.ndarray:
    """Single-linkage classes of rows at distance <= tol (and, with a state ``s``, state distance <= tol_s)."""
    if s is not None and s.shape[1] == 0:
        s = None
    if tol == 0 and (s is None or tol_s == 0):
        return exact_groups(x if s is None else np.concatenate([x, s], axis=1))
    n = x.shape[0]
    pairs = cKDTree(x).query_pairs(r=tol, output_type="ndarray") if tol > 0 else exact_pairs(x)
    if s is not None and len(pairs):
        ds = np.sqrt(((s[pairs[:, 0]] - s[pairs[:, 1]]) ** 2).sum(axis=1))
        pairs = pairs[ds <= tol_s]
    g = csr_matrix((np.ones(len(pairs), dtype=np.int8), (pairs[:, 0], pairs[:, 1])), shape=(n, n))
    return connected_components(g, directed=False)[1]


def exact_pairs(x: np.ndarray) -> np.ndarray:
    """All pairs (i, j), i < j, of exactly equal rows."""
    lab = exact_groups(x)
    order = np.argsort(lab, kind="stable")
    groups = np.split(order, np.nonzero(np.diff(lab[order]))[0] + 1)
    out = [(int(a), int(b)) for g in groups if len(g) > 1 for ia, a in enumerate(g) for b in g[ia + 1:]]
    return np.array(sorted((min(a, b), max(a, b)) for a, b in out), dtype=np.int64).reshape(-1, 2)


def as_state(state: Any, n: int, name: str = "state") -> np.ndarray | None:
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
    x = as_cloud(cloud)
    s = as_state(state, x.shape[0])
    tol_s = 0.0 if s is None or s.shape[1] == 0 else merge_tolerance(s, rtol, 0.0)
    return int(np.unique(merge_labels(x, merge_tolerance(x, rtol, atol), s, tol_s)).size)


def merge_clusters(cloud: Any, rtol: float = 0.0, atol: float = 0.0, *, state: Any = None) -> list[list[int]]:
    """Groups (sorted index lists, size >= 2) of neurons merged under the :func:`count_distinct` rule."""
    x = as_cloud(cloud)
    s = as_state(state, x.shape[0])
    tol_s = 0.0 if s is None or s.shape[1] == 0 else merge_tolerance(s, rtol, 0.0)
    lab = merge_labels(x, merge_tolerance(x, rtol, atol), s, tol_s)
    order = np.argsort(lab, kind="stable")
    groups = np.split(order, np.nonzero(np.diff(lab[order]))[0] + 1)
    return sorted([sorted(g.tolist()) for g in groups if len(g) > 1])


def merged_pairs(cloud: Any, rtol: float = 0.0, atol: float = 0.0, *, state: Any = None) -> list[tuple[int, int]]:
    """Pairs (i, j), i < j, of neurons in the same merge cluster (see :func:`merge_clusters`), sorted."""
    out: list[tuple[int, int]] = []
    for g in merge_clusters(cloud, rtol, atol, state=state):
        out.extend((g[i], g[j]) for i in range(len(g)) for j in range(i + 1, len(g)))
    return sorted(out)


def count_coincident_pairs(cloud: Any) -> int:
    """Number of pairs i < j with θ_i = θ_j exactly (merged neurons, T6): Σ c(c−1)/2 over the groups of equal
    rows of :func:`exact_groups`. ``cloud``: an (N, d) tensor or array of any float dtype (compared exactly:
    float64 holds every float32/16 value); it is not checked for NaN (callers reject non-finite clouds)."""
    if hasattr(cloud, "detach") and hasattr(cloud, "cpu"):  # torch tensor
        cloud = cloud.detach().cpu().double().numpy()
    x = np.asarray(cloud, dtype=np.float64)
    if x.shape[0] < 2:
        return 0
    counts = np.bincount(exact_groups(x.reshape(x.shape[0], -1)))
    return int((counts * (counts - 1) // 2).sum())
