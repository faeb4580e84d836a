"""T9's checker (topoverify.checks.architecture.check_unit_layouts) on tiny real architectures: an MLP, an
attention block with its Q/K and V/O dims, nn.TransformerEncoderLayer's MLP units and residual stream, a
BatchNorm CNN in train and eval mode. Every verdict is compared with what T9 says, and every line can fail:
a layout that is not a symmetry (a missing member, LayerNorm's gain left out, running statistics left out,
Q rows permuted without the K rows) is reported violated."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from torch import nn

from topoverify.checks.architecture import (HOLDS, NOT_BUILT, NOT_CHECKED, NOT_ONE_FIELD, ROUNDOFF,
                                            VIOLATED, T9_REASONS, check_unit_layouts, make_twins)
from topoverify.neurons.blocks import ChannelNormBlock
from topoverify.neurons.layouts import NeuronLayer, ParamAxis, detect_layers, neuron_cloud



@pytest.fixture(autouse=True)
def _float64():
    """float64 identities; the default dtype is restored for the other tests of this worker."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)
HAS_BUFFERS = "buffers" in {f.name for f in dataclasses.fields(NeuronLayer)}


def layer(name, kind, members, size, **extra):
    return NeuronLayer(name=name, size=size, members=tuple(ParamAxis(*m) for m in members), kind=kind, **extra)


def mse(model, batch):
    x, y = batch
    return ((model(x) - y) ** 2).mean()


# ------------------------------------------------------------------------------------------------ MLP


def test_T9_mlp_units_are_permutable_and_one_field_and_a_missing_member_is_caught():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 2))
    batch = (torch.randn(6, 3), torch.randn(6, 2))
    before = [p.detach().clone() for p in model.parameters()]
    result = check_unit_layouts(model, mse, batch)  # detected
    row = result.layers[0]
    assert (row.kind, row.units, row.dim) == ("linear", 5, 3 + 1 + 2), str(result)
    assert row.symmetry == HOLDS and row.one_field == HOLDS and row.residual <= row.tolerance == 1e-9, str(result)
    assert row.holds and result.verdict == HOLDS and row.still_holds == ""
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    broken = dataclasses.replace(result.layers and _mlp_layer(), members=_mlp_layer().members[:2])  # no consumer
    bad = check_unit_layouts(model, mse, batch, [broken])
    assert bad.layers[0].symmetry == VIOLATED and bad.verdict == VIOLATED and bad.holds is False
    assert "2.weight" in bad.layers[0].symmetry_detail
    json.dumps(bad.to_dict())
    assert "VIOLATED" in str(bad) and bad.to_dict()["verdict"] == VIOLATED


class SoftmaxAcrossUnits(nn.Module):
    """fc1 → tanh → softmax over the hidden units → fc2: permutable (softmax is permutation-equivariant), but the
    units do not enter fc2 additively with their own parameters only (T1's A2 fails): no one field."""

    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(3, 5), nn.Linear(5, 2)

    def forward(self, x):
        return self.fc2(torch.softmax(torch.tanh(self.fc1(x)), dim=-1))


def test_T9_one_field_check_catches_units_that_are_permutable_but_coupled():
    torch.manual_seed(7)
    model = SoftmaxAcrossUnits()
    batch = (torch.randn(6, 3), torch.randn(6, 2))
    claimed = layer("fc1", "linear", [("fc1.weight", 0), ("fc1.bias", 0), ("fc2.weight", 1)], 5, producer="fc1",
                    consumer="fc2", activation="tanh", activation_fn=torch.tanh, chain=("tanh",))
    row = check_unit_layouts(model, mse, batch, [claimed]).layers[0]
    assert row.symmetry == HOLDS and row.one_field == VIOLATED and row.residual > 1e-3, str(row)
    assert row.holds is False


def _mlp_layer(consumer="2", chain=("tanh",)):
    return layer("0", "linear", [("0.weight", 0), ("0.bias", 0), (f"{consumer}.weight", 1)], 5, producer="0",
                 consumer=consumer, activation="tanh", activation_fn=torch.tanh, chain=chain)


def test_T9_mlp_units_with_dropout_in_eval_mode_are_permutable():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Dropout(0.3), nn.Linear(5, 2)).eval()
    batch = (torch.randn(6, 3), torch.randn(6, 2))
    row = check_unit_layouts(model, mse, batch, [_mlp_layer("3", ("tanh", "Dropout"))]).layers[0]
    assert row.symmetry == HOLDS and row.one_field in (HOLDS, NOT_CHECKED), str(row)
    assert row.one_field == HOLDS or "field" in row.one_field_detail


