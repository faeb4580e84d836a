"""Topology, merges and T6 on the unit clouds of real architectures (issue 12): attention heads (few points, very
high d), MLP units of a transformer block, BatchNorm channels (buffers part of the unit's state, T6)."""

import copy

import numpy as np
import pytest
import torch
from broken_optimizers import TieByIndex
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.sparse.csgraph import minimum_spanning_tree
from scipy.spatial.distance import pdist, squareform

from topoverify.checks.equivariance.block_nets import BlockSpec
from topoverify.checks.equivariance.generation import transformer_specs
from topoverify.checks.equivariance.training import build_model
from topoverify.checks.merges import BROKEN, HOLDS, ROUNDOFF, check_identical_neurons
from topoverify.experiments import clouds
from topoverify.experiments.small_nets import TrainingExample, make_batch
from topoverify.measure.merge_tracking import MergeTracker, unit_state
from topoverify.measure.merges import count_distinct, merged_pairs
from topoverify.neurons.layouts import member_widths, neuron_blocks, neuron_cloud, set_neuron_blocks
from topoverify.neurons.permute import permute
from topoverify.topology import persistence, robust_betti


def _tie(model, layer, src=0, dst=1):
    """Make unit ``dst`` an exact copy of unit ``src`` (parameters and buffers)."""
    tensors = {**dict(model.named_parameters()), **dict(model.named_buffers())}
    with torch.no_grad():
        for m in layer.members + layer.buffers:
            t = tensors[m.name]
            t.copy_(set_neuron_blocks(t, m, layer.size, [dst], neuron_blocks(t, m, layer.size)[[src]]))


def _steps(model, opt, spec, n=4):
    for t in range(n):
        x, y = make_batch(spec, 4, seed=7, step=t)
        opt.zero_grad()
        torch.nn.functional.mse_loss(model(x), y).backward()
        opt.step()


@settings(max_examples=4)
@given(spec=transformer_specs(), data=st.data())
def test_unit_cloud_diagrams_are_invariant_under_permutations(spec, data):
    """The head cloud and the MLP unit cloud of a permuted model are the same point set: equal diagrams."""
    model = spec.build(torch.float64, seed=5)
    for layer in spec.neuron_layers(model):
        cloud = neuron_cloud(model, layer)
        assert cloud.shape == (layer.size, sum(member_widths(model, layer)))
        perm = torch.tensor(data.draw(st.permutations(list(range(layer.size)))))
        moved = neuron_cloud(permute(model, layer, perm), layer)
        assert torch.equal(moved, cloud[perm])
        a, b = persistence(cloud, maxdim=1), persistence(moved, maxdim=1)
        for da, db in zip(a.diagrams, b.diagrams):
            np.testing.assert_allclose(np.sort(da, axis=0), np.sort(db, axis=0), rtol=1e-12, atol=0)


def test_head_cloud_width_is_that_of_a_head():
    """A head of nn.MultiheadAttention owns hd rows in each of q, k, v of the fused in_proj (d columns each),
    their biases, and hd columns of out_proj (d rows): 4·hd·d + 3·hd coordinates."""
    spec = BlockSpec(kind="transformer", heads=3, head_dim=2, ffn=4)
    model = spec.build()
    heads = spec.neuron_layers(model)[0]
    d, hd = spec.d_model, spec.head_dim
    assert neuron_cloud(model, heads).shape == (3, 4 * hd * d + 3 * hd)
    w = model.body.attn.in_proj_weight.detach()
    row = neuron_cloud(model, heads)[1]
    np.testing.assert_array_equal(row[: 3 * hd * d].reshape(3, hd, d),
                                  torch.stack([w[s * d + hd: s * d + 2 * hd] for s in range(3)]))


def test_few_heads_in_very_high_dimension():
    """12 heads of GPT-2-small size (d = 4·64·768 + 3·64): H0 deaths are the minimum spanning tree's edges of
    the exact distances, and two families of heads give β0 = 2."""
    rng = np.random.default_rng(0)
    d = 4 * 64 * 768 + 3 * 64
    centres = rng.standard_normal((2, d)) * 0.05
    x = np.concatenate([centres[0] + 0.002 * rng.standard_normal((6, d)),
                        centres[1] + 0.002 * rng.standard_normal((6, d))])
    res = persistence(x, maxdim=1)
    deaths = np.sort(res.diagrams[0][np.isfinite(res.diagrams[0][:, 1]), 1])
    mst = np.sort(minimum_spanning_tree(squareform(pdist(x))).data)
    np.testing.assert_allclose(deaths, mst, rtol=1e-6)  # ripser rounds distances to float32
    assert robust_betti(x, maxdim=1)[0] == 2


