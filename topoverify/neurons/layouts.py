"""Neuron layouts: which slices of which parameters move together with one neuron.

A *neuron layer* of N neurons owns, for every member parameter, N equal blocks along one axis (git-re-basin's
PermutationSpec, one permutation). Neuron i's parameter vector θ_i is the concatenation of its blocks, in member
order; the layer's *neuron cloud* is the N×d matrix Θ = [θ_1; …; θ_N] (the Θ of claims T1–T6 in
``spec/claims.toml``). A member may hold its N blocks in several segments of its axis (a fused projection such
as GPT-2's ``c_attn``: query, key and value columns; :class:`ParamAxis` ``offsets``/``span``). Buffers that move
with the units (BatchNorm running statistics) are the layer's ``buffers``: permuted with it, not in the cloud.

Layers are found automatically (:func:`detect_layers`): ``torch.fx`` chains
(:mod:`topoverify.neurons.recognizers_fx`) and module recognizers for transformer blocks
(:mod:`topoverify.neurons.recognizers`); which units are permutable and where T1's one-field form holds is
claim T9. Anything else is declared with :func:`explicit_layer`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
from torch import nn

from topoverify.errors import LayoutError, UnsupportedError
from topoverify.formatting import ResultMixin, jsonable

# Channelwise ops that keep neurons separate (allowed between producer and consumer).
PASSTHROUGH_MODULES = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Identity, nn.MaxPool2d, nn.AvgPool2d,
                       nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)

SUPPORTED_TEXT = (
    "Automatic detection supports chains Linear -> [one elementwise activation] -> Linear and "
    "Conv2d -> [activation, pooling] -> Conv2d (or -> Flatten -> Linear), with groups=1, eval-mode Dropout and "
    "Identity anywhere in the chain, and BatchNorm1d/2d after the producer (kind 'channel-bn'); and, by module "
    "attributes, Hugging Face GPT-2 MLPs (c_fc/c_proj) and attention (c_attn/c_proj), nn.MultiheadAttention "
    "(also inside nn.TransformerEncoderLayer/DecoderLayer, whose linear1/linear2 MLP is found too), gated MLPs "
    "(gate_proj/up_proj/down_proj) and q_proj/k_proj/v_proj/o_proj attention without grouped KV heads. "
    "For anything else pass an explicit layout, e.g. "
    "topoverify.explicit_layer('hidden', {'fc1.weight': 0, 'fc1.bias': 0, 'fc2.weight': 1})."
)


@dataclass(frozen=True)
class ParamAxis:
    """One member of a neuron layer: parameter (or buffer) ``name`` holds N blocks of ``block`` indices on
    ``axis``.

    ``offsets`` None: the whole axis is the N blocks. ``offsets`` given: the axis has ``len(offsets)``
    segments ``[offsets[s], offsets[s] + span)``, each holding N blocks of ``block`` indices; neuron n owns, in
    segment order, indices ``offsets[s] + n·block + b`` (b < block). Indices outside every segment do not move.
    """

    name: str
    axis: int
    block: int = 1
    offsets: tuple[int, ...] | None = None
    span: int | None = None

    def __post_init__(self):
        if not isinstance(self.block, int) or self.block < 1:
            raise LayoutError(f"parameter {self.name!r}: block must be an int >= 1, got {self.block!r}.")
        if self.offsets is None:
            if self.span is not None:
                raise LayoutError(f"parameter {self.name!r}: span={self.span} needs offsets (the segment starts).")
            return
        offs = tuple(int(o) for o in self.offsets)
        object.__setattr__(self, "offsets", offs)
        if not offs or any(o < 0 for o in offs):
            raise LayoutError(f"parameter {self.name!r}: offsets must be a non-empty tuple of indices >= 0, "
                              f"got {self.offsets!r}.")
        if not isinstance(self.span, int) or self.span < self.block or self.span % self.block:
            raise LayoutError(f"parameter {self.name!r}: span must be a positive multiple of block={self.block} "
                              f"(N = span // block neurons per segment), got {self.span!r}.")
        starts = sorted(offs)
        for a, b in zip(starts, starts[1:]):
            if b < a + self.span:
                raise LayoutError(f"parameter {self.name!r}: segments at offsets {a} and {b} of span {self.span} "
                                  f"overlap; every segment must be disjoint.")

    @property
    def width(self) -> int:
        """Indices along ``axis`` that one neuron owns (``block`` times the number of segments)."""
        return self.block * (1 if self.offsets is None else len(self.offsets))

    def __str__(self) -> str:
        extra = "" if self.block == 1 else f", block {self.block}"
        if self.offsets is not None:
            extra += f", segments at {list(self.offsets)} of span {self.span}"
        return f"{self.name}[axis {self.axis}{extra}]"


def _block_dict(block) -> dict | None:
    if block is None:
        return None
    return {"type": type(block).__name__, **jsonable(block)}


@dataclass(frozen=True)
class NeuronLayer(ResultMixin):
    """A permutation-symmetric group of N neurons and the parameter slices that move with each neuron.

    ``kind``: ``"linear"`` (nn.Linear or Hugging Face Conv1D producer/consumer), ``"conv2d"``, ``"gated"``,
    ``"attention-heads"``, ``"attention-qk"``, ``"attention-vo"``, ``"channel-bn"``, ``"residual"`` or
    ``"explicit"``; detected ones have ``producer``/``consumer`` module names and the ``chain`` of ops between.
    ``activation`` is the single elementwise nonlinearity between producer and consumer (``"identity"`` if
    none, ``None`` if unknown or several); ``activation_fn`` the traced callable, or ``None`` for a recognised
    module whose activation is verifiably the table entry ``activation`` (HF ``NewGELUActivation``). ``block``: what the units are inside their block
    (:mod:`topoverify.neurons.blocks`). ``buffers``: buffers permuted with the units (not in the cloud).
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
    block: object = None
    buffers: tuple[ParamAxis, ...] = ()

    def to_dict(self) -> dict:
        d = super().to_dict()
        for key in ("activation_fn", "between_fns", "activation_key"):
            d.pop(key, None)
        d["block"] = _block_dict(self.block)
        return d

    def __str__(self) -> str:
        parts = ", ".join(str(m) for m in self.members)
        act = f", activation={self.activation}" if self.activation else ""
        bufs = f"; buffers {', '.join(str(b) for b in self.buffers)}" if self.buffers else ""
        return f"NeuronLayer {self.name!r}: {self.size} neurons ({self.kind}{act}) <- {parts}{bufs}"


