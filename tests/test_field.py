"""T1 (one update field) and the K computations of topoverify.field."""

import dataclasses
import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from topoverify.activations import get_activation
from topoverify.field import block_samples, segment_points
from topoverify.layouts import detect_layers, neuron_cloud
from topoverify.permute import permute, transposition
from topoverify.scenarios import mse_loss as mse
from topoverify.strategies.models import (
    SMOOTH_ACTIVATIONS,
    architectures,
    make_batch,
    mlp_specs,
)

SMOOTH_ARCHS = mlp_specs(max_depth=2, max_width=8, activation_names=SMOOTH_ACTIVATIONS, max_in=3, max_out=2)


def autograd_neuron_gradients(model, layer, batch):
    model.zero_grad()
    mse(model, batch).backward()
    return neuron_cloud(model, layer, {n: p.grad for n, p in model.named_parameters()})


@given(arch=architectures(max_depth=2, max_width=6), seed=st.integers(0, 1000))
def test_T1_field_gradient_equals_autograd_gradient(arch, seed):
    """Every neuron's gradient is one field g evaluated at that neuron: g(θ_i) = ∂L/∂θ_i (T1)."""
    model = arch.build(seed=seed)
    batch = make_batch(arch, 6, seed, 0)
    for layer in detect_layers(model):
        samples, _ = block_samples(model, layer, mse, batch)
        g = samples.gradient(neuron_cloud(model, layer))
        expected = autograd_neuron_gradients(model, layer, batch)
        torch.testing.assert_close(g, expected, rtol=1e-9, atol=1e-12)


@given(arch=architectures(max_depth=2, max_width=6), seed=st.integers(0, 1000), data=st.data())
def test_T1_equivariance_transposition_identity(arch, seed, data):
    """u_j(θ) = u_i(τ_ij θ): the update of neuron j equals the update of neuron i after swapping i and j."""
    model = arch.build(seed=seed)
    batch = make_batch(arch, 6, seed, 0)
    layer = detect_layers(model)[0]
    i = data.draw(st.integers(0, layer.size - 1))
    j = data.draw(st.integers(0, layer.size - 1).filter(lambda k: k != i))
    u = autograd_neuron_gradients(model, layer, batch)
    swapped = permute(model, layer, transposition(layer.size, i, j))
    u_swapped = autograd_neuron_gradients(swapped, layer, batch)
    torch.testing.assert_close(u_swapped[i], u[j], rtol=1e-10, atol=1e-13)


@given(arch=SMOOTH_ARCHS, seed=st.integers(0, 1000))
def test_closed_form_hvp_matches_torch_func_hessian(arch, seed):
    """The batched closed-form Hessian-vector product equals torch.func's Hessian applied to the vector, and
    the power-iteration estimate never exceeds the exact spectral norm (it is a lower bound)."""
    model = arch.build(seed=seed)
    batch = make_batch(arch, 5, seed, 0)
    layer = detect_layers(model)[0]
    s, _ = block_samples(model, layer, mse, batch)
    z = neuron_cloud(model, layer)[0]
    hess = torch.func.hessian(s.potential)(z)
    v = torch.randn(z.shape, generator=torch.Generator().manual_seed(seed), dtype=z.dtype)
    v = v / v.norm()
    norm, unit = s._power(z[None], v[None], None, iters=1, tol=0.0)
    torch.testing.assert_close(norm[0] * unit[0], hess @ v, rtol=1e-9, atol=1e-12)
    exact = torch.linalg.matrix_norm(hess, 2)
    est = s.hessian_norm_lower(z[None], iters=500, tol=1e-13)[0]
    assert est <= exact * (1 + 1e-9)
    # power iteration converges slowly when ±λ are nearly tied; 500 iterations always reach 1%
    assert est >= exact * (1 - 1e-2)


@given(arch=SMOOTH_ARCHS, seed=st.integers(0, 1000))
def test_certified_upper_bound_dominates_hessian_norm_anywhere_in_the_hull(arch, seed):
    """K_upper ≥ ‖∇²Φ(z)‖ at random convex combinations of neurons; K_estimate ≤ K_upper."""
    model = arch.build(seed=seed)
    batch = make_batch(arch, 5, seed, 0)
    layer = detect_layers(model)[0]
    s, _ = block_samples(model, layer, mse, batch)
    cloud = neuron_cloud(model, layer)
    upper = s.hessian_norm_upper(cloud)
    gen = torch.Generator().manual_seed(seed)
    weights = torch.rand(8, cloud.shape[0], generator=gen, dtype=torch.float64) ** 4
    points = (weights / weights.sum(1, keepdim=True)) @ cloud
    for z in points:
        assert torch.linalg.matrix_norm(torch.func.hessian(s.potential)(z), 2) <= upper
    assert s.hessian_norm_lower(segment_points(cloud)).max() <= upper


