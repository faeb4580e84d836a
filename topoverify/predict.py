"""Predict, from the pre-step state alone, the Lipschitz constant K of each neuron layer's update and the
resulting one-step bounds on pairwise neuron distances (claims T2, T3).

Nothing here looks at the outcome of the step: K comes from derivatives of the update field at the
pre-step state (:mod:`topoverify.field`), so holding the prediction against a real step
(:func:`topoverify.verify_step`) is a check, not an identity (THEORY "What counts as a check").

Optimizers covered: ``torch.optim.SGD`` with or without momentum/Nesterov/dampening/weight decay/maximize.
For SGD with momentum μ, dampening τ and buffer b, one step moves neuron i by
η(c_g (g(θ_i) + λθ_i) + c_b b_i) with (c_g, c_b) = (1−τ, μ) (first step: (1, 0)); Nesterov:
(1 + μ(1−τ), μ²) (first step: (1 + μ, 0)). The triangle inequality then gives the T2 bounds with
K_eff = c_g K + c_b ρ_b, ρ_b = max_{i≠j} ‖b_i − b_j‖/‖θ_i − θ_j‖ read from the pre-step buffer: a bound on
the θ-distances of one step, conditional on the buffer (the extended-space analysis is claim T7's).
Other optimizers get an explicit "no prediction yet" rather than a guess.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from ._results import ResultMixin, fmt
from .errors import NonFiniteError, UnsupportedError
from .field import block_samples
from .hessian import top_hessian_eigenvalue
from .layouts import NeuronLayer, member_widths, neuron_cloud, resolve_layers
from .pairs import count_coincident_pairs
from .permute import preflight
from .symbolic import bounds_numeric, eta_star_numeric

PRESERVING = "preserving"
BREAKDOWN_POSSIBLE = "breakdown-possible"
UNAVAILABLE = "unavailable"


@dataclass(frozen=True)
class StepRule(ResultMixin):
    """One optimizer step on one layer, as a map of the neuron cloud: θ ↦ θ − lr (c_g (g + Λθ) + c_b b)."""

    optimizer: str
    lr: float
    coef_grad: float
    coef_buffer: float
    weight_decay: tuple[float, ...]  # per member parameter
    description: str
    maximize: bool = False  # the update is −g + λθ: its Jacobian is −∇²Φ + Λ


@dataclass(frozen=True)
class LayerPrediction(ResultMixin):
    """Predicted constants and one-step distance-ratio bounds for one neuron layer (T2, T3).

    ``K`` is the field estimate (power iteration at sampled points: a lower estimate of the sup, the number
    the phase uses); ``K_upper`` is certified over the convex hull of the cloud (inf for ReLU-like
    activations). ``K_eff``/``K_eff_upper`` include weight decay and momentum; the bounds are
    1 ∓ lr·K_eff. ``lambda_layer`` is the top |eigenvalue| of the loss Hessian restricted to this layer.
    ``K_fold`` (plain gradient steps only: no momentum buffer, no ``maximize``) estimates the sup of the
    largest *signed* eigenvalue of the update's Jacobian: the step z ↦ z − lr(g(z) + Λz) is the gradient of
    ½|z|² − lr(Φ(z) + ½zᵀΛz), strongly convex while lr·K_fold < 1, so it stays injective with lower ratio
    bound 1 − lr·K_fold up to ``eta_fold`` = 1/K_fold ≥ eta_star (T3 refinement; an estimate like K).
    """

    layer: str
    n_neurons: int
    dim: int
    activation: str | None
    available: bool
    reason: str = ""
    rule: StepRule | None = None
    lr: float | None = None
    K: float | None = None
    K_upper: float | None = None
    K_eff: float | None = None
    K_eff_upper: float | None = None
    momentum_rho: float | None = None
    eta_star: float | None = None
    eta_star_certified: float | None = None
    lower: float | None = None
    upper: float | None = None
    lower_certified: float | None = None
    upper_certified: float | None = None
    phase: str = UNAVAILABLE
    certified_preserving: bool = False
    lambda_layer: float | None = None
    K_fold: float | None = None
    eta_fold: float | None = None
    n_points: int = 0
    argmax_neuron: int | None = None
    merged_pairs: int = 0

    def __str__(self) -> str:
        if not self.available:
            return f"layer {self.layer}: no prediction ({self.reason})"
        return (f"layer {self.layer} ({self.n_neurons} neurons, d={self.dim}, {self.activation}): "
                f"K={fmt(self.K)} (certified <= {fmt(self.K_upper)}), lr={fmt(self.lr)}, "
                f"lr*K_eff={fmt(self.lr * self.K_eff)}, eta*={fmt(self.eta_star)}"
                f"{'' if self.eta_fold is None else f' (gradient-step fold from {fmt(self.eta_fold)})'}, phase={self.phase}"
                f"{' (certified)' if self.certified_preserving else ''}; "
                f"ratio bounds [{fmt(self.lower)}, {fmt(self.upper)}]")


@dataclass(frozen=True)
class StepPrediction(ResultMixin):
    """Per-layer predictions for the next optimizer step, with the coarser Hessian constants beside them.

    Typical ordering: K_field ≤ K_layer ≤ λ_max. The second inequality is a theorem (a principal submatrix);
    the first is not (K_field is a sup over the hull of the δ-frozen field, K_layer a norm at one point),
    so it is reported, never assumed.
    """

    optimizer: str
    loss: float
    layers: tuple[LayerPrediction, ...]
    lambda_max: float | None = None
    step: int | None = None
    notes: tuple[str, ...] = field(default_factory=tuple)

    def layer(self, name: str) -> LayerPrediction:
        for lp in self.layers:
            if lp.layer == name:
                return lp
        raise KeyError(f"no layer {name!r}; layers: {[lp.layer for lp in self.layers]}")

    @property
    def phase(self) -> str:
        phases = {lp.phase for lp in self.layers}
        if BREAKDOWN_POSSIBLE in phases:
            return BREAKDOWN_POSSIBLE
        return PRESERVING if phases == {PRESERVING} else UNAVAILABLE

    def __str__(self) -> str:
        from .report_text import prediction_table
        return prediction_table(self)


# ----------------------------------------------------------------------------------------------------------
# Optimizer rules
# ----------------------------------------------------------------------------------------------------------

def sgd_rule(optimizer: torch.optim.Optimizer, model: nn.Module, layer: NeuronLayer
             ) -> tuple[StepRule, torch.Tensor | None]:
    """The SGD step map of ``layer`` and its pre-step momentum buffer cloud (N×d) if there is one."""
    name = type(optimizer).__name__
    if not isinstance(optimizer, torch.optim.SGD):
        raise UnsupportedError(
            f"no prediction for {name} yet: K for adaptive and stateful rules needs the extended state space "
            f"(θ, m, v) of claim T7, which is not implemented in this version. Supported: torch.optim.SGD "
            f"(with or without momentum).")
    params = dict(model.named_parameters())
    group_of = {id(p): g for g in optimizer.param_groups for p in g["params"]}
    groups = []
    for m in layer.members:
        g = group_of.get(id(params[m.name]))
        if g is None:
            raise UnsupportedError(f"parameter {m.name!r} of layer {layer.name!r} is not in the optimizer; "
                                   f"a frozen part of a neuron makes the step map non-uniform.")
        groups.append(g)
    keys = ("lr", "momentum", "dampening", "nesterov", "maximize")
    ref = {k: _as_float(groups[0][k]) for k in keys}
    for m, g in zip(layer.members, groups):
        for k in keys:
            if _as_float(g[k]) != ref[k]:
                raise UnsupportedError(f"layer {layer.name!r}: parameter {m.name!r} has {k}={g[k]} but "
                                       f"{layer.members[0].name!r} has {ref[k]}; one neuron's parameters "
                                       f"must share {k} for the step to be one field.")
    lr, mu, tau, nesterov = ref["lr"], ref["momentum"], ref["dampening"], bool(ref["nesterov"])
    wd = tuple(_as_float(g["weight_decay"]) for g in groups)
    buffers = None
    if mu > 0:
        bufs = [optimizer.state.get(params[m.name], {}).get("momentum_buffer") for m in layer.members]
        if all(b is not None for b in bufs):
            buffers = neuron_cloud(model, layer, {m.name: b for m, b in zip(layer.members, bufs)})
        elif any(b is not None for b in bufs):
            raise UnsupportedError(f"layer {layer.name!r}: only some parameters have a momentum buffer.")
    if mu == 0:
        cg, cb, desc = 1.0, 0.0, "SGD"
    elif buffers is None:
        cg, cb, desc = (1.0 + mu if nesterov else 1.0), 0.0, "SGD momentum, first step (buffer = gradient)"
    elif nesterov:
        cg, cb, desc = 1.0 + mu * (1 - tau), mu * mu, "SGD Nesterov momentum (conditional on the buffer)"
    else:
        cg, cb, desc = 1.0 - tau, mu, "SGD heavy-ball momentum (conditional on the buffer)"
    return StepRule(name, lr, cg, cb, wd, desc, bool(ref["maximize"])), buffers


def _bounds(K: float, lr: float) -> tuple[float, float]:
    """T2 ratio bounds (max(0, 1 − lr·K), 1 + lr·K) from the symbolic module (distances are ≥ 0, so the
    lower bound is clipped at 0: its sharp form); (0, inf) when K is infinite."""
    if not math.isfinite(K):
        return 0.0, math.inf
    lo, up = bounds_numeric(K, lr)
    return max(0.0, float(lo)), float(up)


def _as_float(x) -> float:
    return float(x.item()) if isinstance(x, torch.Tensor) else float(x)


def buffer_ratio(cloud: torch.Tensor, buffers: torch.Tensor) -> float:
    """ρ_b = max_{i≠j} ‖b_i − b_j‖/‖θ_i − θ_j‖ (inf if equal neurons carry different buffers)."""
    n = cloud.shape[0]
    rho = 0.0
    step = max(1, (1 << 22) // max(1, n))
    for s in range(0, n, step):
        dt = torch.cdist(cloud[s: s + step], cloud)
        db = torch.cdist(buffers[s: s + step], buffers)
        same = dt == 0
        if bool((same & (db > 0)).any()):
            return math.inf
        r = torch.where(same, torch.zeros_like(db), db / dt.clamp_min(1e-300))
        rho = max(rho, float(r.max()))
    return rho


# ----------------------------------------------------------------------------------------------------------
# predict_step
# ----------------------------------------------------------------------------------------------------------

def predict_step(model: nn.Module, optimizer: torch.optim.Optimizer, loss_fn: Callable, batch, *,
                 layers: Sequence[NeuronLayer] | NeuronLayer | None = None, neighbors: int = 2,
                 power_iters: int = 50, tol: float = 1e-4, hessian: bool = True, check_layout: bool = True,
                 seed: int = 0, step: int | None = None, fold: bool = False) -> StepPrediction:
    """Predict K, η* = 1/K, the T2 ratio bounds and the phase of the next step for each neuron layer.

    ``loss_fn(model, batch)`` returns a scalar tensor. ``layers`` defaults to automatic detection.
    ``neighbors`` sets how many nearest-neighbour segments per neuron are sampled for the K estimate;
    ``hessian=False`` skips λ_max and K_layer; ``fold=True`` adds K_fold/eta_fold for plain gradient steps
    (one more power iteration). Neither the model nor the optimizer is modified.
    """
    layers = resolve_layers(model, layers)
    if check_layout:
        preflight(model, layers, loss_fn, batch)
    gen = torch.Generator().manual_seed(seed)
    predictions, loss = [], math.nan
    for layer in layers:
        lp, loss_l = _predict_layer(model, optimizer, loss_fn, batch, layer, neighbors, power_iters, tol, gen,
                                    hessian, seed, step, fold)
        loss = loss_l if not math.isnan(loss_l) else loss
        predictions.append(lp)
    lam = None
    notes = []
    if hessian:
        lam = top_hessian_eigenvalue(model, loss_fn, batch, iters=power_iters, tol=tol, seed=seed).norm
    if any(lp.available and lp.lambda_layer is not None and lp.K is not None and lp.K > lp.lambda_layer
           for lp in predictions):
        notes.append("K_field exceeds K_layer on some layer: the field's sup over the hull is not bounded by "
                     "the Hessian norm at the current point.")
    return StepPrediction(type(optimizer).__name__, loss, tuple(predictions), lam, step, tuple(notes))


def _predict_layer(model, optimizer, loss_fn, batch, layer, neighbors, iters, tol, gen, hessian, seed, step,
                   fold):
    cloud = neuron_cloud(model, layer)
    base = dict(layer=layer.name, n_neurons=layer.size, dim=cloud.shape[1], activation=layer.activation)
    if not torch.isfinite(cloud).all():
        raise NonFiniteError(f"layer {layer.name!r}{'' if step is None else f' at step {step}'}: the neuron "
                             f"parameters contain NaN/Inf; training has diverged before this step.")
    try:
        rule, buffers = sgd_rule(optimizer, model, layer)
        samples, loss = block_samples(model, layer, loss_fn, batch, step=step)
    except UnsupportedError as exc:
        return LayerPrediction(**base, available=False, reason=str(exc)), math.nan
    decay = torch.cat([torch.full((w,), wd, dtype=cloud.dtype) for w, wd in
                       zip(member_widths(model, layer), rule.weight_decay)])
    # ‖J‖ of the update u = ±g + Λθ: ‖∇²Φ + Λ‖, or ‖−∇²Φ + Λ‖ = ‖∇²Φ − Λ‖ with maximize=True
    norms = samples.hessian_norm_lower(cloud, decay=-decay if rule.maximize else decay, iters=iters, tol=tol,
                                       generator=gen, neighbors=neighbors)
    K = float(norms.max()) if norms.numel() else 0.0
    argmax = int(norms.argmax()) % layer.size if norms.numel() else None
    K_up = samples.hessian_norm_upper(cloud, decay_max=max(rule.weight_decay, default=0.0))
    K_fold = eta_fold = None
    if fold and rule.coef_buffer == 0 and not rule.maximize:
        shift = K_up if math.isfinite(K_up) else 2 * K
        mu = samples.top_eigenvalue_lower(cloud, shift, decay=decay, iters=iters, tol=tol, generator=gen,
                                          neighbors=neighbors)
        K_fold = rule.coef_grad * float(mu.max()) if mu.numel() else 0.0
        eta_fold = 1.0 / K_fold if K_fold > 0 else math.inf
    rho = buffer_ratio(cloud, buffers) if buffers is not None else 0.0
    K_eff = rule.coef_grad * K + rule.coef_buffer * rho
    K_eff_up = rule.coef_grad * K_up + rule.coef_buffer * rho
    lo, up = _bounds(K_eff, rule.lr)
    lo_c, up_c = _bounds(K_eff_up, rule.lr)
    lam_layer = None
    if hessian:
        lam_layer = top_hessian_eigenvalue(model, loss_fn, batch, params=[m.name for m in layer.members],
                                           iters=iters, tol=tol, seed=seed).norm
    merged = count_coincident_pairs(cloud)
    return LayerPrediction(
        **base, available=True, rule=rule, lr=rule.lr, K=K, K_upper=K_up, K_eff=K_eff, K_eff_upper=K_eff_up,
        momentum_rho=rho if buffers is not None else None,
        eta_star=float(eta_star_numeric(K_eff)), eta_star_certified=float(eta_star_numeric(K_eff_up)),
        lower=lo, upper=up, lower_certified=lo_c, upper_certified=up_c,
        phase=PRESERVING if rule.lr * K_eff < 1 else BREAKDOWN_POSSIBLE,
        certified_preserving=rule.lr * K_eff_up < 1, lambda_layer=lam_layer, K_fold=K_fold, eta_fold=eta_fold, n_points=int(norms.shape[0]),
        argmax_neuron=argmax, merged_pairs=merged), loss


__all__ = ["StepRule", "LayerPrediction", "StepPrediction", "predict_step", "sgd_rule", "buffer_ratio",
           "PRESERVING", "BREAKDOWN_POSSIBLE", "UNAVAILABLE"]
