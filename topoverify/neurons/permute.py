"""Permutations of neurons acting on parameters, optimizer state and flat vectors (the P of T1 and T6).

Convention: for a permutation ``perm`` (a sequence of N indices), the permuted model's neuron ``k`` is the
original neuron ``perm[k]``: every member tensor becomes ``t[..., perm-blocks, ...]`` along its axis. The
inverse is ``inverse_permutation(perm)``. Nothing here mutates the caller's model or optimizer: the public
functions return permuted deep copies.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Sequence

import torch
from torch import nn

from topoverify.errors import LayoutError
from topoverify.neurons.copying import clone
from topoverify.neurons.layouts import NeuronLayer, ParamAxis, neuron_index, validate_layer


def as_permutation(perm, n: int) -> torch.Tensor:
    """Validate ``perm`` as a permutation of ``range(n)`` and return it as a LongTensor."""
    p = torch.as_tensor(list(perm) if not isinstance(perm, torch.Tensor) else perm, dtype=torch.long)
    if p.dim() != 1 or p.numel() != n or not torch.equal(torch.sort(p).values, torch.arange(n)):
        raise LayoutError(f"expected a permutation of range({n}), got {p.tolist()[:20]}"
                          f"{'...' if p.numel() > 20 else ''}.")
    return p


def inverse_permutation(perm) -> torch.Tensor:
    p = torch.as_tensor(perm, dtype=torch.long)
    inv = torch.empty_like(p)
    inv[p] = torch.arange(p.numel())
    return inv


def transposition(n: int, i: int, j: int) -> torch.Tensor:
    """The transposition τ_ij of range(n) (T1, T6)."""
    p = torch.arange(n)
    p[i], p[j] = j, i
    return p


def block_index(perm: torch.Tensor, block: int) -> torch.Tensor:
    """Index along an axis of ``len(perm)·block`` entries that moves block ``perm[k]`` to position ``k``."""
    return (perm[:, None] * block + torch.arange(block)[None, :]).reshape(-1)


def axis_index(member: ParamAxis, perm: torch.Tensor, extent: int) -> torch.Tensor:
    """Index along an axis of ``extent`` entries that moves neuron ``perm[k]``'s indices to neuron ``k``'s
    (every segment of ``member``; indices outside the segments stay)."""
    if member.offsets is None:
        return block_index(perm, member.block)
    ni = neuron_index(member, perm.numel())
    idx = torch.arange(extent)
    idx[ni.reshape(-1)] = ni[perm].reshape(-1)
    return idx


def permute_tensor(t: torch.Tensor, member: ParamAxis, perm: torch.Tensor) -> torch.Tensor:
    """``t`` with its neuron blocks along ``member.axis`` reordered by ``perm`` (a new tensor)."""
    return t.index_select(member.axis, axis_index(member, perm, t.shape[member.axis]).to(t.device))


def _permute_axes(t: torch.Tensor, axes: Sequence[int], member: ParamAxis, perm: torch.Tensor) -> torch.Tensor:
    for axis in axes:
        t = t.index_select(axis, axis_index(member, perm, t.shape[axis]).to(t.device))
    return t


def _symmetric(t: torch.Tensor) -> bool:
    """Is a square matrix symmetric up to the round-off of an iterative matrix function (a covariance, an
    inverse root of one): asymmetry within sqrt(eps) of its largest entry?"""
    if not t.is_floating_point():
        return bool(torch.equal(t, t.mT))
    scale = float(t.detach().abs().nan_to_num(nan=0.0, posinf=0.0, neginf=0.0).max()) if t.numel() else 0.0
    gap = float((t - t.mT).detach().abs().nan_to_num(nan=math.inf).max()) if t.numel() else 0.0
    return gap <= math.sqrt(torch.finfo(t.dtype).eps) * scale


def _diagonal(t: torch.Tensor) -> bool:
    return bool(torch.equal(t, torch.diag_embed(torch.diagonal(t))))


def _orthonormal(t: torch.Tensor, unit: bool = False) -> bool:
    """Does a matrix have orthonormal columns or rows, up to a common scale (an eigenbasis, a projection
    from an SVD, a reflection; ``c·I`` too)? With ``unit``, the scale must be 1 and a single unit vector
    (``n x 1``) counts too."""
    if t.dim() != 2 or not t.is_floating_point() or min(t.shape) < (1 if unit else 2):
        return False
    tol = max(1e-3, math.sqrt(torch.finfo(t.dtype).eps))  # a basis may be computed in a lower precision
    t = t.detach().to(torch.float64)
    for g in (t.mT @ t, t @ t.mT) if t.shape[0] != t.shape[1] else (t.mT @ t,):
        if g.shape[0] == max(t.shape) and min(t.shape) < g.shape[0]:
            continue  # the Gram matrix of the longer side has low rank
        c = float(torch.diagonal(g).mean())
        if c > 0 and (not unit or abs(c - 1) <= tol) and \
                float((g - c * torch.eye(g.shape[0], dtype=g.dtype)).abs().max()) <= tol * c:
            return True
    return False


def state_readings(value: torch.Tensor, param: torch.Tensor, member: ParamAxis | None, perm: torch.Tensor,
                   flat_idx: torch.Tensor | None = None) -> list[tuple[str, torch.Tensor]]:
    """Every way an optimizer-state tensor of ``param`` can move when ``member``'s neurons are permuted by
    ``perm``, as ``(reading, permuted value)`` pairs; an empty list when its shape says nothing about it.

    Readings: shaped like the parameter (possibly with singleton axes inserted: ``(n,)`` stored as
    ``(n, 1)``); a keepdim reduction (every axis that of the parameter or 1); the parameter with one axis
    reduced away; a symmetric matrix over an axis of the parameter (``P S Pᵀ`` over the permuted axis, unchanged
    over another), unless it is orthogonal up to scale (``c·I`` or a reflection: then it may as well be an
    eigenbasis, whose columns the permutation does not fix); a flat vector over the whole param group
    (``flat_idx``). One-element and empty tensors
    do not move. A shape can admit several readings (a square weight's row and column statistics, or its
    left and right preconditioners): every distinct one is returned, the most specific first. ``member`` is
    ``None`` for a parameter outside the layer: its state does not move, except a flat vector over the group.
    """
    if value.numel() <= 1:
        return [("one element or empty", value)]
    out: list[tuple[str, torch.Tensor]] = []
    if member is None:
        if flat_idx is not None and value.dim() == 1 and value.numel() == flat_idx.numel():
            return [("flat over the param group", value.index_select(0, flat_idx.to(value.device)))]
        return [("outside the layer", value)]
    pshape, vshape, axis = tuple(param.shape), tuple(value.shape), member.axis
    n = pshape[axis]
    if vshape == pshape:
        out.append(("shaped like the parameter", permute_tensor(value, member, perm)))
    elif value.numel() == param.numel() and [s for s in vshape if s != 1] == [s for s in pshape if s != 1]:
        k = sum(1 for s in pshape[:axis] if s != 1)  # the permuted axis among the non-singleton axes
        vaxis = [i for i, s in enumerate(vshape) if s != 1][k]
        out.append(("the parameter with singleton axes", permute_tensor(value, dataclasses.replace(member, axis=vaxis), perm)))
    if value.dim() == param.dim() and vshape != pshape and all(v in (p, 1) for v, p in zip(vshape, pshape)):
        out.append(("keepdim reduction", permute_tensor(value, member, perm) if vshape[axis] == n else value))
    if value.dim() == param.dim() - 1:
        for dropped in range(param.dim()):
            if vshape == pshape[:dropped] + pshape[dropped + 1:]:
                if dropped == axis:
                    out.append((f"reduction over axis {dropped}", value))
                else:
                    vaxis = axis - (1 if dropped < axis else 0)
                    out.append((f"reduction over axis {dropped}",
                                permute_tensor(value, dataclasses.replace(member, axis=vaxis), perm)))
    square = value.dim() == 2 and vshape[0] == vshape[1] and vshape[0] in pshape
    if square and _orthonormal(value) and _diagonal(value):
        out.append(("a multiple of the identity", value))
    elif square and _symmetric(value) and not _orthonormal(value):
        for a, size in enumerate(pshape):
            if size == vshape[0]:
                out.append((f"symmetric matrix over axis {a}",
                            _permute_axes(value, (0, 1), member, perm) if a == axis else value))
    if flat_idx is not None and value.dim() == 1 and value.numel() == flat_idx.numel():
        out.append(("flat over the param group", value.index_select(0, flat_idx.to(value.device))))
    distinct: list[tuple[str, torch.Tensor]] = []
    for name, v in out:
        if not any(u.shape == v.shape and torch.equal(u, v) for _, u in distinct):
            distinct.append((name, v))
    return distinct


def _permute_like_param(value: torch.Tensor, param: torch.Tensor, member: ParamAxis, perm: torch.Tensor,
                        flat_idx: torch.Tensor | None = None):
    """Permute an optimizer-state tensor by its first reading (:func:`state_readings`)."""
    readings = state_readings(value, param, member, perm, flat_idx)
    if readings:
        return readings[0][1]
    raise LayoutError(f"optimizer state of parameter {member.name!r} has a tensor of shape "
                      f"{tuple(value.shape)} that does not match the parameter's shape {tuple(param.shape)}; "
                      f"topoverify cannot tell how it moves with the neurons.")


def flat_permutation(named_params: Sequence[tuple[str, torch.Tensor]], layer: NeuronLayer,
                     perm: torch.Tensor) -> torch.Tensor:
    """Index for a vector that concatenates ``p.view(-1)`` over ``named_params`` (LBFGS-style flat state)."""
    pieces, offset = [], 0
    members = {m.name: m for m in layer.members}
    for name, p in named_params:
        idx = torch.arange(p.numel()).view(p.shape)
        if name in members:
            idx = permute_tensor(idx, members[name], perm)
        pieces.append(idx.reshape(-1) + offset)
        offset += p.numel()
    return torch.cat(pieces) if pieces else torch.zeros(0, dtype=torch.long)


def permute_state_value(value, param, member, perm, flat_idx):
    """Permute one optimizer-state entry of ``param``: by the first of its :func:`state_readings` (shaped like
    the parameter, reductions of it, symmetric matrices over its axes, flat vectors over the whole group via
    ``flat_idx``), and lists, tuples and dicts of them. ``member`` is the parameter's :class:`ParamAxis` in the
    layer, or ``None`` if the parameter is not in the layer. Raises :class:`LayoutError` for a tensor whose
    shape admits no reading."""
    if isinstance(value, (list, tuple)):
        return type(value)(permute_state_value(v, param, member, perm, flat_idx) for v in value)
    if isinstance(value, dict):
        return {k: permute_state_value(v, param, member, perm, flat_idx) for k, v in value.items()}
    if not isinstance(value, torch.Tensor):
        return value  # python scalars (step counts, flags) do not move with neurons
    if member is None:
        return state_readings(value, param, None, perm, flat_idx)[0][1]
    return _permute_like_param(value, param, member, perm, flat_idx)


def _apply_in_place(model: nn.Module, optimizer: torch.optim.Optimizer | None, layer: NeuronLayer,
                    perm: torch.Tensor) -> None:
    named = list(model.named_parameters())
    params = dict(named)
    members = {m.name: m for m in layer.members}
    with torch.no_grad():
        for name, m in members.items():
            params[name].copy_(permute_tensor(params[name], m, perm))
            if params[name].grad is not None:
                params[name].grad.copy_(permute_tensor(params[name].grad, m, perm))
        buffers = dict(model.named_buffers())
        for b in layer.buffers:
            buffers[b.name].copy_(permute_tensor(buffers[b.name], b, perm))
    if optimizer is None:
        return
    name_of = {id(p): n for n, p in named}
    for group in optimizer.param_groups:
        group_named = [(name_of.get(id(p), "?"), p) for p in group["params"]]
        flat_idx = flat_permutation(group_named, layer, perm) if len(group_named) else None
        for name, p in group_named:
            if p not in optimizer.state:
                continue
            state = optimizer.state[p]
            member = members.get(name)
            for key, value in list(state.items()):
                state[key] = permute_state_value(value, p, member, perm, flat_idx)


def permute(model: nn.Module, layer: NeuronLayer, perm, optimizer: torch.optim.Optimizer | None = None):
    """Return permuted deep copies: ``model`` (and ``optimizer`` bound to the copy, its state permuted); the
    layer's ``buffers`` (BatchNorm running statistics) are permuted with it.

    Per-parameter state tensors shaped like their parameter (momentum, Adam's m and v, …) follow their
    parameter; keepdim reductions follow along the kept axis; 1-D vectors over all parameters of a group
    (LBFGS's flat history) follow through the flat index map. Returns ``model_copy`` or
    ``(model_copy, optimizer_copy)`` when an optimizer is given.
    """
    layer = validate_layer(model, layer)
    p = as_permutation(perm, layer.size)
    if optimizer is None:
        new_model = copy.deepcopy(model)
        _apply_in_place(new_model, None, layer, p)
        return new_model
    new_model, new_opt = clone(model, optimizer)
    _apply_in_place(new_model, new_opt, layer, p)
    return new_model, new_opt


__all__ = ["permute_state_value", "state_readings", "as_permutation", "inverse_permutation", "transposition",
           "permute", "permute_tensor", "flat_permutation", "block_index", "axis_index"]
