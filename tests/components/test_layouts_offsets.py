"""Layouts whose neurons live in several segments of one axis (fused projections): ParamAxis offsets/span,
neuron_index / neuron_blocks / set_neuron_blocks, permutations, buffers, tied aliases, and the preflight (A1)."""

import pytest
import torch
from torch import nn

from topoverify.errors import LayoutError
from topoverify.neurons.layouts import (ParamAxis, explicit_layer, member_widths, neuron_blocks, neuron_cloud,
                                        neuron_index, set_neuron_blocks, validate_layer)
from topoverify.neurons.permute import inverse_permutation, permute, permute_tensor
from topoverify.neurons.preflight import preflight


class FusedAttention(nn.Module):
    """Causal multi-head self-attention with GPT-2's storage: qkv (E, 3E) as x @ qkv + b, out (E, E)."""

    def __init__(self, E=8, H=2, seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.E, self.H = E, H
        self.qkv = nn.Parameter(torch.randn(E, 3 * E, generator=g) / E ** 0.5)
        self.qkv_bias = nn.Parameter(torch.randn(3 * E, generator=g) * 0.1)
        self.out = nn.Parameter(torch.randn(E, E, generator=g) / E ** 0.5)
        self.out_bias = nn.Parameter(torch.randn(E, generator=g) * 0.1)

    def forward(self, x):
        B, T, E = x.shape
        hd = E // self.H
        q, k, v = (x @ self.qkv + self.qkv_bias).split(E, dim=-1)
        q, k, v = (t.reshape(B, T, self.H, hd).transpose(1, 2) for t in (q, k, v))
        att = (q @ k.transpose(-1, -2)) / hd ** 0.5
        att = att.masked_fill(torch.triu(torch.ones(T, T, dtype=torch.bool), 1), float("-inf")).softmax(-1)
        y = (att @ v).transpose(1, 2).reshape(B, T, E)
        return y @ self.out + self.out_bias


def _loss(model, batch):
    x, y = batch
    return ((model(x) - y) ** 2).mean()


def _batch(dtype=torch.float64):
    g = torch.Generator().manual_seed(1)
    return torch.randn(3, 5, 8, generator=g, dtype=dtype), torch.randn(3, 5, 8, generator=g, dtype=dtype)


def _heads(E=8, H=2, qkv_offsets=(0, 8, 16)):
    hd = E // H
    return explicit_layer("heads", {"qkv": ParamAxis("qkv", 1, hd, qkv_offsets, E),
                                    "qkv_bias": dict(axis=0, block=hd, offsets=(0, E, 2 * E), span=E),
                                    "out": (0, hd)})


def test_neuron_index_lists_every_segment_in_order():
    m = ParamAxis("w", 1, 2, (0, 10, 20), 6)
    idx = neuron_index(m, 3)
    assert idx.tolist()[1] == [2, 3, 12, 13, 22, 23]
    assert idx.shape == (3, 6) and idx.unique().numel() == 18
    assert torch.equal(neuron_index(ParamAxis("w", 0, 2), 3), torch.arange(6).view(3, 2))


def test_permute_with_offsets_equals_manual_index_juggling():
    t = torch.randn(5, 30, dtype=torch.float64)
    m = ParamAxis("w", 1, 2, (1, 12, 22), 6)  # 3 neurons of 2 indices in each of 3 segments
    perm = torch.tensor([2, 0, 1])
    expected = t.clone()
    for k in range(3):
        for o in m.offsets:
            src = o + 2 * int(perm[k])
            expected[:, o + 2 * k: o + 2 * k + 2] = t[:, src: src + 2]
    assert torch.equal(permute_tensor(t, m, perm), expected)
    outside = [0, 7, 8, 9, 10, 11, 18, 19, 20, 21, 28, 29]  # indices in no segment never move
    assert torch.equal(permute_tensor(t, m, perm)[:, outside], t[:, outside])
    back = permute_tensor(permute_tensor(t, m, perm), m, inverse_permutation(perm))
    assert torch.equal(back, t)


def test_blocks_roundtrip_and_set_blocks_is_their_inverse():
    t = torch.randn(4, 30)
    m = ParamAxis("w", 1, 2, (0, 10, 20), 6)
    blocks = neuron_blocks(t, m, 3)
    assert blocks.shape == (3, 4 * 6)
    new = set_neuron_blocks(t, m, 3, [1], blocks[[0]])
    assert torch.equal(neuron_blocks(new, m, 3)[1], blocks[0])
    assert torch.equal(neuron_blocks(new, m, 3)[[0, 2]], blocks[[0, 2]])
    rest = torch.ones(30, dtype=torch.bool)
    rest[neuron_index(m, 3)[1]] = False
    assert torch.equal(new[:, rest], t[:, rest]) and not torch.equal(t, new)  # only neuron 1's slice moved
    plain = ParamAxis("w", 0, 2)
    assert torch.equal(set_neuron_blocks(t, plain, 2, [0, 1], neuron_blocks(t, plain, 2)[[1, 0]]),
                       permute_tensor(t, plain, torch.tensor([1, 0])))


def test_fused_attention_heads_pass_the_preflight_and_clouds_permute():
    model = FusedAttention().double()
    layer = validate_layer(model, _heads())
    assert layer.size == 2 and member_widths(model, layer) == [8 * 12, 12, 4 * 8]
    preflight(model, [layer], _loss, _batch())
    perm = torch.tensor([1, 0])
    assert torch.equal(neuron_cloud(permute(model, layer, perm), layer), neuron_cloud(model, layer)[perm])


def test_fused_attention_heads_pass_the_preflight_in_float32():
    preflight(FusedAttention(), [_heads()], _loss, _batch(torch.float32))


def test_wrong_offset_fails_the_preflight_naming_the_parameter():
    model = FusedAttention().double()
    with pytest.raises(LayoutError, match=r"Parameter 'qkv' has the wrong segments"):
        preflight(model, [_heads(qkv_offsets=(0, 16))], _loss, _batch())  # key columns missing
    with pytest.raises(LayoutError, match=r"Parameter 'qkv' has the wrong segments"):
        preflight(model, [_heads(qkv_offsets=(0, 9))], _loss, _batch())  # key segment starts at 8, not 9


@pytest.mark.parametrize("spec, match", [
    (ParamAxis("qkv", 1, 4, (0, 8, 20), 8), "inside the axis"),
    (dict(axis=1, block=4, offsets=(0, 4), span=8), "overlap"),
    (dict(axis=1, block=3, offsets=(0,), span=8), "multiple of block"),
    (dict(axis=1, block=4, span=8), "needs offsets"),
])
def test_bad_segments_are_refused_clearly(spec, match):
    with pytest.raises(LayoutError, match=match):
        explicit_layer("bad", {"qkv": spec}, FusedAttention())


def test_buffers_move_with_units_and_are_validated():
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Tanh(), nn.Linear(4, 2))
    model[1].running_mean.copy_(torch.arange(4.0))
    layer = explicit_layer("bn", {"0.weight": 0, "0.bias": 0, "1.weight": 0, "1.bias": 0, "3.weight": 1}, model,
                           buffers={"1.running_mean": 0, "1.running_var": 0})
    moved = permute(model, layer, [3, 2, 1, 0])
    assert moved[1].running_mean.tolist() == [3.0, 2.0, 1.0, 0.0]
    assert model[1].running_mean.tolist() == [0.0, 1.0, 2.0, 3.0]  # the caller's model is untouched
    with pytest.raises(LayoutError, match="no buffer"):
        explicit_layer("bn", {"0.weight": 0}, model, buffers={"1.running_mean_typo": 0})
    assert layer.to_dict()["buffers"][0]["name"] == "1.running_mean"


