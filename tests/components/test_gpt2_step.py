"""A real training step on a tiny Hugging Face GPT-2 through the kit: detection finds every MLP layer and every
attention-head layer, verify_step covers all of them with honest verdicts (recomputed here from an independent
step), and topology (T5 on the stepped cloud, persistence of unit and head clouds) and merges (T6) run on them."""

from __future__ import annotations

import copy

import pytest
import torch

pytest.importorskip("transformers", reason="the GPT-2 tests need pip install topoverify[transformers]")

from topoverify import detect_layers, neuron_cloud, topology, verify_step  # noqa: E402
from topoverify.models.gpt2 import gpt2, lm_loss, synthetic_tokens  # noqa: E402
from topoverify.neurons.layouts import neuron_blocks, set_neuron_blocks  # noqa: E402

MLP = ["transformer.h.0.mlp.c_fc", "transformer.h.1.mlp.c_fc"]
HEADS = ["transformer.h.0.attn.heads", "transformer.h.1.attn.heads"]
FAST = dict(hessian=False, power_iters=10, neighbors=0)   # K from the units themselves, 10 power iterations


@pytest.fixture(scope="module")
def tiny():
    return gpt2("tiny", seed=0), synthetic_tokens(4, 12, 64, seed=0)


def _pair_ratios(before: torch.Tensor, after: torch.Tensor) -> torch.Tensor:
    d0, d1 = torch.cdist(before.double(), before.double()), torch.cdist(after.double(), after.double())
    iu = torch.triu_indices(len(before), len(before), 1)
    d0, d1 = d0[iu[0], iu[1]], d1[iu[0], iu[1]]
    return d1[d0 > 0] / d0[d0 > 0]


def test_detection_finds_every_mlp_and_head_layer(tiny):
    model, _ = tiny
    layers = {layer.name: layer for layer in detect_layers(model)}
    assert sorted(layers) == sorted(MLP + HEADS)
    assert all(layers[n].kind == "linear" and layers[n].size == 64 for n in MLP)
    assert all(layers[n].kind == "attention-heads" and layers[n].size == 2 for n in HEADS)
    # head h's cloud row holds its q, k, v columns of the fused c_attn (Conv1D: (in, out)) and its c_proj rows
    h = layers[HEADS[1]]
    cloud = neuron_cloud(model, h)
    w = model.transformer.h[1].attn.c_attn.weight.detach()
    o = model.transformer.h[1].attn.c_proj.weight.detach()
    head1 = torch.cat([w[:, 8:16], w[:, 24:32], w[:, 40:48]], dim=1)
    assert torch.allclose(torch.sort(cloud[1]).values,
                          torch.sort(torch.cat([head1.reshape(-1), model.transformer.h[1].attn.c_attn.bias.detach()
                                                [[*range(8, 16), *range(24, 32), *range(40, 48)]],
                                                o[8:16].reshape(-1)])).values)


@pytest.mark.parametrize("make_opt", [lambda p: torch.optim.AdamW(p, lr=1e-3, weight_decay=0.01),
                                      pytest.param(lambda p: torch.optim.SGD(p, lr=0.5, momentum=0.9),
                                                   marks=pytest.mark.slow)],
                         ids=["AdamW", "SGD-momentum"])
