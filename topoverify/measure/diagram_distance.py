"""Bottleneck distances between persistence diagrams, linear and log-scale (T5), with essential classes.

T5 (``spec/claims.toml``) bounds the bottleneck distance of the diagrams in log coordinates
``(log birth, log death)`` by ``eps``; :func:`log_bottleneck` measures it. The finite part is an exact
bottleneck matching (:func:`bottleneck_finite`); persim, a test-only dependency, cross-checks it in the tests.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import maximum_bipartite_matching

from topoverify.errors import TopoverifyError
from topoverify.measure.persistence import PersistenceResult, as_diagram

__all__ = ["log_diagram", "bottleneck", "log_bottleneck", "bottleneck_finite"]


def log_diagram(dgm: Any) -> np.ndarray:
    """Diagram in log coordinates ``(log birth, log death)`` (T5). Births 0 become ``-inf`` (H0),
    deaths ``inf`` stay ``inf``; zero-persistence points (birth == death, on the diagonal) are dropped."""
    d = as_diagram(dgm)
    d = d[d[:, 1] > d[:, 0]]
    with np.errstate(divide="ignore"):
        return np.log(d)


def bottleneck_finite(p: np.ndarray, q: np.ndarray) -> float:
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
    different numbers of them the distance is ``inf``. The finite parts use :func:`bottleneck_finite`.
    (``persim.bottleneck`` drops infinite points with a warning, which can report a finite distance
    where the true one is infinite.) Two :class:`PersistenceResult` s are compared dimension by dimension
    and the largest distance is returned (``dim=k``: dimension k only).
    """
    pairs = _diagram_pairs(dgm_a, dgm_b, dim)
    if len(pairs) > 1:
        return max(bottleneck(p, q) for p, q in pairs)
    dgm_a, dgm_b = pairs[0]
    a, b = as_diagram(dgm_a, "dgm_a"), as_diagram(dgm_b, "dgm_b")
    ia, ib = np.isinf(a[:, 1]), np.isinf(b[:, 1])
    ess = _sorted_match(a[ia, 0], b[ib, 0])
    if math.isinf(ess):
        return math.inf
    fa, fb = a[~ia], b[~ib]
    fa, fb = fa[fa[:, 1] > fa[:, 0]], fb[fb[:, 1] > fb[:, 0]]
    return max(ess, bottleneck_finite(fa, fb))


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
    a, b = as_diagram(dgm_a, "dgm_a"), as_diagram(dgm_b, "dgm_b")
    a, b = a[a[:, 1] > a[:, 0]], b[b[:, 1] > b[:, 0]]

    def split(d: np.ndarray) -> tuple[int, np.ndarray, np.ndarray, np.ndarray]:
        z, inf = d[:, 0] == 0, np.isinf(d[:, 1])
        return int(np.sum(z & inf)), d[z & ~inf, 1], d[~z & inf, 0], d[~z & ~inf]

    ea, za, ia, fa = split(a)
    eb, zb, ib, fb = split(b)
    if ea != eb or len(za) != len(zb) or len(ia) != len(ib):
        return math.inf
    out = max(_sorted_match(np.log(za), np.log(zb)), _sorted_match(np.log(ia), np.log(ib)))
    return max(out, bottleneck_finite(np.log(fa), np.log(fb)))
