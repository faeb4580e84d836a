"""Hold a prediction against one real optimizer step (claims T2, T3).

``verify_step`` predicts from the pre-step state, then takes the real step on deep copies of the model and
optimizer, and compares every pairwise distance ratio with the predicted bounds. The secant constant
K_secant = max ‖u_i − u_j‖/‖θ_i − θ_j‖ of the step itself is reported as an observation only: bounds built
from it would hold by the triangle inequality and check nothing (THEORY "What counts as a check").
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from ._results import ResultMixin, fmt
from .copying import clone
from .errors import NonFiniteError, UnsupportedError
from .layouts import NeuronLayer, neuron_cloud, resolve_layers
from .pairs import ratio_stats
from .predict import LayerPrediction, StepPrediction, predict_step


@dataclass(frozen=True)
class LayerVerification(ResultMixin):
    """Observed ratio extremes of one real step against the predicted bounds of one layer.

    ``holds`` uses the bounds from the K estimate (the prediction's phase); ``holds_certified`` uses the
    certified K_upper. Above η* the lower bound is 0 and only the upper bound is a check (``checked``). ``margin`` is min over pairs of the distance to the nearer bound (negative when a
    bound is violated); ``tightness`` = max|r − 1| / (lr·K_eff), the fraction of the predicted band used.
    """

    layer: str
    prediction: LayerPrediction
    min_ratio: float
    max_ratio: float
    n_pairs: int
    merged_before: int
    merged_after: int
    holds: bool
    holds_certified: bool
    violations: int
    margin: float
    tightness: float
    K_secant: float
    checked: str = "both bounds"  # "upper bound only" when lr·K_eff ≥ 1 (the lower bound is then 0)

    def __str__(self) -> str:
        p = self.prediction
        verdict = "HOLDS" if self.holds else "VIOLATED"
        return (f"layer {self.layer}: observed ratios [{fmt(self.min_ratio, 6)}, {fmt(self.max_ratio, 6)}] "
                f"vs predicted [{fmt(p.lower, 6)}, {fmt(p.upper, 6)}] -> {verdict} "
                f"(certified [{fmt(p.lower_certified, 6)}, {fmt(p.upper_certified, 6)}]: "
                f"{'holds' if self.holds_certified else 'VIOLATED'}); K={fmt(p.K)}, K_secant={fmt(self.K_secant)} "
                f"(observation), tightness={fmt(self.tightness, 3)}, merged pairs {self.merged_before}->"
                f"{self.merged_after}")


@dataclass(frozen=True)
class StepVerification(ResultMixin):
    """A prediction and the real step it was held against, per layer."""

    prediction: StepPrediction
    layers: tuple[LayerVerification, ...]
    loss_before: float
    loss_after: float
    step: int | None = None
    skipped: tuple[str, ...] = field(default_factory=tuple)

    @property
    def holds(self) -> bool:
        return all(lv.holds for lv in self.layers)

    @property
    def holds_certified(self) -> bool:
        return all(lv.holds_certified for lv in self.layers)

    def layer(self, name: str) -> LayerVerification:
        for lv in self.layers:
            if lv.layer == name:
                return lv
        raise KeyError(f"no verified layer {name!r}; layers: {[lv.layer for lv in self.layers]}")

    def __str__(self) -> str:
        from .report_text import verification_table
        return verification_table(self)


@torch.enable_grad()
def step_in_place(model: nn.Module, optimizer: torch.optim.Optimizer, loss_fn: Callable, batch) -> float:
    """One real optimizer step on ``model`` itself (closure form, so LBFGS works); returns the pre-step loss."""

    def closure():
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(model, batch)
        loss.backward()
        return loss

    loss = closure()
    if isinstance(optimizer, torch.optim.LBFGS):
        optimizer.step(closure)
    else:
        optimizer.step()
    return float(loss.detach())


def take_step(model: nn.Module, optimizer: torch.optim.Optimizer, loss_fn: Callable, batch):
    """One real optimizer step on deep copies; returns (model_copy, optimizer_copy, loss_before)."""
    m, opt = clone(model, optimizer)
    return m, opt, step_in_place(m, opt, loss_fn, batch)


def verify_step(model: nn.Module, optimizer: torch.optim.Optimizer, loss_fn: Callable, batch, *,
                layers: Sequence[NeuronLayer] | NeuronLayer | None = None, step: int | None = None,
                prediction: StepPrediction | None = None, **predict_options) -> StepVerification:
    """Predict (see :func:`topoverify.predict_step`), take the real step on copies, and compare per layer.

    Raises :class:`UnsupportedError` if no layer has a prediction (e.g. Adam before T7), and
    :class:`NonFiniteError` naming the layer and step if the step produces NaN/Inf parameters.
    Neither the model nor the optimizer is modified.
    """
    layers = resolve_layers(model, layers)
    if prediction is None:
        prediction = predict_step(model, optimizer, loss_fn, batch, layers=layers, step=step, **predict_options)
    available = [lp for lp in prediction.layers if lp.available]
    if not available:
        reasons = "; ".join(f"{lp.layer}: {lp.reason}" for lp in prediction.layers)
        raise UnsupportedError(f"nothing to verify: no layer has a prediction ({reasons}).")
    after_model, _, loss_before = take_step(model, optimizer, loss_fn, batch)
    by_name = {layer.name: layer for layer in layers}
    results = []
    for lp in available:
        layer = by_name[lp.layer]
        before = neuron_cloud(model, layer)
        after = neuron_cloud(after_model, layer)
        if not torch.isfinite(after).all():
            raise NonFiniteError(f"layer {layer.name!r}{'' if step is None else f' at step {step}'}: the step "
                                 f"produced NaN/Inf parameters (lr={fmt(lp.lr)}, predicted eta*="
                                 f"{fmt(lp.eta_star)}); training diverged.")
        st = ratio_stats(before, after, lp.lower, lp.upper)
        st_c = ratio_stats(before, after, lp.lower_certified, lp.upper_certified)
        band = lp.lr * lp.K_eff
        dev = max(abs(st.max_ratio - 1), abs(1 - st.min_ratio)) if st.n_pairs else 0.0
        results.append(LayerVerification(
            layer=layer.name, prediction=lp, min_ratio=st.min_ratio, max_ratio=st.max_ratio, n_pairs=st.n_pairs,
            merged_before=st.merged_before, merged_after=st.merged_after, holds=st.violations == 0,
            holds_certified=st_c.violations == 0, violations=st.violations, margin=st.margin,
            tightness=dev / band if band > 0 else (0.0 if dev == 0 else math.inf),
            K_secant=st.max_secant / lp.lr if lp.lr else math.nan,
            checked="both bounds" if lp.lower > 0 else "upper bound only"))
    with torch.no_grad():
        loss_after = float(loss_fn(after_model, batch))
    skipped = tuple(f"{lp.layer}: {lp.reason}" for lp in prediction.layers if not lp.available)
    return StepVerification(prediction, tuple(results), loss_before, loss_after, step, skipped)


__all__ = ["LayerVerification", "StepVerification", "verify_step", "take_step", "step_in_place"]
