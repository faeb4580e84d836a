"""Predict, from the pre-step state alone, the Lipschitz constant K of each neuron layer's update and the
resulting one-step bounds on pairwise neuron distances (claims T2, T3).

Nothing here looks at the outcome of the step: K comes from derivatives of the update field at the
pre-step state (:mod:`topoverify.measure.field`), so holding the prediction against a real step
(:func:`topoverify.verify_step`) is a check, not an identity (T2's assumption B3, spec/claims.toml).
Every bound (T2's band, η* = 1/K) comes from :mod:`topoverify.symbolic`.

Optimizers covered: ``torch.optim.SGD`` with or without momentum/Nesterov/dampening/weight decay/maximize.
For SGD with momentum μ, dampening τ and buffer b, one step moves neuron i by
η(c_g (g(θ_i) + λθ_i) + c_b b_i) with (c_g, c_b) = (1−τ, μ) (first step: (1, 0)); Nesterov:
(1 + μ(1−τ), μ²) (first step: (1 + μ, 0)). The triangle inequality then gives the T2 bounds with
K_eff = c_g K + c_b ρ_b, ρ_b = max_{i≠j} ‖b_i − b_j‖/‖θ_i − θ_j‖ read from the pre-step buffer: a bound on
the θ-distances of one step, conditional on the buffer (the extended-space analysis is claim T7's).
ρ_b is computed from exact pairwise differences (:func:`topoverify.measure.pairs.max_pair_ratio`), so it is
an upper bound even for neurons closer than torch.cdist can resolve. The SGD formula is used only for
``torch.optim.SGD`` itself or a subclass that keeps its ``step``; other optimizers (Adam, ...) get an
explicit "no prediction yet" rather than a guess. Half-precision models are refused (see
:func:`require_full_precision`).

Estimates and certificates. ``K`` (power iteration at sampled points) and ``K_fold`` (Rayleigh quotients of
the largest signed eigenvalue) approach their suprema from below: they are *estimates*. ``K_upper`` and
``mu_upper`` are *certified* upper bounds over the convex hull of the cloud (:meth:`BlockSamples.hull_bounds`);
only they back a guarantee: T2's band with ``K_upper``, and, for a step without a buffer term,
injectivity on the hull below ``eta_fold_certified`` = 1/mu_upper with lower ratio bound 1 − lr·mu_upper
(the one-sided condition of T3).
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from topoverify.checks.verdicts import LayerLookup
from topoverify.errors import NonFiniteError, TopoverifyError, UnsupportedError
from topoverify.formatting import ResultMixin, fmt
from topoverify.measure.field import block_samples
from topoverify.measure.hessian import top_hessian_eigenvalue
from topoverify.measure.merges import count_coincident_pairs
from topoverify.measure.pairs import max_pair_ratio
from topoverify.neurons.layouts import NeuronLayer, member_widths, neuron_cloud, resolve_layers
from topoverify.neurons.preflight import preflight
from topoverify.symbolic import bounds_numeric, eta_star_numeric, sgd_momentum_coefficients_numeric
from topoverify.tables import prediction_table

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

    Estimates (approach the supremum over the hull from below; the phase uses them):

    * ``K``: sup of ‖J‖ of the update's Jacobian J = ±∇²Φ + Λ (without the momentum factor), from power
      iteration at the neurons and at midpoints to nearest neighbours; when ``K_fold`` is computed, K is at
      least K_fold/c_g, since λ_max(J(z)) ≤ ‖J(z)‖ at every point (so ``eta_fold`` ≥ ``eta_star`` always).
    * ``K_fold`` (``fold=True``, plain gradient steps): sup of the largest *signed* eigenvalue of the update's
      Jacobian, from Rayleigh quotients at the same points; ``eta_fold`` = 1/K_fold. Both are estimates: the
      step may fold below ``eta_fold`` (a fold needs λ_max at *some* hull point, not at the sampled ones).

    Certified (proven upper bounds over the convex hull of the cloud, :meth:`BlockSamples.hull_bounds`):

    * ``K_upper`` (inf with ``K_upper_reason`` when the field is not Lipschitz on the hull, e.g. ReLU
      pre-activations crossing 0); ``K_eff_upper`` adds weight decay and momentum; the certified band is
      [``lower_certified``, ``upper_certified``] = 1 ∓ lr·K_eff_upper (T2), ``certified_preserving`` when
      lr·K_eff_upper < 1.
    * ``mu_upper`` (steps without a buffer term): ≥ sup of λ_max of the update's Jacobian (coefficient
      included). Below ``eta_fold_certified`` = 1/mu_upper the step z ↦ z − lr·u(z) is injective on the hull
      with ⟨F(x) − F(y), x − y⟩ ≥ (1 − lr·mu_upper)‖x − y‖², so every pair's ratio is at least
      ``lower_fold_certified`` = max(0, 1 − lr·mu_upper) (T3, one-sided form); ``certified_injective`` when
      lr·mu_upper < 1. This is the only injectivity claim the prediction makes beyond T2's.

    ``lambda_layer`` is the top |eigenvalue| of the loss Hessian restricted to this layer (an estimate).
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
    K_upper_reason: str = ""
    mu_upper: float | None = None
    eta_fold_certified: float | None = None
    lower_fold_certified: float | None = None
    certified_injective: bool = False

    def __str__(self) -> str:
        if not self.available:
            return f"layer {self.layer}: no prediction ({self.reason})"
        fold = "" if self.eta_fold is None else f", eta_fold≈{fmt(self.eta_fold)} (estimate)"
        cert_fold = ("" if self.eta_fold_certified is None else
                     f", certified injective below lr={fmt(self.eta_fold_certified)}")
        why = f" [K_upper = inf: {self.K_upper_reason}]" if self.K_upper_reason else ""
        return (f"layer {self.layer} ({self.n_neurons} neurons, d={self.dim}, {self.activation}): "
                f"K≈{fmt(self.K)} (estimate; certified <= {fmt(self.K_upper)}), lr={fmt(self.lr)}, "
                f"lr*K_eff={fmt(self.lr * self.K_eff)}, eta*≈{fmt(self.eta_star)} (certified >= "
                f"{fmt(self.eta_star_certified)}){fold}{cert_fold}, phase={self.phase}"
                f"{' (certified)' if self.certified_preserving else ''}; "
                f"ratio bounds [{fmt(self.lower)}, {fmt(self.upper)}] (certified [{fmt(self.certified_lower)}, "
                f"{fmt(self.upper_certified)}]){why}")

    @property
    def certified_lower(self) -> float | None:
        """The best certified lower ratio bound: T2's, or the one-sided (fold) one when it is larger."""
        if self.lower_certified is None:
            return None
        return max(self.lower_certified, self.lower_fold_certified or 0.0)

    @property
    def certified(self) -> bool:
        """Whether the certified band says anything: K_eff_upper is finite."""
        return self.K_eff_upper is not None and math.isfinite(self.K_eff_upper)


