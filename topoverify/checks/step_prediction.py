"""Predict, from the pre-step state alone, the Lipschitz constant K of each neuron layer's update and the
resulting one-step bounds on pairwise neuron distances (claims T2, T3).

Nothing here looks at the outcome of the step: K comes from derivatives of the update field at the
pre-step state (:func:`topoverify.measure.fields.unit_field`: MLP/conv blocks, gated MLPs, attention heads,
value/output dims, BatchNorm channels in train mode; claims T1, T9), so holding the prediction against a real step
(:func:`topoverify.verify_step`) is a check, not an identity (T2's assumption B3, spec/claims.toml).
Every bound (T2's band, η* = 1/K) comes from :mod:`topoverify.symbolic`.

Optimizers: each has a rule in :mod:`topoverify.rules` (a registry, :func:`topoverify.rules.register_rule`):
the rule reads the step map and pre-step state of a layer and gives its constants (K, K_upper, K_eff, ...);
this module turns them into T2's band and η* through :mod:`topoverify.symbolic`. Built in:
``torch.optim.SGD`` with or without momentum/Nesterov/dampening/weight decay/maximize, K_eff = |c_g| K + |c_b| ρ_b
conditional on the buffer (T7(a), :mod:`topoverify.rules.sgd`); Adam, AdamW, NAdam, RAdam, Adamax, RMSprop and
Adagrad, K_eff = λ_dec + L_g K + Σ_s ρ_s conditional on the state, with the additive bound δ beside it (T7(b),
(c), :mod:`topoverify.rules.coordinatewise`). An optimizer without a rule (Rprop, LBFGS, ...) or a subclass that
overrides its parent's ``step`` gets an explicit "no prediction" rather than a guess.
Half-precision models are refused (see :func:`require_full_precision`).

Estimates and certificates. ``K`` (power iteration at sampled points) and ``K_fold`` (Rayleigh quotients of
the largest signed eigenvalue) approach their suprema from below: they are *estimates*. ``K_upper`` and
``mu_upper`` are *certified* upper bounds over the convex hull of the cloud (:meth:`BlockSamples.hull_bounds`;
infinite, with the reason, for fields without a proven bound: gated MLPs, attention heads, BatchNorm channels);
only they back a guarantee: T2's band with ``K_upper``, and, for a step without a buffer term,
injectivity on the hull below ``eta_fold_certified`` = 1/mu_upper with lower ratio bound 1 − lr·mu_upper
(the one-sided condition of T3).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

import torch
from torch import nn

from topoverify.checks.verdicts import LayerLookup
from topoverify.errors import NonFiniteError, UnsupportedError
from topoverify.formatting import ResultMixin, fmt
from topoverify.measure.fields import unit_field
from topoverify.measure.capture_pass import shared_capture
from topoverify.measure.hessian import top_hessian_eigenvalue
from topoverify.measure.merges import count_coincident_pairs
from topoverify.neurons.layouts import NeuronLayer, member_widths, neuron_cloud, resolve_layers
from topoverify.neurons.preflight import preflight
from topoverify.rules import LayerContext, StepMap, rule_for
from topoverify.rules.sgd import buffer_ratio  # re-exported: tests and callers import it from here
from topoverify.symbolic import bounds_numeric, eta_star_numeric
from topoverify.tables import prediction_table

PRESERVING = "preserving"
BREAKDOWN_POSSIBLE = "breakdown-possible"
UNAVAILABLE = "unavailable"


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

    Additive bound (T7(b), certified; coordinate-wise families): ``additive_delta`` = δ with
    |‖θ'_i − θ'_j‖ − ‖D(θ_i − θ_j)‖| ≤ δ for every pair, D = diag(1 − lr·λ_dec) with each member's decoupled
    decay (``decoupled_decay``, () without); it holds
    whether or not the map is Lipschitz (sign rules, Adam's first step), and moves the absolute-scale Rips
    diagrams by at most δ in bottleneck distance, so every feature longer than 2δ survives. ``sharper_bound``
    says which certified bound allows the smaller change at the cloud's ``scale`` (the median
    nearest-neighbour distance): "multiplicative" when lr·K_eff_upper·scale < δ, else "additive".
    ``details``: the rule's named sub-constants (L_grad, rho_<state>, ...).

    ``lambda_layer`` is the top |eigenvalue| of the loss Hessian restricted to this layer (an estimate).
    """

    layer: str
    n_neurons: int
    dim: int
    activation: str | None
    available: bool
    reason: str = ""
    rule: StepMap | None = None
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
    additive_delta: float | None = None
    decoupled_decay: tuple[float, ...] = ()
    scale: float | None = None
    sharper_bound: str = "multiplicative"
    details: dict = field(default_factory=dict)

    def __str__(self) -> str:
        if not self.available:
            return f"layer {self.layer}: no prediction ({self.reason})"
        fold = "" if self.eta_fold is None else f", eta_fold≈{fmt(self.eta_fold)} (estimate)"
        cert_fold = ("" if self.eta_fold_certified is None else
                     f", certified injective below lr={fmt(self.eta_fold_certified)}")
        why = f" [K_upper = inf: {self.K_upper_reason}]" if self.K_upper_reason else ""
        if self.additive_delta is not None:
            why += (f"; additive: every distance moves by <= {fmt(self.additive_delta)} (certified; "
                    f"{self.sharper_bound} bound sharper at scale {fmt(self.scale)})")
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
# Bounds from a rule's constants
# ----------------------------------------------------------------------------------------------------------

