"""Coordinate-wise optimizer families (Adam, RMSprop, Adagrad, sign rules, ...): the constants of one step
(claim T7(c) in ``spec/claims.toml``, proof in ``proofs_notes/T7_adaptive_rules.md``).

One step moves neuron i by θ'_i = (1 − lr·λ_dec) θ_i − lr·u_i with u_ik = φ(g_ik, s_ik): one scalar map φ at
every coordinate of every neuron, of the gradient g (coupled weight decay included, T1's field) and of the
coordinate's pre-step state s (m, v, ...). For a pair i, j, coordinate by coordinate,

    u_i − u_j = [φ(g_i, s_i) − φ(g_j, s_i)] + [φ(g_j, s_i) − φ(g_j, s_j)],

the first bracket at most L_g·|g_ik − g_jk| with L_g = sup |∂φ/∂g| (over every g and the states of the layer),
the second at most Σ_s w_sk·|s_ik − s_jk| with w_sk = sup |∂φ/∂s| over the box of column k's states. So

    ‖u_i − u_j‖ ≤ (L_g·K + Σ_s ρ_s) ‖θ_i − θ_j‖,   ρ_s = max_{i≠j} ‖w_s ⊙ (s_i − s_j)‖ / ‖θ_i − θ_j‖,

and T2's band holds with K_eff = λ_dec + L_g·K + Σ_s ρ_s: a bound on θ-distances conditional on the pre-step
state, like momentum SGD's K_eff (T7(a)). Where φ is bounded, the additive form holds too (T7(b)):
|‖θ'_i − θ'_j‖ − (1 − lr·λ_dec)‖θ_i − θ_j‖| ≤ lr·(U_i + U_j), U_i = ‖(sup_g |φ(g, s_ik)|)_k‖.

Certified: L_g, w_s, U from each family's closed forms (``grad_bound``, ``state_bounds``, ``sup_bound``), with
K_upper and exact ratios over all pairs. Estimates: the same formula with |∂φ/∂g|, |∂φ/∂s| sampled (autograd)
at the neurons' states over their gradients and a grid of each column's gradient range
(:func:`derivative_estimates`), the K estimate, and state ratios over each neuron's nearest neighbours (the
pairs that close first): values at sampled points, below the certified sups.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch

from topoverify.measure.pairs import max_pair_ratios
from topoverify.rules.base import LayerContext, RuleConstants, StepMap
from topoverify.rules.jacobian import jacobian_constants

Hyper = Mapping[str, float]

_ROUND_UP = 1 + 1e-9  # certified constants are computed in float64; this covers their rounding
_U32 = 2.0**-24


def rounding_margin(hyper: Hyper) -> float:
    """The factor applied to every certified constant for rounding: 1 + 1e-9 when torch computes the step's
    coefficients in float64 (python floats), else a first-order allowance for torch's float32 coefficient
    arithmetic (a tensor lr/betas/eps, or ``capturable=True``): each bias correction 1 − β^t is computed from a
    float32 β^t with absolute error ≤ 2u (u = 2⁻²⁴), so relative error ≤ 2u/(1 − β^t), and every other coefficient
    operation adds at most a few u; the factor 1 + 16u·(1 + Σ 1/(1 − β^t)) covers both with room. Checked against
    real steps with tensor hyper-parameters (``tests/claims/test_adaptive_review.py``)."""
    if not hyper.get("float32_coefficients"):
        return _ROUND_UP
    t = hyper.get("t", 1.0)
    corrections = [1.0 - hyper[b] ** t for b in ("beta1", "beta2") if b in hyper and hyper[b] > 0]
    return _ROUND_UP + 16 * _U32 * (1 + sum(1 / c for c in corrections))
GRID_POINTS = 5  # gradient values per column at which the derivative estimates are sampled


@dataclass(frozen=True)
class CoordinateFamily:
    """The scalar map φ of one family and its certified bounds (T7(c)); every function is pure and elementwise.

    * ``update(g, state, hyper)``: φ at every entry (torch; N×d tensors in, N×d out), without the factor lr;
    * ``grad_bound(box, hyper)``: per column, an upper bound on |∂φ/∂g| over all g and every state in the box;
    * ``state_bounds(box, hyper)``: per state name, per column, an upper bound on |∂φ/∂s| over all g and the box;
    * ``sup_bound(state, hyper)``: per entry, an upper bound on sup_g |φ(g, s)| (inf where φ is unbounded);
    * ``lipschitz``: False for maps with jumps (sign rules): then only the additive bound is finite;
    * ``root_states``: states whose term is measured on r = √s (``state_bounds`` then bounds |∂φ/∂r|):
      second-moment states, whose |∂φ/∂v| is unbounded at v = 0 while |∂φ/∂√v| is not.
    """

    name: str
    update: Callable[[torch.Tensor, Mapping[str, torch.Tensor], Hyper], torch.Tensor]
    grad_bound: Callable[[StateBox, Hyper], torch.Tensor]
    state_bounds: Callable[[StateBox, Hyper], dict[str, torch.Tensor]]
    sup_bound: Callable[[Mapping[str, torch.Tensor], Hyper], torch.Tensor]
    lipschitz: bool = True
    root_states: tuple[str, ...] = ()


# ----------------------------------------------------------------------------------------------------------
# Constants
# ----------------------------------------------------------------------------------------------------------

class StateBox(dict):
    """Column-wise (min, max) of every state cloud over the neurons (name → (lo, hi), each (d,)); ``state``
    keeps the clouds, for a family whose bound needs another reduction over the neurons (centered RMSprop's
    min of v − ḡ²)."""

    def __init__(self, state: Mapping[str, torch.Tensor]):
        super().__init__({k: (v.amin(dim=0), v.amax(dim=0)) for k, v in state.items()})
        self.state = state


def state_box(state: Mapping[str, torch.Tensor]) -> StateBox:
    """The :class:`StateBox` of ``state``."""
    return StateBox(state)


def neuron_gradients(step_map: StepMap, ctx: LayerContext, decay: torch.Tensor) -> torch.Tensor:
    """g at every neuron (N×d, float64): ∓∇Φ(θ_i) + Λθ_i, the gradient the optimizer reads (T1's field)."""
    grad = ctx.samples.gradient(ctx.cloud).to(torch.float64)
    grad = -grad if step_map.maximize else grad
    return grad + decay.to(torch.float64) * ctx.cloud.to(torch.float64)


def local_derivatives(family: CoordinateFamily, g: torch.Tensor, state: Mapping[str, torch.Tensor], hyper: Hyper
                      ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """|∂φ/∂g| and |∂φ/∂s| at every entry (autograd; φ is elementwise, so the gradient of the sum is the
    entrywise derivative)."""
    g = g.detach().clone().requires_grad_(True)
    st = {k: v.detach().clone().requires_grad_(True) for k, v in state.items()}
    with torch.enable_grad():
        out = family.update(g, st, hyper)
        inputs = [g, *st.values()]
        grads = torch.autograd.grad(out.sum(), inputs, allow_unused=True)
    # a point where φ is not differentiable (√ at 0: 0/0) is skipped, not read as a value
    parts = [torch.zeros_like(x) if d is None else d.abs().nan_to_num(nan=0.0) for x, d in zip(inputs, grads)]
    return parts[0], dict(zip(st, parts[1:]))


def derivative_estimates(family: CoordinateFamily, g: torch.Tensor, state: Mapping[str, torch.Tensor],
                         hyper: Hyper, points: int = GRID_POINTS, sample_rows: int = 64,
                         generator: torch.Generator | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Estimates of sup |∂φ/∂g| and sup |∂φ/∂s| per column: the largest values at the neurons' own (g, s), and
    over a grid of ``points`` gradient values spanning each column's range (plus the point nearest 0, where the
    sqrt maps are steepest) at selected states: since φ acts coordinate by coordinate, each column may take the
    state of a different neuron, so the grid is evaluated at each column's extreme neurons (argmin and argmax of
    every state) and ``sample_rows`` random neurons, not at all N. Values at sampled points: an estimate."""
    roots = {k: 2 * v.clamp_min(0).sqrt() for k, v in state.items() if k in family.root_states}

    def on_roots(ds, rt):  # |∂φ/∂r| = 2r|∂φ/∂s| for the states measured on r = √s
        return {k: (v * rt[k]).nan_to_num(nan=0.0) if k in rt else v for k, v in ds.items()}

    dg, ds = local_derivatives(family, g, state, hyper)
    ds = on_roots(ds, roots)
    best_g, best_s = dg.amax(dim=0), {k: v.amax(dim=0) for k, v in ds.items()}
    n = g.shape[0]
    picks = [v.argmin(dim=0) for v in state.values()] + [v.argmax(dim=0) for v in state.values()]
    rand = torch.randperm(n, generator=generator)[:min(sample_rows, n)]
    idx = torch.cat([*([torch.stack(picks)] if picks else []), rand[:, None].expand(-1, g.shape[1])], dim=0)
    sub = {k: v.gather(0, idx) for k, v in state.items()}
    sub_roots = {k: v.gather(0, idx) for k, v in roots.items()}
    lo, hi = g.amin(dim=0), g.amax(dim=0)
    grid = [lo + (hi - lo) * (j / (points - 1)) for j in range(points)] + [torch.zeros_like(lo).clamp(lo, hi)]
    for value in grid:
        dg, ds = local_derivatives(family, value.expand(idx.shape[0], -1), sub, hyper)
        ds = on_roots(ds, sub_roots)
        best_g = torch.maximum(best_g, dg.amax(dim=0))
        best_s = {k: torch.maximum(best_s[k], v.amax(dim=0)) for k, v in ds.items()}
    return best_g, best_s


def coordinate_constants(family: CoordinateFamily, step_map: StepMap, ctx: LayerContext) -> RuleConstants:
    """K, K_upper, K_eff = λ_dec + L_g·K + Σ_s ρ_s (estimate and certified) and the additive δ of one layer's
    step under ``family`` (module docstring; T7(b), T7(c))."""
    jac = jacobian_constants(step_map, ctx, signs=())
    K, K_up = jac.K, jac.hull.norm
    hyper, state = step_map.hyper, step_map.state
    cloud = ctx.cloud.to(torch.float64)
    box = state_box(state)
    lam = step_map.max_decoupled_decay
    details: dict[str, float] = {}
    # certified
    up = rounding_margin(hyper)
    Lg_cert = float(family.grad_bound(box, hyper).max()) * up if family.lipschitz else math.inf
    w_cert = family.state_bounds(box, hyper) if family.lipschitz else {}
    # estimates: the derivatives at the neurons' states, over their gradients and a grid of the gradients' range
    g = neuron_gradients(step_map, ctx, jac.decay)
    if family.lipschitz:
        dg, ds = derivative_estimates(family, g, state, hyper, generator=ctx.generator)
        Lg_est = float(dg.max()) if dg.numel() else 0.0
    else:
        ds, Lg_est = {}, math.inf
    rho_cert, rho_est, reason = 0.0, 0.0, ""
    nn_idx = ctx.nearest if state else None
    if family.lipschitz:
        terms = {}  # state → its certified weighted cloud w ⊙ s (or a ratio known without screening: inf)
        for name, s in state.items():
            w = w_cert.get(name)
            if w is None:
                continue
            if name in family.root_states:  # the term on r = √s: |∂φ/∂r| = 2r |∂φ/∂s|
                s = s.clamp_min(0).sqrt()
            terms[name] = _weighted(s, w * up)
            rho_est += _neighbor_ratio(cloud, s * ds[name], nn_idx)
        clouds = {k: v for k, v in terms.items() if isinstance(v, torch.Tensor)}
        ratios = dict(zip(clouds, max_pair_ratios(cloud, list(clouds.values()))))  # one pass over the pairs
        for name in terms:
            r_c = ratios.get(name, math.inf)
            details[f"rho_{name}"] = r_c
            rho_cert += r_c
            if math.isinf(r_c) and not reason:
                reason = (f"the state {name!r}: two coincident neurons carry different {name}, or the state's "
                          f"derivative bound is infinite (v̂ at 0)")
    details["L_grad"] = Lg_cert
    details["L_grad_estimate"] = Lg_est
    K_eff = lam + _product(Lg_est, K) + rho_est
    K_eff_up = lam + _product(Lg_cert, K_up) + rho_cert
    if not family.lipschitz:
        reason = f"{family.name}'s update is not Lipschitz in the gradient (a jump at 0); only the additive bound holds"
        K_eff = K_eff_up = math.inf
    elif math.isinf(K_up):
        reason = jac.hull.reason
    elif math.isinf(Lg_cert):
        reason = "sup |dphi/dg| is infinite on this state (v̂ = 0 with eps too small to bound it)"
    U = family.sup_bound(state, hyper)
    norms = torch.linalg.vector_norm(U, dim=1) if U.numel() else U.new_zeros(0)
    top = norms.topk(min(2, norms.numel())).values if norms.numel() else norms
    delta = step_map.lr * float(top.sum()) * up if norms.numel() >= 2 else 0.0
    details["U_max"] = float(top[0]) if top.numel() else 0.0
    return RuleConstants(K=K, K_upper=K_up, K_eff=K_eff, K_eff_upper=K_eff_up, n_points=jac.n_points,
                         argmax_neuron=jac.argmax_neuron, reason=reason, additive_delta=delta, details=details)


def _weighted(s: torch.Tensor, w: torch.Tensor) -> torch.Tensor | float:
    """w ⊙ s, whose max pair ratio against θ is the state's certified term (w bounds the derivative); inf when
    a column with an infinite weight has a state that differs between neurons (a column whose state is the same
    at every neuron contributes 0, whatever its weight)."""
    if not bool(torch.isfinite(w).all()):
        moving = (s != s[:1]).any(dim=0)
        if bool((~torch.isfinite(w) & moving).any()):
            return math.inf
        w = torch.where(torch.isfinite(w), w, torch.zeros_like(w))
    return s * w


def _neighbor_ratio(cloud: torch.Tensor, y: torch.Tensor, nn_idx: torch.Tensor) -> float:
    """max over each neuron and its sampled nearest neighbours of ‖y_i − y_j‖/‖θ_i − θ_j‖: the estimate of a
    state term (the pairs that close first; sampled, so from below the certified all-pairs maximum)."""
    if nn_idx is None or nn_idx.numel() == 0:
        return 0.0
    i = torch.arange(cloud.shape[0]).repeat_interleave(nn_idx.shape[1])
    j = nn_idx.reshape(-1)
    dx = (cloud[i] - cloud[j]).norm(dim=1)
    dy = (y[i] - y[j]).norm(dim=1)
    if bool(((dx == 0) & (dy > 0)).any()):
        return math.inf
    keep = dx > 0
    return float((dy[keep] / dx[keep]).max()) if bool(keep.any()) else 0.0


def _product(L: float, K: float) -> float:
    """L·K with 0·inf = 0 (a term with a zero factor is absent)."""
    return 0.0 if L == 0 or K == 0 else L * K


__all__ = ["CoordinateFamily", "StateBox", "coordinate_constants", "state_box", "neuron_gradients",
           "local_derivatives", "derivative_estimates", "GRID_POINTS"]