def test_mlp_units_on_a_circle_have_one_loop():
    """MLP units of a transformer block whose rows lie on a circle in weight space: the unit cloud has Betti
    (1, 1), read through the layout (rows of the producer, columns of the consumer)."""
    spec = BlockSpec(kind="transformer", heads=2, head_dim=2, ffn=40, bias=False)
    model = spec.build()
    mlp = spec.neuron_layers(model)[1]
    pts = torch.as_tensor(clouds.circle(40, ambient_dim=2 * spec.d_model, seed=1))
    with torch.no_grad():
        model.body.mlp[0].weight.copy_(pts[:, : spec.d_model])
        model.body.mlp[2].weight.copy_(pts[:, spec.d_model:].T)
    cloud = neuron_cloud(model, mlp)
    np.testing.assert_array_equal(cloud.numpy(), pts.numpy())
    assert robust_betti(cloud, maxdim=1) == (1, 1)


def test_identical_heads_stay_merged_under_adam():
    """T6 on heads: two identical heads (fused q/k/v rows, biases, out_proj columns) with equal (fresh) state
    stay one unit in (θ, s) after Adam steps; the other heads stay distinct."""
    spec = BlockSpec(kind="transformer", heads=3, head_dim=2, ffn=3)
    model = spec.build(seed=2)
    heads = spec.neuron_layers(model)[0]
    _tie(model, heads)
    assert count_distinct(neuron_cloud(model, heads)) == 2
    tracker = MergeTracker(neuron_cloud(model, heads), np.zeros((3, 0)))
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    _steps(model, opt, spec)
    cloud, state = neuron_cloud(model, heads), unit_state(model, heads, opt)
    assert state.shape[1] == 2 * cloud.shape[1]  # Adam's m and v of every coordinate
    assert merged_pairs(cloud, state=state) == [(0, 1)]
    assert count_distinct(cloud, state=state) == 2
    assert tracker.update(cloud, state).separated == []


def test_batchnorm_channels_merge_only_with_equal_running_statistics():
    """T6 on BatchNorm channels: the running statistics are part of the unit's state, so two channels with
    equal θ but different statistics are not one (in eval mode they compute different outputs); a tied pair
    (parameters and statistics) stays tied, to round-off, in train mode under SGD with momentum."""
    spec = BlockSpec(kind="bn-cnn", channels=(4,), bn_train=True)
    model = spec.build(seed=3)
    layer = spec.neuron_layers(model)[0]
    _tie(model, layer)
    cloud = neuron_cloud(model, layer)
    assert count_distinct(cloud) == 3 and count_distinct(cloud, state=unit_state(model, layer)) == 3
    apart = copy.deepcopy(model)
    with torch.no_grad():
        apart.body[1].running_var[1] += 0.5
    assert count_distinct(neuron_cloud(apart, layer), state=unit_state(apart, layer)) == 4
    x, _ = make_batch(spec, 2, seed=1, step=0)
    acts = apart.eval().body[:3](x)
    assert not torch.equal(acts[:, 0], acts[:, 1])

    tracker = MergeTracker(cloud, unit_state(model, layer))
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    before = copy.deepcopy(model.body[1].running_mean)
    _steps(model, opt, spec)
    assert not torch.equal(before, model.body[1].running_mean)  # the statistics did move
    cloud, state = neuron_cloud(model, layer), unit_state(model, layer, opt)
    # conv backward kernels may round two equal channels differently by an ulp (E3 of T6): equal to round-off
    assert merged_pairs(cloud, rtol=1e-12, state=state) == [(0, 1)]
    assert tracker.update(cloud, unit_state(model, layer)).separated == []


@pytest.mark.parametrize("rule", [torch.optim.SGD, torch.optim.Adam])
@pytest.mark.parametrize("spec,layer", [
    (BlockSpec(kind="transformer", heads=3, head_dim=2, ffn=3), 0),
    (BlockSpec(kind="encoder", heads=2, head_dim=2, ffn=3, gated=False), 1),
    (BlockSpec(kind="bn-cnn", channels=(3,), bn_train=True), 0),
], ids=["heads", "encoder-mlp", "bn-channels"])
def test_identical_units_stay_identical(rule, spec, layer):
    """T6 on heads (fused in_proj), MLP units and BatchNorm channels (running statistics compared too). Bitwise
    on this machine for heads; conv and linear backward kernels may round two equal rows differently (E3), so
    a gap of a few ulps is accepted, nothing more."""
    report = check_identical_neurons(rule, arch=spec, layer=layer, steps=5)
    assert report.verdict in (HOLDS, ROUNDOFF) and report.gap <= 1e-13, str(report)
    assert report.verdict == HOLDS or report.step is not None
    if spec.kind == "bn-cnn":
        assert any(k.startswith("buffer ") for k in report.compared)
    model, la = build_model(TrainingExample(spec, layer=layer, init_seed=3, duplicate=True), torch.float64)
    params = dict(model.named_parameters())
    for m in la.members:  # the tie is a real one: every block of unit 1 equals unit 0's
        blocks = neuron_blocks(params[m.name].detach(), m, la.size)
        assert torch.equal(blocks[0], blocks[1]), m.name


def test_tie_broken_by_index_is_caught_on_heads():
    report = check_identical_neurons(TieByIndex, arch=BlockSpec(kind="transformer", heads=2, head_dim=2), layer=0,
                                     steps=4)
    assert report.verdict == BROKEN, str(report)
