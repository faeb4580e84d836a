"""The equivariance checker (E1 of T6) on transformer blocks and BatchNorm conv nets (issue 12): heads of a fused
in_proj, MLP and gated-MLP units, residual-stream dims, BatchNorm channels with their running statistics as
buffers. T6 on the same units: tests/components/test_topology_units.py."""

import copy
import dataclasses

import pytest
import torch
from broken_optimizers import PerIndexLR
from hypothesis import given, settings
from hypothesis import strategies as st

from topoverify.checks.equivariance import equivariance_error, run_example
from topoverify.checks.equivariance.block_nets import BlockSpec
from topoverify.checks.equivariance.generation import bn_cnn_specs, families, training_examples, transformer_specs
from topoverify.checks.equivariance.snapshots import original_run
from topoverify.checks.equivariance.training import OptimizerSetup, RunContext, build_model, loss_fn
from topoverify.checks.equivariance.verdict import Tally, verdict_without_counterexample
from topoverify.errors import TopoverifyError
from topoverify.experiments.small_nets import TrainingExample, make_batch
from topoverify.neurons.layouts import detect_layers, neuron_blocks, validate_layer
from topoverify.neurons.permute import inverse_permutation, permute

BLOCKS = dict(architectures=("transformer", "bn-cnn"), examples=2, steps=2, shrink_time=2.0)


@settings(max_examples=4)
@given(spec=st.one_of(transformer_specs(), bn_cnn_specs()), data=st.data())
def test_declared_layers_are_symmetries_of_the_model(spec, data):
    """Every declared layer is valid and permuting it (buffers included) leaves the function unchanged; the
    inverse permutation restores every parameter and buffer exactly."""
    model = spec.build(torch.float64, seed=3)
    x, _ = make_batch(spec, 3, seed=1, step=0)
    for layer in spec.neuron_layers(model):
        assert validate_layer(model, layer).size == layer.size
        perm = torch.tensor(data.draw(st.permutations(list(range(layer.size)))))
        ref = copy.deepcopy(model)  # train-mode BatchNorm updates running statistics on every forward
        permuted = permute(model, layer, perm)
        with torch.no_grad():
            y, y_p = ref(x), copy.deepcopy(permuted)(x)
        torch.testing.assert_close(y_p, y, rtol=1e-12, atol=1e-12)
        back = permute(permuted, layer, inverse_permutation(perm))
        for (n, a), (_, b) in zip(model.state_dict().items(), back.state_dict().items()):
            assert torch.equal(a, b), n
        for m in layer.buffers:  # the running statistics moved with the channels
            got = neuron_blocks(dict(permuted.named_buffers())[m.name], m, layer.size)
            want = neuron_blocks(dict(model.named_buffers())[m.name], m, layer.size)[perm]
            assert torch.equal(got, want)


@settings(max_examples=6)
@given(spec=st.one_of(transformer_specs(), bn_cnn_specs()))
def test_declared_layers_are_those_detection_finds(spec):
    """The checker's declared layouts (heads of the fused in_proj, MLP / gated units, BatchNorm channels with
    their running statistics) agree with layout detection (T9) member for member; the CNN residual stream is
    declared only."""
    model = spec.build()
    detected = {la.name: la for la in detect_layers(model)}
    for la in spec.neuron_layers(model):
        if la.kind == "residual":
            continue
        found = detected[la.name]
        assert (found.kind, found.size, found.members, found.buffers) == (la.kind, la.size, la.members, la.buffers)


@settings(max_examples=6)
@given(ex=training_examples(arch=families(("transformer", "bn-cnn"))))
def test_block_families_draw_valid_examples(ex):
    assert ex.arch.kind in ("transformer", "encoder", "bn-cnn")
    assert 0 <= ex.layer < len(ex.arch.widths) and sorted(ex.perm) == list(range(ex.width))
    model, layer = build_model(ex, torch.float64)
    assert layer.size == ex.width and layer.kind in ("attention-heads", "linear", "gated", "channel-bn", "residual")
    assert ex.arch.largest_tensor() == max(p.numel() for p in model.parameters())


def test_unknown_families_are_refused():
    with pytest.raises(TopoverifyError, match="unknown architecture families"):
        families(("transformers",))
    with pytest.raises(TopoverifyError, match="architectures must name families"):
        equivariance_error(torch.optim.SGD, architectures=("vit",))


@pytest.mark.parametrize("name,kwargs", [("SGD", {"momentum": 0.9}), ("AdamW", {})])  # Adam: every unit kind below
def test_torch_rules_are_equivariant_on_blocks(name, kwargs):
    report = equivariance_error(getattr(torch.optim, name), optimizer_kwargs=kwargs, dtype="float64", **BLOCKS)
    assert report.verdict == "equivariant", str(report)
    assert report.coverage.by_family.get("transformer") and report.coverage.by_family.get("bn-cnn")
    assert "transformer blocks" in report.message and "BatchNorm conv nets" in report.message