# ------------------------------------------------------------------------------------------------ attention dims


class OneHeadAttention(nn.Module):
    """softmax(q kᵀ/√h) v → o, one head of head_dim 3 on d_model 4 (separate projections)."""

    def __init__(self, d=4, h=3):
        super().__init__()
        self.q, self.k, self.v = nn.Linear(d, h, bias=False), nn.Linear(d, h, bias=False), nn.Linear(d, h, bias=False)
        self.o = nn.Linear(h, d)
        self.scale = h ** -0.5

    def forward(self, x):
        a = torch.softmax(self.q(x) @ self.k(x).transpose(-1, -2) * self.scale, dim=-1)
        return self.o(a @ self.v(x))


def test_T9_qk_dims_permute_jointly_t6_holds_and_vo_dims_are_symmetric():
    torch.manual_seed(1)
    model = OneHeadAttention()
    batch = (torch.randn(2, 5, 4), torch.randn(2, 5, 4))
    qk = layer("attn.head0.qk", "attention-qk", [("q.weight", 0), ("k.weight", 0)], 3)
    vo = layer("attn.head0.vo", "attention-vo", [("v.weight", 0), ("o.weight", 1)], 3)
    result = check_unit_layouts(model, mse, batch, [qk, vo], steps=3)
    r_qk, r_vo = result.layers
    assert r_qk.symmetry == HOLDS and r_qk.one_field in (HOLDS, NOT_BUILT, NOT_CHECKED), str(result)
    assert r_qk.still_holds in (HOLDS, ROUNDOFF) or r_qk.one_field == HOLDS, str(result)
    assert r_vo.symmetry == HOLDS and r_vo.one_field != VIOLATED
    only_q = layer("q only", "attention-qk", [("q.weight", 0)], 3)  # Q rows without their K rows
    assert check_unit_layouts(model, mse, batch, [only_q]).layers[0].symmetry == VIOLATED


def test_T9_qk_dims_have_one_bilinear_field_at_the_logits_in_torch():
    """T9 (5) on a real head with biases: with δ = ∂L/∂S frozen at the logits S = s·(XW_q + b_q)(XW_k + b_k)ᵀ,
    every Q/K dim's gradient is ∇Φ at that dim, Φ(z) = z̃_qᵀ M z̃_k, M = s Σ_b X̃_bᵀ δ_b X̃_b (X̃ = [X, 1]).
    With δ frozen at the head's output instead, dim 0's gradient depends on dim 1: no field there."""
    torch.manual_seed(8)
    att = OneHeadAttention()
    att.q.bias = nn.Parameter(torch.randn(3))
    att.k.bias = nn.Parameter(torch.randn(3))
    x, y = torch.randn(2, 5, 4), torch.randn(2, 5, 4)
    S = att.q(x) @ att.k(x).transpose(-1, -2) * att.scale
    S.retain_grad()
    loss = ((att.o(torch.softmax(S, -1) @ att.v(x)) - y) ** 2).mean()
    loss.backward()
    xt = torch.cat([x, torch.ones(2, 5, 1)], dim=-1)
    M = att.scale * torch.einsum("bti,bts,bsj->ij", xt, S.grad, xt)
    zq = torch.cat([att.q.weight, att.q.bias[:, None]], 1)  # one row per dim: (q row, q bias)
    zk = torch.cat([att.k.weight, att.k.bias[:, None]], 1)
    field = torch.cat([zk @ M.T, zq @ M], dim=1)  # ∇Φ at every dim: (M z_k, Mᵀ z_q)
    auto = torch.cat([att.q.weight.grad, att.q.bias.grad[:, None], att.k.weight.grad, att.k.bias.grad[:, None]], 1)
    assert torch.allclose(field, auto, rtol=1e-10, atol=1e-13)
    assert auto.abs().max() > 1e-3
    # δ frozen at the head's output instead: the gradient of q-dim 0 depends on q-dim 1 (nonzero cross block)
    with torch.no_grad():
        K, V = att.k(x), att.v(x)
        out = att.o(torch.softmax(S, -1) @ V)
        delta_out = 2 * (out - y) / out.numel()

    def phi_out(wq):
        logits = (x @ wq.T + att.q.bias) @ K.transpose(-1, -2) * att.scale
        return (delta_out * att.o(torch.softmax(logits, -1) @ V)).sum()

    hess = torch.func.hessian(phi_out)(att.q.weight.detach())
    assert hess[0, :, 1, :].abs().max() > 1e-6


