"""Detection through eval-mode identity ops (Dropout, Identity) and BatchNorm (kind "channel-bn"): layouts,
buffers, the preflight (A1 of T1) in train and eval mode, and T1's field identity on the Dropout chains."""

import pytest
import torch
from torch import nn

from topoverify.measure.field import block_samples
from topoverify.neurons.blocks import ChannelNormBlock
from topoverify.neurons.layouts import detect_layers, neuron_cloud
from topoverify.neurons.permute import permute
from topoverify.neurons.preflight import preflight


def _mse(model, batch):
    x, y = batch
    return ((model(x) - y) ** 2).mean()


def _batch(x_shape, y_shape, dtype=torch.float64):
    g = torch.Generator().manual_seed(3)
    return torch.randn(*x_shape, generator=g, dtype=dtype), torch.randn(*y_shape, generator=g, dtype=dtype)


DROPOUT_CHAINS = [
    (lambda: nn.Sequential(nn.Linear(4, 6), nn.Dropout(0.3), nn.ReLU(), nn.Linear(6, 3)), (5, 4), (5, 3), "relu"),
    (lambda: nn.Sequential(nn.Linear(4, 6), nn.GELU(), nn.Dropout(0.3), nn.Linear(6, 3)), (2, 5, 4), (2, 5, 3),
     "gelu"),
    (lambda: nn.Sequential(nn.Linear(4, 6), nn.Dropout(0.2), nn.Linear(6, 3)), (2, 5, 4), (2, 5, 3), "identity"),
    (lambda: nn.Sequential(nn.Linear(4, 6), nn.Identity(), nn.Tanh(), nn.Linear(6, 3)), (5, 4), (5, 3), "tanh"),
    (lambda: nn.Sequential(nn.Conv2d(2, 4, 3), nn.Dropout2d(0.5), nn.Tanh(), nn.Conv2d(4, 3, 3)), (2, 2, 6, 6),
     (2, 3, 2, 2), "tanh"),
]


@pytest.mark.parametrize("make, xs, ys, act", DROPOUT_CHAINS)
def test_eval_mode_identity_ops_are_dropped_and_the_field_is_t1s(make, xs, ys, act):
    torch.manual_seed(0)
    model = make().double().eval()
    (layer,) = detect_layers(model)
    assert layer.kind in ("linear", "conv2d") and layer.activation == act and "Dropout" not in layer.chain
    batch = _batch(xs, ys)
    preflight(model, [layer], _mse, batch)
    samples, loss = block_samples(model, layer, _mse, batch)
    m = __import__("copy").deepcopy(model)
    _mse(m, batch).backward()
    grads = {n: p.grad for n, p in m.named_parameters()}
    expected = neuron_cloud(model, layer, source=grads)
    got = samples.gradient(neuron_cloud(model, layer))
    assert torch.allclose(got, expected, rtol=1e-9, atol=1e-12 * float(expected.abs().max()))  # T1


BN_NETS = [
    (lambda: nn.Sequential(nn.Conv2d(2, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 3, 3)), (3, 2, 6, 6),
     (3, 3, 2, 2), 1),
    (lambda: nn.Sequential(nn.Conv2d(2, 4, 3), nn.BatchNorm2d(4), nn.Tanh(), nn.Flatten(), nn.Linear(4 * 16, 2)),
     (3, 2, 6, 6), (3, 2), 16),
    (lambda: nn.Sequential(nn.Linear(3, 5), nn.BatchNorm1d(5), nn.GELU(), nn.Linear(5, 2)), (6, 3), (6, 2), 1),
]


@pytest.mark.parametrize("train", [True, False])
@pytest.mark.parametrize("make, xs, ys, block", BN_NETS)
def test_batchnorm_channels_are_channel_bn_layers_with_running_stats_as_buffers(make, xs, ys, block, train):
    torch.manual_seed(0)
    model = make().double()
    with torch.no_grad():  # non-trivial running statistics, so that eval mode tests their permutation
        model[1].running_mean.uniform_(-1, 1)
        model[1].running_var.uniform_(0.5, 2)
    model.train(train)
    (layer,) = detect_layers(model)
    assert layer.kind == "channel-bn" and isinstance(layer.block, ChannelNormBlock)
    assert layer.block.training is train and layer.block.norm == "1"
    assert [(m.name, m.axis, m.block) for m in layer.members] == [
        ("0.weight", 0, 1), ("0.bias", 0, 1), ("1.weight", 0, 1), ("1.bias", 0, 1), (f"{layer.consumer}.weight", 1,
                                                                                   block)]
    assert [b.name for b in layer.buffers] == ["1.running_mean", "1.running_var"]
    assert layer.to_dict()["block"]["type"] == "ChannelNormBlock"
    preflight(model, [layer], _mse, _batch(xs, ys))
    moved = permute(model, layer, torch.arange(layer.size).flip(0))
    assert torch.equal(moved[1].running_var, model[1].running_var.flip(0))


def test_eval_mode_preflight_fails_when_running_stats_do_not_move():
    torch.manual_seed(0)
    model = BN_NETS[0][0]().double()
    with torch.no_grad():
        model[1].running_mean.uniform_(-1, 1)
    model.eval()
    (layer,) = detect_layers(model)
    import dataclasses

    from topoverify.errors import LayoutError
    with pytest.raises(LayoutError, match="fails the preflight"):
        preflight(model, [dataclasses.replace(layer, buffers=())], _mse, _batch((3, 2, 6, 6), (3, 3, 2, 2)))


def test_batchnorm_without_affine_or_running_stats():
    model = nn.Sequential(nn.Linear(3, 5), nn.BatchNorm1d(5, affine=False, track_running_stats=False), nn.Tanh(),
                          nn.Linear(5, 2)).double()
    (layer,) = detect_layers(model)
    assert layer.kind == "channel-bn" and layer.buffers == ()
    assert [m.name for m in layer.members] == ["0.weight", "0.bias", "3.weight"]
    preflight(model, [layer], _mse, _batch((6, 3), (6, 2)))


def test_half_precision_detection_and_permutation_are_pure_indexing():
    for dtype in (torch.float16, torch.bfloat16):
        model = BN_NETS[2][0]().to(dtype)
        (layer,) = detect_layers(model)
        perm = torch.tensor([4, 3, 2, 1, 0])
        assert torch.equal(neuron_cloud(permute(model, layer, perm), layer), neuron_cloud(model, layer)[perm])
        preflight(model, [layer], _mse, _batch((6, 3), (6, 2), dtype))  # checked on a float32 copy
        assert model[0].weight.dtype == dtype
