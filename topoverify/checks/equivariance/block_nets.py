"""Small transformer blocks and BatchNorm conv nets as values (:class:`BlockSpec`), for the equivariance checker
and the T6 checks: the architectures of real models at toy size, with their neuron layers declared from the
layout rules of T9 (``spec/claims.toml``) rather than detected.

Kinds:

- ``"transformer"``: a pre-LN block ``x + MHA(LN(x))`` then ``x + MLP(LN(x))`` (``nn.MultiheadAttention``, fused
  ``in_proj_weight``; MLP ``Linear -> act -> [Dropout, eval] -> Linear`` or a gated MLP
  ``down(act(gate x) * up x)``), read out by ``Flatten -> Linear``. Units: the heads (q, k, v rows of the head
  in the fused projection: one member with three offsets; its bias likewise; the head's columns of
  ``out_proj``), the MLP units and the residual stream's dims (jointly in every parameter indexed by the
  stream, behind an embedding ``Linear``).
- ``"encoder"``: ``nn.TransformerEncoderLayer`` itself (``norm_first`` drawn), same units.
- ``"bn-cnn"``: ``Conv2d -> BatchNorm2d -> act -> [MaxPool] -> ... -> Flatten -> Linear`` (units: the channels,
  with the BatchNorm's weight and bias as members and its running statistics as buffers that move with them),
  or a residual variant ``s = stem(x); out = act(s + BN(conv2(act(BN(conv1 s)))))`` whose inner channels and
  whose stream channels (jointly in every parameter indexed by the stream) are the two layers.

The attention mask (causal or none) and the scale are shared by all heads, so permuting heads is a symmetry of
the loss (T9); every layer here is a symmetry of the loss, in train and in eval mode.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from topoverify.errors import TopoverifyError
from topoverify.formatting import ResultMixin
from topoverify.neurons.activation_registry import activation_module
from topoverify.neurons.blocks import AttentionBlock, ChannelNormBlock, GatedBlock
from topoverify.neurons.layouts import NeuronLayer, ParamAxis

BLOCK_KINDS = ("transformer", "encoder", "bn-cnn")


class GatedMLP(nn.Module):
    """``down(act(gate(x)) * up(x))`` (SwiGLU / GeGLU with names of Llama-style models)."""

    def __init__(self, d: int, f: int, activation: str, bias: bool):
        super().__init__()
        self.gate_proj, self.up_proj = nn.Linear(d, f, bias=bias), nn.Linear(d, f, bias=bias)
        self.down_proj = nn.Linear(f, d, bias=bias)
        self.act = activation_module(activation)

    def forward(self, x):
        return self.down_proj(self.act(self.gate_proj(x)) * self.up_proj(x))


def _causal(s: int, device, bool_mask: bool, dtype=None) -> torch.Tensor:
    m = torch.ones(s, s, dtype=torch.bool, device=device).triu(1)
    if bool_mask:
        return m
    return torch.zeros(s, s, dtype=dtype, device=device).masked_fill(m, -math.inf)


class PreLNBlock(nn.Module):
    """``x + attn(ln1 x)`` then ``x + mlp(ln2 x)`` on ``(batch, seq, d)`` inputs."""

    def __init__(self, spec: BlockSpec):
        super().__init__()
        d, f = spec.d_model, spec.ffn
        self.batch_first, self.causal = spec.batch_first, spec.causal
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.attn = nn.MultiheadAttention(d, spec.heads, bias=spec.bias, batch_first=spec.batch_first)
        if spec.gated:
            self.mlp: nn.Module = GatedMLP(d, f, spec.activation, spec.bias)
        else:
            layers = [nn.Linear(d, f, bias=spec.bias), activation_module(spec.activation)]
            layers += [nn.Dropout(0.25)] if spec.dropout else []
            self.mlp = nn.Sequential(*layers, nn.Linear(f, d, bias=spec.bias))

    def forward(self, x):
        h = self.ln1(x)
        h = h if self.batch_first else h.transpose(0, 1)
        mask = _causal(x.shape[1], x.device, True) if self.causal else None
        a, _ = self.attn(h, h, h, attn_mask=mask, need_weights=False)
        x = x + (a if self.batch_first else a.transpose(0, 1))
        return x + self.mlp(self.ln2(x))


class EncoderBlock(nn.Module):
    """``nn.TransformerEncoderLayer`` on ``(batch, seq, d)`` inputs whatever its ``batch_first``."""

    def __init__(self, spec: BlockSpec):
        super().__init__()
        self.batch_first, self.causal = spec.batch_first, spec.causal
        self.layer = nn.TransformerEncoderLayer(
            spec.d_model, spec.heads, spec.ffn, dropout=0.25 if spec.dropout else 0.0, activation=spec.activation,
            batch_first=spec.batch_first, norm_first=spec.norm_first, bias=spec.bias)

    def forward(self, x):
        h = x if self.batch_first else x.transpose(0, 1)
        mask = _causal(x.shape[1], x.device, False, x.dtype) if self.causal else None
        out = self.layer(h, src_mask=mask, is_causal=self.causal)
        return out if self.batch_first else out.transpose(0, 1)


class ResidualBN(nn.Module):
    """``s = stem(x); out = act(s + bn2(conv2(act(bn1(conv1(s))))))`` then ``[pool]``."""

    def __init__(self, spec: BlockSpec):
        super().__init__()
        inner, stream = spec.channels
        self.stem = nn.Conv2d(spec.in_channels, stream, 3, padding=1, bias=spec.bias)
        self.conv1 = nn.Conv2d(stream, inner, 3, padding=1, bias=spec.conv_bias)
        self.bn1 = nn.BatchNorm2d(inner)
        self.conv2 = nn.Conv2d(inner, stream, 3, padding=1, bias=spec.conv_bias)
        self.bn2 = nn.BatchNorm2d(stream)
        self.act = activation_module(spec.activation)
        self.pool = nn.MaxPool2d(2) if spec.pool else nn.Identity()

    def forward(self, x):
        s = self.stem(x)
        return self.pool(self.act(s + self.bn2(self.conv2(self.act(self.bn1(self.conv1(s)))))))


class BlockNet(nn.Module):
    """``[embed ->] body -> Flatten -> Linear`` (the readout ``head``); ``embed`` (transformers) is a Linear into
    the residual stream, so that the stream's dims are units too (the raw input is data, not permuted)."""

    def __init__(self, body: nn.Module, flat: int, out: int, bias: bool, embed: int | None = None):
        super().__init__()
        self.embed = nn.Linear(embed, embed, bias=bias) if embed else nn.Identity()
        self.body, self.head = body, nn.Linear(flat, out, bias=bias)

    def forward(self, x):
        return self.head(self.body(self.embed(x)).flatten(1))


