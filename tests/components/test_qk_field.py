"""The query/key-dim field of one attention head at the attention logits (topoverify.measure.qk_field; claims
T1(b), T2, T9): T1's identity for nn.MultiheadAttention (fused and separate projections, masks), δ_S by autograd
equal to the softmax formula, the certified K against an exact rational M and a 60-digit SVD, the power-iteration
estimate under it, weight decay, the dispatch through unit_field / check_unit_layouts, and the refusals."""

import math
from fractions import Fraction

import mpmath
import pytest
import torch
from torch import nn

from topoverify.checks.architecture import HOLDS, check_unit_layouts
from topoverify.checks.field_identity import check_field_identity
from topoverify.errors import LayoutError
from topoverify.measure.attention_field import capture_block, head_inputs, masked_softmax
from topoverify.measure.fields import unit_field
from topoverify.measure.qk_field import QKField, logit_signal
from topoverify.measure.unit_field import PowerField
from topoverify.neurons.layouts import NeuronLayer, ParamAxis, detect_layers, neuron_cloud

E, H, T, B = 4, 2, 3, 2


class Attn(nn.Module):
    def __init__(self, kdim=None, bias=True, masks=True):
        super().__init__()
        self.att = nn.MultiheadAttention(E, H, batch_first=True, kdim=kdim, vdim=kdim, bias=bias)
        self.head = nn.Linear(E, 3)
        self.kdim, self.masks = kdim or E, masks

    def forward(self, x):
        kv = x if self.kdim == E else x[..., :1].expand(*x.shape[:-1], self.kdim) * torch.linspace(1, 2, self.kdim)
        am = torch.triu(torch.ones(T, T, dtype=torch.bool), 1) if self.masks else None
        kpm = torch.zeros(x.shape[0], T, dtype=torch.bool)
        kpm[-1, -1] = True
        y = self.att(x, kv, kv, attn_mask=am, key_padding_mask=kpm if self.masks else None)[0]
        return self.head(torch.tanh(y))


def loss_fn(model, x):
    return (model(x) ** 2).mean()


def case(seed=0, dtype=torch.float64, **kw):
    torch.manual_seed(seed)
    model = Attn(**kw).to(dtype).eval()
    x = torch.randn(B, T, E, dtype=dtype)
    layers = [layer for layer in detect_layers(model, finer=True) if layer.kind == "attention-qk"]
    assert len(layers) == H
    return model, x, layers


@pytest.mark.parametrize("kw", [{}, {"kdim": 3}, {"bias": False, "masks": False}])
def test_qk_dims_satisfy_t1_at_the_logits(kw):
    """∂L/∂θ_j = ∇Φ(θ_j) = (M z_k, Mᵀ z_q) for every query/key dim of every head, float64 round-off (T1(b))."""
    model, x, layers = case(**kw)
    check = check_field_identity(model, loss_fn, x, layers=layers)
    assert check.holds, str(check)
    assert all(row.residual <= 1e-9 for row in check.layers)
    field, _ = unit_field(model, layers[0], loss_fn, x)
    assert isinstance(field, QKField) and float(field.M.abs().max()) > 0


def test_logit_signal_equals_the_softmax_formula():
    """δ_S from autograd = A ⊙ (G − ⟨A, G⟩) row-wise, G = δ_out (V_h W_o,h)ᵀ; 0 at masked entries."""
    model, x, layers = case(seed=3)
    layer = layers[1]
    cap = capture_block(model, layer, layer.block.module, loss_fn, x)
    inp = head_inputs(cap, layer)
    S, dS = logit_signal(cap, layer, inp)
    A = masked_softmax(S, inp)
    att, h, hd = model.att, 1, E // H
    rows = slice(2 * E + h * hd, 2 * E + (h + 1) * hd)
    Wv, bv = att.in_proj_weight[rows], att.in_proj_bias[rows]
    Wo = att.out_proj.weight[:, h * hd:(h + 1) * hd]
    G = inp.delta @ ((inp.xv @ Wv.T + bv) @ Wo.T).transpose(-1, -2)
    formula = A * (G - (A * G).sum(-1, keepdim=True))
    assert torch.allclose(dS, formula.detach(), rtol=1e-10, atol=1e-15)
    assert float(dS.abs().max()) > 0 and torch.all(dS[A == 0] == 0)


