"""Update fields of attention heads and of value/output dims (topoverify.measure.attention_field; claims T1, T9):
T1's identity (field gradient = autograd rows) for nn.MultiheadAttention (batch_first both ways, causal attn_mask,
key_padding_mask) and a tiny Hugging Face GPT-2 (sdpa and eager, padding mask), the self-check refusing a block
the head function does not reproduce, the certified K of the value/output dims above its estimate, the T9
refusal of the residual stream and LayoutError for a layer without its block. Layers are built by hand
against the layout interface."""

import math

import pytest
import torch
from torch import nn

from topoverify.checks.field_identity import check_field_identity
from topoverify.errors import LayoutError, UnsupportedError
from topoverify.measure.fields import unit_field
from topoverify.neurons.blocks import AttentionBlock, ResidualBlock
from topoverify.neurons.layouts import NeuronLayer, ParamAxis, neuron_cloud, validate_layer

E, H, HD, T, B = 8, 2, 4, 5, 2


def mha_layers(model, prefix="att", heads=True, vo=()):
    """Head layer (and value/output layers of heads ``vo``) of a fused nn.MultiheadAttention at ``prefix``."""
    w, b, o = f"{prefix}.in_proj_weight", f"{prefix}.in_proj_bias", f"{prefix}.out_proj.weight"
    blk = AttentionBlock(prefix, "torch-mha", H, HD, E, w, w, w, o, b, b, b, f"{prefix}.out_proj.bias", 0, E, 2 * E,
                         scale=HD ** -0.5)
    out = []
    if heads:
        out.append(NeuronLayer(f"{prefix}.heads", H, (ParamAxis(w, 0, HD, (0, E, 2 * E), E),
                                                      ParamAxis(b, 0, HD, (0, E, 2 * E), E), ParamAxis(o, 1, HD)),
                               kind="attention-heads", block=blk))
    for h in vo:
        vb = AttentionBlock(**{**blk.__dict__, "unit": "vo", "head": h})
        out.append(NeuronLayer(f"{prefix}.head{h}.vo", HD, (ParamAxis(w, 0, 1, (2 * E + h * HD,), HD),
                                                           ParamAxis(b, 0, 1, (2 * E + h * HD,), HD),
                                                           ParamAxis(o, 1, 1, (h * HD,), HD)),
                               kind="attention-vo", block=vb))
    return [validate_layer(model, layer) for layer in out]


class Attn(nn.Module):
    def __init__(self, batch_first, masks, squash=False):
        super().__init__()
        self.att = nn.MultiheadAttention(E, H, batch_first=batch_first)
        self.head = nn.Linear(E, 3)
        self.batch_first, self.masks, self.squash = batch_first, masks, squash

    def forward(self, x):
        t = x.shape[1] if self.batch_first else x.shape[0]
        am = torch.triu(torch.ones(t, t, dtype=torch.bool), 1) if self.masks else None
        kpm = torch.zeros(x.shape[0 if self.batch_first else 1], t, dtype=torch.bool)
        kpm[-1, -2:] = True
        y = self.att(x, x, x, attn_mask=am, key_padding_mask=kpm if self.masks else None)[0]
        return self.head(torch.tanh(y))


def loss_fn(model, batch):
    return (model(batch) ** 2).mean()


def mha_case(batch_first, masks, dtype=torch.float64, seed=0):
    torch.manual_seed(seed)
    model = Attn(batch_first, masks).to(dtype).eval()
    x = torch.randn((B, T, E) if batch_first else (T, B, E), dtype=dtype)
    return model, x


@pytest.mark.parametrize("batch_first,masks", [(True, False), (False, True), (True, True)])
def test_mha_heads_and_vo_dims_satisfy_t1(batch_first, masks):
    """∂L/∂θ_h = ∇Φ(θ_h) for every head and every value/output dim (T1), to float64 round-off."""
    model, x = mha_case(batch_first, masks)
    layers = mha_layers(model, vo=(0, 1))
    check = check_field_identity(model, loss_fn, x, layers=layers)
    assert check.holds, str(check)
    assert all(row.residual <= 1e-9 for row in check.layers)