def _parse_member(layer: str, pname: str, spec) -> ParamAxis:
    if isinstance(spec, ParamAxis):
        return dataclasses.replace(spec, name=pname) if spec.name != pname else spec
    try:
        if isinstance(spec, Mapping):
            unknown = set(spec) - {"axis", "block", "offsets", "span"}
            if unknown or "axis" not in spec:
                raise TypeError
            offs = spec.get("offsets")
            return ParamAxis(pname, spec["axis"], spec.get("block", 1),
                             tuple(offs) if offs is not None else None, spec.get("span"))
        axis, block = (spec, 1) if isinstance(spec, int) else tuple(spec)
        if not isinstance(axis, int) or isinstance(axis, bool) or not isinstance(block, int):
            raise TypeError
        return ParamAxis(pname, axis, block)
    except LayoutError:
        raise
    except (TypeError, ValueError):
        raise LayoutError(f"layer {layer!r}: parameter {pname!r} needs an int axis, (axis, block), a ParamAxis "
                          f"or dict(axis=, block=, offsets=, span=); got {spec!r}.") from None


def explicit_layer(name: str, members: Mapping[str, object], model: nn.Module | None = None, *,
                   buffers: Mapping[str, object] | None = None) -> NeuronLayer:
    """Declare a neuron layer: ``{parameter name: axis | (axis, block) | ParamAxis | dict(axis=, block=,
    offsets=, span=)}``; ``buffers`` the same for buffers that move with the units (BatchNorm running stats).

    A tied parameter may be named by any of its names (``model.named_parameters(remove_duplicate=False)``,
    e.g. GPT-2's ``lm_head.weight`` for ``transformer.wte.weight``): it resolves to the canonical name (the
    one ``named_parameters()`` lists), and is listed once. With ``model`` given, names, axes and sizes are
    validated now; otherwise at first use.
    """
    if not members:
        raise LayoutError(f"layer {name!r}: the layout names no parameters; give {{'fc1.weight': 0, ...}}.")
    parsed = tuple(_parse_member(name, p, s) for p, s in members.items())
    bufs = tuple(_parse_member(name, b, s) for b, s in (buffers or {}).items())
    layer = NeuronLayer(name=name, size=-1, members=parsed, buffers=bufs)
    return validate_layer(model, layer) if model is not None else layer