def ratio_bounds(K: float, lr: float) -> tuple[float, float]:
    """T2 ratio bounds (max(0, 1 − lr·K), 1 + lr·K) from :func:`topoverify.symbolic.bounds_numeric`
    (distances are ≥ 0, so the lower bound is clipped at 0: its sharp form); (0, inf) when K is infinite."""
    if not math.isfinite(K):
        return 0.0, math.inf
    lo, up = bounds_numeric(K, lr)
    return max(0.0, float(lo)), float(up)


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
    Raises :class:`UnsupportedError` for half-precision models and :class:`TopoverifyError` for bad
    hyper-parameters (the optimizer's rule, :func:`topoverify.rules.rule_for`, says which; e.g. a non-finite lr).
    An optimizer without a rule gets an unavailable layer prediction whose ``reason`` says "no prediction".
    """
    require_full_precision(model)
    layers = resolve_layers(model, layers)
    for layer in layers:  # diverged parameters are named by layer before any pass runs on them
        _finite_cloud(model, layer, step)
    one_pass = _one_pass(model, loss_fn, batch, layers, step)
    if check_layout:
        preflight(model, layers, loss_fn, batch, base=one_pass.base() if one_pass else None)
    gen = torch.Generator().manual_seed(seed)
    predictions, loss = [], math.nan
    with one_pass or contextlib.nullcontext():
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


def _one_pass(model, loss_fn, batch, layers, step):
    """One recorded forward and backward pass for every layer's field and the preflight's unpermuted pass (a
    whole-model pass costs as much as a training step), or None when it cannot cover them (a layout naming a
    module the model lacks): each layer then runs its own, which reports the problem as that layer's."""
    try:
        return shared_capture(model, loss_fn, batch, layers, step=step, all_params=True)
    except UnsupportedError:
        return None


def _predict_layer(model, optimizer, loss_fn, batch, layer, neighbors, iters, tol, gen, hessian, seed, step,
                   fold):
    cloud = _finite_cloud(model, layer, step)
    try:
        rule = rule_for(optimizer)
        step_map = rule.step_map(optimizer, model, layer)
        samples, loss = unit_field(model, layer, loss_fn, batch, step=step)
    except UnsupportedError as exc:
        return LayerPrediction(**_base(layer, cloud), available=False, reason=str(exc)), math.nan
    lp = predict_layer(model, optimizer, layer, samples, neighbors=neighbors, power_iters=iters, tol=tol,
                       generator=gen, fold=fold, step=step, cloud=cloud, rule=(rule, step_map))
    if hessian and lp.available:
        lam_layer = top_hessian_eigenvalue(model, loss_fn, batch, params=[m.name for m in layer.members],
                                           iters=iters, tol=tol, seed=seed).norm
        lp = replace(lp, lambda_layer=lam_layer)
    return lp, loss


def _base(layer, cloud):
    return dict(layer=layer.name, n_neurons=layer.size, dim=cloud.shape[1], activation=layer.activation)


def _finite_cloud(model, layer, step):
    cloud = neuron_cloud(model, layer)
    if not torch.isfinite(cloud).all():
        raise NonFiniteError(f"layer {layer.name!r}{'' if step is None else f' at step {step}'}: the neuron "
                             f"parameters contain NaN/Inf; training has diverged before this step.")
    return cloud


def predict_layer(model: nn.Module, optimizer: torch.optim.Optimizer, layer: NeuronLayer, samples, *,
                  neighbors: int = 2, power_iters: int = 50, tol: float = 1e-4,
                  generator: torch.Generator | None = None, fold: bool = False, step: int | None = None,
                  cloud: torch.Tensor | None = None, rule: tuple | None = None) -> LayerPrediction:
    """One layer's prediction (everything of :class:`LayerPrediction` but ``lambda_layer``) from its prepared
    update-field ``samples`` (:class:`BlockSamples`, T1) at the model's current (pre-step) state: the rule's
    constants, T2's band and η*. :func:`predict_step` builds the field with :func:`unit_field`;
    :class:`topoverify.monitor.TopologyMonitor` from the hooks of the user's own pass (one code path).
    ``cloud``: the layer's neuron cloud if already read and checked finite (else read here); ``rule``: the
    optimizer's (rule, step map) if already read (else read here)."""
    if cloud is None:
        cloud = _finite_cloud(model, layer, step)
    base = _base(layer, cloud)
    gen = generator if generator is not None else torch.Generator().manual_seed(0)
    if rule is None:
        try:
            found = rule_for(optimizer)
            rule = (found, found.step_map(optimizer, model, layer))
        except UnsupportedError as exc:
            return LayerPrediction(**base, available=False, reason=str(exc))
    rule, step_map = rule
    ctx = LayerContext(layer, cloud, samples, tuple(member_widths(model, layer)), power_iters, tol, gen,
                       neighbors, fold)
    c = rule.layer_constants(step_map, ctx)
    lr = step_map.lr
    eta_fold = None if c.K_fold is None else float(eta_star_numeric(max(c.K_fold, 0.0)))  # T3 one-sided: 1/μ
    eta_fold_c = lower_fold_c = None
    if c.mu_upper is not None:
        eta_fold_c = float(eta_star_numeric(c.mu_upper))
        lower_fold_c = ratio_bounds(c.mu_upper, lr)[0]
    lo, up = ratio_bounds(c.K_eff, lr)
    lo_c, up_c = ratio_bounds(c.K_eff_upper, lr)
    eta_star, eta_star_c = float(eta_star_numeric(c.K_eff)), float(eta_star_numeric(c.K_eff_upper))
    scale = sharper = None
    if c.additive_delta is not None:
        scale = median_neighbor_distance(cloud, ctx.nearest)
        sharper = "multiplicative" if lr * c.K_eff_upper * scale < c.additive_delta else "additive"
    return LayerPrediction(
        **base, available=True, rule=replace(step_map, state={}), lr=lr, K=c.K, K_upper=c.K_upper, K_eff=c.K_eff,
        K_eff_upper=c.K_eff_upper, momentum_rho=c.momentum_rho, eta_star=eta_star, eta_star_certified=eta_star_c,
        lower=lo, upper=up, lower_certified=lo_c, upper_certified=up_c,
        phase=PRESERVING if lr < eta_star else BREAKDOWN_POSSIBLE,  # T3: preserving below η*
        certified_preserving=lr < eta_star_c, K_fold=c.K_fold, eta_fold=eta_fold,
        n_points=c.n_points, argmax_neuron=c.argmax_neuron, merged_pairs=count_coincident_pairs(cloud),
        K_upper_reason=c.reason, mu_upper=c.mu_upper, eta_fold_certified=eta_fold_c,
        lower_fold_certified=lower_fold_c, certified_injective=c.mu_upper is not None and lr < eta_fold_c,
        additive_delta=c.additive_delta, decoupled_decay=step_map.decoupled_decay, scale=scale,
        sharper_bound=sharper or "multiplicative", details=dict(c.details))


def median_neighbor_distance(cloud: torch.Tensor, nearest: torch.Tensor) -> float:
    """The median over neurons of the distance to the nearest other neuron (``nearest``: neighbour indices, N×k;
    0 for fewer than two neurons)."""
    if cloud.shape[0] < 2 or nearest.numel() == 0:
        return 0.0
    idx = nearest[:, 0]
    return float((cloud.to(torch.float64) - cloud.to(torch.float64)[idx]).norm(dim=1).median())


__all__ = ["LayerPrediction", "StepPrediction", "predict_step", "predict_layer", "buffer_ratio",
           "ratio_bounds", "require_full_precision", "PRESERVING", "BREAKDOWN_POSSIBLE", "UNAVAILABLE"]
