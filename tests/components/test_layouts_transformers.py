"""Layouts of transformer blocks (claim T9): Hugging Face GPT-2 (Conv1D, fused c_attn, tied lm_head, residual
stream), nn.MultiheadAttention / nn.TransformerEncoderLayer, gated MLPs and q/k/v/o attention. Every recognised
layout must pass the preflight (A1 of T1) in float64 and float32."""

import dataclasses

import pytest
import torch
from torch import nn

from topoverify.errors import LayoutError
from topoverify.neurons.layouts import detect_layers
from topoverify.neurons.preflight import preflight


def _mse(model, batch):
    x, y = batch
    out = model(x)
    return ((out[0] if isinstance(out, tuple) else out) - y).pow(2).mean()


def _xy(B=2, T=5, E=8, dtype=torch.float64, batch_first=True):
    g = torch.Generator().manual_seed(2)
    shape = (B, T, E) if batch_first else (T, B, E)
    return torch.randn(*shape, generator=g, dtype=dtype), torch.randn(*shape, generator=g, dtype=dtype)


def _by_kind(layers):
    out = {}
    for layer in layers:
        out.setdefault(layer.kind, []).append(layer)
    return out


class SelfAttention(nn.Module):
    """MultiheadAttention used as self-attention (query = key = value)."""

    def __init__(self, mha):
        super().__init__()
        self.mha = mha

    def forward(self, x):
        return self.mha(x, x, x, need_weights=False)[0]


@pytest.mark.parametrize("batch_first", [True, False])
def test_transformer_encoder_layer_heads_and_mlp(batch_first):
    torch.manual_seed(0)
    model = nn.TransformerEncoderLayer(8, 2, dim_feedforward=12, dropout=0.1, batch_first=batch_first).double()
    model.eval()
    layers = detect_layers(model, finer=True)
    kinds = _by_kind(layers)
    assert [ly.name for ly in kinds["attention-heads"]] == ["self_attn.heads"]
    (mlp,) = kinds["linear"]
    assert (mlp.producer, mlp.consumer, mlp.size, mlp.activation) == ("linear1", "linear2", 12, "relu")
    heads = kinds["attention-heads"][0]
    assert heads.size == 2 and heads.block.style == "torch-mha" and heads.block.head_dim == 4
    assert heads.members[0].offsets == (0, 8, 16) and heads.members[0].block == 4
    assert len(kinds["attention-vo"]) == len(kinds["attention-qk"]) == 2
    assert kinds["attention-qk"][1].block.head == 1 and kinds["attention-qk"][1].size == 4
    batch = _xy(batch_first=batch_first)
    preflight(model, layers, _mse, batch)
    preflight(model.float(), [heads, mlp, kinds["attention-vo"][0]], _mse,
              tuple(t.float() for t in batch))


def test_mha_with_separate_projections_and_gelu_decoder_mlp():
    torch.manual_seed(0)
    model = SelfAttention(nn.MultiheadAttention(8, 2, kdim=6, vdim=6, batch_first=True)).double()

    def loss(m, batch):
        x, y = batch
        return (m.mha(x, x[..., :6], x[..., 2:], need_weights=False)[0] - y).pow(2).mean()

    layers = detect_layers(model, finer=True)
    heads = layers[0]
    assert [m.name for m in heads.members] == ["mha.q_proj_weight", "mha.k_proj_weight", "mha.v_proj_weight",
                                               "mha.in_proj_bias", "mha.out_proj.weight"]
    assert heads.members[3].offsets == (0, 8, 16)
    preflight(model, layers, loss, _xy())
    dec = nn.TransformerDecoderLayer(8, 2, dim_feedforward=10, activation="gelu", batch_first=True).double().eval()
    kinds = _by_kind(detect_layers(dec))
    assert [ly.name for ly in kinds["attention-heads"]] == ["self_attn.heads", "multihead_attn.heads"]
    assert kinds["linear"][0].activation == "gelu"
    x, y = _xy()
    preflight(dec, detect_layers(dec), lambda m, b: (m(b[0], b[0][:, :3]) - b[1]).pow(2).mean(), (x, y))


def test_mha_with_bias_k_is_not_recognised_and_says_why():
    model = SelfAttention(nn.MultiheadAttention(8, 2, add_bias_kv=True))
    with pytest.raises(LayoutError, match="bias_k"):
        detect_layers(model)


class GatedMLP(nn.Module):
    def __init__(self, d=8, f=12):
        super().__init__()
        self.gate_proj, self.up_proj = nn.Linear(d, f, bias=False), nn.Linear(d, f)
        self.down_proj, self.act_fn = nn.Linear(f, d), nn.SiLU()

    def forward(self, x):
        return self.down_proj(self.act_fn(self.gate_proj(x)) * self.up_proj(x))


class QKVOAttention(nn.Module):
    """LLaMA-style attention without rotary embeddings: separate q/k/v/o projections, causal softmax."""

    def __init__(self, d=8, heads=2, kv_heads=2):
        super().__init__()
        self.num_heads, self.head_dim, self.num_key_value_heads = heads, d // heads, kv_heads
        self.q_proj = nn.Linear(d, d)
        self.k_proj = nn.Linear(d, kv_heads * self.head_dim)
        self.v_proj = nn.Linear(d, kv_heads * self.head_dim)
        self.o_proj = nn.Linear(d, d, bias=False)

    def forward(self, x):
        B, T, _ = x.shape
        q, k, v = (p(x).view(B, T, -1, self.head_dim).transpose(1, 2) for p in (self.q_proj, self.k_proj,
                                                                                self.v_proj))
        rep = self.num_heads // self.num_key_value_heads
        k, v = k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1)
        y = nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.o_proj(y.transpose(1, 2).reshape(B, T, -1))


def test_gated_mlp_and_qkvo_attention():
    torch.manual_seed(0)
    model = nn.Sequential(QKVOAttention(), GatedMLP()).double()
    layers = detect_layers(model, finer=True)
    kinds = _by_kind(layers)
    (gated,) = kinds["gated"]
    assert [m.name for m in gated.members] == ["1.gate_proj.weight", "1.up_proj.weight", "1.up_proj.bias",
                                               "1.down_proj.weight"]
    assert gated.activation == "silu" and gated.block.up == "1.up_proj" and gated.size == 12
    assert kinds["attention-heads"][0].block.style == "qkvo" and len(kinds["attention-qk"]) == 2
    preflight(model, layers, _mse, _xy())
    preflight(model.float(), [gated, kinds["attention-heads"][0]], _mse, _xy(dtype=torch.float32))


def test_grouped_kv_heads_are_not_recognised_and_the_error_says_why():
    with pytest.raises(LayoutError, match="grouped key/value heads"):
        detect_layers(QKVOAttention(heads=2, kv_heads=1))


def test_wrong_head_layout_is_caught_by_the_preflight():
    torch.manual_seed(0)
    model = nn.TransformerEncoderLayer(8, 2, dim_feedforward=12, dropout=0.0, batch_first=True).double()
    heads = detect_layers(model)[0]
    bad = dataclasses.replace(heads, members=heads.members[:-1])  # the output projection's columns left behind
    with pytest.raises(LayoutError, match="out_proj.weight"):
        preflight(model, [bad], _mse, _xy())
