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
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from topoverify.errors import NonFiniteError, TopoverifyError, UnsupportedError
from topoverify.measure.pairs import max_pair_ratio
from topoverify.measure.sampling import nearest_neighbors
from topoverify.neurons.layouts import NeuronLayer, neuron_cloud
from topoverify.rules.base import LayerContext, OptimizerRule, RuleConstants, StepMap
from topoverify.rules.jacobian import jacobian_constants

Hyper = Mapping[str, float]

_ROUND_UP = 1 + 1e-9  # certified constants are computed in float64; this covers their rounding
#: torch computes the coefficients in float32 when a hyper-parameter is a tensor or ``capturable=True``
_ROUND_UP_FLOAT32 = 1 + 1e-5
#: states that torch's recursion keeps ≥ 0 (sums or maxima of squares and absolute values)
NONNEGATIVE_STATES = frozenset({"exp_avg_sq", "max_exp_avg_sq", "square_avg", "sum", "exp_inf"})
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
# Reading hyper-parameters and state
# ----------------------------------------------------------------------------------------------------------

def member_groups(optimizer: torch.optim.Optimizer, model: nn.Module, layer: NeuronLayer) -> list[dict]:
    """The param group of each member of ``layer`` (UnsupportedError if a member is not optimized)."""
    params = dict(model.named_parameters())
    group_of = {id(p): g for g in optimizer.param_groups for p in g["params"]}
    groups = []
    for m in layer.members:
        g = group_of.get(id(params[m.name]))
        if g is None:
            raise UnsupportedError(f"parameter {m.name!r} of layer {layer.name!r} is not in the optimizer; "
                                   f"a frozen part of a neuron makes the step map non-uniform.")
        groups.append(g)
    return groups


def shared_hyper(layer: NeuronLayer, groups: Sequence[dict], keys: Sequence[str]) -> dict[str, object]:
    """The values of ``keys`` that every member's group must share for the step to be one field."""
    ref = {k: _plain(groups[0][k]) for k in keys}
    for m, g in zip(layer.members, groups):
        for k in keys:
            if _plain(g[k]) != ref[k]:
                raise UnsupportedError(f"not one field: layer {layer.name!r}: parameter {m.name!r} has {k}={g[k]} "
                                       f"but {layer.members[0].name!r} has {ref[k]}; one neuron's parameters "
                                       f"must share {k} for the step to be one field. Put the layer's weight and "
                                       f"bias in param groups with the same {k}.")
    return ref


def check_hyper(layer: NeuronLayer, name: str, value, kind: str, *, key: str | None = None) -> float:
    """Validate one hyper-parameter: ``kind`` "lr" (finite, > 0), "beta" (in [0, 1)), "eps" (finite, > 0),
    "nonneg" (finite, ≥ 0); raises TopoverifyError naming it and the fix (``key``: the param-group key that
    holds it, when it differs from ``name``, e.g. "betas" for "betas[0]")."""
    v = _plain(value)
    ok = {"lr": lambda x: math.isfinite(x) and x > 0, "beta": lambda x: 0 <= x < 1,
          "eps": lambda x: math.isfinite(x) and x > 0, "nonneg": lambda x: math.isfinite(x) and x >= 0}[kind]
    want = {"lr": "a finite number > 0", "beta": "in [0, 1)", "eps": "a finite number > 0",
            "nonneg": "a finite number >= 0"}[kind]
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not ok(float(v)):
        raise TopoverifyError(f"layer {layer.name!r}: the optimizer's {name} is {value!r}; a prediction needs {name} "
                              f"{want}. Set the param group's {key or name!r} accordingly.")
    return float(v)


def float32_coefficients(groups: Sequence[dict]) -> float:
    """1.0 when torch computes the step's coefficients in float32 (a tensor lr/betas/eps, or
    ``capturable=True``), else 0.0: the certified constants then take a wider rounding margin."""
    def tensorish(v):
        return isinstance(v, torch.Tensor) or (isinstance(v, tuple) and any(isinstance(x, torch.Tensor) for x in v))
    return float(any(g.get("capturable", False) or any(tensorish(g.get(k)) for k in ("lr", "betas", "eps"))
                     for g in groups))


def read_state(optimizer: torch.optim.Optimizer, model: nn.Module, layer: NeuronLayer,
               names: Sequence[str], *, require_step: bool = True) -> tuple[dict[str, torch.Tensor], int]:
    """The pre-step state clouds (name → N×d, float64) of ``layer`` and the number of steps taken so far.

    Before the first step (empty state) every named state is the zero cloud and the count is 0: torch
    initialises them so (a family whose initial state is not zero passes its own). ``require_step=False``: an
    optimizer that keeps no "step" entry (lion-pytorch) is read by its named states, with count 0. Partially present state, step counts that differ between
    members, or NaN/Inf in a state tensor raise (UnsupportedError / NonFiniteError naming the tensor)."""
    params = dict(model.named_parameters())
    states = [optimizer.state.get(params[m.name], {}) for m in layer.members]
    if not any(states):
        zeros = torch.zeros_like(neuron_cloud(model, layer), dtype=torch.float64)
        return {name: zeros for name in names}, 0
    steps = []
    for m, st in zip(layer.members, states):
        key = "step" if require_step else names[0]
        if key not in st:
            raise UnsupportedError(f"layer {layer.name!r}: parameter {m.name!r} has no optimizer state yet while "
                                   f"another member of the layer has; take a step on all of them (or none).")
        raw = _plain(st.get("step", 0))
        if not math.isfinite(float(raw)):
            raise NonFiniteError(f"layer {layer.name!r}: the optimizer state 'step' of parameter {m.name!r} is "
                                 f"{raw}; the state was corrupted.")
        steps.append(int(raw))
    if len(set(steps)) != 1:
        raise UnsupportedError(f"layer {layer.name!r}: the members' step counts differ ({steps}); the bias "
                               f"corrections then differ within one neuron, so the step is not one field.")
    clouds = {}
    for name in names:
        tensors = {}
        for m, st in zip(layer.members, states):
            t = st.get(name)
            if t is None:
                raise UnsupportedError(f"layer {layer.name!r}: parameter {m.name!r} has no state {name!r}.")
            if not bool(torch.isfinite(t).all()):
                raise NonFiniteError(f"layer {layer.name!r}: the optimizer state {name!r} of parameter {m.name!r} "
                                     f"holds NaN/Inf; the run has diverged (or the state was corrupted) before "
                                     f"this step.")
            if name in NONNEGATIVE_STATES and bool((t < 0).any()):
                raise TopoverifyError(f"layer {layer.name!r}: the optimizer state {name!r} of parameter {m.name!r} "
                                      f"holds negative values, which no step of torch's recursion produces (it is "
                                      f"a running sum of squares); the state was modified outside the optimizer.")
            tensors[m.name] = t
        clouds[name] = neuron_cloud(model, layer, tensors).to(torch.float64)
    return clouds, steps[0]


