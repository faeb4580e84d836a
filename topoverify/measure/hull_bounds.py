"""Certified bounds on the update field's Jacobian over the convex hull of a neuron cloud (claims T2, T3).

For the field of :mod:`topoverify.measure.field`, Φ(z) = Σ_r (D_r · a) σ(H_r · w̃), the Jacobian is
∇²Φ(z) = [[Hᵀ diag(c σ''(p)) H, Hᵀ diag(σ'(p)) D], [Dᵀ diag(σ'(p)) H, 0]] with p = H w̃, c = D a. Over the
hull, p_r lies in [min_i p_ri, max_i p_ri] and |c_r| ≤ max_i |D_r·a_i| (both linear, extremes at vertices),
so with S1_r, S2_r the sups of |σ'|, |σ''| there, α = λmax(Hᵀ diag(C S2) H) and
β² = λmax(Hᵀ diag(S1) H) λmax(Dᵀ diag(S1) D) bound the blocks and ‖∇²Φ‖ ≤ (α + √(α² + 4β²))/2 = K_upper.
``mu_upper`` bounds the largest signed eigenvalue the same way with the positive part of c σ''. The sups
are proved (interval arithmetic, :mod:`topoverify.neurons.activations`), the ranges and eigenvalues rounded
outward. Infinite, with a reason, when the pre-activations of a sample with nonzero signal cross a jump of
σ' (ReLU at 0): the field is not Lipschitz there.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from topoverify.measure.chunks import row_chunks
from topoverify.measure.interval import U64, block_top, down, gamma, round_up, up

if TYPE_CHECKING:  # annotation only: field.py imports this module
    from topoverify.measure.field import BlockSamples


@dataclass(frozen=True)
class HullBounds:
    """Certified bounds over the convex hull of a cloud (:func:`hull_bounds`)."""

    norm: float               # ≥ sup ‖±∇²Φ + Λ‖_op (K_upper)
    top: float | None         # ≥ sup λ_max(∇²Φ + Λ) (μ_upper of a gradient step)
    top_neg: float | None     # ≥ sup λ_max(−∇²Φ + Λ) (μ_upper of gradient ascent)
    reason: str = ""    # why the bounds are infinite ('' when finite)
    kink_samples: int = 0


def hull_bounds(samples: BlockSamples, cloud: torch.Tensor, decay_max: float = 0.0,
                signs: tuple[int, ...] = (1,)) -> HullBounds:
    """Certified bounds over the convex hull C of ``cloud`` (module docstring) for the field of ``samples``,
    for a Jacobian ±∇²Φ + Λ with 0 ≤ Λ ⪯ ``decay_max``·I:

    * ``norm`` ≥ sup_C ‖∇²Φ + Λ‖_op (= K_upper), also ≥ sup_C ‖−∇²Φ + Λ‖_op;
    * ``top`` ≥ sup_C λ_max(∇²Φ + Λ) and ``top_neg`` ≥ sup_C λ_max(−∇²Φ + Λ) (μ_upper of a gradient
      step, resp. of gradient ascent): with A = Hᵀdiag(cσ'')H, λ_max(A) ≤ λ_max(Hᵀ diag(w₊) H) where
      w₊ ≥ sup_C (c_r σ''(p_r))₊ (each sample's positive part, from the signed ranges of c_r and
      σ''(p_r)), and λ_max([[A, B], [Bᵀ, 0]]) ≤ (a + √(a² + 4‖B‖²))/2 for any a ≥ λ_max(A).
      ``signs`` selects which of the two are computed (+1: ``top``, −1: ``top_neg``; the other is None).

    Every step is rounded outward: pre-activations are widened by the rounding of the model's own
    matrix product (in its dtype) and of the float64 one here, c by the float64 rounding, and the
    eigenvalues by the rounding of the Gram matrix and of ``eigvalsh``. Infinite, with ``reason``, when
    the activation has no certified model or, for a sample whose back-propagated signal is not
    identically 0 on C, the pre-activations cross a kink of σ' (ReLU at 0): the field is then not
    Lipschitz on C.
    """
    act = samples.activation
    if not act.certified:
        return HullBounds(math.inf, math.inf, math.inf, f"activation {act.name}: {act.uncertified_reason}")
    f64 = torch.float64
    R = samples.H.shape[0]
    if R == 0 or cloud.shape[0] == 0:
        zero = max(0.0, float(decay_max))
        return HullBounds(zero, zero, zero)
    same = cloud.dtype == samples.H.dtype == samples.D.dtype
    dt = samples.H.dtype if same and samples.H.dtype in (torch.float32, torch.float64) else f64
    Hc, Dc = samples.H.to(dt), samples.D.to(dt)
    lo = torch.full((R,), math.inf, dtype=f64, device=samples.H.device)
    hi, clo, chi = -lo.clone(), lo.clone(), -lo.clone()
    wmax = amax = 0.0
    for s, e in row_chunks(cloud.shape[0], R):
        Zc = cloud[s:e].to(dt)
        W, A = Zc[:, : samples.d_w], Zc[:, samples.d_w:]
        P, C = (Hc @ W.T).to(f64), (Dc @ A.T).to(f64)
        lo, hi = torch.minimum(lo, P.amin(dim=1)), torch.maximum(hi, P.amax(dim=1))
        clo, chi = torch.minimum(clo, C.amin(dim=1)), torch.maximum(chi, C.amax(dim=1))
        W64, A64 = W.to(f64), A.to(f64)
        wmax = max(wmax, float(W64.norm(dim=1).max()) if W.numel() else 0.0)
        amax = max(amax, float(A64.norm(dim=1).max()) if A.numel() else 0.0)
    H, D = samples.H.to(f64), samples.D.to(f64)
    # |fl(H_r·w) − H_r·w| ≤ γ_n |H_r|·|w| ≤ γ_n ‖H_r‖ max_i ‖w_i‖ (Cauchy–Schwarz; every hull point has
    # ‖w‖ ≤ max_i ‖w_i‖): once for the model's own product (its dtype), once for ours (dtype ``dt``).
    u_model, u_here = torch.finfo(samples.H.dtype).eps / 2, torch.finfo(dt).eps / 2
    gp = gamma(samples.d_w + 2, u_model) + gamma(samples.d_w + 2, u_here)
    ep = gp * H.norm(dim=1) * wmax * (1 + 1e-9)
    ec = gamma(D.shape[1] + 2, u_here) * D.norm(dim=1) * amax * (1 + 1e-9)
    lo, hi = down(lo - ep), up(hi + ep)
    clo_w, chi_w = clo - ec, chi + ec
    active = (clo_w < 0) | (chi_w > 0)  # else c_r ≡ 0 on the hull: sample r never enters the A block
    clo, chi = down(clo_w), up(chi_w)
    kink = act.crosses_kink(lo, hi) & active
    if bool(kink.any()):
        n = int(kink.sum())
        where = ", ".join(f"{k:g}" for k in act.kinks)
        reason = (f"{act.name}: σ' jumps at {where}, and over the convex hull of the cloud the pre-activation "
                  f"crosses it on {n} of {R} samples whose back-propagated signal is not 0, so the update field "
                  f"is not Lipschitz there and no finite K is certified (K_upper = inf); the estimate K is "
                  f"still reported")
        return HullBounds(math.inf, math.inf, math.inf, reason, n)
    s1lo, s1hi = act.bounds(1, lo, hi)
    s2lo, s2hi = act.bounds(2, lo, hi)
    S1 = torch.maximum(s1lo.abs(), s1hi.abs())
    zero = torch.zeros_like(lo)
    cpos, cneg = chi.clamp_min(0), (-clo).clamp_min(0)
    spos, sneg = s2hi.clamp_min(0), (-s2lo).clamp_min(0)
    grow = 1 + 8 * U64  # rounding of the products below
    w_abs = torch.where(active, torch.maximum(cpos, cneg) * torch.maximum(spos, sneg), zero) * grow
    w_pos = torch.where(active, torch.maximum(cpos * spos, cneg * sneg), zero) * grow   # ≥ sup (cσ'')₊
    w_neg = torch.where(active, torch.maximum(cpos * sneg, cneg * spos), zero) * grow   # ≥ sup (cσ'')₋
    b2 = _lambda_max_weighted(H, S1 * grow) * _lambda_max_weighted(D, S1 * grow) * grow
    dmax = max(0.0, float(decay_max))
    norm = round_up(block_top(_lambda_max_weighted(H, w_abs), b2) + dmax, 0)
    top = top_neg = None
    if 1 in signs:
        top = min(round_up(block_top(_lambda_max_weighted(H, w_pos), b2) + dmax, 0), norm)
    if -1 in signs:
        top_neg = min(round_up(block_top(_lambda_max_weighted(H, w_neg), b2) + dmax, 0), norm)
    return HullBounds(norm, top, top_neg)


def _lambda_max_weighted(X: torch.Tensor, w: torch.Tensor) -> float:
    """Certified upper bound on λmax(Xᵀ diag(w) X) for w ≥ 0, X float64, through the smaller Gram matrix.

    The computed Gram matrix differs from the exact one by E with ‖E‖₂ ≤ ‖E‖_F ≤ γ_{n+4} tr(G) (n-term sums,
    plus the rounding of X·√w); ``eigvalsh`` is backward stable, its eigenvalues exact for G + E' with
    ‖E'‖₂ ≤ 8·p·u·‖G‖ (p the order). By Weyl, λmax ≤ computed + (γ_{n+4} + 8pu)·tr(G)."""
    w = w.to(torch.float64).clamp_min(0)
    if not bool(torch.isfinite(w).all()):
        return math.inf
    if X.numel() == 0 or not bool((w > 0).any()):
        return 0.0
    Xw = X.to(torch.float64) * w.sqrt()[:, None]
    rows, cols = Xw.shape
    G = Xw.T @ Xw if cols <= rows else Xw @ Xw.T
    n_sum, p = (rows, cols) if cols <= rows else (cols, rows)
    lam = float(torch.linalg.eigvalsh(G)[-1])
    tr = float((Xw * Xw).sum()) * (1 + gamma(Xw.numel() + 2, U64))
    return max(0.0, lam) + (gamma(n_sum + 4, U64) + 8 * p * U64) * tr


__all__ = ["HullBounds", "hull_bounds"]