def test_verify_step_covers_every_layer_honestly(tiny, make_opt):
    model, batch = tiny
    state = copy.deepcopy(model.state_dict())
    opt = make_opt(model.parameters())
    v = verify_step(model, opt, lm_loss, batch, **FAST)
    assert all(torch.equal(t, state[k]) for k, t in model.state_dict().items())   # the user's model untouched
    verified = {lv.layer: lv for lv in v.layers}
    skipped = {s.split(":")[0]: s for s in v.skipped}
    assert set(verified) | set(skipped) == set(MLP + HEADS) and not set(verified) & set(skipped)
    assert all(len(s.split(":", 1)[1].strip()) > 10 for s in v.skipped)       # an unavailable layer says why
    assert set(MLP) <= set(verified) and set(HEADS) <= set(verified)
    # an independent real step (fresh copy, fresh optimizer of the same hyper-parameters)
    mine = copy.deepcopy(model)
    o2 = make_opt(mine.parameters())
    o2.zero_grad()
    lm_loss(mine, batch).backward()
    o2.step()
    for name, lv in verified.items():
        layer = next(layer for layer in detect_layers(model) if layer.name == name)
        before, after = neuron_cloud(model, layer), neuron_cloud(mine, layer)
        assert torch.allclose(after, neuron_cloud(v.model_after, layer), rtol=1e-5, atol=1e-7)
        r = _pair_ratios(before, after)
        assert lv.n_pairs == len(r) and len(r) > 0
        assert lv.min_ratio == pytest.approx(float(r.min()), rel=1e-4)
        assert lv.max_ratio == pytest.approx(float(r.max()), rel=1e-4)
        p = lv.prediction
        inside = bool(((r >= p.lower * (1 - 1e-6)) & (r <= p.upper * (1 + 1e-6))).all())
        assert lv.holds is inside                                             # the verdict is the data's
        if name in MLP:                                                       # certified K (closed form, T1)
            assert p.certified and lv.holds_certified is True and p.K <= p.K_upper * (1 + 1e-6)
        else:                                                                 # heads: K is an estimate (T9)
            assert lv.holds_certified is None and "not certified" in lv.certified_check


def test_topology_of_unit_and_head_clouds_and_T5_on_the_step(tiny):
    """T5 on a real SGD step of the MLP units: the band is the certified one predicted before the step, the
    rate a fixed 0.2 (checked to be below eta* = 1/K_upper first, else the band would be vacuous)."""
    model, batch = tiny
    layer = next(layer for layer in detect_layers(model) if layer.name == MLP[0])
    opt = torch.optim.SGD(model.parameters(), lr=0.2)
    v = verify_step(model, opt, lm_loss, batch, layers=[layer], **FAST)
    lv, p = v.layers[0], v.layers[0].prediction
    assert lv.layer == MLP[0] and p.certified and 0.2 * p.K_upper < 1
    before, after = neuron_cloud(model, layer), neuron_cloud(v.model_after, layer)
    res = topology.persistence(before, maxdim=1)
    assert res.n_points == 64 and len(res.diagrams[0]) == 64                  # 64 distinct units: 64 H0 classes
    assert (res.diagrams[0][:-1, 1] <= res.scale + 1e-9).all()
    check = topology.check_persistence_stability(before, after, a=p.certified_lower, b=p.upper_certified)
    assert check.verdict in ("holds", "inconclusive") and check.epsilon < float("inf")
    # the head cloud: 2 heads in R^(3·8·16 + 24 + 8·16); its one finite H0 bar dies at their distance
    heads = neuron_cloud(model, next(layer for layer in detect_layers(model) if layer.name == HEADS[0]))
    hres = topology.persistence(heads, maxdim=0)
    finite = hres.diagrams[0][hres.diagrams[0][:, 1] < float("inf")]
    assert len(finite) == 1 and finite[0, 1] == pytest.approx(float(torch.dist(heads[0], heads[1])), rel=1e-5)


@pytest.mark.parametrize("which", [MLP[1], HEADS[1]])
def test_twin_units_stay_merged_through_a_real_step(tiny, which):
    """T6 on GPT-2: make unit 1 an exact copy of unit 0 (MLP unit, or a whole head), take the kit's step: the
    twins are merged before and after (a merge the kit reports), while the other units stay distinct."""
    model, batch = tiny
    model = copy.deepcopy(model)
    layer = next(layer for layer in detect_layers(model) if layer.name == which)
    params = dict(model.named_parameters())
    with torch.no_grad():
        for m in layer.members:
            t = params[m.name]
            t.copy_(set_neuron_blocks(t, m, layer.size, [1], neuron_blocks(t, m, layer.size)[[0]]))
    before = neuron_cloud(model, layer)
    assert torch.equal(before[0], before[1])
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    v = verify_step(model, opt, lm_loss, batch, layers=[layer], **FAST)
    after = neuron_cloud(v.model_after, layer)
    assert topology.count_distinct(before) == layer.size - 1
    assert topology.count_distinct(after, rtol=1e-6) == layer.size - 1
    assert float((after[0] - after[1]).abs().max()) <= 1e-6 * float(after.abs().max())
    assert not torch.equal(after, before)
    if layer.size > 2:
        assert v.layers[0].merged_before == 1