def _plain(x):
    if isinstance(x, torch.Tensor):
        return x.item()
    if isinstance(x, tuple):
        return tuple(_plain(v) for v in x)
    return x


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
                         hyper: Hyper, points: int = GRID_POINTS) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Estimates of sup |∂φ/∂g| and sup |∂φ/∂s| per column: the largest values at every neuron's state, over
    the neurons' own gradients and a grid of ``points`` gradient values spanning the column's range (plus the
    point nearest 0, where the sqrt maps are steepest). Values at sampled points: an estimate, not a bound."""
    roots = {k: 2 * v.clamp_min(0).sqrt() for k, v in state.items() if k in family.root_states}

    def on_roots(ds):  # |∂φ/∂r| = 2r|∂φ/∂s| for the states measured on r = √s
        return {k: (v * roots[k]).nan_to_num(nan=0.0) if k in roots else v for k, v in ds.items()}

    dg, ds = local_derivatives(family, g, state, hyper)
    ds = on_roots(ds)
    best_g, best_s = dg.amax(dim=0), {k: v.amax(dim=0) for k, v in ds.items()}
    lo, hi = g.amin(dim=0), g.amax(dim=0)
    grid = [lo + (hi - lo) * (j / (points - 1)) for j in range(points)] + [torch.zeros_like(lo).clamp(lo, hi)]
    for value in grid:
        dg, ds = local_derivatives(family, value.expand_as(g), state, hyper)
        ds = on_roots(ds)
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
    up = _ROUND_UP_FLOAT32 if hyper.get("float32_coefficients") else _ROUND_UP
    Lg_cert = float(family.grad_bound(box, hyper).max()) * up if family.lipschitz else math.inf
    w_cert = family.state_bounds(box, hyper) if family.lipschitz else {}
    # estimates: the derivatives at the neurons' states, over their gradients and a grid of the gradients' range
    g = neuron_gradients(step_map, ctx, jac.decay)
    if family.lipschitz:
        dg, ds = derivative_estimates(family, g, state, hyper)
        Lg_est = float(dg.max()) if dg.numel() else 0.0
    else:
        ds, Lg_est = {}, math.inf
    rho_cert, rho_est, reason = 0.0, 0.0, ""
    nn_idx = nearest_neighbors(ctx.cloud, max(ctx.neighbors, 1)) if state else None
    if family.lipschitz:
        for name, s in state.items():
            w = w_cert.get(name)
            if w is None:
                continue
            w_e = ds[name]
            if name in family.root_states:  # the term on r = √s: |∂φ/∂r| = 2r |∂φ/∂s|
                s = s.clamp_min(0).sqrt()
            r_c = _weighted_ratio(cloud, s, w * up)
            r_e = _neighbor_ratio(cloud, s * w_e, nn_idx)
            details[f"rho_{name}"] = r_c
            rho_cert, rho_est = rho_cert + r_c, rho_est + r_e
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


def _weighted_ratio(cloud: torch.Tensor, s: torch.Tensor, w: torch.Tensor) -> float:
    """max_{i≠j} ‖w ⊙ (s_i − s_j)‖ / ‖θ_i − θ_j‖ (certified when w bounds the derivative; 0 where w = 0)."""
    if not bool(torch.isfinite(w).all()):
        moving = (s != s[:1]).any(dim=0)  # a column whose state is the same at every neuron contributes 0
        if bool((~torch.isfinite(w) & moving).any()):
            return math.inf
        w = torch.where(torch.isfinite(w), w, torch.zeros_like(w))
    return max_pair_ratio(cloud, s * w)


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


def coordinate_rule(family: CoordinateFamily, read: Callable[[torch.optim.Optimizer, nn.Module, NeuronLayer],
                                                             StepMap], formula: str) -> OptimizerRule:
    """An :class:`OptimizerRule` from a family's ``read`` and :func:`coordinate_constants`."""

    def constants(step_map: StepMap, ctx: LayerContext) -> RuleConstants:
        return coordinate_constants(family, step_map, ctx)

    constants.__name__ = f"{family.name.lower()}_constants"
    return OptimizerRule(read=read, constants=constants, formula=formula, step_methods=("step", "_init_group"))


__all__ = ["CoordinateFamily", "StateBox", "coordinate_constants", "coordinate_rule", "member_groups", "shared_hyper",
           "check_hyper", "read_state", "float32_coefficients", "state_box", "neuron_gradients", "local_derivatives", "derivative_estimates",
           "GRID_POINTS"]
