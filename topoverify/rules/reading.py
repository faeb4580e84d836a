"""Reading an optimizer for a rule (claim T7 in ``spec/claims.toml``): the param group of each member of a
neuron layer, the hyper-parameters its members must share for the step to be one field, their validation, and
the pre-step state clouds. Every rule's ``read`` uses these, so bad input gets the same named errors
everywhere: "not one field" (:class:`UnsupportedError`), a bad hyper-parameter (:class:`TopoverifyError`),
NaN in the state (:class:`NonFiniteError` naming the tensor).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from topoverify.errors import NonFiniteError, TopoverifyError, UnsupportedError
from topoverify.neurons.layouts import NeuronLayer, neuron_cloud

#: states that torch's recursion keeps ≥ 0 (sums or maxima of squares and absolute values)
NONNEGATIVE_STATES = frozenset({"exp_avg_sq", "max_exp_avg_sq", "square_avg", "sum", "exp_inf"})


def member_groups(optimizer: torch.optim.Optimizer, model: nn.Module, layer: NeuronLayer) -> list[dict]:
    """The param group of each member of ``layer`` (UnsupportedError if a member is not optimized)."""
    params = dict(model.named_parameters())
    group_of = {id(p): g for g in optimizer.param_groups for p in g["params"]}
    groups = []
    for m in layer.members:
        g = group_of.get(id(params[m.name]))
        if g is None:
            raise UnsupportedError(f"parameter {m.name!r} of layer {layer.name!r} is not in the optimizer; "
                                   f"a frozen part of a neuron makes the step map non-uniform.")
        groups.append(g)
    return groups


def shared_hyper(layer: NeuronLayer, groups: Sequence[dict], keys: Sequence[str]) -> dict[str, object]:
    """The values of ``keys`` that every member's group must share for the step to be one field."""
    ref = {k: _plain(groups[0][k]) for k in keys}
    for m, g in zip(layer.members, groups):
        for k in keys:
            if not _same(_plain(g[k]), ref[k]):
                raise UnsupportedError(f"not one field: layer {layer.name!r}: parameter {m.name!r} has {k}={g[k]} "
                                       f"but {layer.members[0].name!r} has {ref[k]}; one neuron's parameters "
                                       f"must share {k} for the step to be one field. Put the layer's weight and "
                                       f"bias in param groups with the same {k}.")
    return ref


def check_hyper(layer: NeuronLayer, name: str, value, kind: str, *, key: str | None = None) -> float:
    """Validate one hyper-parameter: ``kind`` "lr" (finite, > 0), "beta" (in [0, 1)), "eps" (finite, > 0),
    "nonneg" (finite, ≥ 0); raises TopoverifyError naming it and the fix (``key``: the param-group key that
    holds it, when it differs from ``name``, e.g. "betas" for "betas[0]")."""
    v = _plain(value)
    ok = {"lr": lambda x: math.isfinite(x) and x > 0, "beta": lambda x: 0 <= x < 1,
          "eps": lambda x: math.isfinite(x) and x > 0, "nonneg": lambda x: math.isfinite(x) and x >= 0}[kind]
    want = {"lr": "a finite number > 0", "beta": "in [0, 1)", "eps": "a finite number > 0",
            "nonneg": "a finite number >= 0"}[kind]
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not ok(float(v)):
        raise TopoverifyError(f"layer {layer.name!r}: the optimizer's {name} is {value!r}; a prediction needs {name} "
                              f"{want}. Set the param group's {key or name!r} accordingly.")
    return float(v)


def float32_coefficients(groups: Sequence[dict]) -> float:
    """1.0 when torch computes the step's coefficients in float32 (a tensor lr/betas/eps, or
    ``capturable=True``), else 0.0: the certified constants then take a wider rounding margin."""
    def tensorish(v):
        return isinstance(v, torch.Tensor) or (isinstance(v, tuple) and any(isinstance(x, torch.Tensor) for x in v))
    return float(any(g.get("capturable", False) or any(tensorish(g.get(k)) for k in ("lr", "betas", "eps"))
                     for g in groups))


def read_state(optimizer: torch.optim.Optimizer, model: nn.Module, layer: NeuronLayer,
               names: Sequence[str], *, require_step: bool = True) -> tuple[dict[str, torch.Tensor], int]:
    """The pre-step state clouds (name → N×d, float64) of ``layer`` and the number of steps taken so far.

    Before the first step (empty state) every named state is the zero cloud and the count is 0: torch
    initialises them so (a family whose initial state is not zero passes its own). ``require_step=False``: an
    optimizer that keeps no "step" entry (lion-pytorch) is read by its named states, with count 0. Partially present state, step counts that differ between
    members, or NaN/Inf in a state tensor raise (UnsupportedError / NonFiniteError naming the tensor)."""
    params = dict(model.named_parameters())
    states = [optimizer.state.get(params[m.name], {}) for m in layer.members]
    if not any(states):
        zeros = torch.zeros_like(neuron_cloud(model, layer), dtype=torch.float64)
        return {name: zeros for name in names}, 0
    steps = []
    for m, st in zip(layer.members, states):
        key = "step" if require_step else names[0]
        if key not in st:
            raise UnsupportedError(f"layer {layer.name!r}: parameter {m.name!r} has no optimizer state yet while "
                                   f"another member of the layer has; take a step on all of them (or none).")
        raw = _plain(st.get("step", 0))
        if not math.isfinite(float(raw)):
            raise NonFiniteError(f"layer {layer.name!r}: the optimizer state 'step' of parameter {m.name!r} is "
                                 f"{raw}; the state was corrupted.")
        steps.append(int(raw))
    if len(set(steps)) != 1:
        raise UnsupportedError(f"layer {layer.name!r}: the members' step counts differ ({steps}); the bias "
                               f"corrections then differ within one neuron, so the step is not one field.")
    clouds = {}
    for name in names:
        tensors = {}
        for m, st in zip(layer.members, states):
            t = st.get(name)
            if t is None:
                raise UnsupportedError(f"layer {layer.name!r}: parameter {m.name!r} has no state {name!r}.")
            if not bool(torch.isfinite(t).all()):
                raise NonFiniteError(f"layer {layer.name!r}: the optimizer state {name!r} of parameter {m.name!r} "
                                     f"holds NaN/Inf; the run has diverged (or the state was corrupted) before "
                                     f"this step.")
            if name in NONNEGATIVE_STATES and bool((t < 0).any()):
                raise TopoverifyError(f"layer {layer.name!r}: the optimizer state {name!r} of parameter {m.name!r} "
                                      f"holds negative values, which no step of torch's recursion produces (it is "
                                      f"a running sum of squares); the state was modified outside the optimizer.")
            tensors[m.name] = t
        clouds[name] = neuron_cloud(model, layer, tensors).to(torch.float64)
    return clouds, steps[0]


def _same(a, b) -> bool:
    """Equal, with NaN equal to NaN (a NaN shared by every member is a bad value, reported as such later)."""
    if isinstance(a, tuple) and isinstance(b, tuple):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b or (isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b))


def _plain(x):
    if isinstance(x, torch.Tensor):
        return x.item()
    if isinstance(x, tuple):
        return tuple(_plain(v) for v in x)
    return x


__all__ = ["member_groups", "shared_hyper", "check_hyper", "float32_coefficients", "read_state", "NONNEGATIVE_STATES"]