@dataclass(frozen=True)
class StepPrediction(LayerLookup, ResultMixin):
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

    @property
    def phase(self) -> str:
        phases = {lp.phase for lp in self.layers}
        if BREAKDOWN_POSSIBLE in phases:
            return BREAKDOWN_POSSIBLE
        return PRESERVING if phases == {PRESERVING} else UNAVAILABLE

    def __str__(self) -> str:
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
    overridden = _overridden_sgd_methods(type(optimizer))
    if overridden:
        raise UnsupportedError(
            f"no prediction for {name}: it subclasses torch.optim.SGD but overrides "
            f"{', '.join(m + '()' for m in overridden)}, so its step need not be SGD's formula "
            f"θ − lr·(g + λθ + momentum). Predict with torch.optim.SGD itself (or a subclass that keeps SGD's "
            f"step), or check the rule's equivariance with topoverify.equivariance_error.")
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
    if not (math.isfinite(lr) and lr >= 0):
        raise TopoverifyError(f"layer {layer.name!r}: the optimizer's learning rate is {lr}; a prediction needs a "
                              f"finite lr >= 0. Set the param group's 'lr' to a finite number.")
    wd = tuple(_as_float(g["weight_decay"]) for g in groups)
    buffers = None
    if mu > 0:
        bufs = [optimizer.state.get(params[m.name], {}).get("momentum_buffer") for m in layer.members]
        if all(b is not None for b in bufs):
            buffers = neuron_cloud(model, layer, {m.name: b for m, b in zip(layer.members, bufs)})
        elif any(b is not None for b in bufs):
            raise UnsupportedError(f"layer {layer.name!r}: only some parameters have a momentum buffer.")
    if mu == 0:  # torch ignores dampening without momentum: the step is lr·(g + λθ)
        cg, cb, desc = 1.0, 0.0, "SGD"
    else:  # T7(a): (c_g, c_b) from the sympy form of torch's momentum update
        cg, cb = sgd_momentum_coefficients_numeric(mu, tau, nesterov=nesterov, first_step=buffers is None)
        desc = ("SGD momentum, first step (buffer = gradient)" if buffers is None else
                f"SGD {'Nesterov' if nesterov else 'heavy-ball'} momentum (conditional on the buffer)")
    return StepRule(name, lr, cg, cb, wd, desc, bool(ref["maximize"])), buffers