@dataclass(frozen=True)
class BlockSpec(ResultMixin):
    """A small transformer block or BatchNorm conv net (see the module docstring); shrinks towards one head of
    one dim, 2 MLP units, no mask, bias on. :attr:`widths` / :meth:`neuron_layers`: transformers (heads, MLP
    units, stream dims); bn-cnn one layer per conv (residual: inner channels, stream channels). ``channels``:
    bn-cnn channels per conv (residual: ``(inner, stream)``). ``bn_train``: BatchNorm in train mode (batch
    statistics; running statistics updated) or eval mode. ``dropout``: a Dropout layer, run in eval mode (the
    whole model is put in eval mode; for "bn-cnn" ``bn_train`` decides the mode)."""

    kind: str = "transformer"
    heads: int = 1
    head_dim: int = 1
    ffn: int = 2
    activation: str = "gelu"
    bias: bool = True
    batch_first: bool = True
    causal: bool = False
    gated: bool = False
    dropout: bool = False
    norm_first: bool = True
    seq: int = 2
    out_features: int = 1
    in_channels: int = 1
    channels: tuple[int, ...] = ()
    image: int = 3
    pool: bool = False
    residual: bool = False
    bn_train: bool = True

    def __post_init__(self):
        if self.kind not in BLOCK_KINDS:
            raise TopoverifyError(f"unknown block kind {self.kind!r}; use one of {BLOCK_KINDS}.")
        if self.kind == "bn-cnn" and (not self.channels or (self.residual and len(self.channels) != 2)):
            raise TopoverifyError(f"a bn-cnn needs channels (residual: (inner, stream)); got {self.channels}.")

    @property
    def conv_bias(self) -> bool:
        """Convs feeding a BatchNorm have a bias only in eval mode: in train mode the batch mean cancels it (its
        exact gradient is 0, so its movement and any Adam-like state of it are pure round-off)."""
        return self.bias and not self.bn_train

    @property
    def d_model(self) -> int:
        return self.heads * self.head_dim

    @property
    def in_features(self) -> int:
        return self.in_channels if self.kind == "bn-cnn" else self.d_model

    @property
    def widths(self) -> tuple[int, ...]:
        """Units of each neuron layer, in the order of :meth:`neuron_layers`."""
        return self.channels if self.kind == "bn-cnn" else (self.heads, self.ffn, self.d_model)

    def _side(self) -> int:
        return self.image // 2 if self.pool else self.image

    def build(self, dtype: torch.dtype = torch.float64, seed: int = 0) -> nn.Module:
        """A fresh model initialised deterministically from ``seed``, in its mode (train / eval)."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            if self.kind == "transformer":
                model = BlockNet(PreLNBlock(self), self.seq * self.d_model, self.out_features, self.bias,
                                 self.d_model)
            elif self.kind == "encoder":
                model = BlockNet(EncoderBlock(self), self.seq * self.d_model, self.out_features, self.bias,
                                 self.d_model)
            elif self.residual:
                model = BlockNet(ResidualBN(self), self.channels[1] * self._side() ** 2, self.out_features, self.bias)
            else:
                layers: list[nn.Module] = []
                prev = self.in_channels
                for i, c in enumerate(self.channels):
                    layers += [nn.Conv2d(prev, c, 3, padding=1, bias=self.conv_bias), nn.BatchNorm2d(c),
                               activation_module(self.activation)]
                    if self.pool and i == len(self.channels) - 1:
                        layers.append(nn.MaxPool2d(2))
                    prev = c
                model = BlockNet(nn.Sequential(*layers), prev * self._side() ** 2, self.out_features, self.bias)
            with torch.no_grad():  # non-trivial BatchNorm affine parameters and statistics
                for m in model.modules():
                    if isinstance(m, nn.BatchNorm2d):
                        m.weight.uniform_(0.5, 1.5)
                        m.bias.uniform_(-0.5, 0.5)
                        m.running_mean.uniform_(-0.2, 0.2)
                        m.running_var.uniform_(0.5, 1.5)
        model = model.to(dtype)
        train = self.bn_train if self.kind == "bn-cnn" else not self.dropout
        return model.train(train)

    def largest_tensor(self) -> int:
        return max(p.numel() for p in self.build().parameters())

    def input_shape(self, batch: int) -> tuple[int, ...]:
        if self.kind == "bn-cnn":
            return (batch, self.in_channels, self.image, self.image)
        return (batch, self.seq, self.d_model)

    def describe(self) -> str:
        bias = "" if self.bias else ", no bias"
        if self.kind == "bn-cnn":
            inner = (f"residual block (inner {self.channels[0]}, stream {self.channels[1]} channels)"
                     if self.residual else "-".join(str(c) for c in self.channels) + " channels")
            return (f"BatchNorm conv net {self.in_channels}ch {self.image}x{self.image} -[{inner}, BN "
                    f"{'train' if self.bn_train else 'eval'}, {self.activation}{', maxpool' if self.pool else ''}]"
                    f"- flatten - {self.out_features}{bias}")
        mlp = f"gated MLP {self.ffn}" if self.gated else f"MLP {self.ffn}"
        what = "pre-LN block" if self.kind == "transformer" else \
            f"TransformerEncoderLayer ({'norm_first' if self.norm_first else 'post-LN'})"
        flags = [f for f, on in (("causal", self.causal), ("batch_first", self.batch_first),
                                 ("dropout (eval)", self.dropout)) if on]
        return (f"{what} d={self.d_model} ({self.heads} heads x {self.head_dim}), {mlp} {self.activation}, "
                f"seq {self.seq}{', ' + ', '.join(flags) if flags else ''} - flatten - {self.out_features}{bias}")

    def __str__(self) -> str:
        return self.describe()

    # -- the neuron layers (T9's layouts) -----------------------------------------------------------------------

    def neuron_layers(self, model: nn.Module) -> list[NeuronLayer]:
        """One :class:`NeuronLayer` per entry of :attr:`widths`, declared from the block's structure."""
        names = {n for n, _ in model.named_parameters()}
        if self.kind == "bn-cnn":
            return self._bn_layers(names)
        pre = "body.attn" if self.kind == "transformer" else "body.layer.self_attn"
        return [_heads_layer(pre, self, names), self._mlp_layer(names), self._stream_layer(pre, names)]

    def _stream_layer(self, attn: str, names: set[str]) -> NeuronLayer:
        """The residual stream's dims, jointly in every parameter indexed by the stream (T9): the embedding's
        rows, both LayerNorms' gains and biases (LayerNorm is permutation-equivariant with them permuted), the
        columns of q/k/v and of the MLP's input projections, the rows of out_proj and of the MLP's output
        projection, and the readout's columns at every sequence position (one segment per position)."""
        d = self.d_model
        if self.kind == "encoder":
            norms, ups, down = ("body.layer.norm1", "body.layer.norm2"), ("body.layer.linear1",), "body.layer.linear2"
        elif self.gated:
            norms, ups = ("body.ln1", "body.ln2"), ("body.mlp.gate_proj", "body.mlp.up_proj")
            down = "body.mlp.down_proj"
        else:
            norms, ups, down = ("body.ln1", "body.ln2"), ("body.mlp.0",), f"body.mlp.{3 if self.dropout else 2}"
        members = list(_rows("embed", names))
        for norm in norms:
            members += [ParamAxis(f"{norm}.{p}", 0) for p in ("weight", "bias") if f"{norm}.{p}" in names]
        members.append(ParamAxis(f"{attn}.in_proj_weight", 1))
        members += _rows(f"{attn}.out_proj", names)
        members += [ParamAxis(f"{up}.weight", 1) for up in ups]
        members += _rows(down, names)
        members.append(ParamAxis("head.weight", 1, 1, tuple(s * d for s in range(self.seq)), d))
        return NeuronLayer(name="residual", size=d, members=tuple(members), kind="residual")

    def _mlp_layer(self, names: set[str]) -> NeuronLayer:
        if self.kind == "encoder":
            up, down = "body.layer.linear1", "body.layer.linear2"
        elif self.gated:
            gate, up, down = "body.mlp.gate_proj", "body.mlp.up_proj", "body.mlp.down_proj"
            members = _rows(gate, names) + _rows(up, names) + (ParamAxis(f"{down}.weight", 1),)
            return NeuronLayer(name=gate, size=self.ffn, members=members, kind="gated", producer=gate,
                               consumer=down, activation=self.activation,
                               block=GatedBlock(gate, up, down, self.activation))
        else:
            up, down = "body.mlp.0", f"body.mlp.{3 if self.dropout else 2}"
        return NeuronLayer(name=up, size=self.ffn, members=_rows(up, names) + (ParamAxis(f"{down}.weight", 1),),
                           kind="linear", producer=up, consumer=down, activation=self.activation)

    def _bn_layers(self, names: set[str]) -> list[NeuronLayer]:
        def bn(prod: str, norm: str, consumer: str, cons_members, size: int, extra=()) -> NeuronLayer:
            members = _rows(prod, names) + (ParamAxis(f"{norm}.weight", 0), ParamAxis(f"{norm}.bias", 0)) + \
                tuple(cons_members)
            return NeuronLayer(name=prod, size=size, members=members + tuple(extra), kind="channel-bn",
                               producer=prod, consumer=consumer, activation=self.activation,
                               block=ChannelNormBlock(prod, norm, consumer, self.activation, self.bn_train),
                               buffers=_stats(norm))
        flat = self._side() ** 2
        if self.residual:
            inner, stream = self.channels
            b = "body"
            layers = [bn(f"{b}.conv1", f"{b}.bn1", f"{b}.conv2", [ParamAxis(f"{b}.conv2.weight", 1)], inner)]
            members = _rows(f"{b}.stem", names) + (ParamAxis(f"{b}.conv1.weight", 1),) + \
                _rows(f"{b}.conv2", names) + (ParamAxis(f"{b}.bn2.weight", 0), ParamAxis(f"{b}.bn2.bias", 0),
                                              ParamAxis("head.weight", 1, flat))
            layers.append(NeuronLayer(name="residual", size=stream, members=members, kind="residual",
                                      buffers=_stats(f"{b}.bn2")))
            return layers
        layers, idx = [], 0
        for i, c in enumerate(self.channels):
            conv, norm = f"body.{idx}", f"body.{idx + 1}"
            idx += 3 + (1 if self.pool and i == len(self.channels) - 1 else 0)
            if i + 1 < len(self.channels):
                consumer, cons = f"body.{idx}", [ParamAxis(f"body.{idx}.weight", 1)]
            else:
                consumer, cons = "head", [ParamAxis("head.weight", 1, flat)]
            layers.append(bn(conv, norm, consumer, cons, c))
        return layers