def exact_sigma(field, layer, model, x):
    """σ_max of M = s Σ_b X̃ᵀ δ_S X̃ computed in exact rationals from the captured floats, by a 60-digit SVD."""
    cap = capture_block(model, layer, layer.block.module, loss_fn, x)
    inp = head_inputs(cap, layer)
    _, dS = logit_signal(cap, layer, inp)
    X = torch.cat([inp.xq, torch.ones(B, T, 1, dtype=inp.xq.dtype)], -1).tolist()
    D, s, n = dS.tolist(), Fraction(inp.scale), E + 1
    M = [[s * sum(Fraction(X[b][t][i]) * Fraction(D[b][t][u]) * Fraction(X[b][u][j])
                  for b in range(B) for t in range(T) for u in range(T)) for j in range(n)] for i in range(n)]
    with mpmath.workdps(60):
        A = mpmath.matrix([[mpmath.mpf(v.numerator) / v.denominator for v in row] for row in M])
        return float(max(mpmath.svd_r(A, compute_uv=False))), M


@pytest.mark.parametrize("seed,dtype", [(0, torch.float64), (1, torch.float64), (2, torch.float32)])
def test_certified_k_bounds_the_exact_sigma_max_and_the_estimate_tightly(seed, dtype):
    """certified ≥ σ_max(exact rational M) ≳ power-iteration value ≥ (1 − 1e-6)·certified (the estimate is a
    float64 ‖Jv‖, so above σ_max by its own rounding at most); the field's M is the
    rational one to float64 round-off; a random-start power iteration stays under the certificate too."""
    model, x, layers = case(seed=seed, dtype=dtype)
    for layer in layers:
        field, _ = unit_field(model, layer, loss_fn, x)
        cloud = neuron_cloud(model, layer)  # the model's own dtype, as predict_step passes it
        exact, M = exact_sigma(field, layer, model, x)
        assert torch.allclose(field.M, torch.tensor([[float(v) for v in r] for r in M], dtype=torch.float64),
                              rtol=1e-12, atol=1e-18)
        cert = field.hull_bounds(cloud).norm
        est = field.hessian_norm_lower(cloud, neighbors=1)
        assert est.shape[0] >= cloud.shape[0] and torch.all(est == est[0])
        assert cert >= exact and exact * (1 + 1e-12) >= float(est[0]) >= (1 - 1e-6) * cert > 0  # est: rounded ‖Jv‖
        top = field.top_eigenvalue_lower(cloud, shift=cert)
        assert cert >= float(top.max()) >= (1 - 1e-6) * cert
        gen = torch.Generator().manual_seed(seed)
        rand = PowerField._sampled(field, cloud.to(torch.float64), None, 400, 0.0, gen, 4, 8, 0, None)
        assert float(rand.max()) <= cert and float(rand.max()) >= 0.5 * cert


def test_weight_decay_widens_the_bound_by_its_largest_entry():
    """‖J + Λ‖ ≤ σ_max + λ and λ_max(±J + Λ) ≤ σ_max + λ for 0 ⪯ Λ ⪯ λI (checked on diagonal Λ by eigvalsh)."""
    model, x, layers = case(seed=4)
    field, _ = unit_field(model, layers[0], loss_fn, x)
    cloud = neuron_cloud(model, layers[0])
    lam = 0.7 * field.certified
    hb = field.hull_bounds(cloud, decay_max=lam, signs=(1, -1))
    for _ in range(5):
        Lam = torch.diag(torch.rand(field.dim, dtype=torch.float64) * lam)
        for J in (field.J + Lam, -field.J + Lam):
            ev = torch.linalg.eigvalsh(J)
            assert float(ev.abs().max()) <= hb.norm and float(ev.max()) <= min(hb.top, hb.top_neg)
    assert hb.norm <= (field.certified + lam) * (1 + 1e-12)


def test_check_unit_layouts_finds_one_field_for_detected_qk_dims():
    model, x, layers = case(seed=5)
    result = check_unit_layouts(model, loss_fn, x, layers[:1], steps=1)
    assert result.layers[0].one_field == HOLDS, str(result)


def test_bad_qk_layouts_raise_layout_errors():
    """A qk layer with the value rows in it, or without the key rows, or without its block: LayoutError."""
    model, x, layers = case(seed=6)
    qk = layers[0]
    w = "att.in_proj_weight"
    with_v = NeuronLayer(qk.name, qk.size, (ParamAxis(w, 0, 1, (0, 2 * E), E // H),), kind="attention-qk",
                         block=qk.block)
    with pytest.raises(LayoutError, match="not the query/key rows"):
        unit_field(model, with_v, loss_fn, x)
    only_q = NeuronLayer(qk.name, qk.size, (ParamAxis(w, 0, 1, (0,), E // H),), kind="attention-qk", block=qk.block)
    with pytest.raises(LayoutError):
        unit_field(model, only_q, loss_fn, x)
    bare = NeuronLayer(qk.name, qk.size, qk.members, kind="attention-qk")
    with pytest.raises(LayoutError, match="block description"):
        unit_field(model, bare, loss_fn, x)
    assert math.isfinite(unit_field(model, qk, loss_fn, x)[1])