def _aliases(model: nn.Module) -> dict[str, str]:
    """Every parameter name (tied duplicates included) → its canonical name in ``named_parameters()``."""
    canonical = {id(p): n for n, p in model.named_parameters()}
    return {n: canonical[id(p)] for n, p in model.named_parameters(remove_duplicate=False)}


def _check_member(layer: NeuronLayer, m: ParamAxis, t: torch.Tensor, what: str) -> tuple[ParamAxis, int]:
    if not -t.dim() <= m.axis < t.dim():
        raise LayoutError(f"layer {layer.name!r}: {what} {m.name!r} has shape {tuple(t.shape)}; axis {m.axis} is "
                          f"out of range.")
    m = dataclasses.replace(m, axis=m.axis % t.dim())
    extent = t.shape[m.axis]
    if m.offsets is None:
        if extent % m.block:
            raise LayoutError(f"layer {layer.name!r}: {what} {m.name!r} has {extent} entries on axis {m.axis}, not "
                              f"a multiple of block={m.block}.")
        return m, extent // m.block
    if max(m.offsets) + m.span > extent:
        raise LayoutError(f"layer {layer.name!r}: {what} {m.name!r} has {extent} entries on axis {m.axis}, but "
                          f"the segment at offset {max(m.offsets)} of span {m.span} ends at "
                          f"{max(m.offsets) + m.span}; every segment must lie inside the axis.")
    return m, m.span // m.block


def validate_layer(model: nn.Module, layer: NeuronLayer) -> NeuronLayer:
    """Check that every member (and buffer) exists and splits into the same number N of neurons; resolve tied
    parameter aliases to canonical names; fill in ``size``."""
    params = dict(model.named_parameters())
    aliases = _aliases(model)
    members, sizes = [], {}
    for m in layer.members:
        name = aliases.get(m.name, m.name)
        if name not in params:
            close = [n for n in params if n.split(".")[-1] == m.name.split(".")[-1]][:5]
            raise LayoutError(f"layer {layer.name!r}: the model has no parameter {m.name!r}"
                              f"{'; similar names: ' + ', '.join(close) if close else ''}. "
                              f"Names come from model.named_parameters().")
        m, n = _check_member(layer, dataclasses.replace(m, name=name), params[name], "parameter")
        if m in members:
            continue  # a tied parameter named twice
        if any(o.name == name for o in members):
            raise LayoutError(f"layer {layer.name!r}: parameter {name!r} is listed twice with different axes "
                              f"(tied weights are one parameter; {m.name!r} is {name!r}).")
        members.append(m)
        sizes[str(m)] = n
    bufs = dict(model.named_buffers())
    buffers = []
    for b in layer.buffers:
        if b.name not in bufs or bufs[b.name] is None:
            raise LayoutError(f"layer {layer.name!r}: the model has no buffer {b.name!r}. Names come from "
                              f"model.named_buffers().")
        b, n = _check_member(layer, b, bufs[b.name], "buffer")
        buffers.append(b)
        sizes[str(b)] = n
    if len(set(sizes.values())) != 1:
        raise LayoutError(f"layer {layer.name!r}: members disagree on the number of neurons: {sizes}. "
                          f"Every member must split into the same N blocks along its axis.")
    n = next(iter(sizes.values()))
    if layer.size not in (-1, n):
        raise LayoutError(f"layer {layer.name!r}: declared size {layer.size} but parameters give {n}.")
    return dataclasses.replace(layer, size=n, members=tuple(members), buffers=tuple(buffers))


# ----------------------------------------------------------------------------------------------------------
# Dropout and automatic detection
# ----------------------------------------------------------------------------------------------------------

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