def test_a_broken_rule_is_caught_on_a_transformer_block():
    report = equivariance_error(PerIndexLR, architectures=("transformer",), examples=2, steps=2, dtype="float64",
                                shrink_time=2.0)
    assert report.verdict == "not_equivariant", str(report)
    cex = report.counterexample
    assert cex.arch["kind"] in ("transformer", "encoder") and cex.width >= 2
    assert cex.permutation != tuple(range(cex.width))
    assert cex.arch["heads"] <= 3 and cex.arch["ffn"] <= 6 and cex.step >= 1
    assert cex.layer in ("body.attn.heads", "body.layer.self_attn.heads", "residual") or cex.layer.startswith(
        ("body.mlp", "body.layer.linear1"))


def _example(spec, layer):
    perm = tuple(reversed(range(spec.widths[layer])))
    return TrainingExample(spec, layer=layer, perm=perm, init_seed=1, data_seed=2, batch=4)


def test_running_statistics_are_compared_and_must_move_with_the_channels():
    """A layer declared without its BatchNorm buffers does not describe a symmetry (the permuted copy keeps the
    running statistics in place): the check fails on a buffer in train mode."""
    @dataclasses.dataclass(frozen=True)
    class NoBuffers(BlockSpec):
        def neuron_layers(self, model):
            return [dataclasses.replace(la, buffers=()) for la in super().neuron_layers(model)]

    setup = OptimizerSetup(kwargs={"lr": 0.05})
    ok = run_example(torch.optim.SGD, _example(BlockSpec(kind="bn-cnn", channels=(3,)), 0), setup, steps=2,
                     perms=[(2, 1, 0)])
    assert not ok.failed and ok.compared_steps == 2
    bad = run_example(torch.optim.SGD, _example(NoBuffers(kind="bn-cnn", channels=(3,)), 0), setup, steps=2,
                      perms=[(2, 1, 0)])
    assert bad.failed and bad.mismatch.key.startswith("buffer body.1.running_")


def test_loss_reads_do_not_update_running_statistics():
    """The recorded run's buffers are those of the training steps alone (a convergence read of the loss in
    train mode must not add a BatchNorm update the permuted runs do not make)."""
    spec = BlockSpec(kind="bn-cnn", channels=(2,), bn_train=True)
    setup = OptimizerSetup(kwargs={"lr": 0.05})
    ctx = RunContext.build(torch.optim.SGD, _example(spec, 0), setup, steps=3, seed=0)
    snaps = original_run(ctx, copy.deepcopy(ctx.initial))
    model = copy.deepcopy(ctx.initial)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    for (x, y), snap in zip(ctx.batches, snaps):
        opt.zero_grad()
        loss_fn(model, x, y).backward()
        opt.step()
        for n, b in model.named_buffers():
            if b.is_floating_point():
                assert torch.equal(snap.buffers[n], b), n


def test_pytest_fixture_checks_transformer_blocks(topoverify_check):
    report = topoverify_check(torch.optim.AdamW, architectures=("transformer",), examples=2, steps=2, dtype="float64")
    assert report.coverage.by_family == {"transformer": report.coverage.compared}


def test_a_requested_family_without_a_compared_example_is_inconclusive():
    tally = Tally(generated=2, compared=2, moved=2, by_dtype={"float64": 2}, by_family={"transformer": 2},
                  family_errors={"bn-cnn": "cannot build the model"})
    args = dict(name="rule", steps=2, rtols={"float64": 1e-10}, dtypes=("float64",), large=False, limits="...")
    verdict, msg, _ = verdict_without_counterexample(tally, families=("transformer", "bn-cnn"), **args)
    assert verdict == "inconclusive" and "no bn-cnn example could be compared" in msg
    assert verdict_without_counterexample(tally, families=("transformer",), **args)[0] == "equivariant"


UNIT_KINDS = [
    (BlockSpec(kind="transformer", heads=3, head_dim=2, ffn=3, causal=True, batch_first=False), 0, "heads"),
    (BlockSpec(kind="transformer", heads=2, head_dim=2, ffn=3, gated=True, activation="silu"), 1, "gated"),
    (BlockSpec(kind="encoder", heads=2, head_dim=2, ffn=3, norm_first=False, dropout=True), 1, "mlp"),
    (BlockSpec(kind="encoder", heads=2, head_dim=1, ffn=2, seq=3), 2, "stream"),
    (BlockSpec(kind="bn-cnn", channels=(3,), pool=True, image=4, bn_train=True), 0, "bn-train"),
    (BlockSpec(kind="bn-cnn", channels=(3, 2), bn_train=False), 1, "bn-eval"),
    (BlockSpec(kind="bn-cnn", channels=(3, 2), residual=True), 1, "cnn-stream"),
]


@pytest.mark.parametrize("spec,layer,kind", UNIT_KINDS, ids=[k for *_, k in UNIT_KINDS])
def test_adam_follows_every_unit_kind(spec, layer, kind):
    """Every unit kind is checked, parameters, Adam's state (offset members of the fused in_proj included) and
    running statistics, over all compared steps."""
    n = spec.widths[layer]
    res = run_example(torch.optim.Adam, _example(spec, layer), OptimizerSetup(kwargs={"lr": 0.01}), steps=3,
                      perms=[tuple((k + 1) % n for k in range(n))])
    assert res.error is None and not res.failed and res.compared_steps == 3 and res.moved, res
    assert res.uncompared_state == {}