def ratio_bounds(K: float, lr: float) -> tuple[float, float]:
    """T2 ratio bounds (max(0, 1 − lr·K), 1 + lr·K) from :func:`topoverify.symbolic.bounds_numeric`
    (distances are ≥ 0, so the lower bound is clipped at 0: its sharp form); (0, inf) when K is infinite."""
    if not math.isfinite(K):
        return 0.0, math.inf
    lo, up = bounds_numeric(K, lr)
    return max(0.0, float(lo)), float(up)


def _as_float(x) -> float:
    return float(x.item()) if isinstance(x, torch.Tensor) else float(x)


def _overridden_sgd_methods(cls: type) -> list[str]:
    """Methods of torch.optim.SGD that ``cls`` replaces (compared through torch's profiling wrappers)."""
    out = []
    for meth in ("step", "_init_group"):
        mine, base = getattr(cls, meth, None), getattr(torch.optim.SGD, meth, None)
        if base is not None and (mine is None or inspect.unwrap(mine) is not inspect.unwrap(base)):
            out.append(meth)
    return out


def buffer_ratio(cloud: torch.Tensor, buffers: torch.Tensor) -> float:
    """ρ_b = max_{i≠j} ‖b_i − b_j‖/‖θ_i − θ_j‖ (inf if equal neurons carry different buffers): a certified
    upper bound, exact to 1e-12 relative, from exact pairwise differences (:func:`pairs.max_pair_ratio`)."""
    return max_pair_ratio(cloud, buffers)


_HALF = (torch.float16, torch.bfloat16)


