"""Neuron layouts: which slices of which parameters move together with one neuron.

A *neuron layer* of N neurons owns, for every member parameter, N equal blocks along one axis (git-re-basin's
PermutationSpec, one permutation). Neuron i's parameter vector θ_i is the concatenation of its blocks, in member
order; the layer's *neuron cloud* is the N×d matrix Θ = [θ_1; …; θ_N] (the Θ of claims T1–T6 in
``spec/claims.toml``).

Layers are found automatically (:func:`detect_layers`) for chains ``Linear → elementwise ops → Linear`` and
``Conv2d → elementwise/channelwise ops → Conv2d`` (or ``→ Flatten → Linear``), traced with ``torch.fx``;
activations are recognised by :mod:`topoverify.neurons.activation_registry`. Anything else is declared with
:func:`explicit_layer`.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from topoverify.errors import LayoutError, UnsupportedError
from topoverify.formatting import ResultMixin
from topoverify.neurons.activation_registry import ACTIVATION_FUNCTIONS, ACTIVATION_METHODS, ACTIVATION_MODULES

# Channelwise ops that keep neurons separate (allowed between producer and consumer).
PASSTHROUGH_MODULES = (nn.Dropout, nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)

SUPPORTED_TEXT = (
    "Automatic detection supports chains Linear -> [one elementwise activation] -> Linear and "
    "Conv2d -> [activation, pooling, dropout] -> Conv2d (or -> Flatten -> Linear), with groups=1. "
    "For anything else pass an explicit layout, e.g. "
    "topoverify.explicit_layer('hidden', {'fc1.weight': 0, 'fc1.bias': 0, 'fc2.weight': 1})."
)


@dataclass(frozen=True)
class ParamAxis:
    """One member of a neuron layer: parameter ``name`` splits into N blocks of ``block`` indices on ``axis``."""

    name: str
    axis: int
    block: int = 1


@dataclass(frozen=True)
class NeuronLayer(ResultMixin):
    """A permutation-symmetric group of N neurons and the parameter slices that move with each neuron.

    ``kind`` is ``"linear"``, ``"conv2d"`` (detected, with ``producer``/``consumer`` module names and the
    ``chain`` of elementwise ops between them) or ``"explicit"``. ``activation`` is the single elementwise
    nonlinearity between producer and consumer (``"identity"`` if none, ``None`` if unknown or several).
    """

    name: str
    size: int
    members: tuple[ParamAxis, ...]
    kind: str = "explicit"
    producer: str | None = None
    consumer: str | None = None
    activation: str | None = None
    chain: tuple[str, ...] = field(default_factory=tuple)
    activation_fn: object = field(default=None, compare=False, repr=False)
    between_fns: tuple = field(default=(), compare=False, repr=False)
    activation_key: str | None = field(default=None, compare=False, repr=False)

    def to_dict(self) -> dict:
        d = super().to_dict()
        d.pop("activation_fn", None)
        d.pop("between_fns", None)
        d.pop("activation_key", None)
        return d

    def __str__(self) -> str:
        parts = ", ".join(f"{m.name}[axis {m.axis}{'' if m.block == 1 else f', block {m.block}'}]"
                          for m in self.members)
        act = f", activation={self.activation}" if self.activation else ""
        return f"NeuronLayer {self.name!r}: {self.size} neurons ({self.kind}{act}) <- {parts}"


def explicit_layer(name: str, members: Mapping[str, int | tuple[int, int]], model: nn.Module | None = None
                   ) -> NeuronLayer:
    """Declare a neuron layer: ``{parameter name: axis}`` or ``{name: (axis, block)}``.

    With ``model`` given, names, axes and sizes are validated now; otherwise at first use.
    """
    if not members:
        raise LayoutError(f"layer {name!r}: the layout names no parameters; give {{'fc1.weight': 0, ...}}.")
    parsed = []
    for pname, spec in members.items():
        axis, block = (spec, 1) if isinstance(spec, int) else tuple(spec)
        if not isinstance(axis, int) or not isinstance(block, int) or block < 1:
            raise LayoutError(f"layer {name!r}: parameter {pname!r} needs an int axis (and block >= 1), "
                              f"got {spec!r}.")
        parsed.append(ParamAxis(pname, axis, block))
    size = -1
    layer = NeuronLayer(name=name, size=size, members=tuple(parsed))
    if model is not None:
        return validate_layer(model, layer)
    return layer


def validate_layer(model: nn.Module, layer: NeuronLayer) -> NeuronLayer:
    """Check that every member exists and splits into the same number N of neurons; fill in ``size``."""
    params = dict(model.named_parameters())
    sizes = {}
    for m in layer.members:
        if m.name not in params:
            close = [n for n in params if n.split(".")[-1] == m.name.split(".")[-1]][:5]
            raise LayoutError(f"layer {layer.name!r}: the model has no parameter {m.name!r}"
                              f"{'; similar names: ' + ', '.join(close) if close else ''}. "
                              f"Names come from model.named_parameters().")
        p = params[m.name]
        if not -p.dim() <= m.axis < p.dim():
            raise LayoutError(f"layer {layer.name!r}: parameter {m.name!r} has shape {tuple(p.shape)}; "
                              f"axis {m.axis} is out of range.")
        extent = p.shape[m.axis]
        if extent % m.block:
            raise LayoutError(f"layer {layer.name!r}: parameter {m.name!r} has {extent} entries on axis "
                              f"{m.axis}, not a multiple of block={m.block}.")
        sizes[m.name] = extent // m.block
    if len(set(sizes.values())) != 1:
        raise LayoutError(f"layer {layer.name!r}: members disagree on the number of neurons: {sizes}. "
                          f"Every member must split into the same N blocks along its axis.")
    n = next(iter(sizes.values()))
    if layer.size not in (-1, n):
        raise LayoutError(f"layer {layer.name!r}: declared size {layer.size} but parameters give {n}.")
    axes = tuple(ParamAxis(m.name, m.axis % params[m.name].dim(), m.block) for m in layer.members)
    return dataclasses.replace(layer, size=n, members=axes)


# ----------------------------------------------------------------------------------------------------------
# Automatic detection (torch.fx)
# ----------------------------------------------------------------------------------------------------------

def _node_kind(node, modules):
    """Classify an fx node: ('producer'|'activation'|'passthrough'|'flatten'|'other', name)."""
    if node.op == "call_module":
        mod = modules[node.target]
        if isinstance(mod, (nn.Linear, nn.Conv2d)):
            return "layer", mod
        if type(mod) in ACTIVATION_MODULES:
            return "activation", ACTIVATION_MODULES[type(mod)]
        if isinstance(mod, PASSTHROUGH_MODULES):
            return "passthrough", type(mod).__name__
        if isinstance(mod, nn.Flatten):
            return ("flatten", "flatten") if mod.start_dim == 1 and mod.end_dim == -1 else ("other", None)
    elif node.op == "call_function":
        if node.target in ACTIVATION_FUNCTIONS:
            return "activation", ACTIVATION_FUNCTIONS[node.target]
        if node.target in (F.dropout, F.max_pool2d, F.avg_pool2d):
            return "passthrough", node.target.__name__
        if node.target is torch.flatten and (node.args[1:2] == (1,) or node.kwargs.get("start_dim") == 1):
            return "flatten", "flatten"
    elif node.op == "call_method":
        if node.target in ACTIVATION_METHODS:
            return "activation", ACTIVATION_METHODS[node.target]
        if node.target == "flatten" and (node.args[1:2] == (1,) or node.kwargs.get("start_dim") == 1):
            return "flatten", "flatten"
        if node.target == "view" and len(node.args) == 3 and node.args[2] == -1:
            return "flatten", "flatten"
    return "other", None


def _as_callable(node, modules):
    """The op of a traced node as a one-argument callable (constant extra arguments bound)."""
    if node.op == "call_module":
        return modules[node.target]
    extra_args, kwargs = node.args[1:], dict(node.kwargs)
    if any(isinstance(a, torch.fx.Node) for a in (*extra_args, *kwargs.values())):
        return None
    if node.op == "call_function":
        return lambda x: node.target(x, *extra_args, **kwargs)
    return lambda x: getattr(x, node.target)(*extra_args, **kwargs)


def _activation_key(node, modules) -> str:
    """A string that identifies an activation with its arguments (e.g. ``softplus(beta=100.0)``), so that
    one configuration shares one cached :class:`~topoverify.neurons.activations.Activation`."""
    if node.op == "call_module":
        return repr(modules[node.target])
    extra = [repr(a) for a in node.args[1:]] + [f"{k}={v!r}" for k, v in node.kwargs.items()]
    return f"{getattr(node.target, '__name__', node.target)}({', '.join(extra)})"


def _trace(model: nn.Module):
    """Symbolically trace a deep copy of ``model``: tracing runs ``forward``, and a forward with side effects
    (a call counter, a cache) must never touch the caller's module."""
    try:
        private = copy.deepcopy(model)
    except Exception as exc:  # deepcopy raises whatever the module's attributes raise
        raise LayoutError(
            f"could not copy {type(model).__name__} to trace it ({type(exc).__name__}: {exc}); topoverify "
            f"never runs your own module. Make the model deep-copyable, or pass an explicit layout.") from None
    try:
        return torch.fx.symbolic_trace(private)
    except Exception as exc:  # fx raises many types for untraceable control flow
        raise LayoutError(
            f"could not trace {type(model).__name__} with torch.fx ({type(exc).__name__}: {exc}). "
            + SUPPORTED_TEXT) from None