def test_tied_alias_resolves_to_the_canonical_parameter_once():
    class Tied(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(5, 4)
            self.head = nn.Linear(4, 5, bias=False)
            self.head.weight = self.emb.weight

        def forward(self, ids):
            return self.head(torch.tanh(self.emb(ids)))

    model = Tied()
    layer = explicit_layer("dims", {"head.weight": 1, "emb.weight": 1}, model)
    assert [m.name for m in layer.members] == ["emb.weight"]
    with pytest.raises(LayoutError, match="listed twice"):
        explicit_layer("dims", {"head.weight": 0, "emb.weight": 1}, model)
    ids = torch.tensor([[0, 1, 2], [3, 4, 0]])
    preflight(model.double(), [layer], lambda m, b: m(b).logsumexp(-1).mean(), ids)


def test_optimizer_state_and_flat_index_follow_segmented_members():
    model = FusedAttention().double()
    layer = validate_layer(model, _heads())
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    _loss(model, _batch()).backward()
    opt.step()
    perm = torch.tensor([1, 0])
    new_model, new_opt = permute(model, layer, perm, opt)
    qkv_member = layer.members[0]
    for key in ("exp_avg", "exp_avg_sq"):
        got = new_opt.state[new_model.qkv][key]
        assert torch.equal(got, permute_tensor(opt.state[model.qkv][key], qkv_member, perm))
        assert torch.equal(neuron_blocks(got, qkv_member, 2), neuron_blocks(opt.state[model.qkv][key], qkv_member,
                                                                             2)[perm])
    from topoverify.neurons.permute import flat_permutation
    named = list(model.named_parameters())
    flat = torch.cat([p.detach().reshape(-1) for _, p in named])
    moved = torch.cat([p.detach().reshape(-1) for _, p in new_model.named_parameters()])
    assert torch.equal(flat[flat_permutation(named, layer, perm)], moved)