def require_full_precision(model: nn.Module) -> None:
    """Refuse float16/bfloat16 parameters with the fix (see the error text)."""
    bad = sorted({str(p.dtype).replace("torch.", "") for p in model.parameters() if p.dtype in _HALF})
    if bad:
        raise UnsupportedError(
            f"the model has {'/'.join(bad)} parameters. topoverify does not predict or verify half-precision "
            f"steps: such a step rounds every coordinate to about 2^-11 (float16) or 2^-8 (bfloat16) of its "
            f"size, more than the change lr·K predicts for the distance of two close neurons, so neither the "
            f"field constants nor the check would mean what they say. Predict and verify a float32 (or "
            f"float64) copy instead: m = copy.deepcopy(model).float(); opt = torch.optim.SGD(m.parameters(), "
            f"**optimizer.defaults); and pass the batch as float32.")


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
    ``hessian=False`` skips λ_max and K_layer; ``fold=True`` adds the estimates K_fold/eta_fold for plain
    gradient steps (one more power iteration); the certified ``mu_upper``/``eta_fold_certified`` are always
    computed for steps without a buffer term. Neither the model nor the optimizer is modified.
    Raises :class:`UnsupportedError` for half-precision models and :class:`TopoverifyError` for a non-finite
    learning rate.
    """
    require_full_precision(model)
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
    signs = ((-1,) if rule.maximize else (1,)) if rule.coef_buffer == 0 else ()
    hull = samples.hull_bounds(cloud, decay_max=max(rule.weight_decay, default=0.0), signs=signs)
    K_up = hull.norm
    K_fold = eta_fold = None
    if fold and rule.coef_buffer == 0 and not rule.maximize:
        shift = K_up if math.isfinite(K_up) else 2 * K
        mu = samples.top_eigenvalue_lower(cloud, shift, decay=decay, iters=iters, tol=tol, generator=gen,
                                          neighbors=neighbors)
        mu_est = float(mu.max()) if mu.numel() else 0.0
        K = max(K, mu_est)  # λ_max(J(z)) ≤ ‖J(z)‖: a Rayleigh quotient is evidence for sup ‖J‖ too
        K_fold = rule.coef_grad * mu_est
        eta_fold = float(eta_star_numeric(max(K_fold, 0.0)))  # T3's one-sided form: 1/μ (inf for μ ≤ 0)
    mu_up = eta_fold_c = lower_fold_c = None
    if rule.coef_buffer == 0:
        mu_up = rule.coef_grad * (hull.top_neg if rule.maximize else hull.top)  # ≥ 0 (a certified λ_max bound)
        eta_fold_c = float(eta_star_numeric(mu_up))
        lower_fold_c = ratio_bounds(mu_up, rule.lr)[0]
    rho = buffer_ratio(cloud, buffers) if buffers is not None else 0.0
    K_eff = rule.coef_grad * K + rule.coef_buffer * rho
    K_eff_up = rule.coef_grad * K_up + rule.coef_buffer * rho
    lo, up = ratio_bounds(K_eff, rule.lr)
    lo_c, up_c = ratio_bounds(K_eff_up, rule.lr)
    eta_star, eta_star_c = float(eta_star_numeric(K_eff)), float(eta_star_numeric(K_eff_up))
    lam_layer = None
    if hessian:
        lam_layer = top_hessian_eigenvalue(model, loss_fn, batch, params=[m.name for m in layer.members],
                                           iters=iters, tol=tol, seed=seed).norm
    merged = count_coincident_pairs(cloud)
    reason = hull.reason if not math.isfinite(K_up) else ""
    if rule.coef_buffer > 0 and math.isinf(rho):
        reason = (reason + "; " if reason else "") + ("two coincident neurons carry different momentum buffers, "
                                                      "so the buffer term has no finite Lipschitz constant")
    return LayerPrediction(
        **base, available=True, rule=rule, lr=rule.lr, K=K, K_upper=K_up, K_eff=K_eff, K_eff_upper=K_eff_up,
        momentum_rho=rho if buffers is not None else None,
        eta_star=eta_star, eta_star_certified=eta_star_c,
        lower=lo, upper=up, lower_certified=lo_c, upper_certified=up_c,
        phase=PRESERVING if rule.lr < eta_star else BREAKDOWN_POSSIBLE,  # T3: preserving below η*
        certified_preserving=rule.lr < eta_star_c, lambda_layer=lam_layer, K_fold=K_fold, eta_fold=eta_fold,
        n_points=int(norms.shape[0]), argmax_neuron=argmax, merged_pairs=merged, K_upper_reason=reason,
        mu_upper=mu_up, eta_fold_certified=eta_fold_c, lower_fold_certified=lower_fold_c,
        certified_injective=mu_up is not None and rule.lr < eta_fold_c), loss


__all__ = ["StepRule", "LayerPrediction", "StepPrediction", "predict_step", "sgd_rule", "buffer_ratio",
           "ratio_bounds", "require_full_precision", "PRESERVING", "BREAKDOWN_POSSIBLE", "UNAVAILABLE"]
