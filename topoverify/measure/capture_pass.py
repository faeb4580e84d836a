"""One forward and backward pass of the loss on a private copy of the model, recorded for the update fields.

Every field builder (:mod:`topoverify.measure.fields`) needs, at the pre-step state, the inputs of some modules
and the back-propagated signal δ = ∂L/∂y at the outputs y of others (the frozen h and δ of claim T1, A3), and
autograd's gradient of the layer's parameters (its self-check). :func:`capture_pass` runs ``loss_fn`` once on a
copy whose modules, buffers and attributes are its own (hooks, mode switches and BatchNorm statistics never
reach the caller's model) and whose parameter tensors are shared read-only, and records all of it.

A whole-model pass costs as much as a training step of the whole model (about 7 s for GPT-2 small on 4 × 128
tokens on 2 cores), so :func:`shared_capture` runs *one* pass for many layers: inside it, a
:func:`capture_pass` call on the same model, loss and batch whose modules and parameters the shared pass
recorded returns that record instead of running the model again.
"""

from __future__ import annotations

import contextvars
import copy
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, fields, is_dataclass

import torch
from torch import nn

from topoverify.errors import UnsupportedError
from topoverify.neurons.layouts import NeuronLayer, require_deterministic
from topoverify.neurons.lossfn import check_loss


@dataclass
class ModuleCall:
    """One module's call in the pass: the private copy's ``module``, its positional ``args`` and ``kwargs``
    (tensors detached), its first output ``output`` (detached) and δ = ∂L/∂output (zeros when the loss does
    not depend on it)."""

    module: nn.Module
    args: tuple
    kwargs: dict
    output: torch.Tensor | None
    delta: torch.Tensor | None


@dataclass
class CapturedPass:
    """The record of one pass: the private ``model`` copy, the ``loss``, each hooked module's call(s) and
    autograd's gradient of each requested parameter (zeros where unused)."""

    model: nn.Module
    loss: float
    calls: dict[str, list[ModuleCall]]
    grads: dict[str, torch.Tensor]
    _key: tuple = field(default=(), repr=False)

    def call(self, name: str, layer: NeuronLayer) -> ModuleCall:
        """The one call of module ``name``; :class:`UnsupportedError` when it ran other than once per pass
        (shared weights: the update field of T1 needs one use)."""
        runs = self.calls.get(name, [])
        if len(runs) != 1:
            raise UnsupportedError(f"layer {layer.name!r}: module {name!r} runs {len(runs)} times per forward "
                                   f"pass (shared weights); the update field of T1 needs exactly one use.")
        return runs[0]

    def covers(self, modules: Iterable[str], params: Iterable[str]) -> bool:
        return set(modules) <= self.calls.keys() and set(params) <= self.grads.keys()


_SHARED: contextvars.ContextVar[CapturedPass | None] = contextvars.ContextVar("topoverify_shared_pass",
                                                                              default=None)


def _detach(v):
    return v.detach() if torch.is_tensor(v) else v


def _kept(v):
    """A recorded input: a detached copy, so that an in-place op on the tensor later in the pass (a residual
    ``x += ...``) does not change the record."""
    return v.detach().clone() if torch.is_tensor(v) else v


