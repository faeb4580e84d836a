"""Pairwise distance statistics of neuron clouds, computed in row chunks (memory O(chunk·N), never N×N×d)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from topoverify.errors import NonFiniteError
from topoverify.measure.chunks import GATHER_ELEMENTS, row_chunks
from topoverify.measure.interval import U64, gamma


def _pow2_exponent(X: torch.Tensor) -> int:
    """e with max |X|·2^−e in [½, 1) (0 for an all-zero X): scaling by 2^−e is exact and keeps squared
    distances far from overflow."""
    m = float(X.abs().max()) if X.numel() else 0.0
    if not (m > 0 and math.isfinite(m)):
        return 0
    return math.frexp(m)[1]


def _scaled(X: torch.Tensor, e: int) -> torch.Tensor:
    return torch.ldexp(X, torch.tensor(-e, dtype=torch.int32))


def _unscaled(X: torch.Tensor, e: int) -> torch.Tensor:
    return torch.ldexp(X, torch.tensor(e, dtype=torch.int32))


def _ldexp(x: float, e: int) -> float:
    """x·2^e, inf on overflow."""
    try:
        return math.ldexp(x, e)
    except OverflowError:
        return math.copysign(math.inf, x)


@dataclass(frozen=True)
class RatioStats:
    """Extremes of r_ij = ‖θ'_i − θ'_j‖ / ‖θ_i − θ_j‖ over pairs with θ_i ≠ θ_j, and bound violations.

    ``band_violations``/``band_margins`` repeat ``violations``/``margin`` for the extra bands passed to
    :func:`ratio_stats`. ``fold_index`` = max over pairs of ⟨Δ − Δ', Δ⟩/‖Δ‖² (Δ = θ_i − θ_j before, Δ' after;
    for a step θ' = θ − ηu it is η⟨u_i − u_j, Δ⟩/‖Δ‖²): by Cauchy–Schwarz every pair's ratio is at least
    1 − its index, so fold_index < 1 shows that no pair of the cloud merged (an observation built from the
    step itself, like ``max_secant``)."""

    min_ratio: float
    max_ratio: float
    n_pairs: int
    merged_before: int      # pairs at distance 0 before the step (excluded from ratios)
    merged_after: int       # pairs at distance 0 after the step
    violations: int         # pairs outside [lower, upper] beyond the round-off tolerance
    margin: float           # min over pairs of min(r − lower, upper − r); negative when violated
    max_secant: float       # max ‖Δθ'_ij − Δθ_ij‖/‖Δθ_ij‖ = lr·K_secant (an observation)
    fold_index: float = -math.inf
    band_violations: tuple[int, ...] = ()
    band_margins: tuple[float, ...] = ()
    max_abs_change: float | None = None  # max over all pairs of |‖Δθ'‖ − ‖DΔθ‖| (with ``additive`` given)
    additive_violations: int = 0         # pairs whose change exceeds δ beyond the round-off tolerance


def _accurate_cdist(X: torch.Tensor, s: int, e: int, norms: torch.Tensor | None = None) -> torch.Tensor:
    """Distances from rows s:e of X (float64, scaled to max |x| ≤ 1) to all rows. torch.cdist's
    matrix-product form loses accuracy to cancellation for pairs much closer than their norms; those
    pairs are recomputed from differences."""
    d = torch.cdist(X[s:e], X)
    norms = X.norm(dim=1) if norms is None else norms
    close = d < 1e-2 * (norms[s:e, None] + norms[None, :])
    if bool(close.any()):
        i, j = close.nonzero(as_tuple=True)
        for k0, k1 in row_chunks(i.numel(), X.shape[1], GATHER_ELEMENTS):
            ii, jj = i[k0:k1], j[k0:k1]
            d[ii, jj] = (X[s + ii] - X[jj]).norm(dim=1)
    return d


def _accurate_inner(M: torch.Tensor, X: torch.Tensor, s: int, e: int, close: torch.Tensor) -> torch.Tensor:
    """⟨M_i − M_j, X_i − X_j⟩ for rows i in s:e and all j; pairs flagged ``close`` from differences."""
    qm = (M * X).sum(dim=1)
    out = qm[s:e, None] + qm[None, :] - M[s:e] @ X.T - X[s:e] @ M.T
    if bool(close.any()):
        i, j = close.nonzero(as_tuple=True)
        for k0, k1 in row_chunks(i.numel(), X.shape[1], GATHER_ELEMENTS):
            ii, jj = i[k0:k1], j[k0:k1]
            out[ii, jj] = ((M[s + ii] - M[jj]) * (X[s + ii] - X[jj])).sum(dim=1)
    return out


def ratio_stats(before: torch.Tensor, after: torch.Tensor, lower: float, upper: float,
                rel_tol: float | None = None, *, bands: tuple[tuple[float, float], ...] = (),
                additive: tuple[float | torch.Tensor, float] | None = None) -> RatioStats:
    """Hold the ratio bounds [lower, upper] (and each extra band in ``bands``) against every pair (T2). A pair
    violates when ‖Δθ'‖ > upper‖Δθ‖ + tol_ij or ‖Δθ'‖ < lower‖Δθ‖ − tol_ij, where
    tol_ij = c·eps·√d·(m_i + m_j + m'_i + m'_j) is a round-off allowance from the pair's own magnitudes
    (m = max |coordinate| of a row, before and after; eps of the clouds' dtype; c = 8 unless ``rel_tol``
    replaces c·eps). Distances are computed in float64 on clouds rescaled by a power of two (no overflow for
    any finite cloud), accurately for close pairs. Raises :class:`NonFiniteError` if a cloud holds NaN/Inf
    or a distance exceeds the float64 range: a non-finite result is never a pass.

    ``additive`` = (D, δ) also holds T7(b)'s additive bound |‖Δθ'‖ − ‖DΔθ‖| ≤ δ against every pair, merged
    pairs included, with the same round-off allowance; D is a scalar or a per-coordinate vector (the decoupled
    decay's 1 − lr·λ_k; its sign does not matter, only ‖DΔθ‖)."""
    if not (bool(torch.isfinite(before).all()) and bool(torch.isfinite(after).all())):
        raise NonFiniteError("the neuron cloud holds NaN/Inf, so pairwise distance ratios are not defined.")
    n, d = before.shape[0], (before.shape[1] if before.dim() == 2 else 1)
    c_eps = rel_tol if rel_tol is not None else 8 * torch.finfo(before.dtype).eps
    b64, a64 = before.to(torch.float64).reshape(n, -1), after.to(torch.float64).reshape(n, -1)
    mag = b64.abs().amax(dim=1) + a64.abs().amax(dim=1) if n else b64.new_zeros(0)
    e0, e1 = _pow2_exponent(b64), _pow2_exponent(a64)
    B, A = _scaled(b64, e0), _scaled(a64, e1)
    moved = a64 - b64
    if not bool(torch.isfinite(moved).all()):
        raise NonFiniteError("the step moved a neuron by more than the float64 range; the step has diverged.")
    e2 = _pow2_exponent(moved)
    Mv = _scaled(moved, e2)
    nb, na, nm = B.norm(dim=1), A.norm(dim=1), Mv.norm(dim=1)
    all_bands = ((lower, upper), *bands)
    rmin, rmax, count, m0, m1, margin, secant, fold = math.inf, -math.inf, 0, 0, 0, math.inf, 0.0, -math.inf
    viol = [0] * len(all_bands)
    margins = [math.inf] * len(all_bands)
    abs_change, add_viol = (0.0 if additive is not None and n > 1 else None), 0
    scaled_before = None  # D·θ, when D is a per-coordinate vector: its distances are ‖DΔθ‖
    if additive is not None and isinstance(additive[0], torch.Tensor):
        s64 = b64 * additive[0].to(torch.float64).reshape(1, -1)
        e3 = _pow2_exponent(s64)
        S = _scaled(s64, e3)
        scaled_before = (S, e3, S.norm(dim=1))
    for s, e in row_chunks(n, n):
        upper_mask = torch.arange(n)[None, :] > torch.arange(s, e)[:, None]
        d0 = _unscaled(_accurate_cdist(B, s, e, nb), e0)
        d1 = _unscaled(_accurate_cdist(A, s, e, na), e1)
        if not (bool(torch.isfinite(d0).all()) and bool(torch.isfinite(d1).all())):
            raise NonFiniteError("a pairwise distance exceeds the float64 range; the step has diverged.")
        if additive is not None and bool(upper_mask.any()):
            if scaled_before is None:
                ds = abs(float(additive[0])) * d0
            else:
                S, e3, nS = scaled_before
                ds = _unscaled(_accurate_cdist(S, s, e, nS), e3)
            change = (d1 - ds)[upper_mask].abs()
            tol_all = (c_eps * math.sqrt(d) * (mag[s:e, None] + mag[None, :]))[upper_mask]
            abs_change = max(abs_change, float(change.max()))
            add_viol += int((change > additive[1] + tol_all).sum())
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
        for k, (lo_b, up_b) in enumerate(all_bands):
            viol[k] += int(((dd1 > up_b * dd0 + tol) | (dd1 < lo_b * dd0 - tol)).sum())
            margins[k] = min(margins[k], float(torch.minimum(r - lo_b, up_b - r).min()))
        d0s = _accurate_cdist(B, s, e, nb)[valid]  # scaled distances: no overflow in the quotients below
        secant = max(secant, _ldexp(float((_accurate_cdist(Mv, s, e, nm)[valid] / d0s).max()), e2 - e0))
        close = _accurate_cdist(B, s, e, nb) < 1e-2 * (nb[s:e, None] + nb[None, :])
        inner = _accurate_inner(Mv, B, s, e, close)[valid]
        fold = max(fold, _ldexp(float((-inner / (d0s * d0s)).max()), e2 - e0))
    return RatioStats(rmin, rmax, count, m0, m1, viol[0], margins[0], secant, fold, tuple(viol[1:]),
                      tuple(margins[1:]), abs_change, add_viol)


# ----------------------------------------------------------------------------------------------------------
# Certified maximum of a ratio of pairwise distances
# ----------------------------------------------------------------------------------------------------------

def max_pair_ratio(X: torch.Tensor, Y: torch.Tensor) -> float:
    """A certified upper bound on ρ = max over pairs i < j with x_i ≠ x_j of ‖y_i − y_j‖ / ‖x_i − x_j‖, within
    a relative 1e-12 of ρ; ``inf`` if some x_i = x_j carry y_i ≠ y_j (0 for fewer than two rows).

    Screening: squared distances from Gram matrices in the inputs' own dtype (after an exact power-of-two
    rescaling), with the rigorous error bound γ_{d+2}·(‖x_i‖ + ‖x_j‖)² of their computation, give for every
    pair an interval holding its ratio. Pairs whose upper end reaches the best lower end seen so far (the
    near-maximal ones and every pair too close to resolve) are recomputed from differences in float64. No
    pair is skipped unless its ratio is provably below one that was computed exactly.
    """
    return max_pair_ratios(X, [Y])[0]


def max_pair_ratios(X: torch.Tensor, Ys: list[torch.Tensor]) -> list[float]:
    """:func:`max_pair_ratio` of X against each of ``Ys``, sharing X's Gram matrix (one pass over the pairs)."""
    n = X.shape[0]
    if n < 2:
        return [0.0 for _ in Ys]
    X = X.reshape(n, -1)
    dt = X.dtype if X.dtype in (torch.float32, torch.float64) else torch.float64
    u, tiny = torch.finfo(dt).eps / 2, torch.finfo(dt).tiny
    ex = _pow2_exponent(X.to(torch.float64))
    X64 = _scaled(X.to(torch.float64), ex)
    Xs = X64.to(dt)
    gx, nx = gamma(X.shape[1] + 2, u), X64.norm(dim=1)
    qx = (Xs * Xs).sum(dim=1).to(torch.float64)
    out: list[float | None] = [None] * len(Ys)
    todo = []
    for k, Y in enumerate(Ys):
        Y = Y.reshape(n, -1)
        if bool((Y == Y[:1]).all()):  # every y_i equal: every ratio is exactly 0 (no pair needs screening)
            out[k] = 0.0
            continue
        ey = _pow2_exponent(Y.to(torch.float64))
        Y64 = _scaled(Y.to(torch.float64), ey)
        Ysc = Y64.to(dt)
        todo.append(dict(k=k, ey=ey, Y64=Y64, Ys=Ysc, gy=gamma(Y.shape[1] + 2, u), ny=Y64.norm(dim=1),
                         qy=(Ysc * Ysc).sum(dim=1).to(torch.float64), best=0.0, best_r=0.0, inf=False))
    width = max([X.shape[1]] + [t["Y64"].shape[1] for t in todo])
    for s, e in row_chunks(n, n):
        if not todo:
            break
        upper_mask = torch.arange(n)[None, :] > torch.arange(s, e)[:, None]
        dx2 = qx[s:e, None] + qx[None, :] - 2 * (Xs[s:e] @ Xs.T).to(torch.float64)
        err_x = 2 * gx * (nx[s:e, None] + nx[None, :]) ** 2 * (1 + 1e-6) + X.shape[1] * tiny * 4
        for t in todo:
            if t["inf"]:
                continue
            Y64, Ysc, ny, qy = t["Y64"], t["Ys"], t["ny"], t["qy"]
            dy2 = qy[s:e, None] + qy[None, :] - 2 * (Ysc[s:e] @ Ysc.T).to(torch.float64)
            err_y = 2 * t["gy"] * (ny[s:e, None] + ny[None, :]) ** 2 * (1 + 1e-6) + Y64.shape[1] * tiny * 4
            lo2 = (dy2 - err_y).clamp_min(0) / (dx2 + err_x)
            hi2 = torch.where(dx2 - err_x > 0, (dy2 + err_y) / (dx2 - err_x).clamp_min(1e-300),
                              torch.full_like(dx2, math.inf))
            lo2 = torch.where(upper_mask, lo2, torch.zeros_like(lo2))
            t["best"] = max(t["best"], float(lo2.max()) if lo2.numel() else 0.0)
            cand = upper_mask & (hi2 >= t["best"] * (1 - 1e-9))
            i, j = cand.nonzero(as_tuple=True)
            for k0, k1 in row_chunks(i.numel(), 2 * width, GATHER_ELEMENTS):
                ii, jj = i[k0:k1] + s, j[k0:k1]
                ddx, ddy = X64[ii] - X64[jj], Y64[ii] - Y64[jj]
                same = (ddx == 0).all(dim=1)
                if bool((same & (ddy != 0).any(dim=1)).any()):
                    t["inf"] = True
                    break
                if bool((~same).any()):
                    r = _exact_pair_ratios(ddx[~same], ddy[~same])
                    t["best_r"] = max(t["best_r"], float(r.max()))
                    t["best"] = max(t["best"], t["best_r"] * t["best_r"])  # inf, not OverflowError
    for t in todo:
        if t["inf"]:
            out[t["k"]] = math.inf
            continue
        # exact-difference ratios carry relative error ≤ γ_{d+4} in each squared norm (no underflow: each pair's
        # differences are rescaled by their own power of two before squaring)
        rel = (1 + gamma(t["Y64"].shape[1] + 4, U64)) / (1 - gamma(X.shape[1] + 4, U64))
        # every pruned pair has ratio² < best ≤ max(a candidate's lower end, candidates' exact ratio²), and the
        # pair with the largest lower end is itself a candidate, so the largest exact ratio bounds them all
        out[t["k"]] = _ldexp(t["best_r"] * math.sqrt(rel) * (1 + 8 * U64), t["ey"] - ex)
    return out


def _exact_pair_ratios(ddx: torch.Tensor, ddy: torch.Tensor) -> torch.Tensor:
    """‖ddy_k‖/‖ddx_k‖ per row (float64, ddx_k ≠ 0), rounded up to the smallest normal float where the true
    value is positive but below it. Each row is rescaled by the power of two of its largest entry before
    squaring (exact), so no squared norm underflows and the relative error stays γ_{d+4}."""
    def scaled(dd):
        _, e = torch.frexp(dd.abs().amax(dim=1))
        e = torch.where(dd.abs().amax(dim=1) > 0, e, torch.zeros_like(e))
        return torch.ldexp(dd, -e[:, None]), e
    sx, ex_ = scaled(ddx)
    sy, ey_ = scaled(ddy)
    ratio = ((sy * sy).sum(dim=1) / (sx * sx).sum(dim=1)).sqrt()
    r = torch.ldexp(ratio, (ey_ - ex_).to(ratio.dtype))
    positive = (ddy != 0).any(dim=1)
    return torch.where(positive, r.clamp_min(torch.finfo(torch.float64).tiny), r)