def active_dropout(model: nn.Module) -> list[tuple[str, float]]:
    """(name, p) of every dropout module of ``model`` that is in training mode with p > 0."""
    return [(name, float(mod.p)) for name, mod in model.named_modules()
            if isinstance(mod, nn.modules.dropout._DropoutNd) and mod.training and mod.p > 0]


def require_deterministic(model: nn.Module) -> None:
    """Refuse a model whose forward pass draws dropout masks: its loss is random, so one step is not the
    deterministic update field of claim T1 and no layout passes the permutation preflight."""
    active = active_dropout(model)
    if active:
        names = ", ".join(f"{n!r} (p={p:g})" for n, p in active)
        raise UnsupportedError(
            f"dropout is active in training mode: {names}. Each forward pass draws a fresh per-coordinate "
            f"mask, so the loss is random and the step is not one deterministic update field (claim T1). "
            f"Call model.eval() before predicting or verifying (topoverify works on copies, so it never "
            f"changes your model's mode), or set p=0.")


def detect_layers(model: nn.Module) -> list[NeuronLayer]:
    """Find the neuron layers of ``model`` (see module docstring); raise :class:`LayoutError` if none.

    A producer ``Linear``/``Conv2d`` whose output flows, through elementwise ops only and with no other
    consumer, into exactly one ``Linear``/``Conv2d`` defines a layer: producer rows (and bias) plus consumer
    columns (input channels; ``block`` = spatial size after a ``Flatten``).
    """
    gm = _trace(model)
    modules = dict(gm.named_modules())
    uses: dict[str, int] = {}
    for node in gm.graph.nodes:
        if node.op == "call_module":
            uses[node.target] = uses.get(node.target, 0) + 1
    reused = sorted(t for t, c in uses.items() if c > 1 and isinstance(modules[t], (nn.Linear, nn.Conv2d)))
    layers: list[NeuronLayer] = []
    for node in gm.graph.nodes:
        kind, prod = _node_kind(node, modules)
        if kind != "layer" or (isinstance(prod, nn.Conv2d) and prod.groups != 1) or node.target in reused:
            continue
        chain, acts, flattened, cur, between = [], [], False, node, []
        consumer_node = None
        while len(cur.users) == 1:
            nxt = next(iter(cur.users))
            if not nxt.args or nxt.args[0] is not cur:
                break
            k, info = _node_kind(nxt, modules)
            if k == "layer":
                consumer_node = nxt
                break
            if k == "activation":
                acts.append((info, _as_callable(nxt, modules), _activation_key(nxt, modules)))
            elif not (k == "passthrough" and isinstance(prod, nn.Conv2d)) and not (
                    k == "flatten" and isinstance(prod, nn.Conv2d) and not flattened):
                if not (k == "passthrough" and "ropout" in str(info)):
                    break
            flattened = flattened or k == "flatten"
            chain.append(str(info))
            if k != "activation":
                between.append(_as_callable(nxt, modules))
            cur = nxt
        if consumer_node is None or consumer_node.target in reused:
            continue
        cons = modules[consumer_node.target]
        pname, cname = node.target, consumer_node.target
        if isinstance(prod, nn.Linear):
            if not isinstance(cons, nn.Linear):
                continue
            n, block, kind_name = prod.out_features, 1, "linear"
        else:
            n, kind_name = prod.out_channels, "conv2d"
            if isinstance(cons, nn.Conv2d):
                if flattened or cons.groups != 1:
                    continue
                block = 1
            else:  # Conv2d -> ... -> Flatten -> Linear
                if not flattened or cons.in_features % n:
                    continue
                block = cons.in_features // n
        members = [ParamAxis(f"{pname}.weight", 0)]
        if prod.bias is not None:
            members.append(ParamAxis(f"{pname}.bias", 0))
        members.append(ParamAxis(f"{cname}.weight", 1, block))
        activation, act_fn, act_key = (acts[0] if len(acts) == 1 else
                                       (("identity", "identity", "identity") if not acts else (None, None, None)))
        layers.append(NeuronLayer(name=pname, size=n, members=tuple(members), kind=kind_name, producer=pname,
                                  consumer=cname, activation=activation, chain=tuple(chain), activation_fn=act_fn,
                                  activation_key=act_key,
                                  between_fns=tuple(between) if not acts or (len(acts) == 1 and chain[0] == activation)
                                  else (None,)))
    if not layers:
        found = sorted({type(m).__name__ for m in model.modules() if m is not model})
        shared = (f" Modules called more than once (shared weights) are not neuron layers: {', '.join(reused)}."
                  if reused else "")
        raise LayoutError(f"no neuron layer detected in {type(model).__name__} (modules: "
                          f"{', '.join(found) or 'none'}).{shared} " + SUPPORTED_TEXT)
    return [validate_layer(model, layer) for layer in layers]