def test_T9_t6_twin_check_can_fail_when_the_twins_are_not_a_symmetry():
    """Twins made in the Q rows alone (K rows left different) separate at the first step: T6 needs the
    units to be identical in every member of a true symmetry."""
    torch.manual_seed(2)
    model = OneHeadAttention()
    batch = (torch.randn(2, 5, 4), torch.randn(2, 5, 4))
    only_q = layer("q only", "attention-qk", [("q.weight", 0)], 3)
    row = check_unit_layouts(model, mse, batch, [only_q]).layers[0]
    assert row.still_holds == VIOLATED and row.holds is False
    twin = OneHeadAttention()
    make_twins(twin, layer("qk", "attention-qk", [("q.weight", 0), ("k.weight", 0)], 3))
    cloud = neuron_cloud(twin, layer("qk", "attention-qk", [("q.weight", 0), ("k.weight", 0)], 3))
    assert torch.equal(cloud[0], cloud[1]) and not torch.equal(cloud[0], cloud[2])


# ------------------------------------------------------------------------------------------------ encoder layer


class TinyEncoder(nn.Module):
    """Embedding → nn.TransformerEncoderLayer (post-norm, d_model 8, 2 heads, d_ff 6) → Linear head."""

    def __init__(self, vocab=7, d=8):
        super().__init__()
        self.emb = nn.Embedding(vocab, d)
        self.block = nn.TransformerEncoderLayer(d, 2, dim_feedforward=6, dropout=0.0, batch_first=True)
        self.head = nn.Linear(d, vocab)

    def forward(self, x):
        return self.head(self.block(self.emb(x)))


def ce(model, batch):
    x, y = batch
    return nn.functional.cross_entropy(model(x).flatten(0, 1), y.flatten())


STREAM = [("emb.weight", 1), ("block.self_attn.in_proj_weight", 1), ("block.self_attn.out_proj.weight", 0),
          ("block.self_attn.out_proj.bias", 0), ("block.linear1.weight", 1), ("block.linear2.weight", 0),
          ("block.linear2.bias", 0), ("block.norm1.weight", 0), ("block.norm1.bias", 0), ("block.norm2.weight", 0),
          ("block.norm2.bias", 0), ("head.weight", 1)]


def test_T9_encoder_layer_heads_mlp_units_and_residual_stream_with_layernorm():
    torch.manual_seed(3)
    model = TinyEncoder().eval()
    with torch.no_grad():  # LayerNorm gains and biases that differ per dim (at init they are all 1 and 0)
        for name in ("norm1", "norm2"):
            getattr(model.block, name).weight.uniform_(0.5, 1.5)
            getattr(model.block, name).bias.normal_()
    batch = (torch.randint(0, 7, (2, 5)), torch.randint(0, 7, (2, 5)))
    stream = layer("residual", "residual", STREAM, 8)
    detected = detect_layers(model)  # heads (fused in_proj_weight) and MLP units
    result = check_unit_layouts(model, ce, batch, [*detected, stream], steps=2)
    by_kind = {r.kind: r for r in result.layers}
    assert set(by_kind) == {"attention-heads", "linear", "residual"}, str(result)
    for kind in ("attention-heads", "linear"):
        row = by_kind[kind]
        assert row.symmetry == HOLDS and row.one_field == HOLDS and row.residual <= row.tolerance, str(result)
    r_res = by_kind["residual"]
    assert r_res.symmetry == HOLDS and r_res.one_field == NOT_ONE_FIELD and "LayerNorm" in r_res.one_field_detail
    assert r_res.still_holds in (HOLDS, ROUNDOFF) and result.verdict == HOLDS, str(result)
    no_gain = layer("residual", "residual", [m for m in STREAM if m[0] != "block.norm1.weight"], 8)
    bad = check_unit_layouts(model, ce, batch, [no_gain]).layers[0]
    assert bad.symmetry == VIOLATED and "norm1.weight" in bad.symmetry_detail


# ------------------------------------------------------------------------------------------------ BatchNorm CNN


class BNNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1, self.bn, self.conv2 = nn.Conv2d(2, 4, 3, padding=1), nn.BatchNorm2d(4), nn.Conv2d(4, 3, 1)

    def forward(self, x):
        return self.conv2(torch.tanh(self.bn(self.conv1(x)))).mean(dim=(2, 3))


CHANNEL = [("conv1.weight", 0), ("conv1.bias", 0), ("bn.weight", 0), ("bn.bias", 0), ("conv2.weight", 1)]
RUNNING = (ParamAxis("bn.running_mean", 0), ParamAxis("bn.running_var", 0))


