"""Claim T4 against real runs: the product bound over T optimizer steps (the checker of T4 in
``spec/claims.toml``).

Before every step t the constant K_t is predicted from that step's own pre-step state
(:func:`topoverify.predict_step`, never from the step), then the real step is taken; after T steps every
pair's ratio ‖θ_i^T − θ_j^T‖/‖θ_i^0 − θ_j^0‖ is held against
:func:`topoverify.symbolic.multistep_bounds_numeric` (∏(1 − lr_t K_t), clipped at 0 from the first factor
≤ 0, and ∏(1 + lr_t K_t)) — with the estimated K_eff (``holds``) and with the certified K_eff_upper
(``holds_certified``), the convention of :func:`topoverify.checks.step_bounds.verify_step`. Only
``holds_certified`` is T4 verified; ``holds`` alone is a check of the estimate.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from topoverify.checks.step_bounds import step_in_place
from topoverify.checks.verdicts import CertifiedLayerRows
from topoverify.checks.step_prediction import StepPrediction, predict_step, require_full_precision
from topoverify.errors import NonFiniteError, TopoverifyError, UnsupportedError
from topoverify.formatting import NOT_SERIALIZED, ResultMixin, fmt
from topoverify.measure.pairs import ratio_stats
from topoverify.neurons.copying import clone
from topoverify.neurons.layouts import NeuronLayer, neuron_cloud, resolve_layers
from topoverify.symbolic import multistep_bounds_numeric


@dataclass(frozen=True)
class LayerMultiStep(ResultMixin):
    """T4 on one layer: the per-step constants, the product bounds and the observed ratio extremes.

    ``holds`` is the check with the estimated K_eff (not a verification: K_eff is a lower estimate of the
    field's Lipschitz constant) and ``holds_certified`` the check with the certified K_eff_upper — only the
    latter verifies T4 (as in :func:`topoverify.checks.step_bounds.verify_step`). Both are tri-state: None
    means no check was made — some step had no prediction for this layer (the product must have one factor
    per step), no pair of distinct neurons was compared, or (certified only) some K_eff_upper was infinite;
    ``reason`` says which."""

    layer: str
    lrs: tuple[float, ...]
    Ks: tuple[float, ...]            # K_eff per step (estimate)
    Ks_upper: tuple[float, ...]      # K_eff_upper per step (certified; inf where not Lipschitz)
    lower: float
    upper: float
    lower_certified: float
    upper_certified: float
    min_ratio: float
    max_ratio: float
    n_pairs: int
    merged_before: int
    merged_after: int
    holds: bool | None
    holds_certified: bool | None
    violations: int = 0
    violations_certified: int = 0
    margin: float = math.nan
    reason: str = ""

    def __str__(self) -> str:
        why = f" ({self.reason})" if self.reason else ""
        est = {True: "holds (estimate only)", False: "VIOLATED", None: f"not checked{why}"}[self.holds]
        cert = {True: "HOLDS (verified)", False: "VIOLATED", None: f"NOT CHECKED{why}"}[self.holds_certified]
        return (f"layer {self.layer}: {len(self.lrs)} predicted steps, observed ratios [{fmt(self.min_ratio, 6)}, "
                f"{fmt(self.max_ratio, 6)}]; certified K_upper bounds [{fmt(self.lower_certified, 6)}, "
                f"{fmt(self.upper_certified, 6)}] -> {cert}; estimate K bounds [{fmt(self.lower, 6)}, "
                f"{fmt(self.upper, 6)}] -> {est}")


@dataclass(frozen=True)
class MultiStepVerification(CertifiedLayerRows, ResultMixin):
    """T4 per layer over ``steps`` real steps; ``model_after``/``optimizer_after`` are the stepped private
    copies (not compared, not in :meth:`to_dict`)."""

    steps: int
    layers: tuple[LayerMultiStep, ...]
    losses: tuple[float, ...]        # loss before each step, then after the last
    model_after: nn.Module | None = field(default=None, repr=False, compare=False, metadata=NOT_SERIALIZED)
    optimizer_after: torch.optim.Optimizer | None = field(default=None, repr=False, compare=False,
                                                          metadata=NOT_SERIALIZED)

    @property
    def verdict(self) -> str:
        """One line: VERIFIED only on the certified check; an estimate-only pass says it is not verified."""
        if self.holds_certified is True:
            return "VERIFIED (certified K_upper)"
        if self.holds_certified is False or self.holds is False:
            return "VIOLATED (" + ("certified K_upper" if self.holds_certified is False else "estimate K") + ")"
        if self.holds is True:
            return "NOT VERIFIED: holds with the estimate K only; the certified check was not made"
        return "NOT CHECKED"

    def __str__(self) -> str:
        return "\n".join([f"T4 multistep bound over {self.steps} steps (loss {fmt(self.losses[0])} -> "
                          f"{fmt(self.losses[-1])}): {self.verdict}", *(f"  {lv}" for lv in self.layers)])


def _batch_at(batches, t: int, steps: int):
    """A ``list`` holds one batch per step and a callable gives the batch of step t (e.g.
    ``Scenario.batch_at``); anything else (a tuple (x, y), a tensor, a dict) is one batch for every step."""
    if callable(batches):
        return batches(t)
    if not isinstance(batches, list):
        return batches
    if len(batches) < steps:
        raise TopoverifyError(f"batches is a list of {len(batches)} batches but steps={steps}; pass one batch per "
                              f"step, or a single batch (e.g. a tuple (x, y)) to reuse it at every step.")
    return batches[t]


def verify_steps(model: nn.Module, optimizer: torch.optim.Optimizer, loss_fn: Callable, batches, *, steps: int,
                 layers: Sequence[NeuronLayer] | NeuronLayer | None = None,
                 schedule: Callable[[int], float] | None = None,
                 predictor: Callable[..., StepPrediction] = predict_step, **predict_options
                 ) -> MultiStepVerification:
    """Predict K_t before each of ``steps`` real steps, take them on private copies, and hold the ratios after
    the last step (relative to the start) against T4's product bounds, per layer.

    ``batches``: a list with one batch per step, a callable ``batches(t)``, or one batch (e.g. a tuple
    (x, y)) reused at every step. ``schedule(t)``, if
    given, sets every param group's learning rate before step t (the prediction reads it). ``predictor``
    (default :func:`predict_step`, called with ``layers``, ``step`` and ``predict_options``; ``hessian``
    defaults to False, and the layout preflight runs before the first step only) gives each step's
    K_eff/K_eff_upper. Raises :class:`UnsupportedError` if no layer has a prediction at the first step and
    :class:`NonFiniteError` if a step produces NaN/Inf parameters. Neither the model nor the optimizer is
    modified; the stepped copies are returned as ``model_after``/``optimizer_after``.
    """
    if not (isinstance(steps, int) and steps >= 1):
        raise TopoverifyError(f"steps={steps!r}: T4 needs at least one step; pass steps=1 or more.")
    require_full_precision(model)
    m, opt = clone(model, optimizer)
    layers = resolve_layers(m, layers)
    start = {layer.name: neuron_cloud(m, layer) for layer in layers}
    per_layer = {layer.name: dict(lrs=[], Ks=[], Ks_upper=[], missing="") for layer in layers}
    check_layout = predict_options.pop("check_layout", True)
    predict_options.setdefault("hessian", False)
    losses = []
    for t in range(steps):
        batch = _batch_at(batches, t, steps)
        if schedule is not None:
            for group in opt.param_groups:
                group["lr"] = float(schedule(t))
        pred = predictor(m, opt, loss_fn, batch, layers=layers, step=t, check_layout=check_layout and t == 0,
                         **predict_options)
        if t == 0 and not any(lp.available for lp in pred.layers):
            reasons = "; ".join(f"{lp.layer}: {lp.reason}" for lp in pred.layers)
            raise UnsupportedError(f"nothing to verify: no layer has a prediction ({reasons}).")
        unknown = sorted({lp.layer for lp in pred.layers} - per_layer.keys())
        if unknown:
            raise TopoverifyError(f"the predictor returned layer(s) {unknown} at step {t}, which are not among the "
                                  f"verified layers {list(per_layer)}; a predictor must return its predictions "
                                  f"under the names of the layers it is given (``layers=``).")
        for name in per_layer.keys() - {lp.layer for lp in pred.layers}:
            rec = per_layer[name]
            rec["missing"] = rec["missing"] or f"no prediction at step {t}: the predictor left this layer out"
        for lp in pred.layers:
            rec = per_layer[lp.layer]
            if not lp.available:
                rec["missing"] = rec["missing"] or f"no prediction at step {t}: {lp.reason}"
                continue
            rec["lrs"].append(lp.lr)
            rec["Ks"].append(lp.K_eff)
            rec["Ks_upper"].append(lp.K_eff_upper)
        losses.append(step_in_place(m, opt, loss_fn, batch))
        for layer in layers:
            if not torch.isfinite(neuron_cloud(m, layer)).all():
                raise NonFiniteError(f"layer {layer.name!r} at step {t}: the step produced NaN/Inf parameters; "
                                     f"training diverged.")
    with torch.no_grad():
        losses.append(float(loss_fn(m, _batch_at(batches, steps - 1, steps))))
    results = tuple(_layer_result(layer.name, start[layer.name], neuron_cloud(m, layer), per_layer[layer.name],
                                  steps) for layer in layers)
    return MultiStepVerification(steps, results, tuple(losses), model_after=m, optimizer_after=opt)


def _layer_result(name: str, before: torch.Tensor, after: torch.Tensor, rec: dict, steps: int) -> LayerMultiStep:
    lrs, Ks, Ks_up = tuple(rec["lrs"]), tuple(rec["Ks"]), tuple(rec["Ks_upper"])
    if not rec["missing"] and len(Ks) != steps:  # e.g. one layer predicted twice at a step
        rec["missing"] = f"{len(Ks)} predictions for {steps} steps; the product needs exactly one per step"
    complete = not rec["missing"]
    if complete:
        lo, up = multistep_bounds_numeric(list(Ks), list(lrs))
    else:
        lo, up = 0.0, math.inf
    certified = complete and all(math.isfinite(k) for k in Ks_up)
    if certified:
        lo_c, up_c = multistep_bounds_numeric(list(Ks_up), list(lrs))
    else:
        lo_c, up_c = 0.0, math.inf
    st = ratio_stats(before, after, float(lo), float(up), bands=((float(lo_c), float(up_c)),))
    compared = st.n_pairs > 0
    reason = rec["missing"] or ("" if compared else "no pair of distinct neurons to compare")
    if compared and complete and not certified:
        reason = "not certified: some K_eff_upper is infinite"
    return LayerMultiStep(
        layer=name, lrs=lrs, Ks=Ks, Ks_upper=Ks_up, lower=float(lo), upper=float(up),
        lower_certified=float(lo_c), upper_certified=float(up_c), min_ratio=st.min_ratio, max_ratio=st.max_ratio,
        n_pairs=st.n_pairs, merged_before=st.merged_before, merged_after=st.merged_after,
        holds=(st.violations == 0) if compared and complete else None,
        holds_certified=(st.band_violations[0] == 0) if compared and certified else None,
        violations=st.violations if complete else 0,
        violations_certified=st.band_violations[0] if certified else 0,
        margin=st.margin if complete else math.nan, reason=reason)


__all__ = ["LayerMultiStep", "MultiStepVerification", "verify_steps"]
