"""What the permuted run's optimizer state should be: the original state moved by the permutation, where the
action of the permutation on it is known (E1 of T6, ``spec/claims.toml``: S(Pθ, Ps; ξ) = P S(θ, s; ξ)).

The action is read off the entry's shape (:func:`topoverify.neurons.permute.state_readings`): shaped like its
parameter (also with singleton axes), keepdim and one-axis reductions, symmetric matrices over one of the parameter's
axes (``P S Pᵀ`` over the permuted axis: covariances, preconditioners and their inverse roots), flat vectors
over the param group. Where a shape admits several readings, :class:`Readings` lists them and the comparison
passes if the permuted run matches one. Where it admits none (blockwise quantisation scales over the flattened
tensor, eigenbases, packed blocks), :class:`Uncompared` says why: that entry is *not compared* and the verdict
on the example rests on the parameters and the state that could be compared.

A rule that keeps a basis of its own for a parameter (an eigenbasis or an orthonormal projection over one of
its axes: SOAP, Alice, GaLore-style projections) may keep that parameter's other state in that basis, where a
permutation of the neurons acts through the basis, not on the entry's indices. Those entries are compared as
usual; where they do not match the permuted original they are reported as not compared (``basis`` says so),
never as a departure: the parameters decide.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from topoverify.neurons.permute import _orthonormal, _symmetric, state_readings


@dataclass(frozen=True)
class Uncompared:
    """A state entry whose action under the permutation cannot be read off its shape; ``basis``: it is an
    orthonormal matrix over an axis of its parameter (a basis the rule keeps for it)."""

    reason: str
    basis: bool = False


@dataclass(frozen=True)
class Basis:
    """An orthonormal matrix shaped like its parameter (a basis the rule keeps, or an orthogonalised update):
    compared by its readings (``expected``: a value or :class:`Readings`), reported as not compared where it
    does not match, since a basis's columns follow the solver, not the neurons."""

    expected: Any


@dataclass(frozen=True)
class Readings:
    """Several ways a state entry can move (``(reading, expected value)`` pairs, the most specific first)."""

    options: tuple[tuple[str, Any], ...]


def _unknown(value: torch.Tensor, param: torch.Tensor) -> Uncompared:
    shape, pshape = tuple(value.shape), tuple(param.shape)
    if value.dim() == 2 and any(s in pshape for s in shape) and _orthonormal(value):
        return Uncompared(f"an orthonormal {shape[0]}x{shape[1]} matrix over an axis of its parameter {pshape} "
                          f"(a basis of the rule's own: its columns follow eigenvalues or singular values, with "
                          f"signs of the solver's choosing, not the neurons)", basis=True)
    if value.dim() == 2 and shape[0] == shape[1] and shape[0] in pshape and not _symmetric(value):
        return Uncompared(f"a non-symmetric {shape[0]}x{shape[0]} matrix over an axis of its parameter {pshape} "
                          f"(a factor: which of its axes follow the neurons is not known)")
    return Uncompared(f"shape {shape} is not that of its parameter {pshape}, a reduction of it, a symmetric "
                      f"matrix over one of its axes, or a flat vector over the param group")


def has_basis(value) -> bool:
    """Does an expected state entry (from :func:`expected_state`) hold a basis marker anywhere?"""
    if isinstance(value, Basis):
        return True
    if isinstance(value, Uncompared):
        return value.basis
    if isinstance(value, (list, tuple)):
        return any(has_basis(v) for v in value)
    if isinstance(value, dict):
        return any(has_basis(v) for v in value.values())
    return False


def expected_state(value, param: torch.Tensor, member, perm: torch.Tensor, flat_idx: torch.Tensor | None):
    """The original run's state entry ``value`` (of parameter ``param``) as the permuted run should hold it:
    a value, a :class:`Readings` or an :class:`Uncompared`; lists, tuples and dicts map entry by entry."""
    if isinstance(value, (list, tuple)):
        return type(value)(expected_state(v, param, member, perm, flat_idx) for v in value)
    if isinstance(value, dict):
        return {k: expected_state(v, param, member, perm, flat_idx) for k, v in value.items()}
    if not isinstance(value, torch.Tensor):
        if hasattr(value, "__dict__") and not isinstance(value, type):
            return _object(value, param)
        return value  # python scalars (step counts, flags) do not move with neurons
    readings = state_readings(value, param, member, perm, flat_idx)
    if not readings:
        return _unknown(value, param)
    out = readings[0][1] if len(readings) == 1 else Readings(tuple(readings))
    if readings[0][0] in ("shaped like the parameter", "the parameter with singleton axes") and \
            (_orthonormal(value) or _orthonormal(value, unit=True)) and \
            not torch.equal(value, torch.diag_embed(torch.diagonal(value))):
        return Basis(out)
    return out


def _object(value, param: torch.Tensor) -> Uncompared:
    """An optimizer-state entry that is an object (a projector, a preconditioner): not compared; a basis
    marker when it holds an orthonormal matrix over an axis of the parameter."""
    pshape = tuple(param.shape)
    for attr, v in vars(value).items():
        if isinstance(v, torch.Tensor) and v.dim() == 2 and any(s in pshape for s in v.shape) and _orthonormal(v):
            return Uncompared(f"a {type(value).__name__} object holding an orthonormal matrix {attr!r} over an axis "
                              f"of its parameter {pshape} (a basis of the rule's own)", basis=True)
    return Uncompared(f"a {type(value).__name__} object (objects are not compared)")


def state_name(key: str) -> str:
    """``"state 0.weight/exp_avg::scales[2]"`` -> ``"exp_avg::scales"`` (the entry's name, for any parameter)."""
    name = key.split(" ", 1)[-1]
    name = name.split("/", 1)[-1] if "/" in name else name
    return name.split("[")[0]


__all__ = ["Uncompared", "Readings", "Basis", "expected_state", "state_name", "has_basis"]
