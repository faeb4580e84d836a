"""Read-only hooks that keep, from the user's own forward and backward passes, what the update field of one
neuron layer is built from (claim T1): the producer's input h and the signal δ = ∂L/∂y at the consumer's
output y (:func:`topoverify.measure.field.samples_from_captures` turns the pairs into samples (H, D)).

A forward counts only when gradients are enabled and the consumer's output requires grad; its δ arrives
through a tensor hook on y during the user's ``backward``. A forward without a backward (validation under
grad) never delivers δ and is dropped at the next step; several backward passes before one step (gradient
accumulation) deliver several pairs, whose rows stack (Φ is a sum over samples); a backward after
``zero_grad()`` starts the stack afresh, so backward passes without a step hold no memory. Every hook returns None, so
nothing the model computes changes. Hooks fire only for the monitored modules themselves: a copy of the
model (``copy.deepcopy`` keeps hook dictionaries, e.g. inside :func:`topoverify.predict_step`) is ignored.
"""

from __future__ import annotations

import torch
from torch import nn

from topoverify.neurons.layouts import NeuronLayer


class LayerCapture:
    """The hooks of one detected layer (``layer.producer`` → activation → ``layer.consumer``)."""

    def __init__(self, model: nn.Module, layer: NeuronLayer):
        mods = dict(model.named_modules())
        self.layer = layer
        self.producer, self.consumer = mods[layer.producer], mods[layer.consumer]
        self.pairs: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.forwards = 0      # forwards with grad since the last step (each may or may not get a backward)
        self._h: torch.Tensor | None = None
        self._closed = False
        # plain closures, not bound methods: copy.deepcopy(model) copies a bound method's object (this capture)
        # but shares a function, so a copy's hooks reach this capture and are filtered by module identity
        self._handles = [self.producer.register_forward_hook(lambda *a: self._on_producer(*a)),
                         self.consumer.register_forward_hook(lambda *a: self._on_consumer(*a))]

    def _on_producer(self, module, inputs, output):
        if module is not self.producer or not torch.is_grad_enabled():
            return None
        if not isinstance(output, torch.Tensor) or not output.requires_grad:
            return None
        self._h = inputs[0].detach()
        return None

    def _on_consumer(self, module, _inputs, output):
        if module is not self.consumer or self._h is None or not torch.is_grad_enabled():
            return None
        h, self._h = self._h, None
        if not isinstance(output, torch.Tensor) or not output.requires_grad:
            return None
        self.forwards += 1

        def keep_delta(grad, _h=h):
            if not self._closed:
                # δ reaches y before the producer's gradient accumulates (it is upstream of y): an empty or zero
                # .grad there means zero_grad() ran since the earlier passes, whose samples are then stale
                g = self.producer.weight.grad
                if self.pairs and (g is None or not bool(g.any())):
                    self.pairs = []
                self.pairs.append((_h, grad.detach()))
            return None

        output.register_hook(keep_delta)
        return None

    def take(self) -> tuple[list[tuple[torch.Tensor, torch.Tensor]], int]:
        """The (h, δ) pairs delivered since the last call and the number of forwards with grad; then reset."""
        pairs, forwards = self.pairs, self.forwards
        self.pairs, self.forwards, self._h = [], 0, None
        return pairs, forwards

    def close(self) -> None:
        """Remove the module hooks; pending tensor hooks (graphs still alive) then record nothing."""
        self._closed = True
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self.pairs, self._h = [], None


__all__ = ["LayerCapture"]
