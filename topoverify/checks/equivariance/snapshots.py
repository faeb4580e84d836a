"""Snapshots of a run (parameters and optimizer state after a step, keyed by parameter name), the permuted
original a permuted run must equal (E1 of T6 in ``spec/claims.toml``: U(Pθ, Ps; ξ) = P U(θ, s; ξ),
S(Pθ, Ps; ξ) = P S(θ, s; ξ)), and the recorded original run.
"""

from __future__ import annotations

import contextlib
import copy
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from topoverify.checks.equivariance.state import expected_state
from topoverify.checks.equivariance.training import RunContext, finite, loss_fn, trajectory
from topoverify.neurons.layouts import NeuronLayer
from topoverify.neurons.permute import flat_permutation, permute_tensor

CONVERGED = 1e3  # a run stops being recorded when its loss reaches (CONVERGED ulps)² of the first (rounding level)


@dataclass(frozen=True)
class Snapshot:
    """Detached parameters and optimizer state of a run, keyed by parameter name.

    ``state`` maps ``"<param>/<key>"`` (or ``"<key>"`` for state owned by no parameter) to
    ``(param name or None, value)``; ``groups`` lists each param group's parameter names in order; ``buffers``:
    the model's floating buffers (BatchNorm running statistics: they move with the channels, T9)."""

    params: dict[str, torch.Tensor]
    state: dict[str, tuple[str | None, Any]]
    groups: list[list[str]]
    buffers: dict[str, torch.Tensor] = field(default_factory=dict)


def float_buffers(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's floating buffers (running statistics), detached, keyed by name."""
    return {n: b.detach() for n, b in model.named_buffers() if b.is_floating_point()}


@contextlib.contextmanager
def frozen_buffers(model: nn.Module):
    """Restore every buffer after the block: a forward pass outside the training step (a loss read for the
    convergence test) must not update BatchNorm running statistics in one run and not in the other."""
    saved = {n: b.detach().clone() for n, b in model.named_buffers()}
    try:
        yield
    finally:
        with torch.no_grad():
            for n, b in model.named_buffers():
                b.copy_(saved[n])


def named_state(model: nn.Module, opt) -> dict[str, tuple[str | None, Any]]:
    """Optimizer state keyed by parameter name (``"<name>/<key>"``), or ``"<key>"`` for global entries."""
    name_of = {id(p): n for n, p in model.named_parameters()}
    out = {}
    for key, value in opt.state.items():
        if isinstance(key, torch.Tensor):
            pname = name_of.get(id(key), "?")
            if isinstance(value, dict):
                for k, v in value.items():
                    out[f"{pname}/{k}"] = (pname, v)
            else:
                out[pname] = (pname, value)
        else:
            out[str(key)] = (None, value)
    return out


def _detached(value):
    if isinstance(value, torch.Tensor):
        return value.detach().clone()
    if isinstance(value, dict):
        return {k: _detached(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_detached(v) for v in value)
    try:
        return copy.deepcopy(value)
    except Exception:  # noqa: BLE001 - uncopyable objects are compared by identity only
        return value


def snapshot(model: nn.Module, opt) -> Snapshot:
    """A copy of the run's current parameters, optimizer state and param groups."""
    name_of = {id(p): n for n, p in model.named_parameters()}
    return Snapshot(
        params={n: p.detach().clone() for n, p in model.named_parameters()},
        state={k: (pname, _detached(v)) for k, (pname, v) in named_state(model, opt).items()},
        groups=[[name_of.get(id(p), "?") for p in g["params"]] for g in opt.param_groups],
        buffers={n: b.clone() for n, b in float_buffers(model).items()})


def live(model: nn.Module, opt) -> Snapshot:
    """A non-copying view of a run's current parameters and state."""
    return Snapshot({n: p.detach() for n, p in model.named_parameters()}, named_state(model, opt), [],
                    float_buffers(model))


def permute_snapshot(snap: Snapshot, layer: NeuronLayer, perm: torch.Tensor) -> Snapshot:
    """``snap`` with ``layer``'s neurons permuted: member parameters, the layer's buffers, and the state where
    the permutation's action on it is known (:func:`~topoverify.checks.equivariance.state.expected_state`:
    param-shaped tensors, reductions, symmetric matrices over an axis, flat per-group vectors); other state
    entries become :class:`~topoverify.checks.equivariance.state.Uncompared` markers."""
    members = {m.name: m for m in layer.members}
    params = {n: (permute_tensor(t, members[n], perm) if n in members else t) for n, t in snap.params.items()}
    flat = {}
    for names in snap.groups:
        idx = flat_permutation([(n, snap.params[n]) for n in names if n in snap.params], layer, perm)
        for n in names:
            flat[n] = idx
    state = {}
    for key, (pname, value) in snap.state.items():
        if pname is None or pname not in snap.params:
            state[key] = (pname, value)
        else:
            state[key] = (pname, expected_state(value, snap.params[pname], members.get(pname), perm,
                                                flat.get(pname)))
    moving = {m.name: m for m in getattr(layer, "buffers", ())}
    buffers = {n: (permute_tensor(t, moving[n], perm) if n in moving else t) for n, t in snap.buffers.items()}
    return Snapshot(params, state, snap.groups, buffers)


def floating_tensors(snap: Snapshot) -> dict[str, torch.Tensor]:
    """The floating tensors of a snapshot (parameters and tensor-valued state), keyed as in mismatches."""
    out = {f"param {n}": t for n, t in snap.params.items()}
    for key, (_, v) in snap.state.items():
        if isinstance(v, torch.Tensor) and v.is_floating_point():
            out[f"state {key}"] = v
    return out


def original_run(ctx: RunContext, model: nn.Module, *, upto: int | None = None, grad_noise=None) -> list[Snapshot]:
    """Step ``model`` (a copy of the example's initial model) and snapshot it after every step, until the
    parameters become non-finite or the loss reaches the rounding level (later state is rounding noise)."""
    snaps: list[Snapshot] = []
    with torch.no_grad():
        with frozen_buffers(model):
            first = float(loss_fn(model, *ctx.batches[0])) if ctx.batches else 0.0
    tiny = first * (CONVERGED * torch.finfo(ctx.setup.dtype).eps) ** 2

    def record(t, opt):
        if not finite(model):
            return False
        with torch.no_grad():
            with frozen_buffers(model):
                loss = float(loss_fn(model, *ctx.batches[t - 1]))
            if loss < tiny:
                return False  # fitted to rounding level: later state is rounding noise, stop comparing here
        snaps.append(snapshot(model, opt))
        return True

    trajectory(ctx, model, record, upto=upto, grad_noise=grad_noise)
    return snaps


__all__ = ["Snapshot", "float_buffers", "frozen_buffers", "named_state", "snapshot", "live", "permute_snapshot",
           "floating_tensors", "original_run",
           "CONVERGED"]
