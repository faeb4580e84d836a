"""A cheap certified bound on the update field's Jacobian over the convex hull of a neuron cloud (claims T2, T7;
tier 0 of the monitor, proofs_notes/T7_monitor_bound.md).

Same quantities as :mod:`topoverify.measure.hull_bounds` (p = H w̃, c = D a, ∇²Φ's blocks), with the hull's
ranges replaced by norm balls: every hull point has ‖w̃‖ ≤ W = max_i ‖w̃_i‖ and ‖a‖ ≤ A = max_i ‖a_i‖ (a norm
is convex), so |p_r| ≤ ‖H_r‖ W and |c_r| ≤ ‖D_r‖ A (Cauchy–Schwarz). With S1_r, S2_r the certified sups of
|σ'|, |σ''| on [−‖H_r‖W, ‖H_r‖W] and λ_max(Xᵀ diag(x) X) ≤ tr = Σ_r x_r ‖X_r‖² (x ≥ 0):

    α ≤ Σ_r ‖D_r‖ A S2_r ‖H_r‖²,   β² ≤ (Σ_r S1_r ‖H_r‖²)(Σ_r S1_r ‖D_r‖²),
    K0 = (α + √(α² + 4β²))/2 + decay_max ≥ hull_bounds(...).norm ≥ sup_C ‖±∇²Φ + Λ‖.

O(R d + N d): row norms and a few sums, no R×N product, no eigenvalue problem. Rounded outward as hull_bounds
is (the pre-activation intervals also widened by the rounding of the model's own product). Infinite, with a
reason, for an uncertified activation or when an interval of a sample with nonzero signal holds a kink of σ'
(ReLU: always, as [−r, r] ∋ 0) — then the exact hull bound is the next tier.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from topoverify.measure.interval import U64, block_top, gamma, round_up

if TYPE_CHECKING:  # annotation only
    from topoverify.measure.field import BlockSamples

_F64 = torch.float64


@dataclass(frozen=True)
class CheapBound:
    """``norm`` ≥ sup over the hull of ‖±∇²Φ + Λ‖ (tier 0; inf with ``reason`` when not finite)."""

    norm: float
    reason: str = ""


def max_row_norm(blocks: list[torch.Tensor]) -> float:
    """Certified upper bound on max_i ‖[B_1[i], B_2[i], ...]‖ for row blocks of one neuron set (float64 sums of
    squares rounded up); inf if any entry is NaN/Inf (or the sum overflows)."""
    if not blocks or blocks[0].shape[0] == 0:
        return 0.0
    sq = None
    width = 0
    for b in blocks:
        b64 = b.detach().to(_F64)
        s = (b64 * b64).sum(dim=1)
        sq = s if sq is None else sq + s
        width += b64.shape[1]
    m = float(sq.max())
    if not math.isfinite(m):
        return math.inf
    return round_up(math.sqrt(round_up(m, width)), 2)


def cloud_norms(cloud: torch.Tensor, d_w: int) -> tuple[float, float]:
    """(W, A): certified upper bounds on max_i ‖w̃_i‖ and max_i ‖a_i‖ of a cloud whose first ``d_w`` columns
    are w̃ (as in :class:`topoverify.measure.field.BlockSamples`)."""
    return max_row_norm([cloud[:, :d_w]]), max_row_norm([cloud[:, d_w:]])


#: radii ρ_j of the symmetric intervals [−ρ_j, ρ_j] tabulated per activation (0, 10⁻³ … 10⁵ by ratios of
#: about 1.0155, then ∞)
RADII = torch.cat([torch.zeros(1, dtype=_F64), torch.logspace(-3, 5, 1200, dtype=_F64),
                   torch.full((1,), math.inf, dtype=_F64)])
_SUP_TABLES: dict = {}


def radius_sups(act, r: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """Certified sups of |σ'| and |σ''| on [−r_k, r_k] for each radius r_k ≥ 0: the activation's enclosures on
    [−ρ_j, ρ_j] for the smallest tabulated ρ_j ≥ r_k (a superset of the interval, so its sup bounds the
    interval's). The table (:data:`RADII`, two calls of :meth:`Activation.bounds`) is built once per activation.
    The flag says whether the |σ''| table is finite everywhere."""
    key = (act.name, act.params, id(act.fn))
    table = _SUP_TABLES.get(key)
    if table is None:
        s1lo, s1hi = act.bounds(1, -RADII, RADII)
        s2lo, s2hi = act.bounds(2, -RADII, RADII)
        t2 = torch.maximum(s2lo.abs(), s2hi.abs())
        table = (torch.maximum(s1lo.abs(), s1hi.abs()), t2, bool(torch.isfinite(t2).all()), act)
        _SUP_TABLES[key] = table  # keeps act alive, so id(act.fn) is not reused by another function
    idx = torch.searchsorted(RADII, r).clamp_max(RADII.numel() - 1)  # NaN radius: the last (∞) entry
    return table[0][idx], table[1][idx], table[2]


def tier0_bound(samples: BlockSamples, W: float, A: float, decay_max: float = 0.0) -> CheapBound:
    """K0 (module docstring) for the field of ``samples`` over any cloud with max ‖w̃_i‖ ≤ W, max ‖a_i‖ ≤ A."""
    act = samples.activation
    if not act.certified:
        return CheapBound(math.inf, f"activation {act.name}: {act.uncertified_reason}")
    dmax = max(0.0, float(decay_max))
    R = samples.H.shape[0]
    if R == 0:
        return CheapBound(dmax)
    if not (math.isfinite(W) and math.isfinite(A)):
        return CheapBound(math.inf, "the neuron parameters' norms are not finite")
    H = samples.H if samples.H.dtype == _F64 else samples.H.to(_F64)
    D = samples.D if samples.D.dtype == _F64 else samples.D.to(_F64)
    d_w, d_a = H.shape[1], D.shape[1]
    gh, gd = 1 + gamma(d_w + 4, U64), 1 + gamma(d_a + 4, U64)   # sums of squares, rounded up by these
    hn2, dn2 = (H * H).sum(dim=1), (D * D).sum(dim=1)
    u_model = torch.finfo(samples.H.dtype).eps / 2
    g = 2 * (gamma(d_w + 2, u_model) + gamma(d_w + 2, U64))  # model's product + hull_bounds' own, twice
    # r ≥ ‖H_r‖ W (1 + g), c ≥ ‖D_r‖ A (with the sqrt's and the products' rounding: the 1e-9 margin)
    r = hn2.sqrt() * (W * (1 + g) * math.sqrt(gh) * (1 + 1e-9))
    c = dn2.sqrt() * (A * (1 + 2 * gamma(d_a + 2, U64)) * math.sqrt(gd) * (1 + 1e-9))
    if act.kinks:
        kink = act.crosses_kink(-r, r) & (dn2 > 0)
        if bool(kink.any()):
            where = ", ".join(f"{k:g}" for k in act.kinks)
            return CheapBound(math.inf, f"{act.name}: σ' jumps at {where} and the norm-ball pre-activation "
                                        f"interval of {int(kink.sum())} of {R} samples with nonzero signal "
                                        f"holds it (tier 0 needs the exact hull ranges)")
    S1, S2, s2_finite = radius_sups(act, r)
    cS2 = c * S2 if s2_finite else torch.where(dn2 > 0, c * S2, torch.zeros_like(r))  # c ≡ 0: no A block
    grow = 1 + gamma(R + 8, U64)  # R-term dot products of nonnegative vectors, and the products inside
    alpha = float(torch.dot(cS2, hn2)) * gh * grow
    b2 = float(torch.dot(S1, hn2)) * gh * grow * float(torch.dot(S1, dn2)) * gd * grow * (1 + 4 * U64)
    if not (math.isfinite(alpha) and math.isfinite(b2)):
        return CheapBound(math.inf, "tier 0 is not finite: the samples' norms overflow or σ'' has no finite "
                                    "bound on the norm-ball pre-activation intervals")
    return CheapBound(round_up(block_top(alpha, b2) + dmax, 8))  # one rounding more than hull_bounds: never below it


__all__ = ["CheapBound", "tier0_bound", "cloud_norms", "max_row_norm"]
