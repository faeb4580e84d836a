"""Hold a prediction against one real optimizer step (claims T2, T3, T7: the checker of T2 in
``spec/claims.toml``).

``verify_step`` predicts from the pre-step state, then takes the real step on deep copies of the model and
optimizer, and compares every pairwise distance ratio with the predicted bounds. The stepped copies are
returned (``model_after``, ``optimizer_after``) so that a run can continue from them. The secant constant
K_secant = max ‖u_i − u_j‖/‖θ_i − θ_j‖ of the step itself is reported as an observation only: bounds built
from it would hold by the triangle inequality and check nothing (T2's assumption B3 in spec/claims.toml).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from topoverify.checks.step_prediction import LayerPrediction, StepPrediction, predict_step, require_full_precision
from topoverify.checks.verdicts import CertifiedLayerRows
from topoverify.errors import NonFiniteError, UnsupportedError
from topoverify.formatting import NOT_SERIALIZED, ResultMixin, fmt
from topoverify.measure.pairs import ratio_stats
from topoverify.neurons.copying import clone
from topoverify.neurons.layouts import NeuronLayer, member_widths, neuron_cloud, resolve_layers
from topoverify.tables import verification_table


@dataclass(frozen=True)
class LayerVerification(ResultMixin):
    """Observed ratio extremes of one real step against the predicted bounds of one layer.

    ``holds`` uses the bounds from the K estimate (the prediction's phase). ``holds_certified`` uses the
    certified band [max(1 − lr·K_eff_upper, 1 − lr·mu_upper)₊, 1 + lr·K_eff_upper]. Both are tri-state:
    ``None`` means *no check was made*, never a pass: ``holds`` is None when no pair with θ_i ≠ θ_j was
    compared (one neuron, or all merged); ``holds_certified`` is None also when K_eff_upper is infinite (a
    band [0, inf] cannot fail; ``certified_check`` says why, e.g. ReLU pre-activations crossing 0).
    Above η* the lower bound is 0 and only the upper bound is a check (``checked``). ``margin`` is min over
    pairs of the distance to the nearer bound (negative when a bound is violated); ``tightness`` =
    max|r − 1| / (lr·K_eff), the fraction of the predicted band used. ``K_secant`` and ``fold_index``
    (max over pairs of lr⟨u_i − u_j, θ_i − θ_j⟩/‖θ_i − θ_j‖²; below 1 no pair merged, by Cauchy–Schwarz) are
    observations built from the step itself: bounds made from them could not fail. A band whose upper end is
    infinite (a sign rule's, K_eff = inf) cannot fail either: ``holds`` is then None.

    Additive bound (T7(b), coordinate-wise families): ``max_abs_change`` = max over all pairs (merged ones
    included) of |‖θ'_i − θ'_j‖ − ‖D(θ_i − θ_j)‖|, D = diag(1 − lr·λ_dec) per member (1 without decoupled
    decay); ``holds_additive`` whether it stays within the certified δ (None when the rule gives no finite δ or
    no pair exists); ``additive_violations`` how many pairs do not.
    """

    layer: str
    prediction: LayerPrediction
    min_ratio: float
    max_ratio: float
    n_pairs: int
    merged_before: int
    merged_after: int
    holds: bool | None
    holds_certified: bool | None
    violations: int
    margin: float
    tightness: float
    K_secant: float
    checked: str = "both bounds"  # "upper bound only" when lr·K_eff ≥ 1 (the lower bound is then 0)
    certified_check: str = "both bounds"  # or "upper bound only", or "not certified: <reason>"
    violations_certified: int = 0
    fold_index: float | None = None
    max_abs_change: float | None = None
    holds_additive: bool | None = None
    additive_violations: int = 0

    def __str__(self) -> str:
        p = self.prediction
        unchecked = ("NOT CHECKED (no pair of distinct neurons)" if self.n_pairs == 0 else
                     "NOT CHECKED (the band [0, inf] cannot fail)")
        verdict = {True: "HOLDS", False: "VIOLATED", None: unchecked}[self.holds]
        if self.holds_certified is None:
            cert = f"certified: not checked ({self.certified_check})"
        else:
            cert = (f"certified [{fmt(p.certified_lower, 6)}, {fmt(p.upper_certified, 6)}]: "
                    f"{'holds' if self.holds_certified else 'VIOLATED'}")
        if self.holds_additive is not None:
            cert += (f"; additive |change| {fmt(self.max_abs_change)} <= delta {fmt(p.additive_delta)}: "
                     f"{'holds' if self.holds_additive else 'VIOLATED'}")
        return (f"layer {self.layer}: observed ratios [{fmt(self.min_ratio, 6)}, {fmt(self.max_ratio, 6)}] "
                f"vs predicted [{fmt(p.lower, 6)}, {fmt(p.upper, 6)}] -> {verdict} ({cert}); K≈{fmt(p.K)}, "
                f"K_secant={fmt(self.K_secant)} (observation), tightness={fmt(self.tightness, 3)}, merged pairs "
                f"{self.merged_before}->{self.merged_after}")


@dataclass(frozen=True)
class StepVerification(CertifiedLayerRows, ResultMixin):
    """A prediction and the real step it was held against, per layer.

    ``holds``/``holds_certified``: True when every layer's check was made and held, False when any failed,
    None when none failed but some check could not be made (see :class:`LayerVerification`).

    ``model_after``/``optimizer_after`` are the stepped private copies (the state after this step, to
    continue a run from); they are not compared, not shown and not in :meth:`to_dict`."""

    prediction: StepPrediction
    layers: tuple[LayerVerification, ...]
    loss_before: float
    loss_after: float
    step: int | None = None
    skipped: tuple[str, ...] = field(default_factory=tuple)
    model_after: nn.Module | None = field(default=None, repr=False, compare=False, metadata=NOT_SERIALIZED)
    optimizer_after: torch.optim.Optimizer | None = field(default=None, repr=False, compare=False,
                                                          metadata=NOT_SERIALIZED)

    def __str__(self) -> str:
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


def stepped_copies(model: nn.Module, optimizer: torch.optim.Optimizer, loss_fn: Callable, batch):
    """One real optimizer step on deep copies (the originals are untouched); returns
    (model_copy, optimizer_copy, loss_before)."""
    m, opt = clone(model, optimizer)
    return m, opt, step_in_place(m, opt, loss_fn, batch)


def _decay_scale(model: nn.Module, layer: NeuronLayer, lp: LayerPrediction) -> float | torch.Tensor:
    """D of the additive check: 1 without decoupled decay, else 1 − lr·λ_k per cloud coordinate (T7(b))."""
    if not lp.decoupled_decay:
        return 1.0
    return torch.cat([torch.full((w,), 1.0 - lp.lr * lam, dtype=torch.float64)
                      for w, lam in zip(member_widths(model, layer), lp.decoupled_decay)])


def verify_step(model: nn.Module, optimizer: torch.optim.Optimizer, loss_fn: Callable, batch, *,
                layers: Sequence[NeuronLayer] | NeuronLayer | None = None, step: int | None = None,
                prediction: StepPrediction | None = None, **predict_options) -> StepVerification:
    """Predict (see :func:`topoverify.predict_step`), take the real step on copies, and compare per layer.

    Raises :class:`UnsupportedError` if no layer has a prediction (e.g. an optimizer without a rule) or the model is in half
    precision, and :class:`NonFiniteError` naming the layer and step if the step produces NaN/Inf parameters
    or distances beyond the float64 range (a non-finite result is never a pass).
    Neither the model nor the optimizer is modified: the step is taken on copies, returned as
    ``model_after``/``optimizer_after``.
    """
    require_full_precision(model)
    layers = resolve_layers(model, layers)
    if prediction is None:
        prediction = predict_step(model, optimizer, loss_fn, batch, layers=layers, step=step, **predict_options)
    available = [lp for lp in prediction.layers if lp.available]
    if not available:
        reasons = "; ".join(f"{lp.layer}: {lp.reason}" for lp in prediction.layers)
        raise UnsupportedError(f"nothing to verify: no layer has a prediction ({reasons}).")
    after_model, after_optimizer, loss_before = stepped_copies(model, optimizer, loss_fn, batch)
    by_name = {layer.name: layer for layer in layers}
    at = "" if step is None else f" at step {step}"
    results = []
    for lp in available:
        layer = by_name[lp.layer]
        before = neuron_cloud(model, layer)
        after = neuron_cloud(after_model, layer)
        if not torch.isfinite(after).all():
            raise NonFiniteError(f"layer {layer.name!r}{at}: the step produced NaN/Inf parameters (lr={fmt(lp.lr)}, "
                                 f"predicted eta*={fmt(lp.eta_star)}); training diverged.")
        certified = lp.certified
        cert_band = (lp.certified_lower, lp.upper_certified) if certified else (0.0, math.inf)
        additive = None
        if lp.additive_delta is not None and math.isfinite(lp.additive_delta):
            additive = (_decay_scale(model, layer, lp), lp.additive_delta)
        try:
            st = ratio_stats(before, after, lp.lower, lp.upper, bands=(cert_band,), additive=additive)
        except NonFiniteError as exc:
            raise NonFiniteError(f"layer {layer.name!r}{at}: {exc} (lr={fmt(lp.lr)}, predicted "
                                 f"eta*={fmt(lp.eta_star)})") from None
        compared = st.n_pairs > 0
        if compared and not (math.isfinite(st.min_ratio) and math.isfinite(st.max_ratio)):
            raise NonFiniteError(f"layer {layer.name!r}{at}: a distance ratio is not finite (observed "
                                 f"[{st.min_ratio}, {st.max_ratio}]); the step has diverged.")
        if not certified:
            cert_check = f"not certified: {lp.K_upper_reason or 'K_eff_upper is infinite'}"
        else:
            cert_check = "both bounds" if cert_band[0] > 0 else "upper bound only"
        band = lp.lr * lp.K_eff
        dev = max(abs(st.max_ratio - 1), abs(1 - st.min_ratio)) if compared else 0.0
        results.append(LayerVerification(
            layer=layer.name, prediction=lp, min_ratio=st.min_ratio, max_ratio=st.max_ratio, n_pairs=st.n_pairs,
            merged_before=st.merged_before, merged_after=st.merged_after,
            holds=(st.violations == 0) if compared and math.isfinite(lp.upper) else None,
            holds_certified=(st.band_violations[0] == 0) if compared and certified else None,
            violations=st.violations, margin=st.margin,
            tightness=dev / band if band > 0 else (0.0 if dev == 0 else math.inf),
            K_secant=st.max_secant / lp.lr if lp.lr else math.nan,
            checked="both bounds" if lp.lower > 0 else "upper bound only", certified_check=cert_check,
            violations_certified=st.band_violations[0] if certified else 0,
            fold_index=st.fold_index if compared else None, max_abs_change=st.max_abs_change,
            holds_additive=(st.additive_violations == 0) if st.max_abs_change is not None else None,
            additive_violations=st.additive_violations))
    with torch.no_grad():
        loss_after = float(loss_fn(after_model, batch))
    skipped = tuple(f"{lp.layer}: {lp.reason}" for lp in prediction.layers if not lp.available)
    return StepVerification(prediction, tuple(results), loss_before, loss_after, step, skipped,
                            model_after=after_model, optimizer_after=after_optimizer)


__all__ = ["LayerVerification", "StepVerification", "verify_step", "stepped_copies", "step_in_place"]