def resolve_layers(model: nn.Module, layers=None, *, deterministic: bool = True) -> list[NeuronLayer]:
    """``layers`` as given (validated), a single layer, or detected automatically when ``None``.

    Raises :class:`UnsupportedError` when dropout is active (:func:`require_deterministic`) unless
    ``deterministic=False`` (the training-loop monitor reads the user's own passes, masks included)."""
    if deterministic:
        require_deterministic(model)
    if layers is None:
        return detect_layers(model)
    if isinstance(layers, NeuronLayer):
        layers = [layers]
    if isinstance(layers, Mapping):
        layers = [explicit_layer("layer", layers)]
    return [validate_layer(model, layer) for layer in layers]


# ----------------------------------------------------------------------------------------------------------
# Neuron clouds
# ----------------------------------------------------------------------------------------------------------

def neuron_blocks(tensor: torch.Tensor, member: ParamAxis, n: int) -> torch.Tensor:
    """The ``n`` neuron blocks of ``tensor`` as an ``n × (rest)`` matrix (block indices moved to the front)."""
    moved = tensor.movedim(member.axis, 0)
    return moved.reshape(n, member.block, *moved.shape[1:]).reshape(n, -1)


def neuron_cloud(model: nn.Module, layer: NeuronLayer, source: Mapping[str, torch.Tensor] | None = None
                 ) -> torch.Tensor:
    """The N×d neuron cloud Θ of ``layer`` (a detached copy). ``source`` overrides tensors by name
    (e.g. a gradient or an optimizer state entry) to get the matching N×d matrix of that quantity."""
    params = dict(model.named_parameters())
    cols = []
    for m in layer.members:
        t = source[m.name] if source is not None else params[m.name]
        cols.append(neuron_blocks(t.detach(), m, layer.size))
    return torch.cat(cols, dim=1).clone()


def member_widths(model: nn.Module, layer: NeuronLayer) -> list[int]:
    """Number of cloud coordinates contributed by each member, in order."""
    params = dict(model.named_parameters())
    return [params[m.name].numel() // layer.size for m in layer.members]


__all__ = [
    "ParamAxis", "NeuronLayer", "explicit_layer", "validate_layer", "detect_layers", "resolve_layers",
    "neuron_cloud", "neuron_blocks", "member_widths", "active_dropout", "require_deterministic", "SUPPORTED_TEXT",
]
