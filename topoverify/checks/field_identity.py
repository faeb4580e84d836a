"""Claim T1 against autograd: every neuron's loss gradient is one field evaluated at that neuron (the checker
of T1 in ``spec/claims.toml``).

For each layer, the field g(z) = ∇Φ(z) of :func:`topoverify.measure.fields.unit_field` (built from the
block's inputs and the back-propagated signal δ, frozen at the current state; every kind with a field, T9:
MLP/conv blocks, gated MLPs, attention heads and value/output dims, BatchNorm channels in train mode) is
evaluated at every neuron and compared with autograd's per-neuron gradient ∂L/∂θ_i:

    residual = max_i ‖g(θ_i) − ∂L/∂θ_i‖ / max(max_i ‖|g|(θ_i)‖, max_i ‖∂L/∂θ_i‖),

which T1(b) says is 0 up to round-off (an exact identity, not an approximation). The scale |g|(z) is the
field with every per-sample term replaced by its absolute value (:func:`field_magnitude`): round-off in a sum
grows with the terms summed, not with the sum, so near a stationary point (where the terms cancel and ∂L/∂θ_i
is tiny) round-off is not mistaken for a violation, while a missing term (a non-additive entry) still is.
For fields other than the closed-form Linear/Conv one the scale is max(‖g(θ_i)‖, ‖∂L/∂θ_i‖) instead.
The tolerance is relative and follows the dtype (like e3nn's ``assert_equivariant``): 1e-9 for float64,
1e-4 for float32 (float32's also for a float64 block that computes in float32 inside, e.g. Hugging Face
LLaMA-family eager attention's softmax); half-precision models are refused (:func:`require_full_precision`). Layers
with a kink (ReLU) are fine: the identity holds wherever the pre-activations avoid the kink, and at the kink
both sides use torch's one-sided derivative. A model whose neurons do not enter the next layer additively
(claim T1's assumption A2) either fails layout detection (a clear :class:`LayoutError`) or fails here.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from topoverify.checks.step_prediction import require_full_precision
from topoverify.checks.verdicts import LayerRows
from topoverify.errors import UnsupportedError
from topoverify.formatting import ResultMixin, fmt
from topoverify.measure.chunks import row_chunks
from topoverify.measure.field import BlockSamples
from topoverify.measure.attention_field import tolerance_for
from topoverify.measure.fields import unit_field
from topoverify.neurons.copying import clone
from topoverify.neurons.layouts import NeuronLayer, neuron_cloud, resolve_layers
from topoverify.neurons.lossfn import check_loss

RELATIVE_TOLERANCE = {torch.float64: 1e-9, torch.float32: 1e-4}


@dataclass(frozen=True)
class LayerFieldIdentity(ResultMixin):
    """T1 on one layer: the largest relative residual between the field and autograd over its neurons.

    ``holds`` is None (no check) when the layer's field could not be built (``reason`` says why)."""

    layer: str
    n_neurons: int
    dim: int
    activation: str | None
    residual: float
    tolerance: float
    holds: bool | None
    worst_neuron: int | None = None
    gradient_scale: float = 0.0  # max_i ‖∂L/∂θ_i‖
    term_scale: float = 0.0  # max_i ‖|g|(θ_i)‖, the residual's denominator (with gradient_scale)
    reason: str = ""

    def __str__(self) -> str:
        if self.holds is None:
            return f"layer {self.layer}: not checked ({self.reason})"
        return (f"layer {self.layer} ({self.n_neurons} neurons, d={self.dim}, {self.activation}): max relative "
                f"residual |g(theta_i) - dL/dtheta_i| = {fmt(self.residual, 3)} (tolerance {fmt(self.tolerance, 3)}"
                f", worst neuron {self.worst_neuron}) -> {'HOLDS' if self.holds else 'VIOLATED'}")


@dataclass(frozen=True)
class FieldIdentityCheck(LayerRows, ResultMixin):
    """T1 per layer. ``holds``: True when every layer was checked and held, False when any failed, None
    when none failed but some layer could not be checked."""

    layers: tuple[LayerFieldIdentity, ...]
    loss: float

    def __str__(self) -> str:
        verdict = {True: "holds", False: "VIOLATED", None: "not fully checked"}[self.holds]
        return "\n".join([f"T1 field identity (loss {fmt(self.loss)}): {verdict}",
                          *(f"  {row}" for row in self.layers)])


