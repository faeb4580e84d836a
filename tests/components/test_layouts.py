"""Neuron layouts and permutations: detection, clouds, permuting models and optimizer state, preflight."""

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from topoverify.errors import LayoutError, UnsupportedError
from topoverify.neurons.activation_registry import (ACTIVATION_MODULES, ACTIVATION_TABLE, NONSMOOTH, SMOOTH,
                                                    activation_module)
from topoverify.neurons.layouts import detect_layers, explicit_layer, neuron_cloud
from topoverify.neurons.permute import inverse_permutation, permute, permute_tensor
from topoverify.neurons.preflight import preflight
from topoverify.experiments.scenarios import mse_loss as mse
from topoverify.experiments.small_nets import make_batch
from topoverify.strategies.models import architectures


def test_detects_mlp_layers_with_and_without_bias():
    m = nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 4, bias=False), nn.ReLU(), nn.Linear(4, 2))
    layers = detect_layers(m)
    assert [layer.name for layer in layers] == ["0", "2"]
    assert [layer.size for layer in layers] == [5, 4]
    assert [(p.name, p.axis) for p in layers[1].members] == [("2.weight", 0), ("4.weight", 1)]
    assert layers[0].activation == "tanh" and layers[1].activation == "relu"
    assert neuron_cloud(m, layers[0]).shape == (5, 3 + 1 + 4)
    assert neuron_cloud(m, layers[1]).shape == (4, 5 + 2)


def test_detects_conv_channels_and_flatten_blocks():
    m = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.GELU(), nn.Conv2d(4, 3, 3), nn.Tanh(), nn.Flatten(),
                      nn.Linear(3 * 4 * 4, 2))
    layers = detect_layers(m)
    assert [layer.kind for layer in layers] == ["conv2d", "conv2d"]
    assert layers[1].members[-1].block == 16
    assert neuron_cloud(m, layers[1]).shape == (3, 4 * 9 + 1 + 2 * 16)


def test_functional_activation_in_forward_is_detected():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1, self.fc2 = nn.Linear(2, 6), nn.Linear(6, 1)

        def forward(self, x):
            return self.fc2(torch.sigmoid(self.fc1(x)))

    (layer,) = detect_layers(Net())
    assert layer.activation == "sigmoid" and layer.size == 6


class _Functional(nn.Module):
    """``fc2(σ(fc1(x)))`` with σ a traced function or a tensor method name."""

    def __init__(self, act):
        super().__init__()
        self.fc1, self.fc2, self.act = nn.Linear(2, 4), nn.Linear(4, 1), act

    def forward(self, x):
        h = self.fc1(x)
        return self.fc2(getattr(h, self.act)() if isinstance(self.act, str) else self.act(h))


@pytest.mark.parametrize("name", sorted(ACTIVATION_TABLE))
def test_every_registered_activation_is_detected_as_its_module_function_and_method(name):
    entry = ACTIVATION_TABLE[name]
    (layer,) = detect_layers(nn.Sequential(nn.Linear(2, 4), activation_module(name), nn.Linear(4, 1)))
    # a variant (gelu_tanh) is traced as its class; its parameters tell it apart later
    assert layer.activation == (ACTIVATION_MODULES[entry.module] if entry.module_kwargs else name)
    for act in (*entry.traced, *([entry.method] if entry.method else [])):
        (layer,) = detect_layers(_Functional(act))
        assert layer.activation == name and layer.chain == (name,)


def test_registry_partitions_names_into_smooth_and_not_and_refuses_unknown_names():
    assert SMOOTH | NONSMOOTH == set(ACTIVATION_TABLE) and not SMOOTH & NONSMOOTH
    with pytest.raises(UnsupportedError, match="supported: .*tanh"):
        activation_module("swish2")


def test_no_layer_error_lists_support_and_explicit_layout():
    with pytest.raises(LayoutError, match="explicit_layer"):
        detect_layers(nn.Sequential(nn.Linear(3, 2)))


def test_residual_branch_is_not_mistaken_for_a_block():
    class Res(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1, self.fc2 = nn.Linear(4, 4), nn.Linear(4, 4)

        def forward(self, x):
            h = self.fc1(x)
            return self.fc2(torch.tanh(h)) + h  # fc1's output has two users: not a neuron block

    with pytest.raises(LayoutError):
        detect_layers(Res())


@given(arch=architectures(max_depth=2, max_width=8), data=st.data())
def test_permuted_model_computes_the_same_function(arch, data):
    model = arch.build()
    x, _ = make_batch(arch, 5, seed=1, step=0)
    for layer in detect_layers(model):
        perm = data.draw(st.permutations(range(layer.size)))
        pm = permute(model, layer, perm)
        torch.testing.assert_close(pm(x), model(x), rtol=1e-12, atol=1e-12)
        back = permute(pm, layer, inverse_permutation(torch.tensor(perm)))
        for (n, p), (_, q) in zip(model.named_parameters(), back.named_parameters()):
            assert torch.equal(p, q), n


@pytest.mark.parametrize("opt_name", ["SGD", "Adam", "Adagrad", "RMSprop", "LBFGS", "Adafactor"])
def test_optimizer_state_follows_its_parameter(opt_name):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 6), nn.Tanh(), nn.Linear(6, 2)).double()
    kwargs = {"SGD": dict(lr=0.1, momentum=0.9), "LBFGS": dict(lr=0.5, history_size=3)}.get(opt_name, dict(lr=0.01))
    opt = getattr(torch.optim, opt_name)(model.parameters(), **kwargs)
    batch = (torch.randn(8, 3, dtype=torch.float64), torch.randn(8, 2, dtype=torch.float64))
    for _ in range(3):
        def closure():
            opt.zero_grad()
            loss = mse(model, batch)
            loss.backward()
            return loss
        opt.step(closure)
    (layer,) = detect_layers(model)
    perm = torch.tensor([5, 0, 4, 1, 3, 2])
    pm, popt = permute(model, layer, perm, opt)
    # the permuted pair continues exactly like the original pair, permuted (state followed its parameter)
    for _ in range(2):
        for m_, o_ in ((model, opt), (pm, popt)):
            def closure(m_=m_, o_=o_):
                o_.zero_grad()
                loss = mse(m_, batch)
                loss.backward()
                return loss
            o_.step(closure)
    expected = permute(model, layer, perm)
    for (n, p), (_, q) in zip(expected.named_parameters(), pm.named_parameters()):
        torch.testing.assert_close(q, p, rtol=1e-10, atol=1e-12, msg=n)
    # and the caller's optimizer state was not touched by permute()
    assert popt is not opt and popt.state is not opt.state