def _rows(module: str, names: set[str]) -> tuple[ParamAxis, ...]:
    return tuple(ParamAxis(f"{module}.{p}", 0) for p in ("weight", "bias") if f"{module}.{p}" in names)


def _stats(norm: str) -> tuple[ParamAxis, ...]:
    return (ParamAxis(f"{norm}.running_mean", 0), ParamAxis(f"{norm}.running_var", 0))


def _heads_layer(pre: str, spec: BlockSpec, names: set[str]) -> NeuronLayer:
    """Heads of ``nn.MultiheadAttention`` with a fused ``in_proj``: head h owns rows ``s·d + h·hd + b`` of
    ``in_proj_weight`` / ``in_proj_bias`` for s in (q, k, v), and columns ``h·hd + b`` of ``out_proj.weight``."""
    d, hd = spec.d_model, spec.head_dim
    offsets = (0, d, 2 * d)
    members = [ParamAxis(f"{pre}.in_proj_weight", 0, hd, offsets, d)]
    if f"{pre}.in_proj_bias" in names:
        members.append(ParamAxis(f"{pre}.in_proj_bias", 0, hd, offsets, d))
    members.append(ParamAxis(f"{pre}.out_proj.weight", 1, hd))
    w, b = f"{pre}.in_proj_weight", f"{pre}.in_proj_bias" if f"{pre}.in_proj_bias" in names else None
    block = AttentionBlock(module=pre, style="torch-mha", num_heads=spec.heads, head_dim=hd, embed_dim=d, q=w, k=w,
                           v=w, o=f"{pre}.out_proj.weight", q_bias=b, k_bias=b, v_bias=b,
                           o_bias=f"{pre}.out_proj.bias" if f"{pre}.out_proj.bias" in names else None,
                           q_offset=0, k_offset=d, v_offset=2 * d, scale=1 / math.sqrt(hd),
                           causal=spec.causal)
    return NeuronLayer(name=f"{pre}.heads", size=spec.heads, members=tuple(members), kind="attention-heads",
                       producer=pre, consumer=f"{pre}.out_proj", block=block)


__all__ = ["BLOCK_KINDS", "BlockSpec", "BlockNet", "PreLNBlock", "EncoderBlock", "ResidualBN", "GatedMLP"]
