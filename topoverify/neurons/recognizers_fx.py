"""Neuron layers of ``torch.fx``-traceable models: chains producer → ops → consumer (claims T1, T9).

A producer ``Linear``/``Conv2d`` (groups=1) whose output flows, through elementwise ops only and with no other
consumer, into exactly one ``Linear``/``Conv2d`` defines a layer: producer rows (and bias) plus consumer columns
(input channels; ``block`` = spatial size after a ``Flatten``). Identity ops (Dropout of any kind, ``nn.Identity``,
``F.dropout``) are dropped from the chain: they are the identity in eval mode, and a training-mode dropout is
refused later by :func:`topoverify.neurons.layouts.require_deterministic`. A ``BatchNorm1d/2d`` right after the
producer makes the layer ``"channel-bn"``: its weight and bias are members, its running statistics buffers.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from topoverify.errors import LayoutError
from topoverify.neurons.activation_registry import ACTIVATION_FUNCTIONS, ACTIVATION_METHODS, ACTIVATION_MODULES
from topoverify.neurons.blocks import ChannelNormBlock
from topoverify.neurons.layouts import PASSTHROUGH_MODULES, SUPPORTED_TEXT, NeuronLayer, ParamAxis

IDENTITY_MODULES = (nn.modules.dropout._DropoutNd, nn.Identity)
_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d)


def _node_kind(node, modules):
    """Classify an fx node: ('layer'|'activation'|'identity'|'norm'|'passthrough'|'flatten'|'other', info)."""
    if node.op == "call_module":
        mod = modules[node.target]
        if isinstance(mod, (nn.Linear, nn.Conv2d)):
            return "layer", mod
        if isinstance(mod, IDENTITY_MODULES):
            return "identity", type(mod).__name__
        if isinstance(mod, _NORMS):
            return "norm", mod
        if type(mod) in ACTIVATION_MODULES:
            return "activation", ACTIVATION_MODULES[type(mod)]
        if isinstance(mod, PASSTHROUGH_MODULES):
            return "passthrough", type(mod).__name__
        if isinstance(mod, nn.Flatten):
            return ("flatten", "flatten") if mod.start_dim == 1 and mod.end_dim == -1 else ("other", None)
    elif node.op == "call_function":
        if node.target in (F.dropout, F.dropout1d, F.dropout2d, F.alpha_dropout):
            return "identity", node.target.__name__
        if node.target in ACTIVATION_FUNCTIONS:
            return "activation", ACTIVATION_FUNCTIONS[node.target]
        if node.target in (F.max_pool2d, F.avg_pool2d):
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


def trace(model: nn.Module):
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


def _walk(node, prod, modules):
    """Follow ``node``'s single-use chain to a consumer: (consumer node | None, chain, acts, between, norm,
    flattened)."""
    chain, acts, between, norm, flattened, cur = [], [], [], None, False, node
    conv = isinstance(prod, nn.Conv2d)
    while len(cur.users) == 1:
        nxt = next(iter(cur.users))
        if not nxt.args or nxt.args[0] is not cur:
            break
        k, info = _node_kind(nxt, modules)
        if k == "layer":
            return nxt, chain, acts, between, norm, flattened
        if k == "identity":
            cur = nxt
            continue
        if k == "norm":
            n_out = prod.out_channels if conv else prod.out_features
            want = nn.BatchNorm2d if conv else nn.BatchNorm1d
            if chain or norm is not None or not isinstance(info, want) or info.num_features != n_out:
                break
            norm = nxt.target
            chain.append(type(info).__name__)
        elif k == "activation":
            acts.append((info, _as_callable(nxt, modules), _activation_key(nxt, modules)))
            chain.append(str(info))
        elif (k == "passthrough" and conv) or (k == "flatten" and conv and not flattened):
            flattened = flattened or k == "flatten"
            chain.append(str(info))
            between.append(_as_callable(nxt, modules))
        else:
            break
        cur = nxt
    return None, chain, acts, between, norm, flattened


def fx_layers(model: nn.Module, notes: list[str] | None = None) -> list[NeuronLayer]:
    """The fx-chain layers of ``model`` (see module docstring), unvalidated; :class:`LayoutError` if it does not
    trace. ``notes`` collects why a candidate was not a layer."""
    gm = trace(model)
    modules = dict(gm.named_modules())
    uses: dict[str, int] = {}
    for node in gm.graph.nodes:
        if node.op == "call_module":
            uses[node.target] = uses.get(node.target, 0) + 1
    reused = sorted(t for t, c in uses.items() if c > 1 and isinstance(modules[t], (nn.Linear, nn.Conv2d)))
    if reused and notes is not None:
        notes.append(f"modules called more than once (shared weights) are not neuron layers: {', '.join(reused)}")
    layers: list[NeuronLayer] = []
    for node in gm.graph.nodes:
        kind, prod = _node_kind(node, modules)
        if kind != "layer" or (isinstance(prod, nn.Conv2d) and prod.groups != 1) or node.target in reused:
            continue
        consumer_node, chain, acts, between, norm, flattened = _walk(node, prod, modules)
        if consumer_node is None or consumer_node.target in reused:
            continue
        layer = _layer(model, node.target, consumer_node.target, prod, modules[consumer_node.target], chain, acts,
                       between, norm, flattened)
        if layer is not None:
            layers.append(layer)
    return layers


def _layer(model, pname, cname, prod, cons, chain, acts, between, norm, flattened):
    if isinstance(prod, nn.Linear):
        if not isinstance(cons, nn.Linear):
            return None
        n, block, kind = prod.out_features, 1, "linear"
    else:
        n, kind = prod.out_channels, "conv2d"
        if isinstance(cons, nn.Conv2d):
            if flattened or cons.groups != 1:
                return None
            block = 1
        else:  # Conv2d -> ... -> Flatten -> Linear
            if not flattened or cons.in_features % n:
                return None
            block = cons.in_features // n
    members = [ParamAxis(f"{pname}.weight", 0)]
    if prod.bias is not None:
        members.append(ParamAxis(f"{pname}.bias", 0))
    buffers, block_info = [], None
    activation, act_fn, act_key = (acts[0] if len(acts) == 1 else
                                   (("identity", "identity", "identity") if not acts else (None, None, None)))
    if norm is not None:
        bn = dict(model.named_modules())[norm]
        kind = "channel-bn"
        if bn.affine:
            members += [ParamAxis(f"{norm}.weight", 0), ParamAxis(f"{norm}.bias", 0)]
        if bn.track_running_stats and bn.running_mean is not None:
            buffers = [ParamAxis(f"{norm}.running_mean", 0), ParamAxis(f"{norm}.running_var", 0)]
        block_info = ChannelNormBlock(producer=pname, norm=norm, consumer=cname, activation=activation,
                                      training=bn.training)
    members.append(ParamAxis(f"{cname}.weight", 1, block))
    one_act_first = not acts or (len(acts) == 1 and chain[1 if norm else 0] == activation)
    return NeuronLayer(name=pname, size=n, members=tuple(members), kind=kind, producer=pname, consumer=cname,
                       activation=activation, chain=tuple(chain), activation_fn=act_fn, activation_key=act_key,
                       between_fns=tuple(between) if one_act_first else (None,), block=block_info,
                       buffers=tuple(buffers))


__all__ = ["fx_layers", "trace", "IDENTITY_MODULES"]
