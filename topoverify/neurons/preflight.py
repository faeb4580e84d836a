"""The layout preflight: is a declared or detected neuron layout really a symmetry of the loss?

A layout is a symmetry when permuting its neurons by P keeps the loss and permutes the gradient,
L(Pθ) = L(θ) and ∇L(Pθ) = P∇L(θ) (assumption A1 of T1, ``spec/claims.toml``). :func:`preflight` checks this
for one random permutation per layer and, when it fails, names the parameter at fault.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence

import torch
from torch import nn

from topoverify.errors import LayoutError
from topoverify.neurons.layouts import NeuronLayer, ParamAxis, validate_layer
from topoverify.neurons.lossfn import check_loss
from topoverify.neurons.permute import permute, permute_tensor

ROUNDOFF_ULPS = 1000  # gradients below this many ulps of the largest gradient of the model are round-off


def preflight(model: nn.Module, layers: Sequence[NeuronLayer], loss_fn: Callable, batch, *,
              seed: int = 0, rtol: float | None = None) -> None:
    """Check that each layout really is a symmetry: L(Pθ) = L(θ) and ∇L(Pθ) = P∇L(θ) (A1 of T1).

    A failing layout raises :class:`LayoutError` naming the parameter at fault: one that is missing from the
    layout, or a member with the wrong axis (found by trying the one-parameter repairs), else the parameter
    whose gradient deviates most from the permuted one.
    """
    gen = torch.Generator().manual_seed(seed)
    base = _loss_and_grads(model, loss_fn, batch)
    dtype = next(model.parameters()).dtype
    tol = rtol if rtol is not None else (1e-9 if dtype == torch.float64 else 1e-4)
    for layer in layers:
        layer = validate_layer(model, layer)
        if layer.size < 2:
            continue
        perm = torch.randperm(layer.size, generator=gen)
        if torch.equal(perm, torch.arange(layer.size)):
            perm = torch.roll(perm, 1)
        ok, detail = _is_symmetry(model, layer, perm, loss_fn, batch, base, tol)
        if ok:
            continue
        culprit = _diagnose(model, layer, perm, loss_fn, batch, base, tol)
        raise LayoutError(f"layout {layer.name!r} fails the preflight: permuting its neurons {detail}. "
                          f"{culprit} Every parameter slice that moves with a neuron must be in the layout, "
                          f"each with the axis that indexes the neurons.")


def _is_symmetry(model, layer, perm, loss_fn, batch, base, tol):
    """Does permuting ``layer`` by ``perm`` keep the loss and permute every gradient? Each gradient is compared
    relative to its own size, with an absolute floor of ``ROUNDOFF_ULPS`` ulps of the largest gradient entry
    of the whole model: a gradient that is zero in exact arithmetic (the bias of a layer followed by
    BatchNorm) is round-off, whose relative error means nothing."""
    base_loss, base_grads = base
    loss, grads = _loss_and_grads(permute(model, layer, perm), loss_fn, batch)
    members = {m.name: m for m in layer.members}
    if not abs(loss - base_loss) <= 10 * tol * max(1.0, abs(base_loss)):
        return False, f"changes the loss ({base_loss:.6g} -> {loss:.6g})"
    overall = max((float(g.abs().max()) for g in base_grads.values() if g.numel()), default=0.0)
    for name, g in base_grads.items():
        expected = permute_tensor(g, members[name], perm) if name in members else g
        if not expected.numel():
            continue
        diff = float((grads[name] - expected).abs().max())
        size = float(expected.abs().max())
        floor = ROUNDOFF_ULPS * torch.finfo(expected.dtype).eps * overall
        if diff > 100 * tol * size + floor:
            return False, (f"keeps the loss but the gradient of {name!r} does not follow the permutation "
                           f"(relative error {diff / max(size, 1e-300):.2e}; the gradient's largest entry is "
                           f"{size:.3g}, the model's {overall:.3g})")
    return True, ""


def _diagnose(model, layer, perm, loss_fn, batch, base, tol, max_tries: int = 24) -> str:
    """Name the parameter at fault by trying one-parameter repairs of the layout."""
    params = dict(model.named_parameters())
    in_layout = {m.name for m in layer.members}
    tries = 0
    for name, p in params.items():  # a parameter missing from the layout
        if name in in_layout:
            continue
        for axis in range(p.dim()):
            if p.shape[axis] % layer.size or tries >= max_tries:
                continue
            tries += 1
            fixed = NeuronLayer(layer.name, layer.size, layer.members + (
                ParamAxis(name, axis, p.shape[axis] // layer.size),))
            if _is_symmetry(model, fixed, perm, loss_fn, batch, base, tol)[0]:
                return f"Parameter {name!r} (axis {axis}) moves with the neurons but is missing from the layout."
    for k, m in enumerate(layer.members):  # a member with a wrong axis, or one that does not belong
        p = params[m.name]
        options = [ParamAxis(m.name, a, p.shape[a] // layer.size) for a in range(p.dim())
                   if a != m.axis and p.shape[a] % layer.size == 0] + [None]
        for option in options:
            if tries >= max_tries:
                break
            tries += 1
            members = layer.members[:k] + ((option,) if option else ()) + layer.members[k + 1:]
            if members and _is_symmetry(model, NeuronLayer(layer.name, layer.size, members), perm, loss_fn,
                                        batch, base, tol)[0]:
                return (f"Parameter {m.name!r} has the wrong axis {m.axis}; axis {option.axis} works."
                        if option else f"Parameter {m.name!r} does not move with these neurons; remove it.")
    return "No one-parameter change repairs it; check the axes of " + ", ".join(sorted(in_layout)) + "."


@torch.enable_grad()
def _loss_and_grads(model, loss_fn, batch):
    model = copy.deepcopy(model)
    model.zero_grad(set_to_none=True)
    loss = check_loss(loss_fn(model, batch), where="layout preflight")
    params = dict(model.named_parameters())
    names = [n for n, p in params.items() if p.requires_grad]
    grads = torch.autograd.grad(loss, [params[n] for n in names], allow_unused=True)
    return float(loss.detach()), {n: (g if g is not None else torch.zeros_like(params[n])).detach()
                                  for n, g in zip(names, grads)}


__all__ = ["preflight", "ROUNDOFF_ULPS"]
