"""BatchNorm channels (topoverify.measure.fields.bn_field; claims T1, T9): in train mode each channel's batch
statistics are its own, so its update is one field of (producer row, γ, β, consumer column) — T1's identity for a
Conv2d–BatchNorm2d–tanh–Conv2d block and a Linear–BatchNorm1d–GELU–Linear block; in eval mode the running
statistics (buffers) enter the update, so there is no field of the parameters alone: UnsupportedError with T9's
reason. Also the dispatcher's Hugging Face Conv1D MLP path (weights stored (in, out))."""

import math

import pytest
import torch
from torch import nn

from topoverify.checks.field_identity import check_field_identity
from topoverify.errors import UnsupportedError
from topoverify.measure.fields import unit_field
from topoverify.neurons.blocks import ChannelNormBlock
from topoverify.neurons.layouts import NeuronLayer, ParamAxis, neuron_cloud, validate_layer


def bn_layer(model, prod, norm, cons, n, act, training):
    members = (ParamAxis(f"{prod}.weight", 0), ParamAxis(f"{prod}.bias", 0), ParamAxis(f"{norm}.weight", 0),
               ParamAxis(f"{norm}.bias", 0), ParamAxis(f"{cons}.weight", 1))
    buffers = (ParamAxis(f"{norm}.running_mean", 0), ParamAxis(f"{norm}.running_var", 0))
    return validate_layer(model, NeuronLayer(prod, n, members, kind="channel-bn", producer=prod, consumer=cons,
                                             activation=act, buffers=buffers,
                                             block=ChannelNormBlock(prod, norm, cons, act, training)))


def conv_case():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.BatchNorm2d(4), nn.Tanh(), nn.Conv2d(4, 3, 3)).double()
    return model, torch.randn(3, 2, 4, 4, dtype=torch.float64), bn_layer(model, "0", "1", "3", 4, "tanh", True)


def linear_case():
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(3, 5), nn.BatchNorm1d(5), nn.GELU(), nn.Linear(5, 2)).double()
    return model, torch.randn(6, 3, dtype=torch.float64), bn_layer(model, "0", "1", "3", 5, "gelu", True)


def loss_fn(model, batch):
    return (torch.sin(model(batch)) ** 2).sum()


@pytest.mark.parametrize("make", [conv_case, linear_case])
def test_train_mode_channels_satisfy_t1(make):
    model, x, layer = make()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    check = check_field_identity(model, loss_fn, x, layers=[layer])
    assert check.holds and check.layers[0].residual <= 1e-9, str(check)
    field, _ = unit_field(model, layer, loss_fn, x)
    cloud = neuron_cloud(model, layer)
    k = field.hessian_norm_lower(cloud, iters=20, generator=torch.Generator().manual_seed(0))
    assert bool((k > 0).all()) and math.isinf(field.hull_bounds(cloud).norm)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # running stats untouched


def test_eval_mode_channels_are_refused_with_the_t9_reason():
    model, x, layer = conv_case()
    model.eval()
    with pytest.raises(UnsupportedError, match="running statistics.*T9"):
        unit_field(model, layer, loss_fn, x)


def test_hf_conv1d_mlp_goes_through_the_closed_form():
    """GPT-2's MLP (Conv1D, weight (in, out)): producer columns, consumer rows; T1 holds and K is certified."""
    transformers = pytest.importorskip("transformers", reason="Conv1D is Hugging Face's")
    from transformers.pytorch_utils import Conv1D

    torch.manual_seed(2)
    model = nn.Sequential(Conv1D(6, 4), nn.GELU(approximate="tanh"), Conv1D(3, 6)).double()
    layer = validate_layer(model, NeuronLayer("0", 6, (ParamAxis("0.weight", 1), ParamAxis("0.bias", 0),
                                                       ParamAxis("2.weight", 0)),
                                              kind="linear", producer="0", consumer="2", activation="gelu_tanh"))
    x = torch.randn(2, 3, 4, dtype=torch.float64)
    check = check_field_identity(model, loss_fn, x, layers=[layer])
    assert check.holds, str(check)
    field, _ = unit_field(model, layer, loss_fn, x)
    cloud = neuron_cloud(model, layer)
    assert float(field.hessian_norm_lower(cloud).max()) <= field.hull_bounds(cloud).norm < math.inf
    assert transformers is not None