def bn_model(seed=4):
    torch.manual_seed(seed)
    model = BNNet()
    with torch.no_grad():
        for _ in range(3):  # running statistics that differ per channel
            model(torch.randn(4, 2, 5, 5) * 2 + 1)
        model.bn.weight.uniform_(0.5, 1.5)
        model.bn.bias.normal_()
    return model, (torch.randn(4, 2, 5, 5), torch.randn(4, 3))


def _channel_layer(buffers: bool, training: bool):
    extra = {"buffers": RUNNING} if buffers else {}
    return layer("conv1", "channel-bn", CHANNEL, 4, producer="conv1", consumer="conv2", activation="tanh",
                 activation_fn=torch.tanh, block=ChannelNormBlock("conv1", "bn", "conv2", "tanh", training), **extra)


def test_T9_batchnorm_eval_needs_the_running_statistics_and_has_no_one_field():
    model, batch = bn_model()
    model.eval()
    without = check_unit_layouts(model, mse, batch, [_channel_layer(False, False)]).layers[0]
    assert without.symmetry == VIOLATED and "loss" in without.symmetry_detail
    assert without.one_field == NOT_ONE_FIELD and without.one_field_detail == T9_REASONS["channel-bn-eval"]
    if not HAS_BUFFERS:
        pytest.skip("NeuronLayer has no buffers yet (layouts owner); the layout with running statistics is next")
    row = check_unit_layouts(model, mse, batch, [_channel_layer(True, False)]).layers[0]
    assert row.symmetry == HOLDS and row.one_field == NOT_ONE_FIELD and row.still_holds in (HOLDS, ROUNDOFF)


def test_T9_batchnorm_train_mode_channels_are_one_field_and_eval_mode_channels_are_not():
    model, batch = bn_model(5)
    model.train()
    running = model.bn.running_mean.clone()
    units = _channel_layer(HAS_BUFFERS, True)
    result = check_unit_layouts(model, mse, batch, [units], steps=2)
    row = result.layers[0]
    assert row.symmetry == HOLDS and row.one_field == HOLDS and row.residual <= row.tolerance, str(result)
    assert torch.equal(model.bn.running_mean, running) and model.training  # ran on copies only
    # the same layout read as eval-mode channels is not one field: T9's reason, and T6 checked instead
    model.eval()
    eval_row = check_unit_layouts(model, mse, batch, [units]).layers[0]
    assert eval_row.one_field == NOT_ONE_FIELD and eval_row.still_holds in (HOLDS, ROUNDOFF), str(eval_row)


def test_T9_bad_input_is_a_named_error():
    from topoverify.errors import LayoutError, UnsupportedError
    torch.manual_seed(9)
    model = nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 2))
    batch = (torch.randn(4, 3), torch.randn(4, 2))
    with pytest.raises(LayoutError, match="no parameter 'fc9.weight'"):
        check_unit_layouts(model, mse, batch, [layer("x", "linear", [("fc9.weight", 0)], 5)])
    with pytest.raises(UnsupportedError, match="float16"):
        check_unit_layouts(nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 2)).half(), mse, batch)
    with pytest.raises(UnsupportedError, match="dropout"):
        check_unit_layouts(nn.Sequential(nn.Linear(3, 5), nn.Dropout(0.5), nn.Linear(5, 2)).train(), mse, batch)


def test_T9_an_explicit_layout_without_a_field_is_inconclusive_not_a_pass():
    from topoverify.neurons.layouts import explicit_layer
    torch.manual_seed(10)
    model = nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 2))
    batch = (torch.randn(4, 3), torch.randn(4, 2))
    units = explicit_layer("hidden", {"0.weight": 0, "0.bias": 0, "2.weight": 1})
    result = check_unit_layouts(model, mse, batch, [units])
    row = result.layers[0]
    assert row.symmetry == HOLDS and row.one_field == NOT_CHECKED and row.still_holds in (HOLDS, ROUNDOFF)
    assert row.holds is None and result.verdict == "inconclusive" and "INCONCLUSIVE" in str(result)


def test_T9_a_field_off_by_one_percent_is_a_violation(monkeypatch):
    """The one-field line compares the builder's field with autograd itself: a field 1% off is reported."""
    import topoverify.measure.fields as fields
    real = fields.unit_field

    class Off:
        def __init__(self, field):
            self.field = field

        def gradient(self, Z):
            return 1.01 * self.field.gradient(Z)

    monkeypatch.setattr(fields, "unit_field", lambda *a, **k: (Off(real(*a, **k)[0]), 0.0))
    torch.manual_seed(11)
    model = nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 2))
    row = check_unit_layouts(model, mse, (torch.randn(4, 3), torch.randn(4, 2))).layers[0]
    assert row.one_field == VIOLATED and 0.005 < row.residual < 0.02 and row.holds is False