def field_magnitude(samples: BlockSamples, Z: torch.Tensor) -> torch.Tensor:
    """|g|(z) for each row z of ``Z`` (P×d): the field g = ∇Φ of T1 with each per-sample term replaced by its
    absolute value, [Σ_r |D_r·a| |σ'(H_r·w̃)| |H_r|, Σ_r |σ(H_r·w̃)| |D_r|] ≥ |g(z)| entrywise — the size of
    the terms whose sum is g(z), on which the round-off of that sum scales."""
    H, D = samples.H.abs(), samples.D.abs()
    outs = []
    for s, e in row_chunks(Z.shape[0], samples.H.shape[0]):
        W, A = Z[s:e, : samples.d_w], Z[s:e, samples.d_w:]
        s0, s1, _ = samples.activation.derivatives(samples.H @ W.T)
        c = (samples.D @ A.T).abs()
        outs.append(torch.cat([(c * s1.abs()).T @ H, s0.abs().T @ D], dim=1))
    return torch.cat(outs) if outs else Z.new_zeros(0, samples.dim)


@torch.enable_grad()
def autograd_neuron_gradients(model: nn.Module, layer: NeuronLayer, loss_fn: Callable, batch) -> torch.Tensor:
    """∂L/∂θ_i for every neuron of ``layer`` (N×d, the layout of :func:`neuron_cloud`), by autograd on
    ``model`` itself (pass a copy: ``loss_fn`` runs on it); no ``.grad`` is touched."""
    named = dict(model.named_parameters())
    names = [m.name for m in layer.members]
    loss = loss_fn(model, batch)
    check_loss(loss, where=f"layer {layer.name!r}")
    grads = torch.autograd.grad(loss, [named[n] for n in names], allow_unused=True)
    return neuron_cloud(model, layer, {n: torch.zeros_like(named[n]) if g is None else g
                                       for n, g in zip(names, grads)})


def check_field_identity(model: nn.Module, loss_fn: Callable, batch, *,
                         layers: Sequence[NeuronLayer] | NeuronLayer | None = None) -> FieldIdentityCheck:
    """Hold T1(b), ∂L/∂θ_i = g(θ_i) with one field g per layer, against autograd on private copies.

    ``loss_fn(model, batch)`` returns a scalar tensor; ``layers`` defaults to automatic detection. Raises
    :class:`UnsupportedError` for half-precision models and when no layer's field can be built (the reasons
    are listed); a layer that
    cannot be built among others gets ``holds=None`` and its reason. ``loss_fn`` runs only on private
    copies; the model is not modified.
    """
    require_full_precision(model)
    layers = resolve_layers(model, layers)
    rows, loss = [], math.nan
    for layer in layers:
        private = clone(model)  # one fresh copy per layer: loss_fn's side effects never reach the next layer
        cloud = neuron_cloud(private, layer)
        base = dict(layer=layer.name, n_neurons=layer.size, dim=cloud.shape[1], activation=layer.activation)
        try:
            samples, loss = unit_field(private, layer, loss_fn, batch, check=False)
        except UnsupportedError as exc:
            rows.append(LayerFieldIdentity(**base, residual=math.nan, tolerance=math.nan, holds=None,
                                           reason=str(exc)))
            continue
        field = samples.gradient(cloud).to(torch.float64)
        auto = autograd_neuron_gradients(private, layer, loss_fn, batch).to(torch.float64)
        errors = (field - auto).norm(dim=1)
        magnitude = field_magnitude(samples, cloud) if isinstance(samples, BlockSamples) else field
        terms = float(magnitude.to(torch.float64).norm(dim=1).max()) if errors.numel() else 0.0
        grads = float(auto.norm(dim=1).max()) if errors.numel() else 0.0
        scale = max(terms, grads)
        residual = float(errors.max()) / scale if scale > 0 else 0.0
        tol = max(RELATIVE_TOLERANCE.get(cloud.dtype, RELATIVE_TOLERANCE[torch.float32]),
                  tolerance_for(samples, cloud.dtype))  # a block computing in a coarser precision inside
        rows.append(LayerFieldIdentity(**base, residual=residual, tolerance=tol, holds=residual <= tol,
                                       worst_neuron=int(errors.argmax()) if errors.numel() else None,
                                       gradient_scale=grads, term_scale=terms))
    if all(row.holds is None for row in rows):
        reasons = "; ".join(f"{row.layer}: {row.reason}" for row in rows)
        raise UnsupportedError(f"nothing to check: no layer's update field could be built ({reasons}).")
    return FieldIdentityCheck(tuple(rows), loss)


__all__ = ["FieldIdentityCheck", "LayerFieldIdentity", "RELATIVE_TOLERANCE", "autograd_neuron_gradients",
           "check_field_identity", "field_magnitude"]