def capture_pass(model: nn.Module, loss_fn, batch, modules: Sequence[str], params: Sequence[str] = (), *,
                 where: str = "update field", step: int | None = None) -> CapturedPass:
    """Run ``loss_fn(copy, batch)`` once with hooks on ``modules`` (names of ``model.named_modules()``) and take
    δ at their outputs and the gradients of ``params`` (names of ``model.named_parameters()``) with one
    ``torch.autograd.grad`` call (no ``.grad`` is touched). Inside :func:`shared_capture` for the same model,
    loss and batch, the shared record is returned when it covers the request. Raises
    :class:`UnsupportedError` for active dropout or an unknown module, :class:`NonFiniteError` for a NaN/Inf
    loss (``where``/``step`` name the place)."""
    shared = _SHARED.get()
    key = (id(model), id(loss_fn), id(batch), _versions(model, batch))
    if shared is not None and shared._key == key and shared.covers(modules, params):
        return shared
    require_deterministic(model)
    m = copy.deepcopy(model, memo={id(p): p for p in model.parameters()})
    mods = dict(m.named_modules())
    missing = [n for n in modules if n not in mods]
    if missing:
        raise UnsupportedError(f"{where}: the model has no module {missing[0]!r}.")
    named = dict(m.named_parameters())
    unknown = [n for n in params if n not in named]
    if unknown:
        raise UnsupportedError(f"{where}: the model has no parameter {unknown[0]!r}.")
    calls: dict[str, list] = {n: [] for n in modules}
    outputs: dict[str, list] = {n: [] for n in modules}
    handles = []
    for name in dict.fromkeys(modules):
        mod = mods[name]

        def pre(module, args, kwargs, _name=name, _mod=mod):
            if module is _mod:  # a hook copied from the caller's model (e.g. a monitor's) must not fire here
                calls[_name].append((tuple(_kept(a) for a in args), {k: _kept(v) for k, v in kwargs.items()}))

        def post(module, _args, out, _name=name, _mod=mod):
            if module is _mod:  # y is kept; what flows on is a copy, so that an in-place op after the module
                first = out[0] if isinstance(out, (tuple, list)) else out  # (ReLU(inplace=True)) changes the
                outputs[_name].append(first)  # copy, not y and its δ
                if torch.is_tensor(first):
                    return first.clone() if torch.is_tensor(out) else type(out)((first.clone(), *out[1:]))
                return None

        handles += [mod.register_forward_pre_hook(pre, with_kwargs=True), mod.register_forward_hook(post)]
    try:
        with torch.enable_grad():
            loss = loss_fn(m, batch)
            check_loss(loss, where=where, step=step)
            ys = [(n, k, y) for n, outs in outputs.items() for k, y in enumerate(outs)
                  if torch.is_tensor(y) and y.requires_grad]
            wanted = [y for _, _, y in ys] + [named[p] for p in params]
            grads = torch.autograd.grad(loss, wanted, allow_unused=True) if wanted and loss.requires_grad \
                else (None,) * len(wanted)
    finally:
        for h in handles:
            h.remove()
    deltas = {(n, k): g for (n, k, _), g in zip(ys, grads[:len(ys)])}
    record = {n: [ModuleCall(mods[n], a, kw, _detach(outputs[n][k]) if k < len(outputs[n]) else None,
                             _delta(deltas.get((n, k)), outputs[n][k] if k < len(outputs[n]) else None))
                  for k, (a, kw) in enumerate(calls[n])] for n in calls}
    pgrads = {p: (torch.zeros_like(named[p]) if g is None else g.detach())
              for p, g in zip(params, grads[len(ys):])}
    return CapturedPass(m, float(loss.detach()), record, pgrads, key)


def _versions(model: nn.Module, batch) -> tuple:
    """The in-place version counters of the model's parameters and buffers and of the batch's tensors: a record
    is reused only while none of them has changed (an optimizer step inside the ``with`` block)."""
    tensors = [*model.parameters(), *model.buffers()]
    stack = [batch]
    while stack:
        b = stack.pop()
        if torch.is_tensor(b):
            tensors.append(b)
        elif isinstance(b, (list, tuple)):
            stack.extend(b)
        elif isinstance(b, dict):
            stack.extend(b.values())
    return tuple(t._version for t in tensors)


def _delta(g, y):
    if g is not None:
        return g.detach()
    return torch.zeros_like(y).detach() if torch.is_tensor(y) else None


def layer_needs(layer: NeuronLayer) -> tuple[list[str], list[str]]:
    """(modules, parameters) a field builder of ``layer`` reads: its producer and consumer, every module named
    by its block description (:mod:`topoverify.neurons.blocks`), and its member parameters."""
    names = [n for n in (layer.producer, layer.consumer) if n]
    blk = layer.block
    if is_dataclass(blk):
        for f in fields(blk):
            if f.name in ("module", "producer", "consumer", "norm", "gate", "up", "down"):
                value = getattr(blk, f.name)
                if isinstance(value, str):
                    names.append(value)
    return list(dict.fromkeys(names)), list(dict.fromkeys(m.name for m in layer.members))


class shared_capture:
    """Run one :func:`capture_pass` covering every layer of ``layers`` (:func:`layer_needs`; with ``all_params``
    the gradient of every trainable parameter too, the layout preflight's unpermuted pass) now, and, as a
    context manager, let the field builders called inside the ``with`` block reuse it. A failing pass raises
    here (at construction), before the block: an unknown module as :class:`UnsupportedError`, a NaN loss as
    :class:`NonFiniteError`, as the first builder would have."""

    def __init__(self, model: nn.Module, loss_fn, batch, layers: Sequence[NeuronLayer], *,
                 step: int | None = None, all_params: bool = False):
        modules = []
        params = [n for n, p in model.named_parameters() if p.requires_grad] if all_params else []
        for layer in layers:
            ms, ps = layer_needs(layer)
            modules += ms
            params += ps
        self.record = capture_pass(model, loss_fn, batch, list(dict.fromkeys(modules)),
                                   list(dict.fromkeys(params)), where="update fields", step=step)
        self._token = None

    def base(self) -> tuple[float, dict]:
        """(loss, {name: gradient}) of every trainable parameter (``all_params=True``), for the preflight."""
        return self.record.loss, self.record.grads

    def __enter__(self) -> CapturedPass:
        self._token = _SHARED.set(self.record)
        return self.record

    def __exit__(self, *exc) -> None:
        _SHARED.reset(self._token)


__all__ = ["CapturedPass", "ModuleCall", "capture_pass", "shared_capture", "layer_needs"]