def test_conv_block_field_matches_autograd_and_hessian():
    torch.manual_seed(3)
    model = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.Tanh(), nn.Conv2d(4, 3, 3, stride=2), nn.Sigmoid(),
                          nn.AvgPool2d(2), nn.Flatten(), nn.Linear(3, 2)).double()
    batch = (torch.randn(4, 2, 6, 6, dtype=torch.float64), torch.randn(4, 2, dtype=torch.float64))
    for layer in detect_layers(model):
        s, _ = block_samples(model, layer, mse, batch)
        cloud = neuron_cloud(model, layer)
        torch.testing.assert_close(s.gradient(cloud), autograd_neuron_gradients(model, layer, batch),
                                   rtol=1e-9, atol=1e-13)
        assert s.hessian_norm_lower(cloud).max() <= s.hessian_norm_upper(cloud)


def test_relu_field_has_no_certified_constant():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(2, 5), nn.ReLU(), nn.Linear(5, 1)).double()
    batch = (torch.randn(9, 2, dtype=torch.float64), torch.randn(9, 1, dtype=torch.float64))
    s, _ = block_samples(model, detect_layers(model)[0], mse, batch)
    assert s.hessian_norm_upper(neuron_cloud(model, detect_layers(model)[0])) == math.inf


@pytest.mark.parametrize("name,peak2", [("tanh", 4 / (3 * math.sqrt(3))), ("sigmoid", 1 / (6 * math.sqrt(3))),
                                        ("gelu", 2 / math.sqrt(2 * math.pi))])
def test_activation_interval_sups(name, peak2):
    act = get_activation(name)
    lo, hi = torch.tensor([-5.0, -0.1, 3.0], dtype=torch.float64), torch.tensor([5.0, 0.1, 4.0], dtype=torch.float64)
    sups = act.sup_abs(2, lo, hi)
    assert sups[0] == pytest.approx(peak2, rel=1e-8)
    grid = torch.linspace(3.0, 4.0, 10001, dtype=torch.float64)
    assert sups[2] >= act.derivatives(grid)[2].abs().max()
    assert sups[1] <= peak2 * (1 + 1e-8)


def test_explicit_layer_has_no_field_but_a_clear_reason():
    from topoverify.errors import UnsupportedError
    from topoverify.layouts import explicit_layer
    model = nn.Sequential(nn.Linear(2, 3), nn.Tanh(), nn.Linear(3, 1)).double()
    layer = explicit_layer("h", {"0.weight": 0, "0.bias": 0, "2.weight": 1}, model)
    with pytest.raises(UnsupportedError, match="explicit layout"):
        block_samples(model, layer, mse, (torch.zeros(2, 2, dtype=torch.float64),) * 1 + (torch.zeros(2, 1),))
    assert dataclasses.asdict(layer)["size"] == 3


def test_functional_activation_keeps_its_arguments():
    """F.softplus(x, beta=100) must not be analysed as F.softplus(x): the field must still be the gradient."""
    import torch.nn.functional as F

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1, self.fc2 = nn.Linear(2, 5), nn.Linear(5, 1)

        def forward(self, x):
            return self.fc2(F.softplus(self.fc1(x), beta=100.0))

    torch.manual_seed(0)
    model = Net().double()
    with torch.no_grad():
        model.fc1.weight.mul_(0.01)
    batch = (torch.randn(7, 2, dtype=torch.float64), torch.randn(7, 1, dtype=torch.float64))
    layer = detect_layers(model)[0]
    s, _ = block_samples(model, layer, mse, batch)
    cloud = neuron_cloud(model, layer)
    torch.testing.assert_close(s.gradient(cloud), autograd_neuron_gradients(model, layer, batch), rtol=1e-9,
                               atol=1e-13)
    exact = max(torch.linalg.matrix_norm(torch.func.hessian(s.potential)(z), 2) for z in cloud)
    assert s.hessian_norm_upper(cloud) >= exact


@pytest.mark.parametrize("act,smooth", [(nn.ELU(alpha=0.5), False), (nn.ELU(), True), (nn.SELU(), False),
                                        (nn.CELU(alpha=0.3), True), (nn.Softplus(beta=5.0), True)])
def test_derivative_jump_makes_an_activation_non_smooth(act, smooth):
    assert get_activation(act).smooth is smooth
