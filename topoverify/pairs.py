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


def ratio_stats(before: torch.Tensor, after: torch.Tensor, lower: float, upper: float,
                abs_tol: float | None = None) -> RatioStats:
    """Hold the ratio bounds [lower, upper] against every pair (T2). A pair violates when
    ‖Δθ'‖ > upper‖Δθ‖ + tol or ‖Δθ'‖ < lower‖Δθ‖ − tol, with tol a round-off allowance on distances."""
    n = before.shape[0]
    if abs_tol is None:
        eps = torch.finfo(before.dtype).eps
        scale = float(before.abs().max()) + float(after.abs().max()) if n else 0.0
        abs_tol = 64 * eps * max(scale, 1e-30) * math.sqrt(before.shape[1] if before.dim() == 2 else 1)
    rmin, rmax, count, m0, m1, viol, margin, secant = math.inf, -math.inf, 0, 0, 0, 0, math.inf, 0.0
    for s, e in _row_chunks(n):
        upper_mask = torch.arange(n)[None, :] > torch.arange(s, e)[:, None]
        d0 = torch.cdist(before[s:e], before)
        d1 = torch.cdist(after[s:e], after)
        m0 += int(((d0 == 0) & upper_mask).sum())
        m1 += int(((d1 == 0) & upper_mask).sum())
        valid = upper_mask & (d0 > 0)
        if not bool(valid.any()):
            continue
        r = d1[valid] / d0[valid]
        dd0, dd1 = d0[valid], d1[valid]
        count += int(r.numel())
        rmin, rmax = min(rmin, float(r.min())), max(rmax, float(r.max()))
        viol += int(((dd1 > upper * dd0 + abs_tol) | (dd1 < lower * dd0 - abs_tol)).sum())
        margin = min(margin, float(torch.minimum(r - lower, upper - r).min()))
        moved = torch.cdist(after[s:e] - before[s:e], after - before)[valid] / dd0
        secant = max(secant, float(moved.max()))
    return RatioStats(rmin, rmax, count, m0, m1, viol, margin, secant)
