"""The gated-MLP field (topoverify.measure.gated_field; claims T1, T9): closed-form gradient and Hessian-vector
product against torch.func on random points (float64), T1's identity on a SwiGLU block with and without biases,
the power-iteration K below the exact Hessian norm, and no certified hull bound (an infinite one, with the
reason)."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from topoverify.checks.field_identity import check_field_identity
from topoverify.measure.fields import unit_field
from topoverify.neurons.blocks import GatedBlock
from topoverify.neurons.layouts import NeuronLayer, ParamAxis, neuron_cloud, validate_layer

D_IN, D_HID, D_OUT = 4, 6, 3


class SwiGLU(nn.Module):
    def __init__(self, bias):
        super().__init__()
        self.gate_proj = nn.Linear(D_IN, D_HID, bias=bias)
        self.up_proj = nn.Linear(D_IN, D_HID, bias=bias)
        self.down_proj = nn.Linear(D_HID, D_OUT, bias=bias)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


def gated_layer(model, bias):
    members = [ParamAxis("gate_proj.weight", 0)] + ([ParamAxis("gate_proj.bias", 0)] if bias else [])
    members += [ParamAxis("up_proj.weight", 0)] + ([ParamAxis("up_proj.bias", 0)] if bias else [])
    members += [ParamAxis("down_proj.weight", 1)]
    return validate_layer(model, NeuronLayer("gate_proj", D_HID, tuple(members), kind="gated", producer="gate_proj",
                                             consumer="down_proj", activation="silu",
                                             block=GatedBlock("gate_proj", "up_proj", "down_proj", "silu")))


def case(bias, seed=0):
    torch.manual_seed(seed)
    model = SwiGLU(bias).double()
    x = torch.randn(2, 3, D_IN, dtype=torch.float64)  # batch × sequence: 6 samples
    return model, x, gated_layer(model, bias)


def loss_fn(model, batch):
    return (torch.tanh(model(batch)) ** 2).sum()


@pytest.mark.parametrize("bias", [True, False])
def test_gated_units_satisfy_t1(bias):
    model, x, layer = case(bias)
    check = check_field_identity(model, loss_fn, x, layers=[layer])
    assert check.holds and check.layers[0].residual <= 1e-9, str(check)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_closed_form_gradient_and_hvp_match_torch_func(seed):
    """At random points (not only the neurons), ∇Φ and ∇²Φ·v from the closed forms equal torch.func's."""
    model, x, layer = case(True, seed)
    field, _ = unit_field(model, layer, loss_fn, x)
    gen = torch.Generator().manual_seed(seed)
    Z = torch.randn(4, field.dim, generator=gen, dtype=torch.float64)
    V = torch.randn(4, field.dim, generator=gen, dtype=torch.float64)
    for z, v, g, hv in zip(Z, V, field.gradient(Z), field._hvp(Z, V)):
        ref_g = torch.func.grad(field.potential)(z)
        hess = torch.func.hessian(field.potential)(z)
        torch.testing.assert_close(g, ref_g, rtol=1e-10, atol=1e-12 * float(ref_g.abs().max()))
        torch.testing.assert_close(hv, hess @ v, rtol=1e-10, atol=1e-12 * float((hess @ v).abs().max()))


def test_k_estimate_is_a_lower_bound_and_no_certificate_is_claimed():
    model, x, layer = case(True, 3)
    field, _ = unit_field(model, layer, loss_fn, x)
    cloud = neuron_cloud(model, layer)
    est = field.hessian_norm_lower(cloud, iters=200, tol=1e-12, generator=torch.Generator().manual_seed(0))
    exact = torch.stack([torch.linalg.matrix_norm(torch.func.hessian(field.potential)(z), 2) for z in cloud])
    assert bool((est <= exact * (1 + 1e-9)).all()) and bool((est >= 0.99 * exact).all())
    hull = field.hull_bounds(cloud)
    assert hull.norm == math.inf and "K is an estimate" in hull.reason