def detect_layers(model: nn.Module, *, finer: bool = False, residual: bool = False) -> list[NeuronLayer]:
    """Find the neuron layers of ``model``; raise :class:`LayoutError` listing what was and was not recognised
    if none.

    ``torch.fx`` chains (:func:`topoverify.neurons.recognizers_fx.fx_layers`: producer Linear/Conv2d →
    elementwise/eval-dropout/BatchNorm ops → one consumer) and module recognizers
    (:func:`topoverify.neurons.recognizers.module_layers`: transformer MLPs, gated MLPs, attention heads), in
    module order, deduplicated by name. ``finer``: also each head's query/key dims and value/output dims
    (kinds ``attention-qk``/``attention-vo``); ``residual``: the residual stream where recognised (T9).
    """
    from topoverify.neurons.recognizers import module_layers
    from topoverify.neurons.recognizers_fx import fx_layers

    notes: list[str] = []
    found = module_layers(model, finer=finer, residual=residual, notes=notes)
    try:
        traced = fx_layers(model, notes=notes)
    except LayoutError as exc:
        if not found:
            raise LayoutError(f"{exc} {_recognised_text(notes)}".strip()) from None
        traced = []
    names = {layer.name for layer in found}
    covered = {layer.producer for layer in found if layer.producer}
    layers = found + [layer for layer in traced if layer.name not in names and layer.producer not in covered]
    if not layers:
        mods = sorted({type(m).__name__ for m in model.modules() if m is not model})
        raise LayoutError(f"no neuron layer detected in {type(model).__name__} (modules: "
                          f"{', '.join(mods) or 'none'}). {_recognised_text(notes)}" + SUPPORTED_TEXT)
    order = {name: k for k, (name, _) in enumerate(model.named_modules())}
    layers.sort(key=lambda ly: order.get(ly.producer or getattr(ly.block, "module", None) or ly.name, len(order)))
    return [validate_layer(model, layer) for layer in layers]


def _recognised_text(notes: list[str]) -> str:
    return ("Not recognised: " + "; ".join(dict.fromkeys(notes)) + ". ") if notes else ""


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
# Neuron indices and clouds
# ----------------------------------------------------------------------------------------------------------

def neuron_index(member: ParamAxis, n: int) -> torch.Tensor:
    """Every neuron's indices along ``member.axis``: an ``n × width`` LongTensor (segment order, then block)."""
    within = torch.arange(n)[:, None] * member.block + torch.arange(member.block)[None, :]
    if member.offsets is None:
        return within
    return torch.cat([within + o for o in member.offsets], dim=1)


def neuron_blocks(tensor: torch.Tensor, member: ParamAxis, n: int) -> torch.Tensor:
    """The ``n`` neuron blocks of ``tensor`` as an ``n × (rest)`` matrix (block indices moved to the front)."""
    if member.offsets is None:
        moved = tensor.movedim(member.axis, 0)
        return moved.reshape(n, member.block, *moved.shape[1:]).reshape(n, -1)
    idx = neuron_index(member, n).reshape(-1).to(tensor.device)
    return tensor.index_select(member.axis, idx).movedim(member.axis, 0).reshape(n, -1)


def set_neuron_blocks(tensor: torch.Tensor, member: ParamAxis, n: int, rows, values: torch.Tensor
                      ) -> torch.Tensor:
    """A new tensor: ``tensor`` with neurons ``rows`` replaced by ``values`` (``len(rows) × width·rest``, as
    :func:`neuron_blocks` returns them); the inverse of :func:`neuron_blocks`."""
    rows = torch.as_tensor(rows, dtype=torch.long).reshape(-1)
    idx = neuron_index(member, n)[rows].reshape(-1).to(tensor.device)
    moved = tensor.movedim(member.axis, 0).clone()
    moved[idx] = values.to(dtype=tensor.dtype, device=tensor.device).reshape(idx.numel(), *moved.shape[1:])
    return moved.movedim(0, member.axis).contiguous()


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
    return [m.width * (params[m.name].numel() // params[m.name].shape[m.axis]) for m in layer.members]


__all__ = [
    "ParamAxis", "NeuronLayer", "explicit_layer", "validate_layer", "detect_layers", "resolve_layers",
    "neuron_cloud", "neuron_blocks", "neuron_index", "set_neuron_blocks", "member_widths", "active_dropout",
    "require_deterministic", "SUPPORTED_TEXT", "PASSTHROUGH_MODULES",
]
