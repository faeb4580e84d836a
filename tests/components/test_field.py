"""The update field of topoverify.measure.field (its gradient, closed-form Hessian-vector products), the K
computations (estimate, certified hull bounds) and the activation models behind them. T1 itself is
tests/claims/test_field_identity.py."""

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from topoverify.checks.field_identity import autograd_neuron_gradients
from topoverify.errors import UnsupportedError
from topoverify.experiments.scenarios import mse_loss as mse
from topoverify.experiments.small_nets import SMOOTH_ACTIVATIONS, make_batch
from topoverify.measure.chunks import row_chunks
from topoverify.measure.field import block_samples
from topoverify.measure.sampling import segment_points
from topoverify.neurons.activations import get_activation
from topoverify.neurons.layouts import detect_layers, explicit_layer, neuron_cloud
from topoverify.strategies.models import mlp_specs

SMOOTH_ARCHS = mlp_specs(max_depth=2, max_width=8, activation_names=SMOOTH_ACTIVATIONS, max_in=3, max_out=2)


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
        torch.testing.assert_close(s.gradient(cloud), autograd_neuron_gradients(model, layer, mse, batch),
                                   rtol=1e-9, atol=1e-13)
        assert s.hessian_norm_lower(cloud).max() <= s.hessian_norm_upper(cloud)


def test_relu_field_has_no_certified_constant():
    """Pre-activations that change sign over the hull: σ' jumps there, no finite K, and the reason says so."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(2, 5), nn.ReLU(), nn.Linear(5, 1)).double()
    batch = (torch.randn(9, 2, dtype=torch.float64), torch.randn(9, 1, dtype=torch.float64))
    s, _ = block_samples(model, detect_layers(model)[0], mse, batch)
    cloud = neuron_cloud(model, detect_layers(model)[0])
    assert s.hessian_norm_upper(cloud) == math.inf
    hb = s.hull_bounds(cloud)
    assert hb.top == math.inf and hb.kink_samples > 0 and "jumps at 0" in hb.reason


@pytest.mark.parametrize("name,peak2", [("tanh", 4 / (3 * math.sqrt(3))), ("sigmoid", 1 / (6 * math.sqrt(3))),
                                        ("gelu", 2 / math.sqrt(2 * math.pi))])
def test_activation_interval_sups(name, peak2):
    """Certified sups: never below the analytic peak or a dense float64 sample, at most one table cell above."""
    act = get_activation(name)
    lo, hi = torch.tensor([-5.0, -0.1, 3.0], dtype=torch.float64), torch.tensor([5.0, 0.1, 4.0], dtype=torch.float64)
    sups = act.sup_abs(2, lo, hi)
    assert peak2 <= sups[0] <= peak2 * 1.005
    for k in range(3):
        grid = torch.linspace(float(lo[k]), float(hi[k]), 10001, dtype=torch.float64)
        assert sups[k] >= act.derivatives(grid)[2].abs().max()
    assert sups[1] <= peak2 * 1.005


def test_explicit_layer_has_no_field_but_a_clear_reason():
    model = nn.Sequential(nn.Linear(2, 3), nn.Tanh(), nn.Linear(3, 1)).double()
    layer = explicit_layer("h", {"0.weight": 0, "0.bias": 0, "2.weight": 1}, model)
    with pytest.raises(UnsupportedError, match="explicit layout"):
        block_samples(model, layer, mse, (torch.zeros(2, 2, dtype=torch.float64),) * 1 + (torch.zeros(2, 1),))
    assert dataclasses.asdict(layer)["size"] == 3


def test_functional_activation_keeps_its_arguments():
    """F.softplus(x, beta=100) must not be analysed as F.softplus(x): the field must still be the gradient."""

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
    torch.testing.assert_close(s.gradient(cloud), autograd_neuron_gradients(model, layer, mse, batch), rtol=1e-9,
                               atol=1e-13)
    exact = max(torch.linalg.matrix_norm(torch.func.hessian(s.potential)(z), 2) for z in cloud)
    assert s.hessian_norm_upper(cloud) >= exact


@pytest.mark.parametrize("act,smooth,kinks", [(nn.ELU(alpha=0.5), False, (0.0,)), (nn.ELU(), True, ()),
                                              (nn.SELU(), False, (0.0,)), (nn.CELU(alpha=0.3), True, ()),
                                              (nn.Softplus(beta=5.0), False, (4.0,)), (nn.ReLU6(), False, (0.0, 6.0)),
                                              (nn.Hardtanh(-2.0, 3.0), False, (-2.0, 3.0)), (nn.Tanh(), True, ())])
def test_derivative_jump_makes_an_activation_non_smooth(act, smooth, kinks):
    """σ' jumps at the kinks (torch's softplus switches to x at βx = threshold = 20, so at x = 4 for β = 5)."""
    a = get_activation(act)
    assert a.smooth is smooth and a.kinks == kinks


def test_kink_crossing_and_bounds_on_either_side():
    a = get_activation(nn.ELU(alpha=0.5))
    lo = torch.tensor([-2.0, 0.5, -1.0], dtype=torch.float64)
    hi = torch.tensor([-1.0, 2.0, 1.0], dtype=torch.float64)
    assert a.crosses_kink(lo, hi).tolist() == [False, False, True]
    d2lo, d2hi = a.bounds(2, lo, hi)
    assert math.isinf(float(d2hi[2])) and float(d2hi[1]) == 0.0
    assert 0.5 * math.exp(-1.0) <= float(d2hi[0]) <= 0.5 * math.exp(-1.0) * 1.005


def test_celu_whose_backward_is_not_its_derivative_is_uncertified():
    """torch's CELU(α ≠ 1) backward differs from the derivative of its forward pass by ~4e-8: the closed form
    would not describe the field torch computes, so there is no certified bound (and the reason says why)."""
    a = get_activation(nn.CELU(alpha=0.3))
    assert not a.certified and "differ from its closed form" in a.uncertified_reason
    assert get_activation(nn.CELU(alpha=2.0)).certified and get_activation(nn.CELU()).certified
    assert math.isinf(float(a.sup_abs(2, torch.zeros(1, dtype=torch.float64), torch.ones(1, dtype=torch.float64))))


@pytest.mark.parametrize("key,params,certified", [
    ("softplus(beta=100.0)", (("beta", 100.0),), True),
    ("softplus(2.0, 5.0)", (("beta", 2.0), ("threshold", 5.0)), True),
    ("leaky_relu(0.2)", (("negative_slope", 0.2),), True),
    ("gelu(approximate='tanh')", (("approximate", "tanh"),), True),
    ("softplus(beta=some_variable)", (("unreadable", "softplus(beta=some_variable)"),), False),
])
def test_functional_activation_parameters_are_read_from_the_traced_call(key, params, certified):
    fn = {"softplus": F.softplus, "leaky_relu": F.leaky_relu, "gelu": F.gelu}[key.split("(")[0]]
    kwargs = dict(p for p in params if p[0] != "unreadable")
    a = get_activation(lambda x: fn(x, **kwargs), name=key.split("(")[0], key=key)
    assert a.params == params and a.certified is certified


def test_row_chunks_cover_every_row_once_within_the_budget():
    """The one chunk loop of measure/ (field evaluations, neighbour search, pairwise distances)."""
    assert list(row_chunks(10, 3, budget=7)) == [(0, 2), (2, 4), (4, 6), (6, 8), (8, 10)]
    assert list(row_chunks(3, 10**9)) == [(0, 1), (1, 2), (2, 3)]  # at least one row per chunk
    assert list(row_chunks(0, 5)) == [] and list(row_chunks(5, 0)) == [(0, 5)]