def test_permute_does_not_mutate_inputs():
    model = nn.Sequential(nn.Linear(2, 4), nn.Tanh(), nn.Linear(4, 1))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    permute(model, detect_layers(model)[0], [3, 2, 1, 0])
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])


def test_permute_tensor_blocks():
    layer = detect_layers(nn.Sequential(nn.Conv2d(1, 2, 3), nn.Tanh(), nn.Flatten(), nn.Linear(2 * 4, 1)))[0]
    w = torch.arange(8.0).reshape(1, 8)
    out = permute_tensor(w, layer.members[-1], torch.tensor([1, 0]))
    assert out.tolist() == [[4, 5, 6, 7, 0, 1, 2, 3]]


def test_bad_permutation_is_rejected():
    model = nn.Sequential(nn.Linear(2, 3), nn.Tanh(), nn.Linear(3, 1))
    with pytest.raises(LayoutError, match="permutation of range"):
        permute(model, detect_layers(model)[0], [0, 0, 1])


def _mlp_and_batch():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 4), nn.ReLU(), nn.Linear(4, 1)).double()
    return m, (torch.randn(7, 3, dtype=torch.float64), torch.randn(7, 1, dtype=torch.float64))


def test_preflight_accepts_detected_and_correct_explicit_layouts():
    m, batch = _mlp_and_batch()
    preflight(m, detect_layers(m), mse, batch)
    preflight(m, [explicit_layer("h", {"0.weight": 0, "0.bias": 0, "2.weight": 1}, m)], mse, batch)


def test_preflight_names_a_missing_parameter():
    m, batch = _mlp_and_batch()
    layer = explicit_layer("h", {"0.weight": 0, "0.bias": 0}, m)
    with pytest.raises(LayoutError, match=r"'2.weight' \(axis 1\) moves with the neurons but is missing"):
        preflight(m, [layer], mse, batch)


def test_preflight_names_a_wrong_axis():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 1)).double()
    batch = (torch.randn(6, 4, dtype=torch.float64), torch.randn(6, 1, dtype=torch.float64))
    layer = explicit_layer("h", {"0.weight": 0, "0.bias": 0, "2.weight": 0}, m)
    with pytest.raises(LayoutError, match="'2.weight'"):
        preflight(m, [layer], mse, batch)


def test_explicit_layout_validation_errors_name_the_parameter():
    m, _ = _mlp_and_batch()
    with pytest.raises(LayoutError, match="no parameter '0.wieght'"):
        explicit_layer("h", {"0.wieght": 0}, m)
    with pytest.raises(LayoutError, match="disagree on the number of neurons"):
        explicit_layer("h", {"0.weight": 0, "2.weight": 0}, m)
    with pytest.raises(LayoutError, match="out of range"):
        explicit_layer("h", {"0.weight": 3}, m)


def _bn_model_and_batch():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(3, 16), nn.BatchNorm1d(16), nn.Tanh(), nn.Linear(16, 2)).double()
    return m, (torch.randn(10, 3, dtype=torch.float64), torch.randn(10, 2, dtype=torch.float64))


BN_LAYOUT = {"0.weight": 0, "0.bias": 0, "1.weight": 0, "1.bias": 0, "3.weight": 1}


@pytest.mark.roundoff
def test_preflight_accepts_a_batchnorm_layout_whose_bias_gradient_is_round_off():
    # BatchNorm subtracts the batch mean, so the gradient of the Linear's bias before it is zero in exact
    # arithmetic: round-off (~1e-17), whose relative error is O(1). The layout is a symmetry and must pass.
    m, batch = _bn_model_and_batch()
    g = torch.autograd.grad(mse(m, batch), m[0].bias)[0]
    assert float(g.abs().max()) < 1e-14  # the premise: a gradient at round-off level (zero in exact arithmetic)
    preflight(m, [explicit_layer("hidden", BN_LAYOUT, m)], mse, batch)


@pytest.mark.parametrize("missing", ["1.weight", "1.bias"])
def test_preflight_still_rejects_a_batchnorm_layout_that_misses_a_member(missing):
    m, batch = _bn_model_and_batch()
    layout = {k: v for k, v in BN_LAYOUT.items() if k != missing}
    with pytest.raises(LayoutError, match=rf"'{missing}' \(axis 0\) moves with the neurons but is missing"):
        preflight(m, [explicit_layer("hidden", layout, m)], mse, batch)