def test_vo_certified_bound_is_above_estimate_and_heads_have_none():
    """Value/output dims: closed form with identity activation, so K_upper is certified and ≥ the estimate;
    heads: K is an estimate and the hull bound is infinite with the reason (never a fake finite number)."""
    model, x = mha_case(True, True)
    heads, vo = mha_layers(model, vo=(1,))
    field, _ = unit_field(model, vo, loss_fn, x)
    cloud = neuron_cloud(model, vo)
    est = float(field.hessian_norm_lower(cloud, neighbors=2, generator=torch.Generator().manual_seed(0)).max())
    hull = field.hull_bounds(cloud)
    assert 0 < est <= hull.norm < math.inf
    # independently: the V/O potential Φ(w, a) = Σ_r (D_r·a)(H_r·w) is bilinear, so its Hessian is the constant
    # [[0, C], [Cᵀ, 0]] at every point, whose norm is σ_max(C): form it with torch.func at one unit, exactly
    exact = float(torch.linalg.matrix_norm(torch.func.hessian(field.potential)(cloud[0]), ord=2))
    assert exact <= hull.norm and est <= exact * (1 + 1e-9)
    hf, _ = unit_field(model, heads, loss_fn, x)
    hb = hf.hull_bounds(neuron_cloud(model, heads))
    assert hb.norm == math.inf and "K is an estimate" in hb.reason


def test_float32_heads_pass_the_self_check():
    model, x = mha_case(False, True, dtype=torch.float32)
    field, loss = unit_field(model, mha_layers(model)[0], loss_fn, x)
    assert math.isfinite(loss) and field.dim == 3 * HD * (E + 1) + E * HD


def test_self_check_refuses_a_block_the_head_function_does_not_reproduce():
    """A block whose heads do not enter its output additively (a forward hook squashes the attention output
    with tanh inside the module) must give UnsupportedError from the builder and a VIOLATED row from T1's
    checker — not a K for the wrong field."""
    model, x = mha_case(True, False, seed=1)
    model.att.register_forward_hook(lambda mod, args, out: (torch.tanh(3 * out[0]), out[1]))
    layer = mha_layers(model)[0]
    with pytest.raises(UnsupportedError, match="does not reproduce the model's gradient"):
        unit_field(model, layer, loss_fn, x)
    check = check_field_identity(model, loss_fn, x, layers=[layer])
    assert check.holds is False


def test_residual_kind_is_refused_with_the_t9_reason_and_missing_blocks_are_layout_errors():
    """Residual-stream dims: UnsupportedError with the block's T9 reason. A head / value-output layer built by
    hand without its AttentionBlock: LayoutError naming the missing block (not an AttributeError)."""
    model, x = mha_case(True, False)
    res = NeuronLayer("residual", E, (ParamAxis("head.weight", 1),), kind="residual",
                      block=ResidualBlock("LayerNorm couples the dims (T9)"))
    with pytest.raises(UnsupportedError, match="LayerNorm couples"):
        unit_field(model, res, loss_fn, x)
    heads, vo = mha_layers(model, vo=(0,))
    for layer in (heads, vo):
        with pytest.raises(LayoutError, match="needs its block description"):
            unit_field(model, NeuronLayer(layer.name, layer.size, layer.members, kind=layer.kind), loss_fn, x)


def gpt2_heads(model, layer=0):
    a = f"transformer.h.{layer}.attn"
    w, b, o = f"{a}.c_attn.weight", f"{a}.c_attn.bias", f"{a}.c_proj.weight"
    blk = AttentionBlock(a, "hf-gpt2", H, HD, E, w, w, w, o, b, b, b, f"{a}.c_proj.bias", 0, E, 2 * E, True,
                         HD ** -0.5, True)
    return validate_layer(model, NeuronLayer(f"{a}.heads", H, (ParamAxis(w, 1, HD, (0, E, 2 * E), E),
                                                               ParamAxis(b, 0, HD, (0, E, 2 * E), E),
                                                               ParamAxis(o, 0, HD)),
                                             kind="attention-heads", block=blk))


@pytest.mark.parametrize("impl", ["sdpa", "eager"])
def test_hf_gpt2_heads_satisfy_t1_with_padding(impl):
    transformers = pytest.importorskip("transformers", reason="Hugging Face GPT-2 needs transformers")
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(n_embd=E, n_head=H, n_layer=1, n_positions=8, vocab_size=11,
                                  bos_token_id=0, eos_token_id=0, attn_implementation=impl)
    model = transformers.GPT2LMHeadModel(cfg).double().eval()
    ids = torch.randint(0, 11, (B, T))
    mask = torch.ones(B, T, dtype=torch.long)
    mask[1, 0] = 0  # left padding: a query row that sees no key

    def lm(m, batch):
        return m(input_ids=batch[0], attention_mask=batch[1], labels=batch[0]).loss

    check = check_field_identity(model, lm, (ids, mask), layers=[gpt2_heads(model)])
    assert check.holds, str(check)

