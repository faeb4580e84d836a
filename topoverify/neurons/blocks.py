"""What a neuron layer's units are inside their block: the descriptions that layout detection
(:mod:`topoverify.neurons.layouts`, :mod:`topoverify.neurons.recognizers`) attaches to a
:class:`~topoverify.neurons.layouts.NeuronLayer` as ``layer.block``, and that the update-field builders
(:mod:`topoverify.measure.fields`) read to write the unit's contribution Φ (claims T1, T9 in ``spec/claims.toml``).

Module and parameter names are those of ``model.named_modules()`` / ``model.named_parameters()``.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class GatedBlock:
    """A gated MLP (SwiGLU, GeGLU): unit i is (gate row, up row, down column) and contributes
    down_i · σ(gate_i · x + b_g,i) · (up_i · x + b_u,i). ``gate``/``up``/``down`` are module names (Linear, or
    Hugging Face Conv1D when ``transposed``); ``activation`` the name of σ."""

    gate: str
    up: str
    down: str
    activation: str
    transposed: bool = False


@dataclass(frozen=True)
class AttentionBlock:
    """Multi-head attention whose heads (``unit="head"``) or, inside head ``head``, whose query/key dims
    (``unit="qk"``) or value/output dims (``unit="vo"``) are the units.

    ``module``: the attention module (its forward inputs and output are where the field's signal is read).
    ``style``: ``"torch-mha"`` (``nn.MultiheadAttention``: fused ``in_proj_weight`` or separate
    ``q/k/v_proj_weight``, ``out_proj``), ``"hf-gpt2"`` (Hugging Face GPT-2: fused ``c_attn`` and ``c_proj``,
    Conv1D), ``"qkvo"`` (separate q/k/v/o projection modules). ``q``/``k``/``v``/``o`` are the weight parameter
    names (the same name for a fused projection), ``*_bias`` their biases (None without), ``*_offset`` where
    the query/key/value rows start along the fused output axis (0 for separate weights). ``transposed``:
    weights stored (in, out) (Conv1D). ``scale`` multiplies q·k; ``causal``: True for a causal model,
    None when the mask comes from the call (read from the captured call).
    """

    module: str
    style: str
    num_heads: int
    head_dim: int
    embed_dim: int
    q: str
    k: str
    v: str
    o: str
    q_bias: str | None = None
    k_bias: str | None = None
    v_bias: str | None = None
    o_bias: str | None = None
    q_offset: int = 0
    k_offset: int = 0
    v_offset: int = 0
    transposed: bool = False
    scale: float = 1.0
    causal: bool | None = None
    unit: str = "head"
    head: int | None = None


@dataclass(frozen=True)
class ChannelNormBlock:
    """Channels (conv) or units (linear) that pass through a BatchNorm: producer → BatchNorm → activation →
    consumer. The BatchNorm's weight and bias are members of the unit; its running statistics are the layer's
    ``buffers`` (they move with the channel). ``training``: the BatchNorm's mode when detected (train mode
    normalises with the batch's own statistics of each channel; eval mode with the running ones)."""

    producer: str
    norm: str
    consumer: str
    activation: str | None
    training: bool


@dataclass(frozen=True)
class ResidualBlock:
    """Units of a residual stream (or of another shared axis, such as tied embedding dims): permuting them is a
    symmetry only when done at once in every parameter listed in the layout. ``reason`` says why their update is
    not one field of the unit's own parameters (claim T9)."""

    reason: str


__all__ = ["GatedBlock", "AttentionBlock", "ChannelNormBlock", "ResidualBlock"]
