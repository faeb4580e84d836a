"""The layout preflight (A1 of T1) checks many layers in one permuted pass: commuting layers share a group, the
verdicts and error messages equal those of one pass per layer, and a broken layout inside a group of valid ones
is still named with its parameter."""

import dataclasses

import pytest
import torch
from torch import nn

from topoverify.errors import LayoutError
from topoverify.neurons.layouts import detect_layers, neuron_index
from topoverify.neurons.preflight import PreflightReport, preflight


class Counted:
    """A loss function that counts its calls (one per forward+backward pass of the preflight)."""

    def __init__(self, fn):
        self.fn, self.calls = fn, 0

    def __call__(self, model, batch):
        self.calls += 1
        return self.fn(model, batch)


def _mse(model, batch):
    x, y = batch
    return ((model(x) - y) ** 2).mean()


def _mlp(hidden=(6, 5, 7)):
    torch.manual_seed(0)
    sizes = (4,) + tuple(hidden) + (3,)
    mods = []
    for a, b in zip(sizes[:-1], sizes[1:]):
        mods += [nn.Linear(a, b), nn.Tanh()]
    model = nn.Sequential(*mods[:-1]).double()
    return model, (torch.randn(5, 4, dtype=torch.float64), torch.randn(5, 3, dtype=torch.float64))


def _encoder():
    torch.manual_seed(0)
    model = nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0, batch_first=True).double().eval()
    x = torch.randn(3, 5, 8, dtype=torch.float64)
    return model, (x, torch.randn(3, 5, 8, dtype=torch.float64))


def _run(model, layers, batch, loss=_mse, **kw):
    counted = Counted(loss)
    report = preflight(model, layers, counted, batch, **kw)
    return report, counted.calls


def _moved(model, layer):
    """Independent of the preflight: the (tensor, axis, index) triples a layer's permutation moves."""
    out = set()
    for m in layer.members:
        out |= {(m.name, m.axis, int(i)) for i in neuron_index(m, layer.size).reshape(-1)}
    return out


def _assert_groups_commute(model, layers, report):
    by_name = {ly.name: ly for ly in layers}
    for group in report.groups:
        seen = set()
        for name in group:
            moved = _moved(model, by_name[name])
            assert seen.isdisjoint(moved), f"{name} moves an index another layer of its group moves"
            seen |= moved


@pytest.mark.parametrize("make,finer", [(_mlp, False), (_encoder, False), (_encoder, True)])
def test_grouped_equals_per_layer_and_counts_passes(make, finer):
    model, batch = make()
    layers = detect_layers(model, finer=finer)
    grouped, calls = _run(model, layers, batch)
    single, single_calls = _run(model, layers, batch, grouped=False)
    assert isinstance(grouped, PreflightReport) and grouped.rechecked == single.rechecked == ()
    assert sorted(n for g in grouped.groups for n in g) == sorted(ly.name for ly in layers)
    assert calls == grouped.passes == 1 + len(grouped.groups)
    assert single_calls == single.passes == 1 + len(layers) and len(single.groups) == len(layers)
    assert len(grouped.groups) < len(layers)
    _assert_groups_commute(model, layers, grouped)
    assert "groups" in str(grouped) and grouped.to_dict()["passes"] == calls


def test_overlapping_layers_land_in_different_groups():
    model, batch = _encoder()
    layers = detect_layers(model, finer=True)
    report, _ = _run(model, layers, batch)
    group_of = {name: k for k, g in enumerate(report.groups) for name in g}
    for h in range(2):  # a head's qk and vo layers move slices of the heads layer
        assert group_of[f"self_attn.head{h}.qk"] != group_of["self_attn.heads"]
        assert group_of[f"self_attn.head{h}.vo"] != group_of["self_attn.heads"]
    assert group_of["linear1"] == group_of["self_attn.heads"]  # disjoint parameters share a pass


def test_a_broken_layout_inside_a_group_is_named_with_its_parameter():
    model, batch = _encoder()
    layers = detect_layers(model)
    report, _ = _run(model, layers, batch)
    assert len(report.groups) == 1 and len(report.groups[0]) == len(layers)  # the broken one sits among valid ones
    broken = [dataclasses.replace(ly, members=ly.members[:-1]) if ly.name == "linear1" else ly for ly in layers]
    with pytest.raises(LayoutError) as grouped:
        preflight(model, broken, _mse, batch)
    with pytest.raises(LayoutError) as single:
        preflight(model, broken, _mse, batch, grouped=False)
    assert "'linear1'" in str(grouped.value) and "'linear2.weight'" in str(grouped.value)
    assert "missing from the layout" in str(grouped.value)
    assert str(grouped.value) == str(single.value)


@pytest.mark.parametrize("hidden", [2, 6])
def test_split_layouts_do_not_cancel_in_a_group(hidden):
    """A neuron's input rows in one layout and its output columns in another: each is broken, their product is
    a symmetry exactly when the two permutations coincide (always, for 2 neurons)."""
    model, batch = _mlp((hidden,))
    (layer,) = detect_layers(model)
    rows = dataclasses.replace(layer, name="rows", members=layer.members[:2])
    cols = dataclasses.replace(layer, name="cols", members=layer.members[2:])
    with pytest.raises(LayoutError, match="layout 'rows' fails the preflight.*'2.weight'.*missing"):
        preflight(model, [rows, cols], _mse, batch)


def test_float32_groups_keep_the_roundoff_handling():
    model, batch = _encoder()
    model, batch = model.float(), tuple(b.float() for b in batch)
    layers = detect_layers(model, finer=True)
    report, calls = _run(model, layers, batch)
    assert calls == report.passes >= 1 + len(report.groups)


def test_tiny_gpt2_grouped_equals_per_layer():
    transformers = pytest.importorskip("transformers", reason="the GPT-2 check needs transformers")
    cfg = transformers.GPT2Config(n_layer=2, n_embd=16, n_head=4, n_positions=8, vocab_size=30, bos_token_id=0,
                                  eos_token_id=0)
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(cfg).eval().double()
    ids = torch.randint(0, 30, (2, 6))

    def lm(m, batch):
        return m(input_ids=batch, labels=batch).loss

    layers = detect_layers(model, residual=True)
    grouped, calls = _run(model, layers, ids, loss=lm)
    single, single_calls = _run(model, layers, ids, loss=lm, grouped=False)
    assert calls == 1 + len(grouped.groups) and single_calls == 1 + len(layers)
    assert len(grouped.groups) < len(layers) and grouped.rechecked == ()
    _assert_groups_commute(model, layers, grouped)
    assert len(grouped.groups) == 1  # MLPs, heads and the stream dims (other axes of the same weights) commute
    print(f"\ntiny GPT-2: {len(layers)} layers, {single_calls} passes one by one, {calls} grouped")
