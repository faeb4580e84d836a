"""Pairwise distance statistics of neuron clouds, computed in row chunks (memory O(chunk·N), never N×N×d)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

_CHUNK = 1 << 22


def _row_chunks(n: int):
    step = max(1, _CHUNK // max(1, n))
    for s in range(0, n, step):
        yield s, min(n, s + step)


def count_coincident_pairs(cloud: torch.Tensor) -> int:
    """Number of pairs i < j with θ_i = θ_j exactly (merged neurons, T6): Σ c(c−1)/2 over groups of equal rows."""
    if cloud.shape[0] < 2:
        return 0
    # Equal rows have equal projections: only rows whose random projection collides are compared exactly.
    key = cloud.to(torch.float64) @ torch.randn(cloud.shape[1], dtype=torch.float64,
                                               generator=torch.Generator().manual_seed(0))
    _, inverse, counts = torch.unique(key, return_inverse=True, return_counts=True)
    candidates = counts[inverse] > 1
    if not bool(candidates.any()):
        return 0
    _, counts = torch.unique(cloud[candidates], dim=0, return_counts=True)
    return int((counts * (counts - 1) // 2).sum())


@dataclass(frozen=True)
class RatioStats:
    """Extremes of r_ij = ‖θ'_i − θ'_j‖ / ‖θ_i − θ_j‖ over pairs with θ_i ≠ θ_j, and bound violations."""

    min_ratio: float
    max_ratio: float
    n_pairs: int
    merged_before: int      # pairs at distance 0 before the step (excluded from ratios)
    merged_after: int       # pairs at distance 0 after the step
    violations: int         # pairs outside [lower, upper] beyond the round-off tolerance
    margin: float           # min over pairs of min(r − lower, upper − r); negative when violated
    max_secant: float       # max ‖Δθ'_ij − Δθ_ij‖/‖Δθ_ij‖ = lr·K_secant (an observation)


def _accurate_cdist(X: torch.Tensor, s: int, e: int) -> torch.Tensor:
    """Distances from rows s:e of X to all rows. torch.cdist's matrix-product form loses accuracy to
    cancellation for pairs much closer than their norms; those pairs are recomputed from differences."""
    d = torch.cdist(X[s:e], X)
    norms = X.norm(dim=1)
    close = d < 1e-2 * (norms[s:e, None] + norms[None, :])
    if bool(close.any()):
        i, j = close.nonzero(as_tuple=True)
        step = max(1, (1 << 20) // max(1, X.shape[1]))
        for k in range(0, i.numel(), step):
            ii, jj = i[k: k + step], j[k: k + step]
            d[ii, jj] = (X[s + ii] - X[jj]).norm(dim=1)
    return d


def ratio_stats(before: torch.Tensor, after: torch.Tensor, lower: float, upper: float,
                rel_tol: float | None = None) -> RatioStats:
    """Hold the ratio bounds [lower, upper] against every pair (T2). A pair violates when
    ‖Δθ'‖ > upper‖Δθ‖ + tol_ij or ‖Δθ'‖ < lower‖Δθ‖ − tol_ij, where tol_ij = c·eps·√d·(m_i + m_j + m'_i + m'_j)
    is a round-off allowance from the pair's own magnitudes (m = max |coordinate| of a row, before and
    after; c = 8 unless ``rel_tol`` replaces c·eps). Distances are computed accurately for close pairs."""
    n, d = before.shape[0], (before.shape[1] if before.dim() == 2 else 1)
    c_eps = rel_tol if rel_tol is not None else 8 * torch.finfo(before.dtype).eps
    mag = before.abs().amax(dim=1) + after.abs().amax(dim=1) if n else before.new_zeros(0)
    rmin, rmax, count, m0, m1, viol, margin, secant = math.inf, -math.inf, 0, 0, 0, 0, math.inf, 0.0
    moved = after - before
    for s, e in _row_chunks(n):
        upper_mask = torch.arange(n)[None, :] > torch.arange(s, e)[:, None]
        d0 = _accurate_cdist(before, s, e)
        d1 = _accurate_cdist(after, s, e)
        m0 += int(((d0 == 0) & upper_mask).sum())
        m1 += int(((d1 == 0) & upper_mask).sum())
        valid = upper_mask & (d0 > 0)
        if not bool(valid.any()):
            continue
        dd0, dd1 = d0[valid], d1[valid]
        tol = (c_eps * math.sqrt(d) * (mag[s:e, None] + mag[None, :]))[valid]
        r = dd1 / dd0
        count += int(r.numel())
        rmin, rmax = min(rmin, float(r.min())), max(rmax, float(r.max()))
        viol += int(((dd1 > upper * dd0 + tol) | (dd1 < lower * dd0 - tol)).sum())
        margin = min(margin, float(torch.minimum(r - lower, upper - r).min()))
        secant = max(secant, float((_accurate_cdist(moved, s, e)[valid] / dd0).max()))
    return RatioStats(rmin, rmax, count, m0, m1, viol, margin, secant)
